"""DIN learner: mini-batch steps, queued scoring, sequences, the lifelong branch, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from features.featurize import Behaviours, Features
from features.hashing import hash_names
from learners import DIN, LEARNERS, Learner, LearnerError, make_learner
from learners.base import QueuedScoring
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from tests.learners.test_ftrl import auc

SMALL = dict(embedding_dim=8, capacity=2_000, batch_size=64, attention_hidden=(16,),
             mlp_hidden=(32,), lr=3e-3, embedding_lr=0.03, device="cpu")


def _hashes(prefix: str, values) -> np.ndarray:
    return hash_names(f"{prefix}{v}" for v in values)


def sample(user: int, item: int, category: int, recent: list[tuple[int, int]],
           lifelong: list[tuple[int, int]], ts: int, position: int = 0) -> Features:
    """A feature dict with behaviour sequences, as the engine builds them."""
    b = Behaviours(_hashes("item=", [i for i, _ in recent]),
                   _hashes("category=", [c for _, c in recent]),
                   np.arange(1, len(recent) + 1, dtype=np.float32) * 60,
                   _hashes("item=", [i for i, _ in lifelong]),
                   _hashes("category=", [c for _, c in lifelong]),
                   np.arange(1, len(lifelong) + 1, dtype=np.float32) * 86_400, ts)
    return Features({"bias": 1.0, f"user=u{user}": 1.0, f"item=i{item}": 1.0,
                     f"category=c{category}": 1.0, f"position={position}": 1.0,
                     "ctx.device=ios": 1.0, "num.x": 0.5}, behaviours=b)


def _train(model: DIN, xs, ys) -> None:
    for x, y in zip(xs, ys, strict=True):
        model.learn_one(x, y)


def test_registered_and_satisfies_the_protocols() -> None:
    assert LEARNERS["din"] is DIN
    model = make_learner("din", **SMALL)
    assert isinstance(model, Learner) and isinstance(model, QueuedScoring)
    assert model.uses_behaviours


def test_predicts_one_half_until_it_learns_and_steps_once_per_batch() -> None:
    model = DIN(**SMALL)
    x = sample(1, 2, 3, [], [], ts=1_000)
    assert model.predict_proba_one(x) == 0.5
    for k in range(SMALL["batch_size"] - 1):
        model.learn_one(x, k % 2)
    assert model.stats()["steps"] == 0 and model.stats()["buffered"] == 63
    before = model.predict_proba_one(x)
    model.learn_one(x, 1)
    assert model.stats()["steps"] == 1 and model.stats()["buffered"] == 0
    assert model.stats()["step_seconds"] > 0  # the service's step-time metric
    assert model.predict_proba_one(x) != before


def test_queued_scores_are_those_of_the_model_at_queue_time() -> None:
    model = DIN(**SMALL)
    rng = np.random.default_rng(0)
    xs = [sample(int(u), int(i), int(i) % 5, [(int(i), int(i) % 5)], [], ts=k)
          for k, (u, i) in enumerate(rng.integers(0, 30, (200, 2)))]
    _train(model, xs[:64], [1, 0] * 32)
    tickets = [model.queue_predict(x) for x in xs[100:110]]
    expected = [model.predict_proba_one(x) for x in xs[100:110]]
    _train(model, xs[:64], [0, 1] * 32)  # a step: the queue is scored first
    got = [model.queued_score(t) for t in tickets]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert [model.predict_proba_one(x) for x in xs[100:110]] != pytest.approx(expected)
    with pytest.raises(LearnerError, match="ticket"):
        model.queued_score(tickets[0])  # read once


def test_learns_from_the_recent_sequence_whether_the_target_was_clicked_before() -> None:
    # Label 1 iff the target item is among the user's recent clicks: only the attention
    # over the sequence (target and behaviour share the item's row) can tell.
    rng = np.random.default_rng(1)

    def draw(n: int, offset: int):
        xs, ys = [], []
        for k in range(n):
            recent = [(int(i), int(i) % 7) for i in rng.integers(0, 300, 5)]
            seen = rng.random() < 0.5
            item = recent[int(rng.integers(0, 5))][0] if seen else int(rng.integers(300, 600))
            xs.append(sample(int(rng.integers(0, 50)), item, item % 7, recent, [],
                             ts=offset + k))
            ys.append(int(seen))
        return xs, ys

    model = DIN(**{**SMALL, "admit_after": 1})
    for _ in range(4):
        xs, ys = draw(2_000, 0)
        _train(model, xs, ys)
    test_xs, test_ys = draw(1_000, 10_000)
    assert auc(test_ys, [model.predict_proba_one(x) for x in test_xs]) > 0.8


def _interest_stream(n: int, seed: int):
    """Clicks follow a user's long-term interest in the target's category, visible only in
    the lifelong same-category history (the recent clicks are of random categories)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(n):
        cat = int(rng.integers(0, 20))
        depth = int(rng.integers(0, 9))  # same-category clicks in the user's lifetime
        lifelong = [(int(i), cat) for i in rng.integers(0, 2_000, depth)]
        recent = [(int(i), int(rng.integers(0, 20))) for i in rng.integers(0, 2_000, 3)]
        p = 1 / (1 + np.exp(-(depth - 4)))
        xs.append(sample(int(rng.integers(0, 5_000)), int(rng.integers(0, 2_000)), cat,
                         recent, lifelong, ts=k))
        ys.append(int(rng.random() < p))
    return xs, ys


