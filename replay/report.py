"""Progressive-validation outcomes → per-learner metrics → ``report.json`` and ``report.md``.

Every labelled sample is scored once, with the score its learner gave at the
impression's event time (progressive validation, Blum et al. 1999), so the
metrics are out-of-sample without a held-out split.

``report.json`` follows design.md::

    {"events": {...counts...},
     "learners": {"ftrl": {"auc", "gauc", "logloss", "ne", "calibration", "ndcg@10",
                           "samples", "throughput_eps"}, ...}}

``gauc_clicks`` is GAUC with users weighted by their clicks (RecBole's definition)
next to the DIN paper's impression-weighted ``gauc``. A replay's report adds the
breakdowns of :mod:`replay.breakdown` (``over_time``, ``reliability``,
``label_delay``), ``sequence_lengths`` and the ``leak_audit`` of
:mod:`replay.audit`, with their PNG plots (:mod:`replay.plots`) listed in ``plots``.

``throughput_eps`` is impressions scored per second of the learner's own time
(prediction plus learning), so it does not depend on input parsing or Kafka.

Metrics skip a warm-up (by default the first attribution window): no label can be
final before the first window closes, so every learner scores those impressions
with its untrained initial model. Counting them measures the initial weights, not
the learner; the report says how many samples the warm-up held out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.table import Table

from replay import metrics
from replay.breakdown import format_duration
from replay.engine import Outcome
from replay.plots import write_plots

__all__ = [
    "OutcomeRecorder",
    "after_warmup",
    "json_safe",
    "learner_metrics",
    "learner_table",
    "modes_table",
    "score_metrics",
    "write_report",
]

METRIC_KEYS = ("auc", "gauc", "gauc_clicks", "logloss", "ne", "calibration", "ndcg@10")


@dataclass
class OutcomeRecorder:
    """Keeps every outcome in columns: an ``on_outcome`` callback of the engine."""

    learner_names: tuple[str, ...]
    _columns: dict[str, list[Any]] = field(init=False)

    def __post_init__(self) -> None:
        self._columns = {
            name: []
            for name in (
                "impression_id", "user_id", "request_id", "position", "label", "impression_ts",
                "final_ts",
            )
        }
        for learner in self.learner_names:
            self._columns[f"score_{learner}"] = []

    def __call__(self, outcome: Outcome) -> None:
        release, cols = outcome.release, self._columns
        imp = release.impression
        cols["impression_id"].append(imp.impression_id)
        cols["user_id"].append(imp.user_id)
        cols["request_id"].append(imp.request_id)
        cols["position"].append(imp.position)
        cols["label"].append(release.label)
        cols["impression_ts"].append(imp.ts)
        cols["final_ts"].append(release.final_ts)
        for learner in self.learner_names:
            cols[f"score_{learner}"].append(outcome.scores[learner])

    def __len__(self) -> int:
        return len(self._columns["label"])

    def to_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            self._columns,
            schema_overrides={"label": pl.Int8, "position": pl.Int32, **{
                f"score_{n}": pl.Float64 for n in self.learner_names}},
        )


def after_warmup(outcomes: pl.DataFrame, warmup_ms: int) -> pl.DataFrame:
    """Outcomes of impressions at least ``warmup_ms`` after the first impression."""
    if warmup_ms <= 0 or outcomes.is_empty():
        return outcomes
    start = outcomes["impression_ts"].min()
    return outcomes.filter(pl.col("impression_ts") >= start + warmup_ms)


def score_metrics(outcomes: pl.DataFrame, score_column: str) -> dict[str, float]:
    """Report metrics of one score column over the recorded outcomes (NaN where undefined)."""
    y = outcomes["label"].to_numpy()
    p = outcomes[score_column].to_numpy()
    users = outcomes["user_id"].to_numpy()
    requests = outcomes["request_id"].to_numpy()
    computed = {
        "auc": lambda: metrics.auc(y, p),
        "gauc": lambda: metrics.gauc(users, y, p),
        "gauc_clicks": lambda: metrics.gauc(users, y, p, weighting="clicks"),
        "logloss": lambda: metrics.logloss(y, p),
        "ne": lambda: metrics.normalized_entropy(y, p),
        "calibration": lambda: metrics.calibration(y, p),
        "ndcg@10": lambda: metrics.ndcg_at_k(requests, y, p, 10),
    }
    out: dict[str, float] = {}
    for key, compute in computed.items():
        try:
            out[key] = compute()
        except metrics.MetricError:  # e.g. a stream with no click at all
            out[key] = math.nan
    out["samples"] = len(y)
    return out


def learner_metrics(
    outcomes: pl.DataFrame, learner: str, *, samples_seen: int, seconds: float
) -> dict[str, float]:
    """:func:`score_metrics` of a learner's scores plus its throughput.

    Throughput counts every sample the learner scored and learned (``samples_seen``,
    warm-up included) over the seconds spent inside it.
    """
    out = score_metrics(outcomes, f"score_{learner}")
    out["throughput_eps"] = samples_seen / seconds if seconds > 0 else math.nan
    return out


def write_report(
    out_dir: str | Path,
    events: Mapping[str, int],
    learners: Mapping[str, Mapping[str, float]],
    *,
    title: str,
    details: Mapping[str, Any] | None = None,
    modes: Mapping[str, Mapping[str, Any]] | None = None,
    breakdown: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.json`` and ``report.md`` into ``out_dir``; return the folder.

    ``modes`` (delayed-feedback mode → {"learners": …, "freshness": …}) adds the
    comparison of training modes on the same stream. ``breakdown`` adds top-level
    sections (``over_time``, ``reliability``, ``label_delay``, ``sequence_lengths``,
    ``leak_audit``), drawn as PNG plots next to the report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"events": dict(events), "learners": {k: dict(v) for k, v in
                                                                 learners.items()}}
    if details:
        doc["details"] = dict(details)
    if modes:
        doc["delayed_feedback"] = {m: dict(v) for m, v in modes.items()}
    # NaN is not JSON: undefined metrics are written as null.
    doc = json_safe({**doc, **(breakdown or {})})
    if breakdown:
        doc["plots"] = write_plots(doc, out)
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(
        title, events, learners, details or {}, modes or {},
        _breakdown_markdown(doc) if breakdown else []))
    return out


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars as Python ones and non-finite floats as None (JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def format_metric(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"


def learner_table(learners: Mapping[str, Mapping[str, float]], title: str) -> Table:
    """The per-learner metrics as a table for the terminal."""
    # One column per learner: metric names are long, learner lists are short.
    table = Table(title=title)
    table.add_column("metric")
    for name in learners:
        table.add_column(name, justify="right")
    for key in (*METRIC_KEYS, "samples", "throughput_eps"):
        table.add_row(key, *(format_metric(values[key]) for values in learners.values()))
    return table


# Delays in event-time seconds after the impression: until its first training sample,
# and until a click on it reaches the learners.
_MODE_COLUMNS = ("mode", "learner", "first train s", "click train s", "auc", "logloss", "ne",
                 "calib.")


def _mode_rows(modes: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for mode, result in modes.items():
        fresh = result["freshness"]
        for name, m in result["learners"].items():
            rows.append([mode, name, f"{fresh['first_training_delay_s']:.1f}",
                         f"{fresh['positive_training_delay_s']:.1f}",
                         *(format_metric(m[k]) for k in ("auc", "logloss", "ne", "calibration"))])
    return rows


def modes_table(modes: Mapping[str, Mapping[str, Any]]) -> Table:
    """Delayed-feedback modes side by side: freshness and accuracy, for the terminal."""
    table = Table(title="delayed feedback on the same stream (replay)")
    for n, column in enumerate(_MODE_COLUMNS):
        table.add_column(column, justify="left" if n < 2 else "right")
    for row in _mode_rows(modes):
        table.add_row(*row)
    return table


def _modes_markdown(modes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Freshness against accuracy: each training mode's delays and its learners' metrics."""
    lines = ["", "## Delayed feedback: freshness against accuracy", "",
             "`wait` trains on each sample once its window has closed (right labels, delayed "
             "by the window); `fnw` trains on a negative at impression time and again on a "
             "positive when the click comes, with fake-negative weights. Both are evaluated "
             "on the final labels.", "",
             "| " + " | ".join(_MODE_COLUMNS) + " |", "|---|---|" + "---:|" * 6]
    lines += ["| " + " | ".join(row) + " |" for row in _mode_rows(modes)]
    return lines


