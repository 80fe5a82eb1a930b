from __future__ import annotations

import heapq
import random
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.merge import EventTimeMerger


def add(m: EventTimeMerger, partition, rank: int, records: list[tuple[int, object]]) -> None:
    """Buffer (event time, record) pairs, with offsets counted from the partition's buffer."""
    start = m.buffered(partition)
    m.add(partition, rank, [t for t, _ in records], [r for _, r in records],
          list(range(start, start + len(records))))


def test_partition_without_data_holds_back_release_until_caught_up():
    m: EventTimeMerger[str] = EventTimeMerger()
    add(m, "clicks", 1, [(50, "c1")])
    assert m.drain(caught_up=set(), assigned={"clicks", "impressions"}).items == []
    assert m.drain(caught_up={"impressions"}, assigned={"clicks", "impressions"}).items == ["c1"]


def test_release_stops_when_a_live_partition_runs_dry():
    m: EventTimeMerger[str] = EventTimeMerger()
    add(m, "a", 0, [(1, "a1"), (5, "a5")])
    add(m, "b", 1, [(2, "b2")])
    # b may still deliver something older than a5, so a5 waits.
    assert m.drain(caught_up=set()).items == ["a1", "b2"]
    assert m.buffered("a") == 1
    add(m, "b", 1, [(3, "b3")])
    assert m.drain(caught_up={"b"}).items == ["b3", "a5"]


def test_equal_times_release_lower_rank_first():
    m: EventTimeMerger[str] = EventTimeMerger()
    add(m, "clicks", 1, [(10, "click")])
    add(m, "impressions", 0, [(10, "impression")])
    assert m.drain(caught_up={"clicks", "impressions"}).items == ["impression", "click"]


def test_equal_time_of_a_higher_rank_waits_while_a_live_partition_runs_dry():
    m: EventTimeMerger[str] = EventTimeMerger()
    add(m, "impressions", 0, [(5, "i5")])
    add(m, "clicks", 1, [(5, "c5")])
    # impressions may still send another record at 5, which goes before the click.
    assert m.drain(caught_up={"clicks"}).items == ["i5"]
    assert m.buffered("clicks") == 1


def test_force_releases_everything_in_order():
    m: EventTimeMerger[int] = EventTimeMerger()
    add(m, "a", 0, [(3, 3), (9, 9)])
    add(m, "b", 1, [(1, 1), (4, 4)])
    assert m.drain(caught_up=set(), assigned={"a", "b", "c"}, force=True).items == [1, 3, 4, 9]
    assert len(m) == 0


def test_release_carries_each_record_offset_time_and_partition():
    m: EventTimeMerger[str] = EventTimeMerger()
    m.add("a", 0, [5, 7], ["a5", "a7"], [100, 103])
    m.add("b", 1, [6], ["b6"], [40])
    released = m.drain(caught_up={"a", "b"})
    assert released.items == ["a5", "b6", "a7"]
    assert released.offsets.tolist() == [100, 40, 103]
    assert released.times.tolist() == [5, 6, 7]
    assert [released.partitions[s] for s in released.sources] == ["a", "b", "a"]
    assert released.last_offsets() == {"a": 103, "b": 40}
    assert released.slice(0, 2).last_offsets() == {"a": 100, "b": 40}


def test_discard_forgets_a_partition_and_keeps_the_others_in_order():
    m: EventTimeMerger[str] = EventTimeMerger()
    add(m, "a", 0, [(1, "a1"), (4, "a4")])
    add(m, "b", 1, [(2, "b2")])
    m.discard({"b", "never-added"})
    assert m.buffered("b") == 0 and len(m) == 2
    assert m.drain(caught_up={"a"}).items == ["a1", "a4"]


def test_add_refuses_columns_of_different_lengths():
    m: EventTimeMerger[str] = EventTimeMerger()
    with pytest.raises(ValueError, match="differ in length"):
        m.add("a", 0, [1, 2], ["x"], [0, 1])
    assert len(m) == 0