def test_lifelong_branch_helps_when_clicks_follow_long_term_category_interest() -> None:
    train_xs, train_ys = _interest_stream(8_000, seed=2)
    test_xs, test_ys = _interest_stream(1_500, seed=3)
    scores = {}
    for branch in (True, False):
        model = DIN(**{**SMALL, "use_lifelong": branch, "seed": 4})
        _train(model, train_xs, train_ys)
        scores[branch] = auc(test_ys, [model.predict_proba_one(x) for x in test_xs])
    assert scores[True] > 0.7 > scores[False] + 0.1, scores


def test_rows_handed_to_new_ids_start_fresh() -> None:
    # 40 own rows and a 1 ms TTL: users come and go, rows are reused.
    model = DIN(**{**SMALL, "capacity": 40, "ttl_ms": 1, "admit_after": 1, "batch_size": 16})
    for k in range(400):
        model.learn_one(sample(k, k % 3, 0, [], [], ts=10 * k), k % 2)
    stats = model.stats()
    assert stats["ids_evicted"] > 0 and stats["ids_admitted"] > 40
    # The last step's fresh rows: re-initialised, their Adam moments cleared.
    model.ids.lookup(hash_names(["user=u999999"]), now_ms=10_000, learn=True)
    row = int(model.ids.take_fresh_rows()[0])
    weight = model._net.embedding.weight
    weight.data[row] = 5.0
    state = model._opt_embedding.state[weight]
    state["exp_avg"][row] = 1.0
    model._reinitialise(torch.tensor([row]))
    assert float(weight[row].detach().abs().max()) < 0.1
    assert float(state["exp_avg"][row].abs().max()) == 0.0


def test_state_through_a_checkpoint_file_gives_an_identical_continuation(tmp_path) -> None:
    xs, ys = _interest_stream(300, seed=5)
    model = DIN(**SMALL)
    _train(model, xs[:200], ys[:200])  # 3 steps and 8 buffered samples
    save_checkpoint(tmp_path / "ck", {"learner.din": model}, offsets={})
    restored = DIN(**SMALL)
    load_checkpoint(tmp_path / "ck", {"learner.din": restored})
    learned = {k: v for k, v in model.stats().items() if k != "step_seconds"}  # wall time
    assert {k: v for k, v in restored.stats().items() if k != "step_seconds"} == learned
    _train(model, xs[200:], ys[200:])
    _train(restored, xs[200:], ys[200:])
    assert [restored.predict_proba_one(x) for x in xs] == [
        model.predict_proba_one(x) for x in xs]


@pytest.mark.parametrize(("change", "match"), [
    ({"embedding_dim": 4}, "embedding_dim"), ({"batch_size": 32}, "batch_size"),
    ({"use_lifelong": False}, "use_lifelong"), ({"mlp_hidden": (16,)}, "mlp_hidden"),
])
def test_state_of_other_hyper_parameters_is_refused(change, match) -> None:
    model = DIN(**SMALL)
    _train(model, *_interest_stream(70, seed=6))
    other = DIN(**{**SMALL, **change})
    with pytest.raises(LearnerError, match=match):
        other.load_state_dict(model.state_dict())
    assert other.predict_proba_one(sample(1, 1, 1, [], [], ts=0)) == 0.5  # unchanged


@pytest.mark.parametrize(("params", "match"), [
    ({"embedding_dim": 0}, "embedding_dim"), ({"batch_size": 1.5}, "batch_size"),
    ({"optimizer": "sgd"}, "optimizer"), ({"lr": -1.0}, "lr"),
    ({"position_dropout": 1.0}, "position_dropout"), ({"activation": "relu"}, "activation"),
    ({"mlp_hidden": ()}, "mlp_hidden"), ({"lifelong_heads": 3}, "lifelong_heads"),
    ({"device": "tpu"}, "device"), ({"cpu_threads": 0}, "cpu_threads"),
])
def test_bad_hyper_parameters_raise_learner_error(params, match) -> None:
    with pytest.raises(LearnerError, match=match):
        DIN(**params)


@pytest.mark.parametrize("x", [
    {"user=u1": float("nan")}, {"position=first": 1.0}, {1: 1.0}, ["user=u1"],
])
def test_bad_features_raise_and_change_nothing(x) -> None:
    model = DIN(**SMALL)
    good = sample(1, 2, 3, [], [], ts=0)
    model.learn_one(good, 1)
    before = model.state_dict()
    with pytest.raises(LearnerError):
        model.learn_one(x, 1)
    with pytest.raises(LearnerError):
        model.predict_proba_one(x)
    assert model.stats()["buffered"] == before["buffer"]["y"].size


