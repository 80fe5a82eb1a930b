"""The online engine: one joiner and a set of learners, driven event by event.

``streamctr replay`` and ``streamctr serve`` both feed events to an
:class:`OnlineEngine`; they differ only in where events come from. The engine
keeps the run leak-free by construction:

* before an impression is scored, every sample whose label became final at or
  before its event time has been learned (the model is the one it had then);
* each learner scores the impression once, at its event time, and that score is
  the one recorded with the label;
* a sample is learned only when the joiner says its label is final, with the
  features computed at impression time.

What happens to a labelled, scored sample is up to the ``on_outcome`` callbacks
(record it for a report, update live gauges, publish it to the samples topic).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from features.events import Click, Impression
from features.featurize import impression_features
from features.joiner import Joiner, JoinerConfig, Sample
from learners import Learner

__all__ = ["OnlineEngine", "Outcome", "OutcomeCallback"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A labelled sample together with each learner's score from impression time."""

    sample: Sample
    scores: Mapping[str, float]


OutcomeCallback = Callable[[Outcome], None]
Featurizer = Callable[[Impression], dict[str, float]]


@dataclass(slots=True)
class _Scored:
    features: dict[str, float]
    scores: dict[str, float]


@dataclass
class OnlineEngine:
    """Predict each impression at its event time; learn each sample when its label is final."""

    learners: Mapping[str, Learner]
    joiner_config: JoinerConfig = field(default_factory=JoinerConfig)
    featurize: Featurizer = impression_features
    on_outcome: list[OutcomeCallback] = field(default_factory=list)
    on_orphan: list[Callable[[Click], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.learners:
            raise ValueError("an engine needs at least one learner")
        self.joiner = Joiner(self.joiner_config)
        # Seconds spent inside each learner (predict + learn): its own throughput.
        self.learner_seconds: dict[str, float] = dict.fromkeys(self.learners, 0.0)

    def on_impression(self, imp: Impression) -> dict[str, float]:
        """Score the impression with every learner as of its event time; return the scores."""
        self._settle(self.joiner.advance(imp.ts))
        x = self.featurize(imp)
        scores: dict[str, float] = {}
        clock = time.perf_counter
        for name, learner in self.learners.items():
            start = clock()
            scores[name] = learner.predict_proba_one(x)
            self.learner_seconds[name] += clock() - start
        self._settle(self.joiner.add_impression(imp, _Scored(x, scores)))
        return scores

    def on_click(self, click: Click) -> None:
        """Hand the click to the joiner; learn the sample it makes final, if any."""
        self._settle(self.joiner.add_click(click))

    def advance(self, ts: int) -> None:
        """Move event time forward with no event (closes windows that ended before ``ts``)."""
        self._settle(self.joiner.advance(ts))

    def finish(self) -> None:
        """End of input: every open window closes, every held click becomes an orphan."""
        self._settle(self.joiner.flush())

    def _settle(self, samples: list[Sample]) -> None:
        clock = time.perf_counter
        for sample in samples:
            scored: _Scored = sample.payload  # type: ignore[assignment]
            for name, learner in self.learners.items():
                start = clock()
                learner.learn_one(scored.features, sample.label)
                self.learner_seconds[name] += clock() - start
            outcome = Outcome(sample, scored.scores)
            for callback in self.on_outcome:
                callback(outcome)
        for click in self.joiner.take_orphans():
            for callback in self.on_orphan:
                callback(click)
