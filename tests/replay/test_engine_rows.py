"""The engine's compiled-rows path (features.rows + HashedRows learners) against its dict path."""

from __future__ import annotations

import numpy as np
import pytest

from features.events import Click, Impression
from features.featurize import impression_features
from features.hashing import hash_names
from features.joiner import Joiner, JoinerConfig
from features.rows import ImpressionRows
from learners import make_learner
from learners.ftrl import FTRLProximal
from replay.engine import OnlineEngine
from replay.inputs import iter_events, read_replay_input
from replay.synthetic import generate, write_stream
from tests.features.test_eviction import CONFIG, churn


@pytest.fixture(scope="module")
def stream_events(tmp_path_factory) -> list[Impression | Click]:
    folder = tmp_path_factory.mktemp("stream")
    write_stream(generate(12_000, seed=5), folder)
    return list(iter_events(read_replay_input(folder)))


def run(events, compiled: bool, config: JoinerConfig | None = None, batch: int = 500,
        learners=None, sweep: bool = False):
    learners = learners or {"ftrl": make_learner("ftrl")}
    seen: list = []
    engine = OnlineEngine(learners, config or JoinerConfig(), on_outcome=[seen.append],
                          compiled_rows=compiled)
    for start in range(0, len(events), batch):
        engine.process(events[start:start + batch])
        if sweep:
            engine.joiner.sweep()
    engine.finish()
    return engine, [(o.release.impression.impression_id, o.release.label, dict(o.scores))
                    for o in seen]


def assert_same_ftrl(a: FTRLProximal, b: FTRLProximal) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key, value in sa.items():
        assert np.array_equal(value, sb[key]), key


def test_compiled_rows_score_and_learn_bit_for_bit_as_the_dict_path(stream_events):
    fast, fast_out = run(stream_events, compiled=True)
    slow, slow_out = run(stream_events, compiled=False)
    assert fast._rows is not None and slow._rows is None
    assert len(fast_out) > 10_000
    assert fast_out == slow_out  # same impressions, labels and scores, exactly
    assert_same_ftrl(fast.learners["ftrl"], slow.learners["ftrl"])
    assert fast.freshness() == slow.freshness()


def test_rows_built_at_learning_time_match_the_dict_even_as_evicted_codes_are_reused():
    events = churn(40)
    fast, fast_out = run(events, compiled=True, config=CONFIG, batch=64, sweep=True)
    slow, slow_out = run(events, compiled=False, config=CONFIG, batch=64, sweep=True)
    assert fast.joiner.stats.users_evicted > 200
    assert fast_out == slow_out
    assert_same_ftrl(fast.learners["ftrl"], slow.learners["ftrl"])


def test_each_row_holds_the_hashed_names_and_values_of_impression_features(stream_events):
    joiner = Joiner()
    rows = ImpressionRows(joiner)
    checked = 0
    for start in range(0, 4_000, 400):
        result = joiner.push(stream_events[start:start + 400])
        rows.admit(result.rows, result.events)
        scored = np.flatnonzero(result.rows >= 0)
        batch = rows.build(result.rows[scored])
        for b, i in enumerate(scored.tolist()):
            x = impression_features(result.events[i], joiner.features(int(result.rows[i])))
            lo, hi = batch.indptr[b], batch.indptr[b + 1]
            assert batch.hashes[lo:hi].tolist() == hash_names(x).tolist()
            assert batch.values[lo:hi].tolist() == list(x.values())
            checked += 1
    assert checked > 3_000


def test_an_engine_restored_mid_stream_on_compiled_rows_continues_as_one_run(stream_events):
    cut = len(stream_events) // 2
    whole, whole_out = run(stream_events, compiled=True)
    first = OnlineEngine({"ftrl": make_learner("ftrl")}, on_outcome=[])
    for start in range(0, cut, 500):
        first.process(stream_events[start:min(start + 500, cut)])
    state, learner_state = first.state_dict(), first.learners["ftrl"].state_dict()
    assert state["open_rows"].size > 0
    seen: list = []
    second = OnlineEngine({"ftrl": FTRLProximal.from_state_dict(learner_state)},
                          on_outcome=[seen.append])
    second.load_state_dict(state)
    for start in range(cut, len(stream_events), 500):
        second.process(stream_events[start:start + 500])
    second.finish()
    tail = [(o.release.impression.impression_id, o.release.label, dict(o.scores)) for o in seen]
    assert tail == whole_out[len(whole_out) - len(tail):]
    assert_same_ftrl(second.learners["ftrl"], whole.learners["ftrl"])


