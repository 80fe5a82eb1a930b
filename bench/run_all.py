"""``make bench``: measure, then rewrite docs/BENCHMARKS.md with the figures.

Every figure is the median of several runs in this one process, and every speed
is also given as a ratio against a baseline run alongside it (river, scikit-learn),
because absolute numbers on shared machines drift from run to run.

    .venv/bin/python bench/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.featurize import impression_features  # noqa: E402
from features.joiner import Joiner  # noqa: E402
from learners import FTRLProximal  # noqa: E402
from replay import metrics  # noqa: E402
from replay.inputs import iter_events, read_replay_input  # noqa: E402
from replay.run import run_replay  # noqa: E402
from replay.synthetic import generate, write_stream  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import joiner as joiner_bench  # noqa: E402


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


def _progressive(model_predict, model_learn, xs, ys) -> tuple[float, np.ndarray]:
    scores = np.empty(len(ys))
    start = time.perf_counter()
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        scores[i] = model_predict(x)
        model_learn(x, y)
    return time.perf_counter() - start, scores


def bench_ftrl_vs_river(runs: int, data: Path, n: int) -> list[str]:
    from river import linear_model, optim

    # The feature dicts a replay would score: each impression with its joined features.
    joiner = Joiner()
    impressions, xs = [], []
    for event in iter_events(read_replay_input(data)):
        result = joiner.push([event])
        for imp, row in zip(result.events, result.rows, strict=True):
            if row >= 0 and len(xs) < n:
                impressions.append(imp)
                xs.append(impression_features(imp, joiner.features(int(row))))
        if len(xs) >= n:
            break
    # Labels from the generator's ground truth keep the learning problem realistic.
    import polars as pl

    truth = pl.read_parquet(data / "truth.parquet").unique("impression_id", keep="first")
    clicked = dict(zip(truth["impression_id"], truth["clicked"], strict=True))
    ys = [int(clicked[imp.impression_id]) for imp in impressions]

    ours_t, river_t, ours_auc, river_auc = [], [], [], []
    for _ in range(runs):
        ours = FTRLProximal()
        t, s = _progressive(ours.predict_proba_one, ours.learn_one, xs, ys)
        ours_t.append(t)
        ours_auc.append(metrics.auc(ys, s))
        ref = linear_model.LogisticRegression(optimizer=optim.FTRLProximal(), intercept_lr=0)
        t, s = _progressive(lambda x, m=ref: m.predict_proba_one(x)[True], ref.learn_one, xs, ys)
        river_t.append(t)
        river_auc.append(metrics.auc(ys, s))
    ours_eps = n / statistics.median(ours_t)
    river_eps = n / statistics.median(river_t)
    return [
        "## FTRL-Proximal vs river (predict-then-learn, one event at a time)",
        "",
        f"{n:,} impressions of the synthetic stream, {np.mean([len(x) for x in xs]):.0f} features"
        " each, same hyper-parameters (river defaults), median of "
        f"{runs} runs in one process:",
        "",
        "| learner | events/s | progressive AUC |",
        "|---|---:|---:|",
        f"| streamctr `FTRLProximal` (`learn_one`) | {ours_eps:,.0f} | "
        f"{statistics.median(ours_auc):.4f} |",
        f"| river `LogisticRegression(optim.FTRLProximal)` | {river_eps:,.0f} | "
        f"{statistics.median(river_auc):.4f} |",
        "",
        f"Ratio: **{ours_eps / river_eps:.2f}×** river. (The pure-Python `_one` path; the "
        "compiled batch kernel is a later issue.)",
        "",
    ]


def bench_replay(runs: int, data: Path, n_events: int) -> list[str]:
    seconds = median_time(
        lambda: run_replay(data, ["ftrl"], None, show_progress=False), runs)
    return [
        "## Replay end to end",
        "",
        f"`streamctr replay` of {n_events:,} events (read + validate Parquet, event-time "
        f"merge, join, FTRL predict + learn, metrics): **{seconds:.1f} s**, "
        f"{n_events / seconds:,.0f} events/s, median of {runs} runs.",
        "",
    ]


def bench_service(data: Path, n_events: int) -> list[str]:
    """Produce a folder to the embedded broker, then time the service and a bare consumer."""
    from kafka import KafkaConsumer, TopicPartition

    from pipeline.broker import EmbeddedBroker
    from pipeline.produce import produce_folder
    from pipeline.service import Service, ServiceConfig

    with EmbeddedBroker() as broker:
        broker.create_topics(["impressions", "clicks", "samples", "dlq"])
        produced = produce_folder(data, broker.bootstrap, show_progress=False)
        records = produced.impressions + produced.clicks

        start = time.perf_counter()
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, consumer_timeout_ms=3_000)
        consumer.assign([TopicPartition("impressions", 0), TopicPartition("clicks", 0)])
        consumer.seek_to_beginning()
        bare = sum(1 for _ in consumer)
        bare_s = time.perf_counter() - start - 3.0  # the idle timeout that ended the loop
        consumer.close()

        service = Service(ServiceConfig(bootstrap=broker.bootstrap, metrics_port=None,
                                        max_events=records, group_id="bench"))
        summary = service.run()
    assert bare == records
    served = records / (summary.wall_seconds - summary.seconds_to_first_record)
    return [
        "## Service end to end (embedded broker)",
        "",
        f"{records:,} records of the synthetic stream, one run:",
        "",
        "| stage | records/s |",
        "|---|---:|",
        f"| `streamctr produce` (kafka-python producer, acks=all) | "
        f"{records / produced.seconds:,.0f} |",
        f"| bare kafka-python consumer, same topics (baseline) | {bare / bare_s:,.0f} |",
        f"| `streamctr serve` (decode, merge, join, FTRL, metrics) | {served:,.0f} |",
        "",
        f"The service runs at **{served / (bare / bare_s):.2f}×** the bare consumer's rate "
        f"(timed from its first record; joining the consumer group took a further "
        f"{summary.seconds_to_first_record:.1f} s).",
        "",
    ]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each")
    args = parser.parse_args()
    runs = 1 if args.quick else 3
    scale = 10 if args.quick else 1
    sections: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "stream"
        replay_events = 200_000 // scale
        write_stream(generate(replay_events, seed=0), data)
        for name, run in [
            ("generator", lambda: bench_generator(runs, 1_000_000 // scale)),
            ("ftrl", lambda: bench_ftrl_vs_river(runs, data, 50_000 // scale)),
            ("replay", lambda: bench_replay(runs, data, replay_events)),
            ("service", lambda: bench_service(data, replay_events)),
            ("auc", lambda: bench_auc(runs, 10_000_000 // scale)),
            ("joiner", lambda: joiner_bench.markdown(
                joiner_bench.throughput(runs, 10_000_000 // scale, 200_000 // scale),
                joiner_bench.store_memory(10_000_000 // scale), runs)),
        ]:
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
    out.write_text("\n".join(header + sections))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
