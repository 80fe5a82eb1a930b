from __future__ import annotations

import numpy as np
import pytest

from features.events import Click, Impression
from features.joiner import FINAL, FNW_NEGATIVE, FNW_POSITIVE, Joiner, JoinerConfig, fnw_weight

W = 15 * 60 * 1000


def imp(iid: str, ts: int, user: str = "u1", item: str | None = None, cat: str = "c1",
        request: str = "r1") -> Impression:
    return Impression(iid, request, user, item or "item-" + iid, cat, 0, ts)


def click(iid: str, ts: int, user: str = "u1") -> Click:
    return Click(iid, user, ts)


def finals(result) -> list[tuple[str, int]]:
    return [(r.impression.impression_id, r.label) for r in result.releases if r.kind == FINAL]


def test_click_inside_window_makes_a_positive_released_at_window_end():
    j = Joiner()
    assert j.push([imp("a", 1_000), click("a", 61_000)]).releases == []
    assert j.advance(1_000 + W).releases == []
    assert j.stats.clicks_joined == 1
    out = j.advance(1_000 + W + 1).releases
    assert [(r.impression.impression_id, r.label, r.click_ts, r.final_ts) for r in out] == [
        ("a", 1, 61_000, 1_000 + W)]


def test_positives_and_negatives_are_delayed_alike_in_window_end_order():
    j = Joiner(JoinerConfig(window_ms=100))
    j.push([imp("neg", 0), imp("pos", 10), click("pos", 20)])
    assert finals(j.advance(500)) == [("neg", 0), ("pos", 1)]


def test_click_exactly_at_window_end_is_joined():
    j = Joiner()
    j.push([imp("a", 0), click("a", W)])
    assert finals(j.flush()) == [("a", 1)]
    assert j.stats.late_clicks == 0 and j.stats.clicks_joined == 1


def test_late_click_after_window_is_counted_not_joined():
    j = Joiner()
    # The click's time closes the window before the click itself is processed.
    assert finals(j.push([imp("a", 0), click("a", W + 1)])) == [("a", 0)]
    j.flush()
    assert j.stats.late_clicks == 1 and j.stats.clicks_joined == 0


def test_events_within_the_allowed_lateness_wait_and_are_taken_in_time_order():
    j = Joiner(JoinerConfig(window_ms=1_000, allowed_lateness_ms=10_000))
    # The click arrives first; within the lateness it waits and its impression overtakes it.
    assert j.push([click("a", 500), imp("a", 0)]).events == []
    assert [e.ts for e in j.advance(10_501).events] == [0, 500]
    assert j.stats.clicks_joined == 1 and j.held_clicks == 0
    assert finals(j.flush()) == [("a", 1)]


def test_event_later_than_the_allowed_lateness_is_processed_at_once():
    j = Joiner(JoinerConfig(window_ms=1_000, closed_retention_ms=10_000))
    assert finals(j.push([imp("a", 0), imp("b", 5_000)])) == [("a", 0)]
    # In event time the click is inside a's window, but it comes after the window closed.
    result = j.push([click("a", 900)])
    assert [e.ts for e in result.events] == [900]
    assert j.stats.late_clicks == 1 and j.stats.clicks_joined == 0


def test_window_without_click_emits_negative_once_watermark_passes_end():
    j = Joiner()
    j.push([imp("a", 0)])
    assert j.advance(W).releases == []  # window end itself is still open
    out = j.advance(W + 1).releases
    assert [(r.impression.impression_id, r.label, r.final_ts, r.click_ts) for r in out] == [
        ("a", 0, W, None)]
    assert j.open_windows == 0


def test_duplicate_click_is_dropped_and_counted():
    j = Joiner()
    j.push([imp("a", 0), click("a", 10), click("a", 20)])
    assert finals(j.flush()) == [("a", 1)]
    assert j.stats.duplicate_clicks == 1 and j.stats.samples_positive == 1


def test_duplicate_click_after_window_closed_is_duplicate_not_late():
    j = Joiner()
    j.push([imp("a", 0), click("a", 10)])
    j.advance(W + 5)
    j.push([click("a", W + 6)])
    j.flush()
    assert j.stats.duplicate_clicks == 1 and j.stats.late_clicks == 0


def test_duplicate_impression_keeps_first_and_is_counted():
    j = Joiner()
    j.push([imp("a", 0, item="first"), imp("a", 5, item="second")])
    (release,) = j.flush().releases
    assert release.impression.item_id == "first"
    assert j.stats.duplicate_impressions == 1


def test_click_before_impression_arrives_is_held_then_joined():
    j = Joiner()
    j.push([click("a", 500), imp("b", 501)])  # b only moves event time on
    assert j.held_clicks == 1
    j.push([imp("a", 100)])  # later than the allowed lateness (0): processed at once
    assert j.held_clicks == 0 and j.stats.orphan_clicks == 0
    releases = {r.impression.impression_id: r for r in j.flush().releases}
    assert (releases["a"].label, releases["a"].click_ts) == (1, 500)


