"""``streamctr demo``: the whole pipeline on one machine, end to end.

1. start the embedded Kafka-protocol broker;
2. generate a synthetic stream with known click probabilities;
3. publish it to the ``impressions`` and ``clicks`` topics;
4. run the service over it (all learners) until every record is consumed;
5. replay the same folder offline, and check the service measured what the replay did;
6. print the per-learner comparison (with the ground-truth probabilities as a ceiling)
   and write ``OUT/report.json``, ``OUT/report.md`` and the replay's own report.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from rich.console import Console

from features.joiner import JoinerConfig
from pipeline.broker import EmbeddedBroker
from pipeline.produce import produce_folder
from pipeline.service import Service, ServiceConfig, Topics
from replay.progress import progress
from replay.report import (
    OutcomeRecorder,
    after_warmup,
    learner_metrics,
    learner_table,
    modes_table,
    score_metrics,
    write_report,
)
from replay.run import run_replay
from replay.synthetic import generate, write_stream

__all__ = ["run_demo"]

TRUTH = "truth (oracle)"


def run_demo(
    out: Path,
    events: int,
    seed: int,
    learners: Sequence[str],
    window_ms: int,
) -> int:
    """Run the demo; return the exit status (0 when the service agreed with the replay)."""
    console = Console(stderr=True)
    data = out / "data"
    with console.status(f"generating {events:,} synthetic events"):
        write_stream(generate(events, seed=seed), data)
    console.print(f"[bold]1/4[/] generated the stream into {data}")

    with EmbeddedBroker() as broker:
        topics = Topics()
        broker.create_topics([topics.impressions, topics.clicks, topics.samples, topics.dlq])
        console.print(f"[bold]2/4[/] embedded broker at {broker.bootstrap}")
        produced = produce_folder(data, broker.bootstrap, topics=topics)
        n_records = produced.impressions + produced.clicks
        console.print(f"[bold]3/4[/] produced {n_records:,} records in {produced.seconds:.1f} s")

        recorder = OutcomeRecorder(tuple(learners))
        # A checkpoint of an earlier demo belongs to that run's broker, gone with it: this
        # run's topics start afresh, so its state must too.
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
        config = ServiceConfig(
            bootstrap=broker.bootstrap,
            learners=tuple(learners),
            checkpoint_dir=out / "checkpoint",
            metrics_port=0,
            max_events=n_records,
            group_id="streamctr-demo",
            topics=topics,
            joiner=JoinerConfig(window_ms=window_ms),
        )
        with progress("serve", n_records) as ticker:
            service = Service(config, extra_outcome_callbacks=[recorder], on_progress=ticker.tick)
            summary = service.run()
    console.print(f"[bold]4/4[/] service consumed {sum(summary.consumed.values()):,} records "
                  f"in {summary.wall_seconds:.1f} s; now replaying the folder offline")

    outcomes = recorder.to_frame()
    scored = after_warmup(outcomes, window_ms)
    served = {
        name: learner_metrics(scored, name, samples_seen=outcomes.height,
                              seconds=summary.learner_seconds[name])
        for name in learners
    }
    served[TRUTH] = _oracle_metrics(scored, data)
    replayed = run_replay(data, learners, out / "replay", joiner_config=config.joiner,
                          modes=("wait", "fnw"), warmup_ms=window_ms)
    agree = all(
        math.isclose(served[n]["auc"], replayed.learners[n]["auc"], rel_tol=0, abs_tol=1e-12)
        and served[n]["samples"] == replayed.learners[n]["samples"]
        for n in learners
    )
    events_counts = {
        "records_consumed": sum(summary.consumed.values()),
        "records_rejected": sum(summary.rejected.values()),
        **summary.join,
        "warmup_samples": outcomes.height - scored.height,
    }
    write_report(
        out,
        events_counts,
        served,
        title="streamctr demo: service over the embedded broker",
        details={
            "events_generated": events,
            "seed": seed,
            "window_ms": window_ms,
            "warmup_ms": window_ms,
            "service_wall_seconds": round(summary.wall_seconds, 2),
            "replay_agrees_with_service": agree,
        },
    )
    stdout = Console()
    stdout.print(learner_table(served, "service metrics (progressive validation)"))
    verdict = "identical to" if agree else "DIFFERENT from"
    stdout.print(f"replay of the same folder: AUC and sample counts {verdict} the service's")
    stdout.print(modes_table(replayed.modes))
    stdout.print(f"report: {out / 'report.md'}  (replay report: {out / 'replay' / 'report.md'})")
    return 0 if agree else 1


def _oracle_metrics(outcomes: pl.DataFrame, data: Path) -> dict[str, float]:
    """Metrics of the generator's true click probabilities on the same samples: the ceiling."""
    truth = pl.read_parquet(data / "truth.parquet").select(
        "impression_id", pl.col("p_click").alias("score_truth")
    ).unique("impression_id", keep="first")
    joined = outcomes.join(truth, on="impression_id", how="left")
    return {**score_metrics(joined, "score_truth"), "throughput_eps": math.nan}
