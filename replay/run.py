"""``streamctr replay``: the service's joiner and learners driven from a replay folder.

The replay feeds :class:`~replay.engine.OnlineEngine` the events of a folder in
event-time order, exactly as the service's event-time merge would deliver them,
then writes a report of every learner's progressive-validation metrics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import polars as pl

from features.events import Click, encode_event
from features.joiner import JoinerConfig
from learners import Learner, make_learner
from learners.base import close_learner
from replay.audit import LeakAudit
from replay.breakdown import auto_bucket_ms, label_delays, over_time, reliability
from replay.engine import OnlineEngine
from replay.inputs import REJECTED_SCHEMA, ReplayInput, iter_events, read_replay_input
from replay.progress import progress
from replay.report import OutcomeRecorder, after_warmup, learner_metrics, write_report

__all__ = ["ReplayResult", "run_replay"]


@dataclass(frozen=True)
class ReplayResult:
    """What a replay measured: event counts, per-learner metrics and the outcomes themselves.

    ``learners`` and ``outcomes`` are those of the first delayed-feedback mode;
    ``modes`` holds every mode's learner metrics and freshness; ``breakdown`` the
    report's breakdowns and leak audit (see :mod:`replay.report`).
    """

    events: dict[str, int]
    learners: dict[str, dict[str, float]]
    outcomes: pl.DataFrame
    modes: dict[str, dict[str, Any]]
    breakdown: dict[str, Any]


BATCH = 2048  # events per push: large enough to amortise the joiner call, small for memory


def run_replay(
    source: str | Path | ReplayInput,
    learner_names: Sequence[str],
    report_dir: str | Path | None,
    *,
    joiner_config: JoinerConfig | None = None,
    modes: Sequence[str] = ("wait",),
    learner_params: Mapping[str, Mapping[str, Any]] | None = None,
    warmup_ms: int | None = None,
    time_bucket_ms: int | None = None,
    show_progress: bool = True,
) -> ReplayResult:
    """Replay ``source`` through the named learners; write the report when ``report_dir`` is set.

    ``source`` is a replay folder or an already read :class:`~replay.inputs.ReplayInput`
    (e.g. a topic range of a broker, :mod:`replay.kafka_input`).

    Each delayed-feedback mode (``wait``, ``fnw``) gets its own joiner and fresh
    learners, all fed the same events in one pass. Metrics leave out impressions of
    the first ``warmup_ms`` (default: one window).
    """
    base = joiner_config or JoinerConfig()
    if not modes:
        raise ValueError("at least one delayed-feedback mode is needed")
    warmup = base.window_ms if warmup_ms is None else warmup_ms
    params = learner_params or {}
    inp = source if isinstance(source, ReplayInput) else read_replay_input(source)
    name = inp.name or Path(str(source)).name
    recorders: dict[str, OutcomeRecorder] = {}
    audits: dict[str, LeakAudit] = {}
    engines: dict[str, OnlineEngine] = {}
    orphans: list[Click] = []
    for mode in dict.fromkeys(modes):
        learners: dict[str, Learner] = {
            name: make_learner(name, **params.get(name, {})) for name in learner_names
        }
        recorders[mode] = OutcomeRecorder(tuple(learners))
        audit = audits[mode] = LeakAudit(base.window_ms)
        engines[mode] = OnlineEngine(
            learners, replace(base, mode=mode), on_outcome=[recorders[mode], audit.on_outcome],
            # Every mode's joiner sees the same orphans: keep one list of them.
            on_orphan=[orphans.append] if not engines else [],
            on_score=[audit.on_score], on_learn=[audit.on_learn],
        )

    users = pl.concat([inp.impressions["user_id"], inp.clicks["user_id"]]).n_unique()
    items = inp.impressions["item_id"].n_unique()
    pairs = inp.impressions.select("user_id", "category_id").n_unique()
    for engine in engines.values():
        engine.joiner.presize(users, items, pairs, BATCH)

    started = time.perf_counter()
    try:
        with progress("replay", inp.n_events, enabled=show_progress) as ticker:
            events_iter = iter_events(inp)
            while batch := list(islice(events_iter, BATCH)):
                for engine in engines.values():
                    engine.process(batch)
                ticker.tick(len(batch))
            for engine in engines.values():
                engine.finish()
    finally:
        for engine in engines.values():
            for learner in engine.learners.values():
                close_learner(learner)
    wall = time.perf_counter() - started

    first = next(iter(engines))
    per_mode: dict[str, dict[str, Any]] = {}
    outcomes_of: dict[str, pl.DataFrame] = {}
    for mode, engine in engines.items():
        outcomes = outcomes_of[mode] = recorders[mode].to_frame()
        scored = after_warmup(outcomes, warmup)
        per_mode[mode] = {
            "learners": {
                name: learner_metrics(scored, name, samples_seen=outcomes.height,
                                      seconds=engine.learner_seconds[name])
                for name in learner_names
            },
            "freshness": engine.freshness(),
        }
    outcomes = outcomes_of[first]
    rejected = _rejected_with_orphans(inp, orphans)
    events = {
        "impressions_read": inp.impressions.height,
        "clicks_read": inp.clicks.height,
        "rejected": rejected.height,
        **engines[first].joiner.stats.as_dict(),
        "warmup_samples": outcomes.height - after_warmup(outcomes, warmup).height,
    }
    breakdown = _breakdown(inp, outcomes, after_warmup(outcomes, warmup), learner_names,
                           audits, base.window_ms, time_bucket_ms)
    if report_dir is not None:
        out = Path(report_dir)
        write_report(
            out,
            events,
            per_mode[first]["learners"],
            title=f"Replay of {name}",
            details={
                "input": inp.name or str(source),
                "window_ms": base.window_ms,
                "allowed_lateness_ms": base.allowed_lateness_ms,
                "warmup_ms": warmup,
                "delayed_feedback": first,
                "wall_seconds": round(wall, 3),
                "events_per_second": round(inp.n_events / wall) if wall > 0 else None,
            },
            modes=per_mode if len(per_mode) > 1 else None,
            breakdown=breakdown,
        )
        rejected.write_parquet(out / "rejected.parquet")
    return ReplayResult(events, per_mode[first]["learners"], outcomes, per_mode, breakdown)


def _breakdown(
    inp: ReplayInput,
    outcomes: pl.DataFrame,
    scored: pl.DataFrame,
    learner_names: Sequence[str],
    audits: Mapping[str, LeakAudit],
    window_ms: int,
    time_bucket_ms: int | None,
) -> dict[str, Any]:
    """The report's breakdowns of the first mode's scored outcomes, and every mode's audit."""
    if time_bucket_ms is None:
        span = (int(outcomes["impression_ts"].max()) - int(outcomes["impression_ts"].min())
                if outcomes.height else 0)
        time_bucket_ms = auto_bucket_ms(span)
    summaries = {mode: each.summary() for mode, each in audits.items()}
    first = next(iter(audits))
    audit = summaries[first]
    if len(summaries) > 1:
        audit["modes"] = {mode: {"consistent": s["consistent"], "violations": s["violations"]}
                          for mode, s in summaries.items()}
        audit["consistent"] = all(s["consistent"] for s in summaries.values())
    return {
        "over_time": over_time(scored, learner_names, time_bucket_ms),
        "reliability": reliability(scored, learner_names),
        "label_delay": label_delays(inp.impressions, inp.clicks, window_ms),
        "sequence_lengths": audits[first].sequence_lengths(),
        "leak_audit": audit,
    }


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