def test_held_click_whose_impression_never_comes_becomes_orphan_and_is_handed_back():
    j = Joiner()
    j.push([click("ghost", 0)])
    assert j.advance(W).orphans == []
    assert j.advance(W + 1).orphans == [click("ghost", 0)]
    assert j.stats.orphan_clicks == 1 and j.held_clicks == 0


def test_held_click_is_orphan_at_flush():
    j = Joiner()
    j.push([click("ghost", 0)])
    assert j.flush().orphans == [click("ghost", 0)]
    assert j.stats.orphan_clicks == 1


def test_click_earlier_than_its_impression_is_an_orphan_not_a_label():
    j = Joiner()
    j.push([click("a", 100), imp("a", 200)])
    assert j.flush().orphans == [click("a", 100)]
    assert j.stats.orphan_clicks == 1 and j.stats.samples_negative == 1


def test_every_impression_gets_exactly_one_final_sample():
    j = Joiner(JoinerConfig(window_ms=100))
    events = []
    for t in range(0, 1000, 10):
        events.append(imp(f"i{t}", t))
        if t % 30 == 0:
            events += [click(f"i{t}", t + 50), click(f"i{t}", t + 60)]
    events.sort(key=lambda e: e.ts)
    releases = j.push(events).releases + j.flush().releases
    ids = [r.impression.impression_id for r in releases]
    assert sorted(ids) == sorted(f"i{t}" for t in range(0, 1000, 10))
    assert sum(r.label for r in releases) == j.stats.samples_positive == len(range(0, 1000, 30))


def test_releases_are_tagged_with_the_event_that_closed_their_window():
    j = Joiner(JoinerConfig(window_ms=100))
    j.push([imp("a", 0), imp("b", 50)])
    result = j.push([imp("c", 101), imp("d", 150)])
    assert [e.impression_id for e in result.events] == ["b", "c"]
    (release,) = result.releases
    assert (release.impression.impression_id, release.event, release.phase) == ("a", 1, 0)


def test_recent_sequence_holds_only_clicks_strictly_before_the_impression():
    j = Joiner(JoinerConfig(window_ms=10_000, recent_length=2))
    j.push([imp("a", 0, item="x", cat="c1"), click("a", 1_000),
            imp("b", 1_000, item="y", cat="c2"), click("b", 2_000),
            imp("c", 3_000, item="z", cat="c1"), click("c", 5_000)])
    late = j.push([imp("d", 2_000, request="r2"), imp("e", 5_000, request="r3")])
    rows = [r for r in [*late.rows, *j.flush().rows] if r >= 0]
    # At 2000 only the click at 1000 is strictly earlier (the one at 2000 is not).
    assert j.features(rows[0]).recent == [("x", "c1", 1.0)]
    # At 5000: the clicks at 2000 and 1000 (the one at 5000 is simultaneous), newest first.
    assert j.features(rows[1]).recent == [("y", "c2", 3.0), ("x", "c1", 4.0)]


def test_same_category_search_returns_the_most_recent_behaviours_of_that_category():
    j = Joiner(JoinerConfig(window_ms=10_000, lifelong_top_k=2))
    events = []
    for n, (item, cat) in enumerate([("x", "c1"), ("y", "c2"), ("z", "c1"), ("w", "c1")]):
        events += [imp(f"i{n}", n * 100, item=item, cat=cat), click(f"i{n}", n * 100 + 10)]
    j.push([*events, imp("probe", 1_000, cat="c1")])
    (row,) = [r for r in j.flush().rows if r >= 0]
    assert [(i, c) for i, c, _ in j.features(row).same_category] == [("w", "c1"), ("z", "c1")]


def test_lifelong_cap_keeps_only_the_users_newest_behaviours():
    j = Joiner(JoinerConfig(window_ms=10_000, lifelong_cap=2))
    events = []
    for n in range(4):
        events += [imp(f"i{n}", n * 100, item=f"it{n}"), click(f"i{n}", n * 100 + 10)]
    j.push([*events, imp("probe", 1_000)])
    (row,) = [r for r in j.flush().rows if r >= 0]
    assert [i for i, _, _ in j.features(row).recent] == ["it3", "it2"]


def test_lifelong_ttl_forgets_old_behaviours():
    j = Joiner(JoinerConfig(window_ms=1_000, lifelong_ttl_ms=5_000))
    j.push([imp("old", 0, item="old"), click("old", 10), imp("new", 4_000, item="new"),
            click("new", 4_010), imp("probe", 6_000)])
    (row,) = [r for r in j.flush().rows if r >= 0]
    assert [i for i, _, _ in j.features(row).recent] == ["new"]


