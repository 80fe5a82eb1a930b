"""The samples topic's records, and the trainer that learns them (no broker)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from features.events import InvalidEvent
from features.featurize import impression_features
from learners import make_learner
from pipeline.samples import (
    MAX_SAMPLE_BYTES,
    SampleTrainer,
    decode_sample,
    encode_sample,
    sample_features,
)
from replay.engine import OnlineEngine, Outcome
from replay.inputs import iter_events, read_replay_input
from replay.synthetic import generate, write_stream


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> list[Outcome]:
    """Final outcomes of a joiner that publishes, as a join worker's engine does."""
    folder = tmp_path_factory.mktemp("stream")
    write_stream(generate(3_000, seed=4), folder)
    out: list[Outcome] = []
    engine = OnlineEngine({}, featurize=functools.partial(impression_features,
                                                          with_behaviours=True),
                          on_outcome=[out.append])
    engine.process(list(iter_events(read_replay_input(folder))))
    engine.finish()
    return out


def test_a_sample_round_trips_its_features_and_behaviours_exactly(outcomes):
    with_sequences = [o for o in outcomes if o.features.behaviours.recent_item.size]
    assert with_sequences
    for outcome in with_sequences[:200]:
        sample = decode_sample(encode_sample(outcome))
        x = sample_features(sample)
        assert dict(x) == dict(outcome.features)
        sent, got = outcome.features.behaviours, x.behaviours
        for field in ("recent_item", "recent_category", "recent_age_s", "lifelong_item",
                      "lifelong_category", "lifelong_age_s"):
            np.testing.assert_array_equal(getattr(got, field), getattr(sent, field))
            assert getattr(got, field).dtype == getattr(sent, field).dtype
        assert got.ts_ms == sent.ts_ms
        assert (sample.impression, sample.label, sample.final_ts) == (
            outcome.release.impression, outcome.release.label, outcome.release.final_ts)


@pytest.mark.parametrize(("raw", "reason"), [
    (None, "no value"),
    (b"[1, 2]", "Expected `object`"),
    (b"x" * (MAX_SAMPLE_BYTES + 1), "oversized"),
])
def test_records_that_are_not_samples_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(InvalidEvent, match=reason):
        decode_sample(raw)


def test_behaviour_lists_of_different_lengths_are_rejected(outcomes):
    raw = encode_sample(next(o for o in outcomes if o.features.behaviours.recent_item.size))
    broken = raw.replace(b'"recent_age_s":[', b'"recent_age_s":[1.0,', 1)
    with pytest.raises(InvalidEvent, match="differ in length"):
        decode_sample(broken)


def test_a_sequence_learner_refuses_samples_without_behaviours(outcomes):
    bare = Outcome(outcomes[0].release, {}, dict(outcomes[0].features))  # no behaviours
    trainer = SampleTrainer({"din": make_learner("din")})
    with pytest.raises(InvalidEvent, match="no behaviours"):
        trainer.decode(encode_sample(bare))
    assert SampleTrainer({"ftrl": make_learner("ftrl")}).decode(encode_sample(bare))


def test_the_trainer_scores_each_sample_before_learning_it(outcomes):
    samples = [decode_sample(encode_sample(o)) for o in outcomes[:500]]
    scored: list[Outcome] = []
    trainer = SampleTrainer({"ftrl": make_learner("ftrl")}, on_outcome=[scored.append])
    trainer.process(samples)
    reference = make_learner("ftrl")
    for sample, outcome in zip(samples, scored, strict=True):
        x = sample_features(sample)
        assert outcome.scores["ftrl"] == reference.predict_proba_one(x)  # before learning it
        reference.learn_one(x, sample.label)
    assert trainer.learners["ftrl"].n_learned == len(samples)
