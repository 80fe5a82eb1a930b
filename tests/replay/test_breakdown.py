from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from matplotlib.image import imread
from sklearn.metrics import log_loss, roc_auc_score

from replay.breakdown import DELAY_EDGES_S, label_delays, over_time, reliability
from replay.metrics import calibration_buckets
from replay.plots import PLOTS
from replay.report import METRIC_KEYS, write_report

HOUR = 3_600_000


def outcomes(n: int = 3000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.01, 0.6, n)
    return pl.DataFrame({
        "impression_ts": np.sort(rng.integers(0, 5 * HOUR, n)),
        "label": (rng.random(n) < p).astype(np.int8),
        "user_id": rng.integers(0, 50, n).astype(str),
        "score_a": np.round(p, 2),  # ties
        "score_b": rng.uniform(0.01, 0.6, n),
    })


def test_over_time_gives_sklearns_auc_and_logloss_per_bucket():
    frame = outcomes()
    series = over_time(frame, ["a", "b"], HOUR)
    assert series["start_ts"] == [0, HOUR, 2 * HOUR, 3 * HOUR, 4 * HOUR]
    assert sum(series["impressions"]) == frame.height
    for i, start in enumerate(series["start_ts"]):
        part = frame.filter((pl.col("impression_ts") >= start)
                            & (pl.col("impression_ts") < start + HOUR))
        y = part["label"].to_numpy()
        assert series["clicks"][i] == y.sum()
        for name in ("a", "b"):
            p = part[f"score_{name}"].to_numpy()
            values = series["learners"][name]
            assert values["auc"][i] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
            assert values["logloss"][i] == pytest.approx(log_loss(y, p), abs=1e-12)
            assert values["calibration"][i] == pytest.approx(p.mean() / y.mean(), abs=1e-12)


def test_over_time_leaves_auc_and_calibration_undefined_in_a_bucket_without_clicks():
    frame = pl.DataFrame({"impression_ts": [0, 1, HOUR, HOUR + 1], "label": [0, 1, 0, 0],
                          "score_a": [0.1, 0.2, 0.3, 0.4]}, schema_overrides={"label": pl.Int8})
    values = over_time(frame, ["a"], HOUR)["learners"]["a"]
    assert values["auc"][0] == 1.0
    assert math.isnan(values["auc"][1])
    assert math.isnan(values["calibration"][1])
    assert values["logloss"][1] == pytest.approx(log_loss([0, 0], [0.3, 0.4], labels=[0, 1]))


def test_reliability_is_the_calibration_table_of_each_learner():
    frame = outcomes()
    tables = reliability(frame, ["a"], n_buckets=5)
    expected = calibration_buckets(frame["label"], frame["score_a"], 5)
    assert [(r["low"], r["count"], r["observed"]) for r in tables["a"]] == \
        [(b.low, b.count, b.observed) for b in expected]


def test_label_delays_count_clicks_by_delay_against_the_window():
    impressions = pl.DataFrame({"impression_id": ["i1", "i2", "i3", "i1"],
                                "ts": [0, 10_000, 20_000, 50_000]})
    clicks = pl.DataFrame({
        "impression_id": ["i1", "i2", "i3", "gone"],
        # i1: 3 s after its first showing; i2: after a 60 s window; i3: before its impression.
        "ts": [3_000, 10_000 + 120_000, 19_000, 5],
    })
    delays = label_delays(impressions, clicks, window_ms=60_000)
    assert (delays["clicks"], delays["within_window"], delays["after_window"],
            delays["before_impression"]) == (3, 1, 1, 1)
    counts = dict(zip(delays["histogram"]["edges_s"], delays["histogram"]["counts"],
                      strict=False))
    assert counts[2] == 1 and counts[120] == 1  # bins [2 s, 5 s) and [120 s, 300 s)
    assert sum(delays["histogram"]["counts"]) == 2
    assert delays["quantiles_s"]["p50"] == pytest.approx(61.5)


def test_label_delays_extend_the_last_bin_to_the_longest_delay():
    impressions = pl.DataFrame({"impression_id": ["i1"], "ts": [0]})
    clicks = pl.DataFrame({"impression_id": ["i1"], "ts": [40 * 86_400_000]})
    edges = label_delays(impressions, clicks, 60_000)["histogram"]["edges_s"]
    assert edges[:-1] == list(DELAY_EDGES_S) and edges[-1] > 40 * 86_400


def breakdown_of(frame: pl.DataFrame) -> dict:
    impressions = pl.DataFrame({"impression_id": ["i1", "i2"], "ts": [0, 0]})
    clicks = pl.DataFrame({"impression_id": ["i1"], "ts": [30_000]})
    return {
        "over_time": over_time(frame, ["a", "b"], HOUR),
        "reliability": reliability(frame, ["a", "b"]),
        "label_delay": label_delays(impressions, clicks, 60_000),
        "sequence_lengths": {"recent": [5, 3, 1], "same_category": [8, 1]},
        "leak_audit": {"impressions_checked": 9, "with_behaviour": 4,
                       "violations": {"learned_before_scored": 0}, "consistent": True,
                       "min_behaviour_lead_s": 1.0, "median_behaviour_lead_s": 2.0,
                       "min_label_final_after_s": 60.0, "sample": []},
    }


def test_a_report_with_a_breakdown_draws_every_plot_and_links_it(tmp_path):
    frame = outcomes()
    metrics = {**dict.fromkeys(METRIC_KEYS, 0.7), "samples": frame.height,
               "throughput_eps": 1e4}
    write_report(tmp_path, {"impressions": frame.height}, {"a": metrics, "b": metrics},
                 title="t", breakdown=breakdown_of(frame))
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["plots"] == list(PLOTS)
    markdown = (tmp_path / "report.md").read_text()
    for name in PLOTS:
        image = imread(tmp_path / name)
        assert image.shape[0] > 300 and image.shape[1] > 600, name
        assert image.std() > 0.05, f"{name} is blank"
        assert f"]({name})" in markdown
    assert "**consistent**" in markdown


def test_a_report_leaves_out_plots_without_data_and_writes_nan_as_null(tmp_path):
    frame = outcomes().with_columns(pl.lit(0, pl.Int8).alias("label"))  # no click at all
    breakdown = breakdown_of(frame)
    breakdown["label_delay"] = label_delays(pl.DataFrame({"impression_id": ["i"], "ts": [0]}),
                                            pl.DataFrame({"impression_id": [], "ts": []},
                                                         schema={"impression_id": pl.Utf8,
                                                                 "ts": pl.Int64}), 60_000)
    undefined = {**dict.fromkeys(METRIC_KEYS, math.nan), "samples": 3000,
                 "throughput_eps": 1e4}
    write_report(tmp_path, {}, {"a": undefined}, title="t", breakdown=breakdown)
    doc = json.loads((tmp_path / "report.json").read_text())
    assert "label_delay.png" not in doc["plots"]
    assert not (tmp_path / "label_delay.png").exists()
    assert doc["over_time"]["learners"]["a"]["auc"][0] is None
    assert "## Label delay" not in (tmp_path / "report.md").read_text()
