"""``make bench``: measure, then rewrite docs/BENCHMARKS.md with the figures.

Every figure is the median of several runs in this one process, and every speed
is also given as a ratio against a baseline run alongside it (river, scikit-learn),
because absolute numbers on shared machines drift from run to run.

    .venv/bin/python bench/run_all.py [--quick] [--only SECTION[,SECTION…]]

``--only`` measures the named sections and puts them in place of the same sections of
the existing file, marking them with the time of that run; the rest is kept.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import learners  # noqa: E402
from features.importers import import_dataset  # noqa: E402
from replay import metrics  # noqa: E402
from replay.run import run_replay  # noqa: E402
from replay.synthetic import generate, write_stream  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import joiner as joiner_bench  # noqa: E402
import quality as quality_bench  # noqa: E402


def _load(name: str, path: Path):
    """Import a bench script by path: ``bench/learners.py`` would shadow the package."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


learners_bench = _load("bench_learners", Path(__file__).parent / "learners.py")
din_bench = _load("bench_din", Path(__file__).parent / "din.py")
soak_bench = _load("bench_soak", Path(__file__).parent / "soak.py")
service_bench = _load("bench_service", Path(__file__).parent / "service.py")
checkpoint_bench = _load("bench_checkpoint", Path(__file__).parent / "checkpoint.py")
recovery_bench = _load("bench_recovery", Path(__file__).parent / "recovery.py")
interleaving_bench = _load("bench_interleaving", Path(__file__).parent / "interleaving.py")


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_generator(runs: int, n_events: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        seconds = median_time(lambda: write_stream(generate(n_events, seed=1), Path(tmp)), runs)
    return [
        "## Synthetic stream generator",
        "",
        f"`generate({n_events:,}) + write_stream` (three Parquet files): "
        f"**{seconds:.2f} s** median of {runs} runs ({n_events / seconds:,.0f} events/s).",
        "Target: ≥ 1M events in well under a minute.",
        "",
    ]


# Captured before bench/quality.py registers its ablations in the same registry.
ALL_LEARNERS = tuple(learners.LEARNERS)


def _time_prefix(src: Path, out: Path, max_events: int) -> int:
    """Write to ``out`` the replay folder ``src`` cut to its first ``max_events`` events by
    event time (the events at the cut's timestamp left out too, so a click never loses
    its impression); return how many events ``src`` has."""
    impressions = pl.read_parquet(src / "impressions.parquet")
    clicks = pl.read_parquet(src / "clicks.parquet")
    ts = pl.concat([impressions["ts"], clicks["ts"]]).sort()
    if len(ts) > max_events:
        cut = ts[max_events]
        impressions = impressions.filter(pl.col("ts") < cut)
        clicks = clicks.filter(pl.col("ts") < cut)
    out.mkdir(parents=True)
    impressions.write_parquet(out / "impressions.parquet")
    clicks.write_parquet(out / "clicks.parquet")
    return len(ts)


def bench_replay(runs: int, data: Path, max_events: int) -> list[str]:
    """Replay throughput, FTRL alone and all learners in one pass, on the synthetic stream
    and the real slices bench/quality.py imports, each cut to ``max_events`` events."""
    sets = {"ftrl": ["ftrl"], ", ".join(ALL_LEARNERS): list(ALL_LEARNERS)}
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"synthetic": Path(tmp) / "synthetic"}
        full = {"synthetic": _time_prefix(data, folders["synthetic"], max_events)}
        for name, (dataset, source) in quality_bench.REAL.items():
            if source.exists():
                import_dataset(dataset, source, Path(tmp) / f"{dataset}-full")
                folders[name] = Path(tmp) / dataset
                full[name] = _time_prefix(Path(tmp) / f"{dataset}-full", folders[name],
                                          max_events)
        for name, folder in folders.items():
            for label, names in sets.items():
                print(f"bench: replay: {name}, {label}", file=sys.stderr, flush=True)
                walls, per_learner, shares = [], {k: [] for k in names}, []
                for _ in range(runs):
                    start = time.perf_counter()
                    result = run_replay(folder, names, None, show_progress=False,
                                        modes=("wait",))
                    walls.append(time.perf_counter() - start)
                    for k in names:
                        per_learner[k].append(result.learners[k]["throughput_eps"])
                    # The learners' own seconds: samples scored over their throughput.
                    shares.append(sum(result.outcomes.height / result.learners[k][
                        "throughput_eps"] for k in names) / walls[-1])
                events = result.events["impressions_read"] + result.events["clicks_read"]
                rows.append((name, events, full[name], label, walls, per_learner, shares))
    lines = [
        "## Replay end to end",
        "",
        f"`run_replay(folder, learners, None, modes=(\"wait\",))`, the code path of "
        f"`streamctr replay` (read + validate Parquet, event-time merge, join, every "
        f"learner's predict + learn, metrics), FTRL alone and all learners "
        f"(`learners.LEARNERS`) in one pass. The synthetic stream and the MIND and Taobao "
        f"slices imported as `bench/quality.py` imports them, each cut to its first "
        f"{max_events:,} events by event time (at most: events at the cut's time stay "
        f"out; the events column says of how many). "
        + (f"Median of {runs} runs in one process" if runs > 1 else "One run") +
        " (the first run of a process also loads or compiles the numba kernels).",
        "",
        "| dataset | events | learners | wall s (min–max) | events/s | per-learner "
        "throughput (impressions/s) | learners' share of wall |",
        "|---|---:|---|---:|---:|---|---:|",
    ]
    for name, events, of, label, walls, per_learner, shares in rows:
        wall = statistics.median(walls)
        each = " · ".join(f"{k} {statistics.median(v):,.0f}" for k, v in per_learner.items())
        lines.append(f"| {name} | {events:,} of {of:,} | {label} | {wall:.1f} ({min(walls):.1f}–"
                     f"{max(walls):.1f}) | {events / wall:,.0f} | {each} | "
                     f"{statistics.median(shares):.0%} |")
    lines += [
        "",
        "events/s is impressions + clicks over the replay's wall time. A learner's "
        "throughput is the impressions it scored and learned per second of its own time "
        "(`throughput_eps` of the report); the share column is the learners' summed own "
        "time over the wall time, the rest being reading, the event-time merge, the join "
        "and the metrics.",
        "",
        f"Noise: {os.cpu_count()} cores shared with other work (load average "
        f"{load_before:.1f} when this "
        f"section started, {os.getloadavg()[0]:.1f} when it ended); the min–max spread "
        "of the wall times shows how much a run moved.",
        "",
    ]
    return lines