def test_merged_output_is_sorted_whatever_the_fetch_pattern():
    rng = random.Random(7)
    streams = {p: sorted(rng.randrange(10_000) for _ in range(300)) for p in "abc"}
    m: EventTimeMerger[int] = EventTimeMerger()
    cursors = dict.fromkeys(streams, 0)
    out: list[int] = []
    while any(cursors[p] < len(s) for p, s in streams.items()):
        p = rng.choice("abc")
        take = rng.randrange(1, 40)
        chunk = streams[p][cursors[p]:cursors[p] + take]
        cursors[p] += len(chunk)
        add(m, p, ord(p), [(t, t) for t in chunk])
        done = {q for q in streams if cursors[q] == len(streams[q])}
        out += m.drain(caught_up=done, assigned=set(streams)).items
    out += m.drain(caught_up=set(streams), assigned=set(streams)).items
    assert out == sorted(t for s in streams.values() for t in s)


def test_equal_times_release_partitions_in_number_order_not_text_order():
    from kafka import TopicPartition

    m: EventTimeMerger[str] = EventTimeMerger()
    tps = [TopicPartition("impressions", p) for p in (10, 2, 1)]
    for tp in tps:
        add(m, tp, 0, [(5, f"p{tp.partition}")])
    assert m.drain(caught_up=set(tps), assigned=set(tps)).items == ["p1", "p2", "p10"]


class HeapMerger:
    """The reference: a k-way merge that always takes the earliest head, one heap
    operation per record (what EventTimeMerger computed before its sort)."""

    def __init__(self) -> None:
        self.queues: dict[str, deque] = {}
        self.ranks: dict[str, int] = {}

    def add(self, partition: str, rank: int, records: list[tuple[int, object]]) -> None:
        self.queues.setdefault(partition, deque()).extend(records)
        self.ranks[partition] = rank

    def drain(self, caught: set[str], assigned: set[str], force: bool) -> list:
        blocking = {p for p in assigned if p not in caught and not self.queues.get(p)}
        blocking |= {p for p, q in self.queues.items() if not q and p not in caught}
        if blocking and not force:
            return []
        order = {p: i for i, p in enumerate(sorted(self.queues, key=lambda p: (self.ranks[p], p)))}
        heap = [(q[0][0], self.ranks[p], order[p], p) for p, q in self.queues.items() if q]
        heapq.heapify(heap)
        out = []
        while heap:
            _, rank, position, p = heap[0]
            queue = self.queues[p]
            out.append(queue.popleft()[1])
            if queue:
                heapq.heapreplace(heap, (queue[0][0], rank, position, p))
            else:
                heapq.heappop(heap)
                if not force and p not in caught:
                    break
        return out


# One step: (partition, event times read, mark it caught up, force the drain).
steps = st.lists(st.tuples(st.sampled_from("abcd"), st.lists(st.integers(0, 6), max_size=8),
                           st.booleans(), st.booleans()), min_size=1, max_size=25)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_release_order_is_the_earliest_head_merge_even_out_of_order(steps):
    ranks = {"a": 0, "b": 0, "c": 1, "d": 1}  # two ranks, with equal times across them
    ours: EventTimeMerger[tuple[str, int]] = EventTimeMerger()
    reference = HeapMerger()
    read = dict.fromkeys(ranks, 0)
    caught: set[str] = set()
    for partition, times, done, force in steps:
        records = [(t, (partition, read[partition] + i)) for i, t in enumerate(times)]
        read[partition] += len(times)
        if records:
            ours.add(partition, ranks[partition], [t for t, _ in records],
                     [r for _, r in records], [o for _, (_, o) in records])
            reference.add(partition, ranks[partition], records)
        (caught.add if done else caught.discard)(partition)
        released = ours.drain(caught, set(ranks), force=force)
        assert released.items == reference.drain(caught, set(ranks), force)
        assert released.offsets.tolist() == [o for _, o in released.items]
        assert np.array_equal(released.sources,
                              [released.partitions.index(p) for p, _ in released.items])
    assert len(ours) == sum(len(q) for q in reference.queues.values())