def _markdown(
    title: str,
    events: Mapping[str, int],
    learners: Mapping[str, Mapping[str, float]],
    details: Mapping[str, Any],
    modes: Mapping[str, Mapping[str, Any]],
    breakdown: list[str],
) -> str:
    keys = (*METRIC_KEYS, "samples", "throughput_eps")
    lines = [f"# {title}", "", "## Learners (progressive validation)", ""]
    lines.append("| learner | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---:|" * len(keys))
    for name, values in learners.items():
        lines.append(f"| {name} | " + " | ".join(format_metric(values[k]) for k in keys) + " |")
    lines += [
        "",
        "AUC is exact (rank-based, ties count one half). GAUC is the impression-weighted mean",
        "of per-user AUCs over users with both clicks and non-clicks (DIN paper); gauc_clicks",
        "weights them by clicks instead (RecBole). NE is logloss divided by",
        "the entropy of the observed CTR (below 1 beats predicting the base rate). Calibration",
        "is mean predicted CTR over observed CTR. NDCG@10 is per request, requests without a",
        "click skipped. throughput_eps is impressions per second of the learner's own time.",
        "Impressions of the warm-up (see Run) are not scored: no label is final before the",
        "first window closes, so every learner meets them with its untrained initial model.",
    ]
    if modes:
        lines += _modes_markdown(modes)
    lines += breakdown
    lines += [
        "",
        "## Events",
        "",
        "| count | value |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:,} |" for k, v in events.items()]
    if details:
        lines += ["", "## Run", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in details.items()]
    return "\n".join(lines) + "\n"


