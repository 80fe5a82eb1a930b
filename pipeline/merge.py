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

The release order is that of a k-way merge which always takes the earliest head
(records out of order within a partition included), computed a drain at a time
with one sort rather than a heap operation per record: taking the earliest head
releases a record that is earlier than its predecessor right after it, so the merge
is a sort by each partition's running maximum of event time (from its first buffered
record), then partition order, then offset order. ``tests/pipeline/test_merge.py``
checks it against the heap merge on random input.

>>> m = EventTimeMerger()
>>> m.add("clicks/0", 1, [30], ["click a"], [0])
>>> both = {"clicks/0", "impressions/0"}
>>> m.drain(caught_up=set(), assigned=both).items  # impressions/0 may hold older records
[]
>>> m.add("impressions/0", 0, [10, 40], ["imp a", "imp b"], [0, 1])
>>> released = m.drain(caught_up=both, assigned=both)
>>> released.items, released.offsets.tolist()
(['imp a', 'click a', 'imp b'], [0, 0, 1])
>>> [released.partitions[s] for s in released.sources]
['impressions/0', 'clicks/0', 'impressions/0']
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["EventTimeMerger", "Released"]

T = TypeVar("T")


@dataclass(frozen=True)
class Released(Generic[T]):
    """Records released by one drain, in merge order, as columns (length ``n``).

    ``sources[i]`` indexes ``partitions``: the partition record ``i`` came from."""

    items: list[T]
    times: np.ndarray  # (n,) int64 event time each record was merged on
    offsets: np.ndarray  # (n,) int64 as given to add
    sources: np.ndarray  # (n,) int64 into partitions
    partitions: list[Hashable]

    def __len__(self) -> int:
        return len(self.items)

    def slice(self, start: int, stop: int) -> Released[T]:
        return Released(self.items[start:stop], self.times[start:stop],
                        self.offsets[start:stop], self.sources[start:stop], self.partitions)

    def last_offsets(self) -> dict[Hashable, int]:
        """The offset of each partition's last record here."""
        if not self.items:
            return {}
        backwards = self.sources[::-1]
        present, first_back = np.unique(backwards, return_index=True)
        last = self.offsets.size - 1 - first_back
        return {self.partitions[s]: int(o)
                for s, o in zip(present.tolist(), self.offsets[last].tolist(), strict=True)}


def _nothing() -> Released[Any]:
    empty = np.zeros(0, np.int64)
    return Released([], empty, empty, empty, [])


@dataclass
class _Buffer(Generic[T]):
    """One partition's records not released yet, in offset order."""

    rank: int
    times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    items: list[T] = field(default_factory=list)


@dataclass
class EventTimeMerger(Generic[T]):
    """Buffers records per partition and releases them in (event time, rank, partition) order."""

    _buffers: dict[Hashable, _Buffer[T]] = field(default_factory=dict, init=False)

    def add(self, partition: Hashable, rank: int, times: Sequence[int] | np.ndarray,
            items: Sequence[T], offsets: Sequence[int] | np.ndarray) -> None:
        """Buffer records read from ``partition`` in offset order: their event times, the
        records, and their offsets (carried along, returned with the release).

        ``rank`` orders partitions whose heads have equal event times (lower first).
        """
        if not (len(times) == len(items) == len(offsets)):
            raise ValueError(f"times, items and offsets differ in length: {len(times)}, "
                             f"{len(items)}, {len(offsets)}")
        buffer = self._buffers.get(partition)
        if buffer is None:
            buffer = self._buffers[partition] = _Buffer(rank)
        buffer.times = np.concatenate([buffer.times, np.asarray(times, np.int64)])
        buffer.offsets = np.concatenate([buffer.offsets, np.asarray(offsets, np.int64)])
        buffer.items.extend(items)

    def buffered(self, partition: Hashable) -> int:
        buffer = self._buffers.get(partition)
        return 0 if buffer is None else len(buffer.items)

    def __len__(self) -> int:
        return sum(len(b.items) for b in self._buffers.values())

    def discard(self, partitions: Collection[Hashable]) -> None:
        """Forget what is buffered of ``partitions`` (revoked: read again by their next owner)."""
        for partition in partitions:
            self._buffers.pop(partition, None)

    def drain(
        self, caught_up: Iterable[Hashable], assigned: Iterable[Hashable] = (),
        *, force: bool = False,
    ) -> Released[T]:
        """Release records in event-time order while no partition can still send an earlier one.

        ``assigned`` are partitions this consumer owns (known even before their first
        record); ``caught_up`` those read to their end, which don't hold back the
        others. ``force`` releases everything (end of input).
        """
        caught = set(caught_up)
        buffers = self._buffers
        if not force and any(p not in caught and not (p in buffers and buffers[p].items)
                             for p in (*assigned, *buffers)):
            return _nothing()  # a live partition with nothing buffered may send anything
        partitions = sorted((p for p, b in buffers.items() if b.items), key=self._sort_key)
        if not partitions:
            return _nothing()
        running = [np.maximum.accumulate(buffers[p].times) for p in partitions]
        take = [r.size for r in running]
        if not force:
            # Taking the earliest head stops once a live partition's last buffered record
            # is out; that record's key bounds what is released, a prefix of each partition.
            live = [i for i, p in enumerate(partitions) if p not in caught]
            if live:
                bound, at = min((int(running[i][-1]), i) for i in live)
                take = [int(np.searchsorted(r, bound, "right" if i <= at else "left"))
                        for i, r in enumerate(running)]
        keys = np.concatenate([r[:k] for r, k in zip(running, take, strict=True)])
        sources = np.repeat(np.arange(len(partitions)), take)
        order = np.lexsort((sources, keys))  # stable: offset order within a partition
        items: list[T] = []
        times, offsets = [], []
        for p, k in zip(partitions, take, strict=True):
            buffer = buffers[p]
            items.extend(buffer.items[:k])
            del buffer.items[:k]
            times.append(buffer.times[:k])
            offsets.append(buffer.offsets[:k])
            buffer.times, buffer.offsets = buffer.times[k:], buffer.offsets[k:]
        picked = order.tolist()
        return Released([items[i] for i in picked], np.concatenate(times)[order],
                        np.concatenate(offsets)[order], sources[order], list(partitions))

    def _sort_key(self, partition: Hashable) -> tuple[int, Any]:
        # Partitions compare as themselves (TopicPartition: topic, then partition number),
        # not as text, which would put partition 10 before partition 2.
        return (self._buffers[partition].rank, partition)
