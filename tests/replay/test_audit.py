from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from features.events import Impression
from features.joiner import FINAL, FNW_NEGATIVE, FNW_POSITIVE, Release
from replay.audit import CHECKS, LeakAudit
from replay.engine import Outcome
from replay.run import run_replay
from replay.synthetic import generate, write_stream

WINDOW = 60_000


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audited")
    write_stream(generate(6000, seed=3), folder)
    return folder


def impression(ts: int = 100_000, iid: str = "i1") -> Impression:
    return Impression(iid, "r1", "u1", "it1", "c1", 0, ts=ts)


def features(*recent_ages_s: float, topk_ages_s: tuple[float, ...] = ()) -> SimpleNamespace:
    """The two fields of ``JoinedFeatures`` the audit reads (ages in seconds, newest first)."""
    return SimpleNamespace(recent_age_s=np.array(recent_ages_s, np.float32),
                           topk_age_s=np.array(topk_ages_s, np.float32))


def release(imp: Impression, kind: int, label: int, final_ts: int,
            click_ts: int | None = None) -> Release:
    return Release(kind, imp, 0, label, click_ts, final_ts, -1, 0)


@pytest.mark.parametrize("mode", ["wait", "fnw"])
def test_a_replay_checks_every_scored_impression_and_finds_it_consistent(stream, mode):
    result = run_replay(stream, ["ftrl"], None, modes=(mode,), show_progress=False,
                        joiner_config=None, warmup_ms=0)
    audit = result.breakdown["leak_audit"]
    assert audit["impressions_checked"] == result.outcomes.height
    assert audit["violations"] == dict.fromkeys(CHECKS, 0)
    assert audit["consistent"] is True
    assert audit["with_behaviour"] > 0
    assert audit["min_behaviour_lead_s"] > 0
    for row in audit["sample"]:
        predicted = row["prediction_ts"]
        if row["newest_behaviour_ts"] is not None:
            assert row["newest_behaviour_ts"] < predicted
        if row["click_ts"] is not None:
            assert predicted <= row["click_ts"] <= row["label_final_ts"]
        # wait trains at the window end; fnw trains a negative at once.
        expected = row["label_final_ts"] if mode == "wait" else predicted
        assert row["first_trained_ts"] == expected


def test_every_mode_of_a_replay_is_audited(stream):
    result = run_replay(stream, ["ftrl"], None, modes=("wait", "fnw"), show_progress=False)
    modes = result.breakdown["leak_audit"]["modes"]
    assert set(modes) == {"wait", "fnw"}
    assert all(m["consistent"] for m in modes.values())


def test_behaviour_at_the_prediction_time_is_a_violation():
    audit = LeakAudit(WINDOW)
    audit.on_score(impression(iid="seen-now"), features(0.0, 5.0))
    audit.on_score(impression(iid="fine"), features(0.5, topk_ages_s=(2.0,)))
    assert audit.violations["behaviour_not_before_prediction"] == 1
    assert audit.examples["behaviour_not_before_prediction"] == ["seen-now"]


def test_the_newest_behaviour_may_come_from_the_same_category_search():
    audit = LeakAudit(WINDOW)
    imp = impression(ts=100_000)
    audit.on_score(imp, features(30.0, topk_ages_s=(-1.0,)))  # a "future" same-category click
    assert audit.violations["behaviour_not_before_prediction"] == 1


def test_learning_an_impression_never_scored_is_a_violation():
    audit = LeakAudit(WINDOW)
    imp = impression()
    audit.on_learn(release(imp, FNW_NEGATIVE, 0, imp.ts))
    assert audit.violations["learned_before_scored"] == 1


def test_training_on_a_click_before_it_happened_is_a_violation():
    audit = LeakAudit(WINDOW)
    imp = impression(ts=100_000)
    audit.on_score(imp, features())
    audit.on_learn(release(imp, FNW_NEGATIVE, 0, imp.ts))
    audit.on_learn(release(imp, FNW_POSITIVE, 1, final_ts=imp.ts + 10, click_ts=imp.ts + 500))
    assert audit.violations["trained_before_label_known"] == 1
    audit.on_learn(release(imp, FNW_POSITIVE, 1, final_ts=imp.ts + 500, click_ts=imp.ts + 500))
    assert audit.violations["trained_before_label_known"] == 1  # at the click: fine


def test_training_on_a_final_label_before_the_window_end_is_a_violation():
    audit = LeakAudit(WINDOW)
    imp = impression(ts=100_000)
    audit.on_score(imp, features())
    audit.on_learn(release(imp, FINAL, 0, imp.ts + WINDOW - 1))
    assert audit.violations["trained_before_label_known"] == 1


def test_a_click_before_its_impression_is_a_violation_and_the_row_is_kept():
    audit = LeakAudit(WINDOW)
    imp = impression(ts=100_000)
    audit.on_score(imp, features(3.0))
    final = release(imp, FINAL, 1, imp.ts + WINDOW, click_ts=imp.ts - 1)
    audit.on_learn(final)
    audit.on_outcome(Outcome(final, {"ftrl": 0.1}))
    assert audit.violations["label_known_before_prediction"] == 1
    summary = audit.summary()
    assert summary["consistent"] is False
    assert summary["examples"]["label_known_before_prediction"] == [imp.impression_id]
    assert summary["sample"][0]["newest_behaviour_ts"] == imp.ts - 3_000
    assert summary["sample"][0]["first_trained_ts"] == imp.ts + WINDOW


def test_sequence_lengths_count_impressions_per_length():
    audit = LeakAudit(WINDOW)
    for n, (recent, topk) in enumerate([(2, 0), (2, 1), (0, 0)]):
        imp = impression(ts=100_000 + n, iid=f"i{n}")
        audit.on_score(imp, features(*range(1, recent + 1), topk_ages_s=tuple(range(1, topk + 1))))
        final = release(imp, FINAL, 0, imp.ts + WINDOW)
        audit.on_outcome(Outcome(final, {}))
    assert audit.sequence_lengths() == {"recent": [1, 0, 2], "same_category": [2, 1]}
    assert audit.summary()["with_behaviour"] == 2