def bench_auc(runs: int, n: int) -> list[str]:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = (rng.random(n) < 0.05).astype(np.int8)
    p = np.round(rng.random(n), 4)  # rounded: many ties, as real scores have
    ours = median_time(lambda: metrics.auc(y, p), runs)
    ref = median_time(lambda: roc_auc_score(y, p), runs)
    return [
        "## Exact AUC vs scikit-learn",
        "",
        f"{n:,} rows, 5% positives, scores rounded to 4 decimals (ties), median of {runs} runs:",
        "",
        "| implementation | seconds |",
        "|---|---:|",
        f"| `replay.metrics.auc` | {ours:.2f} |",
        f"| `sklearn.metrics.roc_auc_score` | {ref:.2f} |",
        "",
        f"Ratio: **{ref / ours:.2f}×** scikit-learn's speed; values equal to 1e-12 (tested).",
        "",
    ]


SECTIONS = ("generator", "learners", "quality", "din", "replay", "service", "checkpoint",
            "recovery", "auc", "joiner", "soak", "interleaving")


def _split(lines: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The lines before the first ``## `` heading, and each section by its heading."""
    head: list[str] = []
    sections: dict[str, list[str]] = {}
    current = head
    for line in lines:
        if line.startswith("## "):
            current = sections.setdefault(line, [])
        current.append(line)
    return head, sections


def splice(document: str, new_lines: list[str], stamp: str) -> str:
    """``document`` with its sections replaced by the same-titled ones of ``new_lines``
    (new titles appended), each new section stamped under its heading."""
    head, old = _split(document.splitlines())
    _, new = _split(new_lines)
    for title, lines in new.items():
        old[title] = [lines[0], "", stamp, *lines[1:]]
    # Every section ends with a blank line, so the next heading stands apart.
    body = [line for lines in old.values()
            for line in (lines if lines[-1] == "" else [*lines, ""])]
    return "\n".join(head + body).rstrip("\n") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each")
    parser.add_argument("--only", type=lambda t: set(t.split(",")), default=None,
                        help="comma-separated sections to measure (" + ", ".join(SECTIONS) + ")")
    args = parser.parse_args()
    if args.only and not args.only <= set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(args.only - set(SECTIONS)))}")
    runs = 1 if args.quick else 3
    scale = 10 if args.quick else 1
    sections: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "stream"
        replay_events = 200_000 // scale  # the service section's stream
        write_stream(generate(replay_events, seed=0), data)
        # Recovery restarts the service with every learner: a shorter stream keeps it minutes.
        recovery_events = 100_000 // scale
        recovery_data = Path(tmp) / "recovery-stream"
        if args.only is None or "recovery" in args.only:
            write_stream(generate(recovery_events, seed=0), recovery_data)
        # Interleaving replays DIN once per kind of user: a shorter stream keeps it minutes.
        interleaving_events = 100_000 // scale
        interleaving_data = Path(tmp) / "interleaving-stream"
        if args.only is None or "interleaving" in args.only:
            write_stream(generate(interleaving_events, seed=0), interleaving_data)
        benches = [
            ("generator", lambda: bench_generator(runs, 1_000_000 // scale)),
            ("learners", lambda: learners_bench.markdown(
                learners_bench.measure(500_000 // scale, runs), runs)),
            ("quality", lambda: quality_bench.markdown(
                quality_bench.measure(list(quality_bench.DEFAULT_LEARNERS), 200_000 // scale),
                list(quality_bench.DEFAULT_LEARNERS))),
            ("din", lambda: din_bench.run(runs, quick=args.quick)),
            ("replay", lambda: bench_replay(runs, data, 100_000 // scale)),
            ("service", lambda: service_bench.markdown(
                # Five rounds: bare rates alone swing 1.6x between rounds on this machine.
                service_bench.measure(data, replay_events, 1 if args.quick else 5))),
            ("checkpoint", lambda: checkpoint_bench.markdown(checkpoint_bench.measure(
                data, replay_events, (10_000 // scale, 50_000 // scale, replay_events), runs))),
            ("recovery", lambda: recovery_bench.markdown(
                recovery_bench.measure(recovery_data, 2 if args.quick else 4),
                recovery_events)),
            ("auc", lambda: bench_auc(runs, 10_000_000 // scale)),
            ("joiner", lambda: joiner_bench.markdown(
                joiner_bench.throughput(runs, 10_000_000 // scale, 200_000 // scale),
                joiner_bench.store_memory(10_000_000 // scale), runs)),
            ("soak", lambda: soak_bench.markdown(soak_bench.measure(400_000 // scale))),
            ("interleaving", lambda: interleaving_bench.markdown(interleaving_bench.measure(
                interleaving_data, interleaving_events, 100_000 // scale))),
        ]
        for name, run in benches:
            if args.only is None or name in args.only:
                print(f"bench: {name} …", file=sys.stderr, flush=True)
                sections += run()
    header = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (`.venv/bin/python bench/run_all.py`), which rewrites this "
        "file.",
        f"Last run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
        + (" (--quick: reduced sizes)" if args.quick else "") + ".",
        "",
    ]
    out = ROOT / "docs" / "BENCHMARKS.md"
    if args.only:
        stamp = (f"_Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by "
                 f"`bench/run_all.py --only {','.join(sorted(args.only))}`._")
        out.write_text(splice(out.read_text(), sections, stamp))
    else:
        out.write_text("\n".join(header + sections))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
