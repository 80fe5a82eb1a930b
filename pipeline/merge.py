"""Event-time merge of the partitions a consumer reads, so the joiner sees one ordered stream.

Kafka orders records within a partition only. Reading a backlog, one consumer may
fetch an hour of clicks before the impressions they belong to; fed to the joiner
in that order, the watermark would race ahead and close windows of impressions
not read yet. The merge releases a record only when no partition can still
deliver an earlier one: every partition either has a record buffered (its head
is known) or has been read to its end (it is *caught up*). This is the
min-over-inputs watermark of Flink and Kafka Streams.

Within a partition, order is offset order. Across partitions, ties in event time
release impressions before clicks, then lower partitions (topic name, then partition
number) first, which is exactly the order of :func:`replay.inputs.iter_events` and of
a topic-range replay (:mod:`replay.kafka_input`). Partition keys must be orderable.

>>> m = EventTimeMerger()
>>> m.add("clicks/0", 1, [(30, "click a")])
>>> both = {"clicks/0", "impressions/0"}
>>> list(m.drain(caught_up=set(), assigned=both))  # impressions/0 may hold older records
[]
>>> m.add("impressions/0", 0, [(10, "imp a"), (40, "imp b")])
>>> list(m.drain(caught_up=both, assigned=both))
['imp a', 'click a', 'imp b']
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["EventTimeMerger"]

T = TypeVar("T")


@dataclass
class EventTimeMerger(Generic[T]):
    """Buffers records per partition and releases them in (event time, rank, partition) order."""

    _queues: dict[Hashable, deque[tuple[int, T]]] = field(default_factory=dict, init=False)
    _ranks: dict[Hashable, int] = field(default_factory=dict, init=False)

    def add(self, partition: Hashable, rank: int, records: Iterable[tuple[int, T]]) -> None:
        """Buffer ``(event_time, record)`` pairs read from ``partition`` in offset order.

        ``rank`` orders partitions whose heads have equal event times (lower first).
        """
        queue = self._queues.get(partition)
        if queue is None:
            queue = self._queues[partition] = deque()
            self._ranks[partition] = rank
        queue.extend(records)

    def buffered(self, partition: Hashable) -> int:
        queue = self._queues.get(partition)
        return 0 if queue is None else len(queue)

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def drain(
        self, caught_up: Iterable[Hashable], assigned: Iterable[Hashable] = (),
        *, force: bool = False,
    ) -> Iterator[T]:
        """Release records in event-time order while no partition can still send an earlier one.

        ``assigned`` are partitions this consumer owns (known even before their first
        record); ``caught_up`` those read to their end, which don't hold back the
        others. ``force`` releases everything (end of input).
        """
        caught = set(caught_up)
        blocking = {p for p in assigned if p not in caught and not self._queues.get(p)}
        heap: list[tuple[int, int, int, Hashable]] = []
        order = {p: i for i, p in enumerate(sorted(self._queues, key=self._sort_key))}
        for partition, queue in self._queues.items():
            if queue:
                heap.append((queue[0][0], self._ranks[partition], order[partition], partition))
            elif partition not in caught:
                blocking.add(partition)
        if blocking and not force:
            return
        heapq.heapify(heap)
        while heap:
            _, rank, position, partition = heap[0]
            queue = self._queues[partition]
            _, record = queue.popleft()
            yield record
            if queue:
                heapq.heapreplace(heap, (queue[0][0], rank, position, partition))
            else:
                heapq.heappop(heap)
                if not force and partition not in caught:
                    # This partition may still deliver something earlier than the others.
                    return

    def _sort_key(self, partition: Hashable) -> tuple[int, Any]:
        # Partitions compare as themselves (TopicPartition: topic, then partition number),
        # not as text, which would put partition 10 before partition 2.
        return (self._ranks[partition], partition)