@pytest.mark.parametrize("setting", ["crosses", "fnw", "on_score", "second learner"])
def test_the_dict_path_is_kept_where_compiled_rows_cannot_stand_in(setting):
    learners = {"ftrl": make_learner("ftrl")}
    kwargs: dict = {}
    if setting == "crosses":
        learners = {"ftrl": FTRLProximal(crosses=[("user", "category")])}
    elif setting == "fnw":
        kwargs["joiner_config"] = JoinerConfig(mode="fnw")
    elif setting == "on_score":
        kwargs["on_score"] = [lambda imp, features: None]
    else:
        learners["gbdt_lr"] = make_learner("gbdt_lr")
    assert OnlineEngine(learners, **kwargs)._rows is None
    assert OnlineEngine({"ftrl": make_learner("ftrl")})._rows is not None


def test_score_learn_rows_only_scores_rows_labelled_minus_one():
    x = {"bias": 1.0, "user=u1": 1.0, "num.user_ctr_1h": 0.25}
    batch = FTRLProximal(n_bits=10)._batch([x, x, x, x])
    model, reference = FTRLProximal(n_bits=10), FTRLProximal(n_bits=10)
    reference.learn_one(x, 1)
    reference.learn_one(x, 0)
    scores = model.score_learn_rows(batch, np.array([1, -1, 0, -1], np.int8))
    assert model.n_learned == 2
    # FTRL's stored weights lag its z, n by one step of each feature (river's order), so
    # the first step moves no score; the second does.
    assert scores.tolist()[:3] == [0.5, 0.5, 0.5]
    assert scores[3] == reference.predict_proba_one(x) != 0.5
    assert_same_ftrl(model, reference)


def test_rows_widen_for_impressions_with_more_context_fields_than_before():
    joiner = Joiner()
    rows = ImpressionRows(joiner)
    plain = Impression("i0", "r0", "u1", "it1", "c1", 0, 0)
    rich = Impression("i1", "r1", "u1", "it2", "c1", 2, 10,
                      {"device": "ios", "page": "home", "hour": "7"})
    feature_rows = []
    for imp in (plain, rich):
        joiner.push([imp])
        result = joiner.settle()
        rows.admit(result.rows, result.events)
        feature_rows.append(int(result.rows[0]))
    # The first row, admitted while rows were narrow, still reads right after widening.
    batch = rows.build(np.array(feature_rows))
    for b, (imp, row) in enumerate(zip((plain, rich), feature_rows, strict=True)):
        x = impression_features(imp, joiner.features(row))
        lo, hi = batch.indptr[b], batch.indptr[b + 1]
        assert batch.hashes[lo:hi].tolist() == hash_names(x).tolist()
        assert batch.values[lo:hi].tolist() == list(x.values())


@pytest.mark.parametrize("compiled", [True, False])
def test_batch_outcome_callbacks_see_the_per_outcome_stream_in_order(stream_events, compiled):
    one_by_one: list = []
    batches: list = []

    def on_outcomes(releases, scores):
        assert all(len(s) == len(releases) and s.dtype == np.float64 for s in scores.values())
        batches.extend((r.impression.impression_id, r.label, {"ftrl": float(s)})
                       for r, s in zip(releases, scores["ftrl"], strict=True))

    engine = OnlineEngine({"ftrl": make_learner("ftrl")}, on_outcome=[one_by_one.append],
                          on_outcomes=[on_outcomes], compiled_rows=compiled)
    for start in range(0, 6_000, 500):
        engine.process(stream_events[start:start + 500])
    engine.finish()
    assert (engine._rows is not None) == compiled
    assert len(batches) > 4_000
    assert batches == [(o.release.impression.impression_id, o.release.label, dict(o.scores))
                       for o in one_by_one]
