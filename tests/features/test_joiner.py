from __future__ import annotations

import pytest

from features.events import Click, Impression
from features.joiner import Joiner, JoinerConfig

W = 15 * 60 * 1000


def imp(iid: str, ts: int, user: str = "u1") -> Impression:
    return Impression(iid, "r1", user, "item-" + iid, "c1", 0, ts)


def click(iid: str, ts: int, user: str = "u1") -> Click:
    return Click(iid, user, ts)


def labels(samples) -> list[tuple[str, int]]:
    return [(s.impression.impression_id, s.label) for s in samples]


def test_click_inside_window_makes_a_positive_released_at_window_end():
    j = Joiner()
    assert j.add_impression(imp("a", 1_000)) == []
    assert j.add_click(click("a", 61_000)) == []
    assert j.stats.clicks_joined == 1
    assert j.advance(1_000 + W) == []
    out = j.advance(1_000 + W + 1)
    assert labels(out) == [("a", 1)]
    assert out[0].click_ts == 61_000 and out[0].final_ts == 1_000 + W


def test_positives_and_negatives_are_delayed_alike_in_window_end_order():
    j = Joiner(JoinerConfig(window_ms=100))
    j.add_impression(imp("neg", 0))
    j.add_impression(imp("pos", 10))
    j.add_click(click("pos", 20))
    assert labels(j.advance(500)) == [("neg", 0), ("pos", 1)]


def test_click_exactly_at_window_end_is_joined():
    j = Joiner()
    j.add_impression(imp("a", 0))
    j.add_click(click("a", W))
    assert j.stats.late_clicks == 0 and j.stats.clicks_joined == 1
    assert labels(j.flush()) == [("a", 1)]


def test_late_click_after_window_is_counted_not_joined():
    j = Joiner()
    j.add_impression(imp("a", 0))
    out = j.add_click(click("a", W + 1))
    # The click's own time closes the window first: the impression is a negative.
    assert labels(out) == [("a", 0)]
    assert j.stats.late_clicks == 1 and j.stats.clicks_joined == 0


def test_late_click_is_counted_even_when_watermark_lags_behind():
    j = Joiner(JoinerConfig(window_ms=1_000, allowed_lateness_ms=10_000))
    j.add_impression(imp("a", 0))
    assert j.add_click(click("a", 1_001)) == []
    assert j.stats.late_clicks == 1
    assert labels(j.flush()) == [("a", 0)]


def test_window_without_click_emits_negative_once_watermark_passes_end():
    j = Joiner()
    j.add_impression(imp("a", 0))
    assert j.advance(W) == []  # window end itself is still open
    out = j.advance(W + 1)
    assert labels(out) == [("a", 0)]
    assert out[0].final_ts == W and out[0].click_ts is None
    assert j.open_windows == 0


def test_duplicate_click_is_dropped_and_counted():
    j = Joiner()
    j.add_impression(imp("a", 0))
    j.add_click(click("a", 10))
    assert j.add_click(click("a", 20)) == []
    assert labels(j.flush()) == [("a", 1)]
    assert j.stats.duplicate_clicks == 1 and j.stats.samples_positive == 1


def test_duplicate_click_after_window_closed_is_duplicate_not_late():
    j = Joiner()
    j.add_impression(imp("a", 0))
    j.add_click(click("a", 10))
    j.advance(W + 5)
    j.add_click(click("a", W + 6))
    assert j.stats.duplicate_clicks == 1 and j.stats.late_clicks == 0


def test_duplicate_impression_keeps_first_and_is_counted():
    j = Joiner()
    j.add_impression(imp("a", 0))
    j.add_impression(imp("a", 5))
    assert j.stats.duplicate_impressions == 1
    assert labels(j.flush()) == [("a", 0)]


def test_click_before_impression_arrives_is_held_then_joined():
    j = Joiner()
    assert j.add_click(click("a", 500)) == []
    assert j.held_clicks == 1
    j.add_impression(imp("a", 100))
    assert j.held_clicks == 0 and j.stats.orphan_clicks == 0
    out = j.flush()
    assert labels(out) == [("a", 1)] and out[0].click_ts == 500


def test_held_click_whose_impression_never_comes_becomes_orphan():
    j = Joiner()
    j.add_click(click("ghost", 0))
    j.advance(W)
    assert j.stats.orphan_clicks == 0
    j.advance(W + 1)
    assert j.stats.orphan_clicks == 1 and j.held_clicks == 0


def test_held_click_is_orphan_at_flush_and_handed_back():
    j = Joiner()
    j.add_click(click("ghost", 0))
    j.flush()
    assert j.stats.orphan_clicks == 1
    assert j.take_orphans() == [click("ghost", 0)]
    assert j.take_orphans() == []


def test_click_earlier_than_its_impression_is_not_a_label():
    j = Joiner()
    j.add_click(click("a", 100))
    assert j.add_impression(imp("a", 200)) == []
    assert j.stats.orphan_clicks == 1
    assert labels(j.flush()) == [("a", 0)]


def test_every_impression_gets_exactly_one_sample():
    j = Joiner(JoinerConfig(window_ms=100))
    samples = []
    for t in range(0, 1000, 10):
        samples += j.add_impression(imp(f"i{t}", t))
        if t % 30 == 0:
            samples += j.add_click(click(f"i{t}", t + 50))
            samples += j.add_click(click(f"i{t}", t + 60))  # duplicate
    samples += j.flush()
    ids = [s.impression.impression_id for s in samples]
    assert sorted(ids) == sorted(f"i{t}" for t in range(0, 1000, 10))
    assert sum(s.label for s in samples) == j.stats.samples_positive == len(range(0, 1000, 30))


def test_samples_are_released_only_after_their_window_ends():
    j = Joiner(JoinerConfig(window_ms=100))
    samples = []
    for t in range(0, 500, 7):
        samples += j.add_impression(imp(f"i{t}", t))
        samples += j.add_click(click(f"i{t - 7}", t))
    samples += j.flush()
    assert all(s.final_ts == s.impression.ts + 100 for s in samples)
    assert all(s.click_ts is None or s.impression.ts <= s.click_ts <= s.final_ts
               for s in samples)


@pytest.mark.parametrize(
    "kwargs",
    [{"window_ms": 0}, {"allowed_lateness_ms": -1}, {"closed_retention_ms": -5}],
)
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        JoinerConfig(**kwargs)
