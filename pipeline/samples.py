"""The ``samples`` topic: joined, labelled training examples, and the trainer that reads them.

A ``streamctr serve --role join`` worker (or ``--role all --publish-samples``)
publishes each impression once its label is final (the end of its click window),
with the features the joiner computed at the impression's event time — the dict
every learner reads and the behaviour sequences sequence learners read — so a
``--role train`` worker learns exactly what a one-process service would, without a
joiner of its own:

.. code-block:: json

    {"impression": {"impression_id": "i1", "...": "..."}, "label": 1,
     "click_ts": 1200, "final_ts": 901000,
     "features": {"bias": 1.0, "user=u7": 1.0, "num.user_ctr_1h": 0.33},
     "behaviours": {"recent_item": [..], "recent_category": [..], "recent_age_s": [..],
                    "lifelong_item": [..], "lifelong_category": [..],
                    "lifelong_age_s": [..]}}

Records are keyed by ``user_id``. Behaviours are name hashes (see
:class:`features.featurize.Behaviours`); numbers survive the JSON round trip exactly.

:class:`SampleTrainer` is the train role's counterpart of :class:`replay.engine.OnlineEngine`.
It scores each sample with every learner and then learns it, in the order given —
*progressive validation at label time*: the score is the model's as of the moment the
label is final, where the one-process service records the score of the impression's
own event time. Scores are therefore better informed (the model has learned the
samples finalised in between), so the two roles' rolling metrics are not the same
measurement; what is learned is the same.

>>> from features.events import Impression
>>> raw = (b'{"impression": {"impression_id": "i1", "request_id": "r1", "user_id": "u1",'
...        b' "item_id": "it1", "category_id": "c1", "position": 0, "ts": 5},'
...        b' "label": 1, "click_ts": 9, "final_ts": 905, "features": {"bias": 1.0}}')
>>> sample = decode_sample(raw)
>>> sample.label, sample.ts, dict(sample_features(sample))
(1, 905, {'bias': 1.0})
>>> decode_sample(raw.replace(b'"label": 1', b'"label": 2'))
Traceback (most recent call last):
...
features.events.InvalidEvent: Expected `int` <= 1 - at `$.label`
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import numpy as np

from features.events import Impression, InvalidEvent, invalid_event, unparsed_event
from features.featurize import Behaviours, Features
from features.joiner import FINAL, Release
from learners import Learner
from learners.base import PreparedInput, QueuedScoring
from replay.engine import Outcome, OutcomeCallback

__all__ = ["MAX_SAMPLE_BYTES", "Sample", "SampleTrainer", "decode_sample", "encode_sample",
           "sample_features"]

# An impression is at most 64 KiB (features.events.MAX_EVENT_BYTES); its features repeat
# the context twice (``ctx.k=v`` and the category cross) and the sequences add ~3 KiB, so a
# valid sample stays well under this — and under Kafka's default 1 MiB message size.
MAX_SAMPLE_BYTES = 512 * 1024

_Label = Annotated[int, msgspec.Meta(ge=0, le=1)]
_Time = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class SampleBehaviours(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """:class:`features.featurize.Behaviours` on the wire (the impression holds ``ts``)."""

    recent_item: list[int]
    recent_category: list[int]
    recent_age_s: list[float]
    lifelong_item: list[int]
    lifelong_category: list[int]
    lifelong_age_s: list[float]


class Sample(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One record of the samples topic (see the module doc)."""

    impression: Impression
    label: _Label
    click_ts: _Time | None
    final_ts: _Time
    features: dict[str, float]
    behaviours: SampleBehaviours | None = None

    @property
    def ts(self) -> int:
        """Its place in event time: when its label became final."""
        return self.final_ts


_decoder = msgspec.json.Decoder(Sample)
_encoder = msgspec.json.Encoder()


def encode_sample(outcome: Outcome) -> bytes:
    """The samples-topic record of a final release and the features it was scored with."""
    release = outcome.release
    b = getattr(outcome.features, "behaviours", None)
    wire = None if b is None else SampleBehaviours(
        b.recent_item.tolist(), b.recent_category.tolist(), b.recent_age_s.tolist(),
        b.lifelong_item.tolist(), b.lifelong_category.tolist(), b.lifelong_age_s.tolist())
    return _encoder.encode(Sample(release.impression, release.label, release.click_ts,
                                  release.final_ts, dict(outcome.features), wire))


