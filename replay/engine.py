"""The online engine: one joiner and a set of learners, driven batch by batch.

``streamctr replay`` and ``streamctr serve`` both feed events to an
:class:`OnlineEngine`; they differ only in where events come from. The engine
keeps the run leak-free by construction:

* before an impression is scored, every sample released at or before its event
  time has been learned (the model is the one it had then);
* each learner scores the impression once, at its event time, with the features
  the joiner computed from strictly earlier behaviour, and that score is the one
  recorded with the final label;
* a learner trains on a sample only when the joiner releases it: at the window
  end in ``wait`` mode, or as an FNW negative at impression time and an FNW
  positive at click time in ``fnw`` mode (weighted, :func:`features.joiner.fnw_weight`).

Evaluation always uses ``FINAL`` releases — the label as known at the window
end — whatever the training mode. What happens to a final, scored sample is up
to the ``on_outcome`` callbacks (record it for a report, update live gauges,
publish it to the samples topic). ``on_score`` callbacks see each impression with
the joiner's features at the moment it is scored, and ``on_learn`` callbacks each
release the learners train on, after they have: together they let
:class:`replay.audit.LeakAudit` check the order of all three from outside.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.events import Click, Impression
from features.featurize import impression_features
from features.joiner import (
    FINAL,
    JoinedFeatures,
    Joiner,
    JoinerConfig,
    JoinResult,
    Release,
    fnw_weight,
)
from features.rows import ImpressionRows
from learners import Learner
from learners.base import HashedRows, PreparedInput, QueuedScoring

__all__ = ["LearnCallback", "OnlineEngine", "Outcome", "OutcomeCallback", "OutcomesCallback",
           "ScoreCallback"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A final release together with each learner's score from impression time, and the
    features it was scored with (what the samples topic carries)."""

    release: Release
    scores: Mapping[str, float]
    features: Mapping[str, float] = field(default_factory=dict)


OutcomeCallback = Callable[[Outcome], None]
# A batch's final releases, in order, with each learner's scores of them: scores[name][i]
# is the score of releases[i] (float64 arrays).
OutcomesCallback = Callable[[Sequence[Release], Mapping[str, np.ndarray]], None]
ScoreCallback = Callable[[Impression, JoinedFeatures], None]
LearnCallback = Callable[[Release], None]
Featurizer = Callable[[Impression, JoinedFeatures], dict[str, float]]