def test_fnw_mode_weights_inside_the_step_without_a_forward_pass_per_sample(tmp_path) -> None:
    from replay.run import run_replay
    from replay.synthetic import generate, write_stream

    write_stream(generate(6_000, seed=3), tmp_path / "s")
    calls = {"single": 0}
    original = DIN.predict_proba_one

    def counting(self, x):
        calls["single"] += 1
        return original(self, x)

    DIN.predict_proba_one = counting
    try:
        result = run_replay(tmp_path / "s", ["din"], None, modes=("wait", "fnw"),
                            learner_params={"din": SMALL}, warmup_ms=0, show_progress=False)
    finally:
        DIN.predict_proba_one = original
    assert calls["single"] == 0  # scores are queued, FNW weights come from the step
    wait, fnw = result.modes["wait"], result.modes["fnw"]
    assert wait["learners"]["din"]["samples"] == fnw["learners"]["din"]["samples"] > 4_000
    assert fnw["freshness"]["first_training_delay_s"] == 0.0
    assert 0.0 < fnw["learners"]["din"]["auc"] < 1.0


def test_position_dropout_sends_a_tenth_of_training_positions_to_missing_seeded() -> None:
    seen: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    for run in (0, 1):
        model = DIN(**{**SMALL, "batch_size": 4_000})
        x = sample(1, 2, 3, [], [], ts=0, position=5)
        model.learn_one(x, 1)  # builds the network: spy on its training passes
        forward = model._net.forward

        def spy(batch, train_position, forward=forward, run=run):
            if train_position:
                seen[run].append(batch.position.clone())
            return forward(batch, train_position)

        model._net.forward = spy
        for k in range(39_999):
            model.learn_one(x, k % 2)
    positions = torch.cat(seen[0])
    assert positions.numel() == 40_000 and set(positions.unique().tolist()) == {0, 6}
    dropped = (positions == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.01  # ~6.7 standard deviations of the binomial rate
    assert torch.equal(positions, torch.cat(seen[1]))  # the same draws in a second run


def test_the_wide_part_is_the_ftrl_learner_until_the_first_step() -> None:
    # The network's output layer starts at zero: before a step, scores are exactly the wide
    # part's, an FTRL learner fed the same samples, scoring without the position names
    # (or with them, with serve_position).
    from learners import FTRLProximal
    from learners.din import _without_position

    xs = [sample(k % 7, k % 11, k % 3, [(1, 1)], [], ts=k, position=k % 4) for k in range(40)]
    ys = [int(k % 3 == 0) for k in range(40)]
    ftrl = FTRLProximal()
    _train(ftrl, xs, ys)
    for serve_position in (False, True):
        model = DIN(**SMALL, position_dropout=0.0, serve_position=serve_position)
        _train(model, xs, ys)
        assert model.stats()["steps"] == 0
        for x in xs[:10]:
            wide = ftrl.predict_proba_one(x if serve_position else _without_position(x))
            assert model.predict_proba_one(x) == pytest.approx(wide, abs=1e-12)
    assert _without_position(xs[5]).keys() == xs[5].keys() - {"position=1"}


def test_the_position_moves_the_score_only_with_serve_position() -> None:
    rng = np.random.default_rng(0)
    xs = [sample(int(u), int(i), int(i) % 4, [], [], ts=k, position=int(p))
          for k, (u, i, p) in enumerate(rng.integers(0, 8, (640, 3)))]
    ys = [int("position=0" in x) for x in xs]  # clicks at the top position only
    for serve_position in (False, True):
        model = DIN(**SMALL, serve_position=serve_position)
        _train(model, xs, ys)
        top, low = (sample(1, 2, 2, [], [], ts=700, position=p) for p in (0, 5))
        gap = model.predict_proba_one(top) - model.predict_proba_one(low)
        assert gap > 0.05 if serve_position else gap == 0.0


def test_an_id_without_a_row_trains_the_default_row_in_the_step_that_admits_it() -> None:
    # Predictions before the step served the new ID the default row: so does its training,
    # once; its own row learns from the next step on.
    model = DIN(**{**SMALL, "batch_size": 4}, admit_after=1, wide=False)
    xs = [sample(1, 2, 3, [], [], ts=k) for k in range(4)]
    _train(model, xs, [1, 0, 1, 0])
    row = int(model.ids.lookup(hash_names(["user=u1"]), 10, learn=False)[0])
    assert row > 0
    moment = model._opt_embedding.state[model._net.embedding.weight]["exp_avg"]
    assert moment[row].abs().sum() == 0 and moment[0].abs().sum() > 0
    _train(model, xs, [1, 0, 1, 0])
    assert moment[row].abs().sum() > 0