def decode_sample(raw: bytes | str | None) -> Sample:
    """Decode and validate one samples record; :class:`~features.events.InvalidEvent` if bad."""
    if raw is None or len(raw) > MAX_SAMPLE_BYTES:
        raise unparsed_event(raw, MAX_SAMPLE_BYTES)
    try:
        sample = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeEncodeError) as exc:
        raise invalid_event(exc) from None
    b = sample.behaviours
    if b is not None and not (len(b.recent_item) == len(b.recent_category) == len(b.recent_age_s)
                              and len(b.lifelong_item) == len(b.lifelong_category)
                              == len(b.lifelong_age_s)):
        raise InvalidEvent("behaviours: item, category and age lists differ in length")
    return sample


def sample_features(sample: Sample) -> Features:
    """The learners' input of a sample: its feature dict, with its behaviours if it has any."""
    b = sample.behaviours
    behaviours = None if b is None else Behaviours(
        np.array(b.recent_item, np.int64), np.array(b.recent_category, np.int64),
        np.array(b.recent_age_s, np.float32), np.array(b.lifelong_item, np.int64),
        np.array(b.lifelong_category, np.int64), np.array(b.lifelong_age_s, np.float32),
        sample.impression.ts)
    return Features(sample.features, behaviours=behaviours)


@dataclass
class SampleTrainer:
    """Score, then learn, each sample of a batch with every learner (the train role)."""

    learners: Mapping[str, Learner]
    on_outcome: list[OutcomeCallback] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.learners:
            raise ValueError("a trainer needs at least one learner")
        self.learner_seconds: dict[str, float] = dict.fromkeys(self.learners, 0.0)
        self._needs_behaviours = any(getattr(learner, "uses_behaviours", False)
                                     for learner in self.learners.values())
        # Learners that score in batches (DIN): a ticket now, its score after the batch.
        self._queued = {name for name, learner in self.learners.items()
                        if isinstance(learner, QueuedScoring)}

    def decode(self, raw: bytes | None) -> Sample:
        """:func:`decode_sample`, also rejecting a sample without the behaviours a sequence
        learner of this trainer needs (a join worker of another version)."""
        sample = decode_sample(raw)
        if self._needs_behaviours and sample.behaviours is None:
            raise InvalidEvent("no behaviours, which a sequence learner needs")
        return sample

    def process(self, samples: Sequence[Sample]) -> None:
        """Score and learn ``samples`` in order; then the outcome callbacks, in order."""
        clock = time.perf_counter
        scored: list[tuple[Sample, Features, dict[str, Any]]] = []
        for sample in samples:
            x = sample_features(sample)
            scores: dict[str, Any] = {}
            for name, learner in self.learners.items():
                start = clock()
                if name in self._queued:
                    scores[name] = learner.queue_predict(x)  # type: ignore[attr-defined]
                    learner.learn_one(x, sample.label)
                elif isinstance(learner, PreparedInput):
                    prepared = learner.prepare(x)
                    scores[name] = learner.predict_prepared(prepared)
                    learner.learn_prepared(prepared, sample.label)
                else:
                    scores[name] = learner.predict_proba_one(x)
                    learner.learn_one(x, sample.label)
                self.learner_seconds[name] += clock() - start
            scored.append((sample, x, scores))
        for sample, x, scores in scored:
            for name in self._queued:
                start = clock()
                scores[name] = self.learners[name].queued_score(scores[name])  # type: ignore[attr-defined]
                self.learner_seconds[name] += clock() - start
            release = Release(FINAL, sample.impression, -1, sample.label, sample.click_ts,
                              sample.final_ts, -1, 0)
            outcome = Outcome(release, scores, x)
            for callback in self.on_outcome:
                callback(outcome)

    def finish(self) -> None:
        """Nothing is open in a trainer (the service's end-of-input step)."""
