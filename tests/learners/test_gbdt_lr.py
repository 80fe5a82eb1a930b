"""GBDT+LR hybrid: cold start, deterministic refits and adoption, the leaf kernel, shadow
swaps, drift, state round trips (mid-refit too), seeded determinism, input checks, and
that trees on a dense feature beat plain FTRL where the signal is non-linear."""

from __future__ import annotations

import io
import math
import time

import lightgbm as lgb
import numpy as np
import pytest

from learners import LEARNERS, FTRLProximal, Learner, LearnerError, gbdt_lr, make_learner
from learners.gbdt_lr import GBDTLR
from tests.learners.test_ftrl import auc

# Small and fast: a few thousand samples, a handful of small trees, 2**16 LR slots.
SMALL = dict(n_bits=16, n_trees=8, num_leaves=8, min_data_in_leaf=20, buffer_size=2_000,
             min_samples=400, refit_every=1_000, adopt_after=100, shadow_window=200,
             shadow_max=600, drift=False)


def make_stream(n: int, seed: int, flip_at: int | None = None
                ) -> tuple[list[dict[str, float]], list[int]]:
    """Clicks driven by a *band* of the dense feature ``num.a`` (0.35 < a < 0.65: CTR 40%,
    else 4%) — non-monotone, so a linear model on ``num.a`` cannot use it, trees can.
    ``num.b`` is noise; a user id adds a little. After ``flip_at`` the band inverts."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 40, n)
    a, b, u01 = rng.random(n), rng.random(n), rng.random(n)
    user_effect = np.linspace(-0.5, 0.5, 40)[users]
    xs, ys = [], []
    for i in range(n):
        band = 0.35 < a[i] < 0.65
        if flip_at is not None and i >= flip_at:
            band = not band
        logit = (math.log(0.4 / 0.6) if band else math.log(0.04 / 0.96)) + user_effect[i]
        ys.append(int(u01[i] < 1.0 / (1.0 + math.exp(-logit))))
        xs.append({"bias": 1.0, f"user=u{users[i]}": 1.0, "num.a": float(a[i]),
                   "num.b": float(b[i])})
    return xs, ys


def progressive(model: Learner, xs: list[dict[str, float]], ys: list[int]) -> list[float]:
    out = []
    for x, y in zip(xs, ys, strict=True):
        out.append(model.predict_proba_one(x))
        model.learn_one(x, y)
    return out


def roundtrip(state: dict) -> dict:
    """Through an .npz file without pickle, as the service's checkpoints do (nested keys
    joined with '/', 0-d arrays back to Python scalars)."""
    flat: dict[str, np.ndarray] = {}

    def put(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                put(v, f"{prefix}{k}/")
            else:
                flat[prefix + k] = np.asarray(v)

    put(state, "")
    buf = io.BytesIO()
    np.savez(buf, **flat)
    buf.seek(0)
    out: dict = {}
    with np.load(buf, allow_pickle=False) as npz:
        for path in npz.files:
            *parents, leaf = path.split("/")
            node = out
            for p in parents:
                node = node.setdefault(p, {})
            a = npz[path]
            node[leaf] = a.item() if a.ndim == 0 else a
    return out


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_same_state(a[k], b[k])
        elif isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]), k


@pytest.fixture(scope="module")
def band() -> tuple[list[dict[str, float]], list[int]]:
    return make_stream(3_000, seed=3)


def test_registered_and_satisfies_protocol() -> None:
    assert LEARNERS["gbdt_lr"] is GBDTLR
    model = make_learner("gbdt_lr", n_bits=12)
    assert isinstance(model, Learner)
    assert "GBDTLR(" in repr(model)


def test_serves_from_raw_ftrl_before_first_trees(band) -> None:
    xs, ys = band
    model = GBDTLR(**SMALL)
    plain = FTRLProximal(n_bits=16)
    n = SMALL["min_samples"] + SMALL["adopt_after"] - 1  # the first trees are not adopted yet
    for x, y in zip(xs[:n], ys[:n], strict=True):
        assert model.predict_proba_one(x) == plain.predict_proba_one(x)
        model.learn_one(x, y)
        plain.learn_one(x, y)
    assert model.stats()["trees"] == 0 and model.stats()["refit_pending"] == 1


def test_scheduled_refit_is_adopted_at_the_deterministic_sample(band) -> None:
    xs, ys = band
    model = GBDTLR(**SMALL)
    start = SMALL["min_samples"]
    for i in range(start):
        model.learn_one(xs[i], ys[i])
    assert model.stats()["refits"] == 1 and model.stats()["refit_pending"] == 1
    model._pending._thread.join()  # the fit is done long before its adoption sample...
    for i in range(start, start + SMALL["adopt_after"] - 1):
        model.learn_one(xs[i], ys[i])
    # ...and still not adopted one sample before it.
    assert model.stats()["refits_adopted"] == 0 and model.stats()["shadow_active"] == 0
    model.learn_one(xs[start + SMALL["adopt_after"] - 1], ys[start + SMALL["adopt_after"] - 1])
    stats = model.stats()
    assert stats["refits_adopted"] == 1 and stats["shadow_active"] == 1
    assert stats["refit_pending"] == 0
    # The next scheduled fit starts refit_every samples after the first one started.
    second = start + SMALL["refit_every"] - 1  # index of the sample that makes it due
    for i in range(start + SMALL["adopt_after"], second):
        model.learn_one(xs[i], ys[i])
        assert model.stats()["refits"] == 1
    model.learn_one(xs[second], ys[second])
    assert model.stats()["refits"] == 2


def test_slow_refit_is_waited_for_at_its_adoption_sample(band, monkeypatch) -> None:
    xs, ys = band
    run = gbdt_lr._Refit._run

    def slow(self, *args):
        time.sleep(0.5)
        run(self, *args)

    monkeypatch.setattr(gbdt_lr._Refit, "_run", slow)
    model = GBDTLR(**SMALL)
    n = SMALL["min_samples"] + SMALL["adopt_after"]
    for x, y in zip(xs[:n], ys[:n], strict=True):
        model.learn_one(x, y)
    assert model.stats()["refits_adopted"] == 1
    assert model.adoption_waits == 1


def _random_booster(zero_as_missing: bool, seed: int) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3_000, 5))
    X[rng.random(X.shape) < 0.1] = np.nan
    X[:, 3] = np.round(X[:, 3])  # many exact zeros and ties
    X[rng.random(3_000) < 0.2, 4] = 0.0
    z = np.nan_to_num(X, nan=0.7)
    logit = z[:, 0] * z[:, 1] + np.sin(3 * z[:, 2]) + (X[:, 3] == 0) - np.isnan(X[:, 4])
    y = (rng.random(3_000) < 1.0 / (1.0 + np.exp(-2 * logit))).astype(float)
    params = {"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1,
              "num_threads": 1, "deterministic": True, "seed": seed,
              "zero_as_missing": zero_as_missing}
    return lgb.train(params, lgb.Dataset(X, y), num_boost_round=20), X


@pytest.mark.parametrize("zero_as_missing", [False, True])
def test_numba_leaf_lookup_equals_lightgbm_pred_leaf(zero_as_missing: bool) -> None:
    booster, X = _random_booster(zero_as_missing, seed=5)
    forest = gbdt_lr._flatten_forest(booster.model_to_string(), generation=1)
    # Rows at every threshold exactly (the <= edge), just above it, NaN and zero rows.
    thresholds = forest.threshold
    edge = np.tile(np.nan_to_num(X[:1]), (2 * thresholds.size, 1))
    for k, (f, t) in enumerate(zip(forest.feature, thresholds, strict=True)):
        edge[2 * k, f] = t
        edge[2 * k + 1, f] = np.nextafter(t, np.inf)
    rows = np.vstack([X, edge, np.full((1, 5), np.nan), np.zeros((1, 5)),
                      np.random.default_rng(1).normal(size=(500, 5)) * 3])
    expected = booster.predict(rows, pred_leaf=True)
    got = np.array([forest.leaves(np.ascontiguousarray(r)) for r in rows])
    np.testing.assert_array_equal(got, expected)
    # Nearly every leaf of every tree was reached: the paths were exercised.
    visited = sum(len(set(got[:, t].tolist())) for t in range(got.shape[1]))
    assert visited >= 0.9 * sum(len(names) for names in forest.names)


def test_trees_alone_score_equals_lightgbm_predict() -> None:
    booster, X = _random_booster(False, seed=6)
    forest = gbdt_lr._flatten_forest(booster.model_to_string(), generation=1)
    rows = np.vstack([X[:200], np.full((1, 5), np.nan)])
    got = np.array([forest.raw_score(np.ascontiguousarray(r)) for r in rows])
    np.testing.assert_allclose(got, booster.predict(rows, raw_score=True), rtol=0, atol=1e-12)


def test_predict_trees_one_is_none_before_trees_then_the_newest_trees(band) -> None:
    xs, ys = band
    model = GBDTLR(**SMALL)
    assert model.predict_trees_one(xs[0]) is None
    for x, y in zip(xs, ys, strict=True):
        model.learn_one(x, y)
        if model.stats()["generation"] or model.stats()["shadow_active"]:
            break
    forest = model._shadow_forest or model._forest
    p = model.predict_trees_one(xs[1])
    raw = forest.raw_score(model._dense(xs[1], model._dense_names))
    assert p == pytest.approx(1 / (1 + np.exp(-raw)), abs=1e-15)
    # The trees alone found the band that a linear model on num.a cannot use.
    test_xs, test_ys = make_stream(2_000, seed=4)
    trees = [model.predict_trees_one(x) for x in test_xs]
    assert auc(test_ys, trees) > 0.7  # (oracle ~0.80; the raw-feature LR here ~0.5)


def test_shadow_takes_over_when_its_rolling_loss_is_lower(band) -> None:
    xs, ys = band
    model = GBDTLR(**{**SMALL, "shadow_max": 2_000, "refit_every": 2_500})
    swapped_at = None
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        before = model.stats()
        model.learn_one(x, y)
        after = model.stats()
        if after["swaps"] > before["swaps"]:
            swapped_at = i
            break
        if before["shadow_active"] and after["shadow_samples"] >= SMALL["shadow_window"]:
            # Not swapped: the shadow was not better over the window.
            assert model._loss_shadow.sum() >= model._loss_serve.sum()
    assert swapped_at is not None
    assert model.stats()["swaps_on_loss"] == 1 and model.stats()["swaps_on_warmup"] == 0
    assert model._loss_shadow.sum() < model._loss_serve.sum()
    # Not before a full window of samples in shadow.
    assert swapped_at + 1 >= SMALL["min_samples"] + SMALL["adopt_after"] + SMALL["shadow_window"]
    assert model.stats()["trees"] > 0 and model.stats()["shadow_active"] == 0


def test_worse_shadow_takes_over_only_at_the_warmup_bound() -> None:
    # Labels independent of the dense features: loud leaves (leaf_value 1) only add noise.
    rng = np.random.default_rng(11)
    n = 2_000
    xs = [{"bias": 1.0, f"user=u{u}": 1.0, "num.a": float(a), "num.b": float(b)}
          for u, a, b in zip(rng.integers(0, 40, n), rng.random(n), rng.random(n),
                             strict=True)]
    ys = (rng.random(n) < np.linspace(0.02, 0.3, 40)[rng.integers(0, 40, n)]).astype(int)
    model = GBDTLR(**{**SMALL, "refit_every": 1_500, "shadow_max": 800, "n_trees": 20,
                      "num_leaves": 16, "leaf_value": 1.0, "alpha": 0.3})
    adopted = SMALL["min_samples"] + SMALL["adopt_after"]
    for x, y in zip(xs, ys.tolist(), strict=True):
        model.learn_one(x, y)
        if model.stats()["swaps"]:
            break
    assert model.stats()["swaps_on_warmup"] == 1 and model.stats()["swaps_on_loss"] == 0
    assert model.stats()["samples"] == adopted + 800  # exactly at the bound
    assert model._loss_shadow.sum() >= model._loss_serve.sum()


def test_newer_trees_replace_a_shadow_still_in_training(band) -> None:
    xs, ys = band
    model = GBDTLR(**{**SMALL, "refit_every": 300, "adopt_after": 100, "min_samples": 400,
                      "shadow_window": 600, "shadow_max": 5_000})
    for x, y in zip(xs[:1_200], ys[:1_200], strict=True):
        model.learn_one(x, y)
    stats = model.stats()
    assert stats["refits_adopted"] >= 2 and stats["shadows_replaced"] >= 1
    assert stats["swaps"] == 0 and stats["shadow_active"] == 1


def test_concept_flip_triggers_a_drift_refit() -> None:
    flip = 2_500
    xs, ys = make_stream(3_500, seed=8, flip_at=flip)
    model = GBDTLR(**{**SMALL, "drift": True, "drift_delta": 0.05, "drift_threshold": 30.0,
                      "drift_min_instances": 200, "refit_every": 10_000})
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        model.learn_one(x, y)
        if i == flip - 1:
            assert model.stats()["drift_refits"] == 0  # no false alarm on the stable part
            assert model.stats()["trees"] > 0
    stats = model.stats()
    assert stats["drifts"] >= 1 and stats["drift_refits"] >= 1
    assert stats["refits"] == 1 + stats["drift_refits"]  # the schedule alone gives one


def test_state_roundtrip_mid_refit_gives_identical_predictions_and_continuation(band) -> None:
    xs, ys = band
    model = GBDTLR(**SMALL)
    cut = SMALL["min_samples"] + SMALL["refit_every"] + 30  # 2nd fit in flight, shadow on
    for x, y in zip(xs[:cut], ys[:cut], strict=True):
        model.learn_one(x, y)
    assert model.stats()["refit_pending"] == 1 and model.stats()["trees"] > 0
    state = roundtrip(model.state_dict())
    restored = GBDTLR.from_state_dict(state)
    assert restored.stats() == model.stats()
    other = GBDTLR(**SMALL)
    other.load_state_dict(state)
    rest_x, rest_y = xs[cut:], ys[cut:]
    assert other.predict_proba_one(rest_x[0]) == model.predict_proba_one(rest_x[0])
    assert progressive(restored, rest_x, rest_y) == progressive(model, rest_x, rest_y)
    assert restored.stats() == model.stats()
    assert_same_state(restored.state_dict(), model.state_dict())


def test_two_seeded_runs_are_identical(band) -> None:
    xs, ys = band
    params = {**SMALL, "drift": True, "seed": 42}
    a, b = GBDTLR(**params), GBDTLR(**params)
    assert progressive(a, xs, ys) == progressive(b, xs, ys)
    assert a.stats()["refits_adopted"] >= 2
    assert_same_state(a.state_dict(), b.state_dict())


def test_bad_input_raises_and_changes_nothing(band) -> None:
    xs, ys = band
    model = GBDTLR(**SMALL)
    for x, y in zip(xs[:600], ys[:600], strict=True):
        model.learn_one(x, y)
    before = model.state_dict()
    x = dict(xs[600])
    p = model.predict_proba_one(x)
    bad_calls = [
        lambda: model.learn_one(x, 2),
        lambda: model.learn_one(x, 1, -1.0),
        lambda: model.learn_one(x, 1, math.inf),
        lambda: model.learn_one({**x, "num.a": math.nan}, 1),
        lambda: model.learn_one({**x, "num.b": "high"}, 1),
        lambda: model.learn_one({**x, "user=u1": math.inf}, 0),
        lambda: model.learn_one([("bias", 1.0)], 0),
        lambda: model.predict_proba_one({**x, "num.a": math.inf}),
        lambda: model.learn_many([x, x], [0, 3]),
        lambda: model.load_state_dict({**before, "format": "other"}),
        lambda: model.load_state_dict({**before, "num_leaves": 99}),
        lambda: model.load_state_dict({**before, "buf_X": before["buf_X"][:10]}),
        lambda: model.load_state_dict({**before, "forest_model": "not a model"}),
        lambda: model.load_state_dict({**before, "lr": {"format": "x"}}),
        lambda: model.load_state_dict({k: v for k, v in before.items() if k != "ph_n"}),
        lambda: model.load_state_dict("state"),
    ]
    for call in bad_calls:
        with pytest.raises(LearnerError):
            call()
    assert_same_state(model.state_dict(), before)
    assert model.predict_proba_one(x) == p


@pytest.mark.parametrize("params", [
    {"alpha": 0.0}, {"n_bits": 0}, {"n_trees": 0}, {"num_leaves": 1}, {"learning_rate": -1},
    {"buffer_size": 100, "min_samples": 200}, {"adopt_after": 2_000, "refit_every": 1_000},
    {"shadow_window": 10, "shadow_max": 5}, {"keep_raw": "yes"}, {"leaf_value": 0.0},
    {"drift_threshold": math.nan}, {"dense_features": "num.a"}, {"dense_prefix": ""},
    {"seed": -1}, {"n_trees": 2.5},
])
def test_bad_hyper_parameters_raise(params) -> None:
    with pytest.raises(LearnerError):
        GBDTLR(**params)


def test_beats_plain_ftrl_when_a_dense_feature_carries_the_signal() -> None:
    xs, ys = make_stream(4_000, seed=21)
    ftrl = progressive(FTRLProximal(n_bits=16), xs, ys)
    hybrid = progressive(GBDTLR(**SMALL), xs, ys)
    later = slice(1_500, None)  # after the first trees had time to take over
    auc_ftrl, auc_hybrid = auc(ys[later], ftrl[later]), auc(ys[later], hybrid[later])
    assert auc_hybrid > auc_ftrl + 0.1, (auc_ftrl, auc_hybrid)


def test_batch_forms_are_loops_of_the_one_forms(band) -> None:
    xs, ys = band
    a, b = GBDTLR(**SMALL), GBDTLR(**SMALL)
    ws = [0.5 + (i % 3) for i in range(1_000)]
    a.learn_many(xs[:1_000], ys[:1_000], ws)
    for x, y, w in zip(xs[:1_000], ys[:1_000], ws, strict=True):
        b.learn_one(x, y, w)
    np.testing.assert_array_equal(a.predict_proba_many(xs[1_000:1_200]),
                                  [b.predict_proba_one(x) for x in xs[1_000:1_200]])
    assert_same_state(a.state_dict(), b.state_dict())


def test_leaves_only_lr_still_rejects_bad_raw_values(band) -> None:
    xs, ys = band
    model = GBDTLR(**{**SMALL, "keep_raw": False, "shadow_max": 200})
    for x, y in zip(xs[:800], ys[:800], strict=True):
        model.learn_one(x, y)
    assert model.stats()["trees"] > 0  # the leaves-only LR serves
    # Raw features do not reach it: another user id changes nothing...
    x = xs[800]
    other = {**{k: v for k, v in x.items() if not k.startswith("user=")}, "user=new": 1.0}
    assert model.predict_proba_one(other) == model.predict_proba_one(x)
    # ...but a bad value is still refused.
    with pytest.raises(LearnerError):
        model.learn_one({**x, "user=u1": math.nan}, 0)
