"""A replay's outcomes broken down for the report: by time, by score, by label delay.

Each function returns plain lists and numbers (what ``report.json`` holds and
:mod:`replay.plots` draws):

* :func:`over_time` — exact AUC, logloss and calibration of every learner per
  event-time bucket (the metric-over-time plot);
* :func:`reliability` — each learner's calibration per score bucket (the
  reliability diagram);
* :func:`label_delays` — how long after its impression each click came, against
  the attribution window (the label-delay histogram).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from replay import metrics

__all__ = ["DELAY_EDGES_S", "auto_bucket_ms", "format_duration", "label_delays", "over_time",
           "reliability"]

_NICE_WIDTHS_MS = tuple(m * 60_000 for m in (1, 5, 15, 30, 60, 180, 360, 720, 1440, 10080))
_TARGET_BUCKETS = 48
# Label-delay histogram edges in seconds: 1-2-5 steps, then minutes, hours and days.
DELAY_EDGES_S = (0, 1, 2, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 6 * 3600,
                 12 * 3600, 86_400, 2 * 86_400, 7 * 86_400, 30 * 86_400)


def auto_bucket_ms(span_ms: int) -> int:
    """The smallest round width (1 min … 1 week) that cuts ``span_ms`` into at most 48 buckets.

    >>> auto_bucket_ms(6 * 3_600_000), auto_bucket_ms(9 * 86_400_000)
    (900000, 21600000)
    """
    for width in _NICE_WIDTHS_MS:
        if span_ms / width <= _TARGET_BUCKETS:
            return width
    return _NICE_WIDTHS_MS[-1]


def format_duration(ms: float) -> str:
    """A duration in its largest whole unit, for titles and reports.

    >>> format_duration(21_600_000), format_duration(90_000), format_duration(250)
    ('6 h', '1.5 min', '250 ms')
    """
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= size:
            value = ms / size
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{ms:g} ms"


def over_time(outcomes: pl.DataFrame, learners: Sequence[str], width_ms: int) -> dict[str, Any]:
    """Per-learner exact AUC, logloss and calibration per bucket of impression time.

    Buckets are aligned to multiples of ``width_ms``; empty ones are left out. AUC is
    ``nan`` in a bucket of one class, calibration in one without clicks.
    """
    if outcomes.is_empty():
        return {"width_ms": width_ms, "start_ts": [], "impressions": [], "clicks": [],
                "learners": {name: {"auc": [], "logloss": [], "calibration": []}
                             for name in learners}}
    ts = outcomes["impression_ts"].to_numpy()
    y = outcomes["label"].to_numpy()
    label = pl.col("label").cast(pl.Float64)

    def logloss(score: str) -> pl.Expr:
        clipped = pl.col(score).clip(1e-15, 1 - 1e-15)  # as replay.metrics.logloss clips
        return -(label * clipped.log() + (1 - label) * (1 - clipped).log()).mean()

    # One pass over the buckets for every learner; same buckets as auc_over_time's.
    grouped = (outcomes.group_by((pl.col("impression_ts") // width_ms).alias("_bucket"))
               .agg(label.mean().alias("observed"),
                    *(logloss(f"score_{n}").alias(f"logloss_{n}") for n in learners),
                    *(pl.col(f"score_{n}").mean().alias(f"predicted_{n}") for n in learners))
               .sort("_bucket"))
    observed = grouped["observed"].to_numpy()
    per_learner: dict[str, dict[str, list[float]]] = {}
    buckets: list[metrics.TimeBucketAUC] = []
    for name in learners:
        buckets = metrics.auc_over_time(ts, y, outcomes[f"score_{name}"].to_numpy(), width_ms)
        with np.errstate(divide="ignore", invalid="ignore"):
            calib = np.where(observed > 0, grouped[f"predicted_{name}"].to_numpy() / observed,
                             np.nan)
        per_learner[name] = {"auc": [b.auc for b in buckets],
                             "logloss": grouped[f"logloss_{name}"].to_list(),
                             "calibration": calib.tolist()}
    return {"width_ms": width_ms, "start_ts": [b.start for b in buckets],
            "impressions": [b.count for b in buckets], "clicks": [b.clicks for b in buckets],
            "learners": per_learner}


def reliability(outcomes: pl.DataFrame, learners: Sequence[str],
                n_buckets: int = 10) -> dict[str, list[dict[str, float]]]:
    """Each learner's reliability table (:func:`replay.metrics.calibration_buckets`, quantile
    buckets); an empty list when there is nothing to bucket."""
    y = outcomes["label"].to_numpy()
    if len(y) == 0:
        return {name: [] for name in learners}
    return {name: [{"low": b.low, "high": b.high, "count": b.count,
                    "mean_predicted": b.mean_predicted, "observed": b.observed}
                   for b in metrics.calibration_buckets(y, outcomes[f"score_{name}"].to_numpy(),
                                                        n_buckets)]
            for name in learners}


def label_delays(impressions: pl.DataFrame, clicks: pl.DataFrame,
                 window_ms: int) -> dict[str, Any]:
    """Delay from impression to click of every click whose impression is in the input.

    The first impression of a duplicated id is the one a click joins (as in the
    joiner). Clicks before their impression and after the window are counted apart:
    the joiner does not attach them as labels.
    """
    shown = impressions.select("impression_id", pl.col("ts").alias("shown_ts")).unique(
        "impression_id", keep="first", maintain_order=True)
    joined = clicks.select("impression_id", "ts").join(shown, on="impression_id", how="inner")
    delay_s = ((joined["ts"] - joined["shown_ts"]) / 1000).to_numpy()
    window_s = window_ms / 1000
    after = delay_s[delay_s >= 0]
    edges = list(DELAY_EDGES_S)
    if after.size and after.max() >= edges[-1]:
        edges.append(math.ceil(float(after.max())) + 1)
    counts, _ = np.histogram(after, bins=edges)
    quantiles = ({f"p{q}": float(np.quantile(after, q / 100)) for q in (50, 90, 99)}
                 if after.size else {})
    return {
        "clicks": int(delay_s.size),
        "before_impression": int((delay_s < 0).sum()),
        "within_window": int(((delay_s >= 0) & (delay_s <= window_s)).sum()),
        "after_window": int((delay_s > window_s).sum()),
        "window_s": window_s,
        "quantiles_s": quantiles,
        "histogram": {"edges_s": edges, "counts": counts.tolist()},
    }