def test_counting_features_count_only_what_happened_before():
    j = Joiner(JoinerConfig(window_ms=10_000, count_half_lives_ms=(3_600_000,)))
    j.push([imp("a", 0, item="x"), imp("b", 0, item="x", request="r1"), click("a", 500),
            imp("c", 1_000, item="x", request="r2"), imp("d", 1_000, item="x", request="r2")])
    rows = [r for r in j.flush().rows if r >= 0]
    assert len(rows) == 2
    names = j.count_names
    for row in rows:  # both see the two earlier impressions and the click, not each other
        counts = dict(zip(names, j.features(row).counts.tolist(), strict=True))
        assert counts["item_imps_1h"] == pytest.approx(2.0, rel=1e-3)
        assert counts["item_clicks_1h"] == pytest.approx(1.0, rel=1e-3)
        assert counts["user_category_clicks_1h"] == pytest.approx(1.0, rel=1e-3)


def test_fnw_mode_releases_a_negative_at_once_and_a_positive_at_the_click():
    j = Joiner(JoinerConfig(window_ms=1_000, mode="fnw"))
    result = j.push([imp("a", 0), imp("b", 0, request="r9"), click("a", 300), imp("c", 400)])
    order = [e.impression_id for e in result.events]
    kinds = [(r.kind, r.impression.impression_id, r.label, order[r.event], r.phase)
             for r in result.releases]
    assert sorted(kinds[:2]) == [(FNW_NEGATIVE, "a", 0, "a", 1), (FNW_NEGATIVE, "b", 0, "b", 1)]
    assert kinds[2] == (FNW_POSITIVE, "a", 1, "a", 0)
    assert sorted(finals(j.flush())) == [("a", 1), ("b", 0), ("c", 0)]


def test_fnw_weights_match_ktena_et_al():
    assert fnw_weight(1, 0.25) == pytest.approx(1.25)
    assert fnw_weight(0, 0.25) == pytest.approx(0.75 * 1.25)


@pytest.mark.parametrize(
    "kwargs",
    [{"window_ms": 0}, {"allowed_lateness_ms": -1}, {"closed_retention_ms": -5},
     {"mode": "eager"}, {"recent_length": 0}, {"count_half_lives_ms": ()}],
)
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        JoinerConfig(**kwargs)


def _stream(n: int, start: int = 0) -> list:
    events = []
    for t in range(start, start + n * 100, 100):
        u, c = f"u{t % 7}", f"c{t % 3}"
        events.append(imp(f"i{t}", t, user=u, item=f"it{t % 11}", cat=c, request=f"r{t}"))
        if t % 300 == 0:
            events.append(click(f"i{t}", t + 150, user=u))
    events.append(click(f"ghost{start}", start + 50))  # held, then orphan
    return sorted(events, key=lambda e: e.ts)


def test_restored_snapshot_continues_exactly_like_the_original():
    config = JoinerConfig(window_ms=1_000, recent_length=5, lifelong_top_k=3)
    original = Joiner(config)
    original.push(_stream(50))
    restored = Joiner(config)
    restored.load_state_dict(original.state_dict())
    later = _stream(50, start=5_000)
    a, b = original.push(later), restored.push(later)
    assert a.releases == b.releases and a.orphans == b.orphans
    for row_a, row_b in zip(a.rows, b.rows, strict=True):
        if row_a >= 0:
            fa, fb = original.features(row_a), restored.features(row_b)
            assert fa.recent == fb.recent and fa.same_category == fb.same_category
            assert fa.counts.tolist() == fb.counts.tolist()
    assert original.flush().releases == restored.flush().releases
    assert original.stats == restored.stats


def test_snapshot_holds_only_arrays_and_strings():
    j = Joiner(JoinerConfig(window_ms=1_000))
    j.push(_stream(20))

    def leaves(state):
        for value in state.values():
            if isinstance(value, dict):
                yield from leaves(value)
            else:
                yield value

    assert all(isinstance(v, np.ndarray | int) for v in leaves(j.state_dict()))


def test_snapshot_from_another_configuration_is_refused():
    j = Joiner(JoinerConfig(window_ms=1_000))
    j.push(_stream(5))
    with pytest.raises(ValueError, match="another configuration"):
        Joiner(JoinerConfig(window_ms=2_000)).load_state_dict(j.state_dict())


def test_pending_clicks_are_the_held_and_the_not_yet_due_ones_until_they_settle():
    j = Joiner(JoinerConfig(window_ms=W))
    early = click("later-imp", 100)  # its impression has not come: held
    b = imp("b", 200)
    j.push([imp("a", 0), click("a", 50), early, b])
    assert j.pending_clicks() == [early]
    due_soon = click("b", 200)  # at the watermark, as b: both wait for a newer event
    j.push([due_soon])
    assert j.pending_clicks() == [due_soon, early]
    assert j.settle().events == [b, due_soon]
    assert j.pending_clicks() == [early]
    assert j.flush().orphans == [early]
    assert j.pending_clicks() == []
