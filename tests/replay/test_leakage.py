"""End-to-end leak test: labels that only the future knows must stay unpredictable.

Every (user, item) pair is shown twice, one second apart, and both showings share
one random label; the clicks of a clicked pair come 30 s after each showing. A
system that let a click (or a label) reach features or training before it
happened would predict the second showing from the first one's click and push the
AUC above 0.5. With 20,000 impressions the AUC of a blind model has a standard
deviation of about 0.004, so 0.5 ± 0.02 is five of them.

The control moves the clicks to 0.5 s after each showing — before the second one —
so the first click is legitimately known when the second is scored: the same
replay must then exploit it.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from learners import LEARNERS
from replay.run import run_replay

PAIRS = 10_000
# Trees early and often, so the hybrid serves from them for most of the 20,000 samples.
EARLY_TREES = {"gbdt_lr": {"min_samples": 2_000, "refit_every": 3_000, "adopt_after": 500,
                           "shadow_window": 500, "shadow_max": 1_000}}


def write_pairs(folder, click_delay_ms: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 300, PAIRS)
    items = rng.permutation(PAIRS)  # each pair has its own item
    labels = rng.random(PAIRS) < 0.5
    t0 = 1_700_000_000_000
    imps, clicks = [], []
    for p in range(PAIRS):
        for show in range(2):
            ts = t0 + p * 3_000 + show * 1_000
            iid = f"p{p}-{show}"
            imps.append({"impression_id": iid, "request_id": iid, "user_id": f"u{users[p]}",
                         "item_id": f"it{items[p]}", "category_id": f"c{items[p] % 10}",
                         "position": 0, "ts": ts})
            if labels[p]:
                clicks.append({"impression_id": iid, "user_id": f"u{users[p]}",
                               "ts": ts + click_delay_ms})
    folder.mkdir(parents=True)
    pl.DataFrame(imps).write_parquet(folder / "impressions.parquet")
    pl.DataFrame(clicks).write_parquet(folder / "clicks.parquet")


@pytest.mark.parametrize("mode", ["wait", "fnw"])
def test_future_clicks_do_not_leak_auc_stays_at_chance(tmp_path, mode):
    write_pairs(tmp_path / "late", click_delay_ms=30_000)
    result = run_replay(tmp_path / "late", list(LEARNERS), None, modes=(mode,),
                        learner_params=EARLY_TREES, show_progress=False)
    for name in LEARNERS:  # every registered learner, in the same pass
        assert result.learners[name]["samples"] > 15_000, name
        assert result.learners[name]["auc"] == pytest.approx(0.5, abs=0.02), name


def test_clicks_known_before_the_second_showing_are_exploited(tmp_path):
    write_pairs(tmp_path / "early", click_delay_ms=500)
    result = run_replay(tmp_path / "early", list(LEARNERS), None, learner_params=EARLY_TREES,
                        show_progress=False)
    for name in LEARNERS:
        assert result.learners[name]["auc"] > 0.6, name