@dataclass
class OnlineEngine:
    """Predict each impression at its event time; learn each sample when it is released.

    With no learners it only joins: each final release still comes with its features
    (the join role of ``streamctr serve``, which publishes them).

    When every learner reads hashed rows only (:class:`learners.base.HashedRows`: FTRL
    without crosses), in ``wait`` mode with the default featurizer and no ``on_score`` /
    ``on_learn`` callbacks, a batch's rows are built in compiled code
    (:class:`features.rows.ImpressionRows`) and each learner scores and learns the whole
    batch in one call, in the same order: the same scores and states as the dict path,
    bit for bit. Outcomes then carry no feature dict. Callbacks are read at construction.
    """

    learners: Mapping[str, Learner]
    joiner_config: JoinerConfig = field(default_factory=JoinerConfig)
    featurize: Featurizer = impression_features
    on_outcome: list[OutcomeCallback] = field(default_factory=list)
    # The same outcomes a batch at a time, after the batch's on_outcome calls: no Outcome
    # object per sample (live gauges want only labels and scores).
    on_outcomes: list[OutcomesCallback] = field(default_factory=list)
    on_orphan: list[Callable[[Click], None]] = field(default_factory=list)
    on_score: list[ScoreCallback] = field(default_factory=list)
    on_learn: list[LearnCallback] = field(default_factory=list)
    # The compiled-rows path where it applies (see the class doc); False: the dict path
    # always (the reference the compiled one is tested against).
    compiled_rows: bool = True

    def __post_init__(self) -> None:
        self.joiner = Joiner(self.joiner_config)
        # Sequence learners (DIN) read the behaviour sequences; the others never pay for them.
        if any(getattr(learner, "uses_behaviours", False) for learner in self.learners.values()):
            self.featurize = functools.partial(self.featurize, with_behaviours=True)
        # Learners that score in batches get a ticket at impression time (QueuedScoring).
        self._queued = {name for name, learner in self.learners.items()
                        if isinstance(learner, QueuedScoring)}
        # Learners that weight FNW samples by their own prediction inside their batch step
        # (``learn_fnw_one``) are spared a forward pass per sample.
        self._self_weighting = {name for name, learner in self.learners.items()
                                if callable(getattr(learner, "learn_fnw_one", None))}
        # Learners that convert features once (FTRL's hashed row) to score and to learn.
        self._preparing = {name for name, learner in self.learners.items()
                           if isinstance(learner, PreparedInput)}
        self._fnw = self.joiner_config.mode == "fnw"
        self._rows = (ImpressionRows(self.joiner)
                      if self.compiled_rows and self.learners and not self._fnw
                      and self.featurize is impression_features
                      and not self.on_score and not self.on_learn
                      and all(isinstance(learner, HashedRows) and learner.reads_hashed_rows
                              for learner in self.learners.values())
                      else None)
        # Features, scores and prepared inputs of each open impression, by feature row; on
        # the compiled-rows path, the scores only (NaN: the row holds no open impression).
        self._row_scores = np.full((0, len(self.learners)), np.nan)
        self._open: dict[int, tuple[dict[str, float], dict[str, float], dict[str, Any]]] = {}
        # Seconds spent inside each learner (predict + learn): its own throughput.
        self.learner_seconds: dict[str, float] = dict.fromkeys(self.learners, 0.0)
        # Freshness, in event time: impression → first training sample of it, and
        # impression → its positive label reaching the learners.
        self._delay_ms = {"first": 0, "positive": 0}
        self._delay_n = {"first": 0, "positive": 0}

    def process(self, events: Sequence[Impression | Click]) -> None:
        """Join, score and learn a batch of events (in arrival order)."""
        result = self.joiner.push(events)
        self._settle_all(result)

    def advance(self, ts: int) -> None:
        """Move event time forward with no event (closes windows that ended before ``ts``)."""
        self._settle_all(self.joiner.advance(ts))

    def idle(self) -> None:
        """The input has caught up: process what waits at the watermark (:meth:`Joiner.settle`)."""
        if self.joiner.waiting:
            self._settle_all(self.joiner.settle())

    def finish(self) -> None:
        """End of input: what waits is processed, every window closes, held clicks are orphans."""
        self._settle_all(self.joiner.flush())

    def _settle_all(self, result: JoinResult) -> None:
        """Score the processed impressions and act on the releases, in the joiner's order."""
        if self._rows is not None:
            self._settle_rows(result)
            return
        releases, rows = result.releases, result.rows
        finals: list[tuple[Release, dict[str, float]]] = []  # for on_outcomes
        r, n = 0, len(releases)
        for i, event in enumerate(result.events):
            while r < n and releases[r].event == i and releases[r].phase == 0:
                self._settle(releases[r], finals)
                r += 1
            if rows[i] >= 0:
                self._score(event, int(rows[i]))  # type: ignore[arg-type]
            while r < n and releases[r].event == i:
                self._settle(releases[r], finals)
                r += 1
        for release in releases[r:]:
            self._settle(release, finals)
        if finals:
            self._emit_outcomes([release for release, _ in finals], {
                name: np.array([scores[name] for _, scores in finals], np.float64)
                for name in self.learners})
        for click in result.orphans:
            for callback in self.on_orphan:
                callback(click)

    def _emit_outcomes(self, finals: Sequence[Release], scores: Mapping[str, np.ndarray]
                       ) -> None:
        for callback in self.on_outcomes:
            callback(finals, scores)

    def _settle_rows(self, result: JoinResult) -> None:
        """:meth:`_settle_all` over compiled rows: the same order of scores and learns, as
        one batch per learner (every release is a final one: wait mode)."""
        assert self._rows is not None
        releases, rows = result.releases, result.rows
        self._rows.admit(rows, result.events, result.codes)
        scored = np.flatnonzero(rows >= 0)
        n_rel = len(releases)
        rel_event, rel_phase, rel_row, rel_label, rel_final_ts = result.release_columns
        # A release at event i comes before i's score if phase 0, after it if not; those of
        # a flush (event -1) after every event. The sort is stable: releases keep their order.
        order = np.lexsort((
            np.concatenate([np.ones(scored.size, np.int64), np.where(rel_phase == 0, 0, 2)]),
            np.concatenate([scored, np.where(rel_event >= 0, rel_event, rows.size)])))
        if order.size:
            op_rows = np.concatenate([rows[scored], rel_row])[order]
            y = np.concatenate([np.full(scored.size, -1, np.int8), rel_label])[order]
            batch = self._rows.build(op_rows)
            is_score = order < scored.size
            self._reserve_scores(int(op_rows.max()) + 1)
            clock = time.perf_counter
            for j, (name, learner) in enumerate(self.learners.items()):
                start = clock()
                op_scores = learner.score_learn_rows(batch, y)  # type: ignore[attr-defined]
                self.learner_seconds[name] += clock() - start
                # No row serves two impressions in one batch (the joiner recycles a row a
                # batch after its release), so every score lands before it is read.
                self._row_scores[op_rows[is_score], j] = op_scores[is_score]
            scores = self._row_scores[rel_row].T.copy()  # (learners, releases)
            self._row_scores[rel_row] = np.nan
            if self.on_outcome:
                names = list(self.learners)
                for release, *row_scores in zip(releases, *scores.tolist(), strict=True):
                    outcome = Outcome(release, dict(zip(names, row_scores, strict=True)))
                    for callback in self.on_outcome:
                        callback(outcome)
            if releases:
                self._emit_outcomes(releases, dict(zip(self.learners, scores, strict=True)))
                delay = rel_final_ts - np.fromiter([r.impression.ts for r in releases],
                                                   np.int64, n_rel)
                positive = rel_label == 1
                self._delay_ms["first"] += int(delay.sum())
                self._delay_n["first"] += n_rel
                self._delay_ms["positive"] += int(delay[positive].sum())
                self._delay_n["positive"] += int(positive.sum())
        for click in result.orphans:
            for callback in self.on_orphan:
                callback(click)

    def _reserve_scores(self, rows: int) -> None:
        have = self._row_scores.shape[0]
        if rows > have:
            grown = np.full((max(rows, have + have // 2), len(self.learners)), np.nan)
            grown[:have] = self._row_scores
            self._row_scores = grown

    def state_dict(self) -> dict[str, Any]:
        """The joiner's state and each open impression's scores (learners save their own)."""
        names = list(self.learners)
        if self._rows is not None:
            open_rows = np.flatnonzero(~np.isnan(self._row_scores[:, 0]))
            open_scores = self._row_scores[open_rows]
        else:
            rows = sorted(self._open)
            for row in rows:
                self._resolve(self._open[row][1])
            open_rows = np.array(rows, np.int64)
            open_scores = np.array([[self._open[r][1][n] for n in names] for r in rows],
                                   np.float64).reshape(len(rows), len(names))
        return {
            "joiner": self.joiner.state_dict(),
            "learners": np.array(names, dtype=str),
            "open_rows": open_rows,
            "open_scores": open_scores,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; features of open impressions are recomputed, not stored."""
        names = [str(n) for n in state["learners"]]
        if names != list(self.learners):
            raise ValueError(f"engine state is for learners {names}, not {list(self.learners)}")
        self.joiner.load_state_dict(state["joiner"])
        self._open = {}
        if self._rows is not None:
            open_rows = np.asarray(state["open_rows"], np.int64)
            self._rows = ImpressionRows(self.joiner)
            self._rows.admit(open_rows, [self.joiner.impression(row) for row in open_rows.tolist()])
            self._row_scores = np.full((0, len(names)), np.nan)
            self._reserve_scores(int(open_rows.max()) + 1 if open_rows.size else 0)
            self._row_scores[open_rows] = state["open_scores"]
            return
        for row, scores in zip(state["open_rows"].tolist(), state["open_scores"], strict=True):
            imp = self.joiner.impression(row)
            x = self.featurize(imp, self.joiner.features(row))
            prepared = {name: self.learners[name].prepare(x)  # type: ignore[attr-defined]
                        for name in self._preparing}
            self._open[row] = (x, dict(zip(names, scores.tolist(), strict=True)), prepared)

    def _score(self, imp: Impression, row: int) -> None:
        features = self.joiner.features(row)
        x = self.featurize(imp, features)
        scores: dict[str, float] = {}
        prepared: dict[str, Any] = {}
        clock = time.perf_counter
        for name, learner in self.learners.items():
            start = clock()
            if name in self._queued:
                scores[name] = _Ticket(learner.queue_predict(x))  # type: ignore[attr-defined]
            elif name in self._preparing:
                p = prepared[name] = learner.prepare(x)  # type: ignore[attr-defined]
                scores[name] = learner.predict_prepared(p)  # type: ignore[attr-defined]
            else:
                scores[name] = learner.predict_proba_one(x)
            self.learner_seconds[name] += clock() - start
        self._open[row] = (x, scores, prepared)
        for callback in self.on_score:
            callback(imp, features)

    def _resolve(self, scores: dict[str, float]) -> None:
        """Replace the tickets among ``scores`` by the scores they stand for, in place."""
        clock = time.perf_counter
        for name in self._queued:
            ticket = scores[name]
            if isinstance(ticket, _Ticket):
                start = clock()
                scores[name] = self.learners[name].queued_score(ticket.number)  # type: ignore[attr-defined]
                self.learner_seconds[name] += clock() - start

    def _settle(self, release: Release, finals: list[tuple[Release, dict[str, float]]]
                ) -> None:
        """Learn and/or report one release; a final one joins ``finals`` for on_outcomes."""
        if release.kind == FINAL:
            x, scores, prepared = self._open.pop(release.row)
            self._resolve(scores)  # the outcome carries scores, not tickets
            if not self._fnw:
                self._learn(x, prepared, release)
            outcome = Outcome(release, scores, x)
            for callback in self.on_outcome:
                callback(outcome)
            if self.on_outcomes:
                finals.append((release, scores))
        else:
            x, _, prepared = self._open[release.row]
            self._learn(x, prepared, release)

    def _learn(self, x: dict[str, float], prepared: dict[str, Any], release: Release) -> None:
        clock = time.perf_counter
        label = release.label
        for name, learner in self.learners.items():
            start = clock()
            p = prepared.get(name)
            if self._fnw and name in self._self_weighting:
                learner.learn_fnw_one(x, label)  # type: ignore[attr-defined]
            elif p is not None:
                # In FNW mode the learner's current belief sets the weight.
                w = (fnw_weight(label, learner.predict_prepared(p))  # type: ignore[attr-defined]
                     if self._fnw else 1.0)
                learner.learn_prepared(p, label, w)  # type: ignore[attr-defined]
            elif self._fnw:
                # The learner's current belief sets the weight; it is not learned through.
                learner.learn_one(x, label, fnw_weight(label, learner.predict_proba_one(x)))
            else:
                learner.learn_one(x, label)
            self.learner_seconds[name] += clock() - start
        for callback in self.on_learn:
            callback(release)
        self._count_delay(release)

    def _count_delay(self, release: Release) -> None:
        label = release.label
        delay = release.final_ts - release.impression.ts
        if not (self._fnw and label):  # in FNW mode the negative comes first
            self._delay_ms["first"] += delay
            self._delay_n["first"] += 1
        if label:
            self._delay_ms["positive"] += delay
            self._delay_n["positive"] += 1

    def freshness(self) -> dict[str, float]:
        """Mean event-time seconds until learners first train on an impression, and on a click."""
        return {
            f"{kind}_training_delay_s": (self._delay_ms[kind] / self._delay_n[kind] / 1000
                                         if self._delay_n[kind] else float("nan"))
            for kind in ("first", "positive")
        }


@dataclass(frozen=True, slots=True)
class _Ticket:
    """A queued score (:class:`learners.base.QueuedScoring`) not read yet."""

    number: int
