from __future__ import annotations

import random

from pipeline.merge import EventTimeMerger


def test_partition_without_data_holds_back_release_until_caught_up():
    m: EventTimeMerger[str] = EventTimeMerger()
    m.add("clicks", 1, [(50, "c1")])
    assert list(m.drain(caught_up=set(), assigned={"clicks", "impressions"})) == []
    assert list(m.drain(caught_up={"impressions"}, assigned={"clicks", "impressions"})) == ["c1"]


def test_release_stops_when_a_live_partition_runs_dry():
    m: EventTimeMerger[str] = EventTimeMerger()
    m.add("a", 0, [(1, "a1"), (5, "a5")])
    m.add("b", 1, [(2, "b2")])
    # b may still deliver something older than a5, so a5 waits.
    assert list(m.drain(caught_up=set())) == ["a1", "b2"]
    assert m.buffered("a") == 1
    m.add("b", 1, [(3, "b3")])
    assert list(m.drain(caught_up={"b"})) == ["b3", "a5"]


def test_equal_times_release_lower_rank_first():
    m: EventTimeMerger[str] = EventTimeMerger()
    m.add("clicks", 1, [(10, "click")])
    m.add("impressions", 0, [(10, "impression")])
    assert list(m.drain(caught_up={"clicks", "impressions"})) == ["impression", "click"]


def test_force_releases_everything_in_order():
    m: EventTimeMerger[int] = EventTimeMerger()
    m.add("a", 0, [(3, 3), (9, 9)])
    m.add("b", 1, [(1, 1), (4, 4)])
    assert list(m.drain(caught_up=set(), assigned={"a", "b", "c"}, force=True)) == [1, 3, 4, 9]
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
        m.add(p, ord(p), [(t, t) for t in chunk])
        done = {q for q in streams if cursors[q] == len(streams[q])}
        out += m.drain(caught_up=done, assigned=set(streams))
    out += m.drain(caught_up=set(streams), assigned=set(streams))
    assert out == sorted(t for s in streams.values() for t in s)


def test_equal_times_release_partitions_in_number_order_not_text_order():
    from kafka import TopicPartition

    m: EventTimeMerger[str] = EventTimeMerger()
    tps = [TopicPartition("impressions", p) for p in (10, 2, 1)]
    for tp in tps:
        m.add(tp, 0, [(5, f"p{tp.partition}")])
    assert list(m.drain(caught_up=set(tps), assigned=set(tps))) == ["p1", "p2", "p10"]
