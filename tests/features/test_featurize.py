"""Feature dicts with behaviour sequences: the names' hashes, copies, restores."""

from __future__ import annotations

import numpy as np
import pytest

from features.events import Click, Impression
from features.featurize import Features, impression_features
from features.hashing import hash_names
from features.joiner import Joiner


def _history() -> list[Impression | Click]:
    """u7 clicks it1 (c2) at 10 ms and it5 (c9) at 2,010 ms; then an impression of it3 (c2)."""
    return [Impression("i0", "r0", "u7", "it1", "c2", 0, 0), Click("i0", "u7", 10),
            Impression("i1", "r1", "u7", "it5", "c9", 0, 2_000), Click("i1", "u7", 2_010),
            Impression("i2", "r2", "u7", "it3", "c2", 1, 5_000)]


def _last_features(joiner: Joiner, events, **kwargs) -> Features:
    joiner.push(events)
    row = int(joiner.settle().rows[-1])
    return impression_features(joiner.impression(row), joiner.features(row), **kwargs)


def test_behaviours_are_hashes_of_the_names_the_target_uses_newest_first():
    x = _last_features(Joiner(), _history(), with_behaviours=True)
    b = x.behaviours
    assert b.recent_item.tolist() == hash_names(["item=it5", "item=it1"]).tolist()
    assert b.recent_category.tolist() == hash_names(["category=c9", "category=c2"]).tolist()
    np.testing.assert_allclose(b.recent_age_s, [2.99, 4.99], rtol=1e-6)
    # The lifelong hard search keeps the impression's category only.
    assert b.lifelong_item.tolist() == hash_names(["item=it1"]).tolist()
    assert b.lifelong_category.tolist() == hash_names(["category=c2"]).tolist()
    assert b.ts_ms == 5_000
    # The target's own feature name hashes like a behaviour of the same item would.
    assert "item=it3" in x and "category=c2" in x


def test_without_behaviours_the_dict_is_the_same_and_carries_none():
    with_b = _last_features(Joiner(), _history(), with_behaviours=True)
    without = _last_features(Joiner(), _history())
    assert without.behaviours is None
    assert dict(with_b) == dict(without)


def test_behaviours_stay_valid_after_the_joiner_moves_on():
    joiner = Joiner()
    x = _last_features(joiner, _history(), with_behaviours=True)
    kept = x.behaviours.recent_item.copy()
    later = [Impression(f"j{k}", f"s{k}", "u7", f"new{k}", "c2", 0, 6_000 + k)
             for k in range(50)] + [Click(f"j{k}", "u7", 6_100 + k) for k in range(50)]
    joiner.push(later)
    joiner.flush()
    assert x.behaviours.recent_item.tolist() == kept.tolist()


def test_a_restored_joiner_gives_identical_behaviours():
    events = _history()
    first = Joiner()
    first.push(events[:4])
    restored = Joiner()
    restored.load_state_dict(first.state_dict())
    a = _last_features(first, events[4:], with_behaviours=True).behaviours
    b = _last_features(restored, events[4:], with_behaviours=True).behaviours
    for name in ("recent_item", "recent_category", "lifelong_item", "lifelong_category"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist()


def test_features_is_an_ordinary_dict_for_other_learners():
    x = Features({"a": 1.0})
    assert x == {"a": 1.0} and isinstance(x, dict) and x.behaviours is None
    with pytest.raises(AttributeError):
        x.other = 1  # slots: nothing but the behaviours rides along
