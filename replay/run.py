"""``streamctr replay``: the service's joiner and learners driven from a replay folder.

The replay feeds :class:`~replay.engine.OnlineEngine` the events of a folder in
event-time order, exactly as the service's event-time merge would deliver them,
then writes a report of every learner's progressive-validation metrics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from features.events import Click, Impression, encode_event
from features.joiner import JoinerConfig
from learners import Learner, make_learner
from replay.engine import OnlineEngine
from replay.inputs import REJECTED_SCHEMA, ReplayInput, iter_events, read_replay_input
from replay.progress import progress
from replay.report import OutcomeRecorder, after_warmup, learner_metrics, write_report

__all__ = ["ReplayResult", "run_replay"]


@dataclass(frozen=True)
class ReplayResult:
    """What a replay measured: event counts, per-learner metrics and the outcomes themselves."""

    events: dict[str, int]
    learners: dict[str, dict[str, float]]
    outcomes: pl.DataFrame


def run_replay(
    folder: str | Path,
    learner_names: Sequence[str],
    report_dir: str | Path | None,
    *,
    joiner_config: JoinerConfig | None = None,
    learner_params: Mapping[str, Mapping[str, Any]] | None = None,
    warmup_ms: int | None = None,
    show_progress: bool = True,
) -> ReplayResult:
    """Replay ``folder`` through the named learners; write the report when ``report_dir`` is set.

    Metrics leave out impressions of the first ``warmup_ms`` (default: one window).
    """
    config = joiner_config or JoinerConfig()
    warmup = config.window_ms if warmup_ms is None else warmup_ms
    params = learner_params or {}
    learners: dict[str, Learner] = {
        name: make_learner(name, **params.get(name, {})) for name in learner_names
    }
    inp = read_replay_input(folder)
    recorder = OutcomeRecorder(tuple(learners))
    orphans: list[Click] = []
    engine = OnlineEngine(learners, config, on_outcome=[recorder], on_orphan=[orphans.append])

    started = time.perf_counter()
    with progress("replay", inp.n_events, enabled=show_progress) as ticker:
        for event in iter_events(inp):
            if type(event) is Impression:
                engine.on_impression(event)
            else:
                engine.on_click(event)  # type: ignore[arg-type]
            ticker.tick()
        engine.finish()
    wall = time.perf_counter() - started

    outcomes = recorder.to_frame()
    scored = after_warmup(outcomes, warmup)
    rejected = _rejected_with_orphans(inp, orphans)
    events = {
        "impressions_read": inp.impressions.height,
        "clicks_read": inp.clicks.height,
        "rejected": rejected.height,
        **engine.joiner.stats.as_dict(),
        "warmup_samples": outcomes.height - scored.height,
    }
    per_learner = {
        name: learner_metrics(scored, name, samples_seen=outcomes.height,
                              seconds=engine.learner_seconds[name])
        for name in learners
    }
    if report_dir is not None:
        out = Path(report_dir)
        write_report(
            out,
            events,
            per_learner,
            title=f"Replay of {Path(folder).name}",
            details={
                "input": str(folder),
                "window_ms": config.window_ms,
                "allowed_lateness_ms": config.allowed_lateness_ms,
                "warmup_ms": warmup,
                "wall_seconds": round(wall, 3),
                "events_per_second": round(inp.n_events / wall) if wall > 0 else None,
            },
        )
        rejected.write_parquet(out / "rejected.parquet")
    return ReplayResult(events, per_learner, outcomes)


def _rejected_with_orphans(inp: ReplayInput, orphans: list[Click]) -> pl.DataFrame:
    """Input rows that failed validation plus clicks whose impression never came.

    Orphans have no row number: the joiner declares them long after reading them;
    their record (impression id and time) identifies them.
    """
    if not orphans:
        return inp.rejected
    orphan_rows = pl.DataFrame(
        {
            "source": ["clicks"] * len(orphans),
            "row": [None] * len(orphans),
            "reason": ["unknown impression"] * len(orphans),
            "record": [encode_event(c).decode() for c in orphans],
        },
        schema=REJECTED_SCHEMA,
    )
    return pl.concat([inp.rejected, orphan_rows])