_CHECK_TEXT = {
    "behaviour_not_before_prediction": "newest behaviour in the features strictly before the "
                                       "prediction",
    "label_known_before_prediction": "click and final label at or after the prediction (final "
                                     "at the window end)",
    "learned_before_scored": "every sample scored before any learner trained on it",
    "trained_before_label_known": "trained on a label only once it was known (a positive at or "
                                  "after its click, a final sample at the window end)",
}


def _utc(ts: int | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _breakdown_markdown(doc: Mapping[str, Any]) -> list[str]:
    """The report's breakdown sections (plots, reliability, leak audit, delays, lengths)."""
    plots = set(doc.get("plots", ()))
    lines: list[str] = []
    series = doc.get("over_time")
    if series and series["start_ts"]:
        lines += ["", "## Metrics over time", "",
                  "Exact AUC and calibration of each learner per "
                  f"{format_duration(series['width_ms'])} of impression time "
                  f"({len(series['start_ts'])} buckets; "
                  "`over_time` in report.json has logloss too)."]
        if "metric_over_time.png" in plots:
            lines += ["", "![metrics over time](metric_over_time.png)"]
    tables = doc.get("reliability") or {}
    if any(tables.values()):
        lines += ["", "## Calibration per score bucket", "",
                  "Buckets of equal size by score (quantiles); observed click rate against "
                  "mean prediction.", ""]
        lines += ["| learner | bucket | scores | samples | mean predicted | observed |",
                  "|---|---:|---|---:|---:|---:|"]
        for name, rows in tables.items():
            for i, r in enumerate(rows):
                lines.append(f"| {name} | {i + 1} | [{r['low']:.4f}, {r['high']:.4f}) | "
                             f"{r['count']:,} | {r['mean_predicted']:.4f} | "
                             f"{r['observed']:.4f} |")
        if "reliability.png" in plots:
            lines += ["", "![reliability diagram](reliability.png)"]
    audit = doc.get("leak_audit")
    if audit:
        verdict = ("**consistent**: no impression saw the future" if audit["consistent"]
                   else "**VIOLATIONS FOUND**: the replay leaked; see the counts")
        lines += ["", "## Leak audit", "",
                  f"Every one of {audit['impressions_checked']:,} scored impressions checked "
                  f"({audit['with_behaviour']:,} with behaviour in their features): {verdict}.",
                  "", "| check | violations |", "|---|---:|"]
        lines += [f"| {_CHECK_TEXT[k]} | {v:,} |" for k, v in audit["violations"].items()]
        for check, ids in audit.get("examples", {}).items():
            lines.append(f"\nFirst offending impressions ({check}): {', '.join(ids)}")
        if audit["min_behaviour_lead_s"] is not None:
            lead, median = audit["min_behaviour_lead_s"], audit["median_behaviour_lead_s"]
            lines += ["", f"The newest behaviour came at least {lead:.3f} s before its "
                          f"prediction (median {median:,.0f} s); labels were final at least "
                          f"{audit['min_label_final_after_s']:,.0f} s after it."]
        lines += ["", "A sample of impressions (UTC):", "",
                  "| impression | newest behaviour | prediction | click | label final | "
                  "first trained |", "|---|---|---|---|---|---|"]
        for row in audit["sample"]:
            lines.append(f"| {row['impression_id']} | " + " | ".join(_utc(row[k]) for k in (
                "newest_behaviour_ts", "prediction_ts", "click_ts", "label_final_ts",
                "first_trained_ts")) + " |")
    delays = doc.get("label_delay")
    if delays and delays["clicks"]:
        q = delays["quantiles_s"]
        lines += ["", "## Label delay", "",
                  f"{delays['clicks']:,} clicks with their impression in the input: "
                  f"{delays['within_window']:,} within the {delays['window_s']:,.0f} s window, "
                  f"{delays['after_window']:,} after it (counted late, not joined), "
                  f"{delays['before_impression']:,} before their impression. Delay median "
                  f"{q.get('p50', math.nan):,.1f} s, p90 {q.get('p90', math.nan):,.1f} s, "
                  f"p99 {q.get('p99', math.nan):,.1f} s."]
        if "label_delay.png" in plots:
            lines += ["", "![label delay](label_delay.png)"]
    lengths = doc.get("sequence_lengths") or {}
    if any(lengths.values()):
        lines += ["", "## Sequence lengths", "", "Behaviours attached to each impression "
                  "when it was scored.", "", "| sequence | mean | empty | longest (share) |",
                  "|---|---:|---:|---:|"]
        for name, counts in lengths.items():
            total = sum(counts) or 1
            mean = sum(i * c for i, c in enumerate(counts)) / total
            lines.append(f"| {name} | {mean:.2f} | {counts[0] / total:.1%} | "
                         f"{len(counts) - 1} ({counts[-1] / total:.1%}) |")
        if "sequence_lengths.png" in plots:
            lines += ["", "![sequence lengths](sequence_lengths.png)"]
    return lines
