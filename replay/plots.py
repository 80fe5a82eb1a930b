"""PNG plots of a replay report, drawn from ``report.json``'s own content.

Each plot is a function of the report document, so a report can be re-plotted
from its JSON alone. matplotlib draws with its file backend (Agg): no display is
needed, and nothing touches the global backend of a caller that has one.

* ``metric_over_time.png`` — exact AUC and calibration of every learner per time bucket;
* ``reliability.png`` — observed click rate against mean prediction per score bucket;
* ``label_delay.png`` — clicks by delay after their impression, with the window;
* ``sequence_lengths.png`` — impressions by the length of their behaviour sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import dates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from replay.breakdown import format_duration

__all__ = ["PLOTS", "figure", "write_plots"]

_DPI = 110


def figure(rows: int = 1, cols: int = 1, *, height: float = 4.2, width: float = 8.5,
           **kwargs: Any):
    """A figure on the file backend and its axes, ``rows`` × ``cols`` (``height`` per row,
    inches)."""
    fig = Figure(figsize=(width, height * rows), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False, **kwargs)


def metric_over_time(doc: Mapping[str, Any], fig_path: Path) -> bool:
    series = doc.get("over_time") or {}
    starts = series.get("start_ts") or []
    if not starts:
        return False
    width = series["width_ms"]
    # Mid-bucket times, as UTC datetimes: the axis then reads as dates.
    times = [datetime.fromtimestamp((s + width / 2) / 1000, tz=UTC) for s in starts]
    fig, axes = figure(3, 1, height=2.9, sharex=True)
    auc_ax, calib_ax, count_ax = axes[:, 0]
    for name, values in series["learners"].items():
        auc_ax.plot(times, _floats(values["auc"]), marker="o", markersize=3, label=name)
        calib_ax.plot(times, _floats(values["calibration"]), marker="o", markersize=3,
                      label=name)
    auc_ax.set_ylabel("AUC (exact)")
    auc_ax.set_title(f"Progressive validation per {format_duration(width)} of event time")
    auc_ax.legend(loc="best", fontsize="small")
    auc_ax.grid(alpha=0.3)
    calib_ax.axhline(1.0, color="grey", linewidth=1, linestyle="--")
    calib_ax.set_ylabel("calibration\n(predicted / observed)")
    calib_ax.grid(alpha=0.3)
    impressions = np.asarray(series["impressions"], dtype=float)
    clicks = np.asarray(series["clicks"], dtype=float)
    bar_width = width / 86_400_000 * 0.9  # matplotlib's date unit is one day
    count_ax.bar(times, impressions, width=bar_width, color="tab:grey", label="impressions")
    count_ax.bar(times, clicks, width=bar_width, color="tab:red", label="clicks")
    # Concise dates: a week of 6 h buckets would otherwise print overlapping full dates.
    locator = dates.AutoDateLocator()
    count_ax.xaxis.set_major_locator(locator)
    count_ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))
    count_ax.set_ylabel("samples per bucket")
    count_ax.set_xlabel("event time (UTC)")
    count_ax.legend(loc="best", fontsize="small")
    fig.savefig(fig_path)
    return True


def reliability(doc: Mapping[str, Any], fig_path: Path) -> bool:
    tables = {name: rows for name, rows in (doc.get("reliability") or {}).items() if rows}
    if not tables:
        return False
    fig, axes = figure(height=6.0)
    ax = axes[0, 0]
    values = [v for rows in tables.values() for r in rows
              for v in (r["mean_predicted"], r["observed"]) if v > 0]
    low, high = min(values) / 1.5, min(1.0, max(values) * 1.5)
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1,
            label="perfect calibration")
    for name, rows in tables.items():
        ax.plot([r["mean_predicted"] for r in rows], [r["observed"] for r in rows],
                marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("mean predicted click probability in the bucket")
    ax.set_ylabel("observed click rate in the bucket")
    n = max(len(rows) for rows in tables.values())
    ax.set_title(f"Reliability diagram ({n} score buckets of equal size, log scales)")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3, which="both")
    fig.savefig(fig_path)
    return True


def label_delay(doc: Mapping[str, Any], fig_path: Path) -> bool:
    delays = doc.get("label_delay") or {}
    counts = (delays.get("histogram") or {}).get("counts") or []
    if not sum(counts):
        return False
    edges = np.asarray(delays["histogram"]["edges_s"], dtype=float)
    # Empty bins past the longest delay would only stretch the axis.
    last = int(np.flatnonzero(counts)[-1]) + 1
    counts, edges = counts[:last], edges[: last + 1]
    fig, axes = figure()
    ax = axes[0, 0]
    # The first edge is 0: draw that bin from 0.1 s so it shows on the log axis.
    left = np.maximum(edges[:-1], 0.1)
    ax.bar(left, counts, width=edges[1:] - left, align="edge", color="tab:blue",
           edgecolor="white")
    ax.set_xscale("log")
    window_s = delays["window_s"]
    ax.axvline(window_s, color="tab:red", linestyle="--",
               label=f"attribution window ({format_duration(window_s * 1000)})")
    late = delays["after_window"] / delays["clicks"] if delays["clicks"] else 0.0
    ax.set_title(f"Click delay after the impression ({delays['clicks']:,} clicks, "
                 f"{late:.1%} after the window)")
    ax.set_xlabel("seconds from impression to click (log scale)")
    ax.set_ylabel("clicks")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(fig_path)
    return True


def sequence_lengths(doc: Mapping[str, Any], fig_path: Path) -> bool:
    lengths = doc.get("sequence_lengths") or {}
    if not any(lengths.values()):
        return False
    titles = {"recent": "recent behaviour sequence",
              "same_category": "same-category (lifelong) search"}
    fig, axes = figure(1, 2, height=3.8)
    for ax, (name, counts) in zip(axes[0], lengths.items(), strict=True):
        total = sum(counts) or 1
        ax.bar(range(len(counts)), [c / total for c in counts], color="tab:green")
        mean = sum(i * c for i, c in enumerate(counts)) / total
        ax.set_title(f"{titles.get(name, name)}\n(mean length {mean:.1f})")
        ax.set_xlabel("behaviours attached to the impression")
        ax.set_ylabel("share of impressions")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Sequence lengths at scoring time")
    fig.savefig(fig_path)
    return True


PLOTS: dict[str, Callable[[Mapping[str, Any], Path], bool]] = {
    "metric_over_time.png": metric_over_time,
    "reliability.png": reliability,
    "label_delay.png": label_delay,
    "sequence_lengths.png": sequence_lengths,
}


def write_plots(doc: Mapping[str, Any], out_dir: str | Path) -> list[str]:
    """Draw every plot the report has data for into ``out_dir``; return the file names."""
    out = Path(out_dir)
    return [name for name, draw in PLOTS.items() if draw(doc, out / name)]


def _floats(values: list[float | None]) -> list[float]:
    """JSON's nulls (undefined metrics) as NaN: matplotlib leaves a gap there."""
    return [np.nan if v is None else v for v in values]
