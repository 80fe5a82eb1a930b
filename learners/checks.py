"""Checks every learner must pass, run by one parametrized test over the registry.

Modelled on river's ``river.checks``: each check is a small function taking a factory
of fresh, identically configured learners and a dataset; :func:`yield_checks` lists the
checks that apply to a learner. The dataset (:func:`check_dataset`) is a deterministic
stream of feature dicts with one-hot ids, a cross, a numeric feature and labels from a
hidden logistic model, so learners have something real to learn.

>>> from learners.ftrl import FTRLProximal
>>> for check in yield_checks(FTRLProximal):
...     check(lambda: FTRLProximal(n_bits=16), check_dataset(300))
>>> [c.__name__ for c in yield_checks(FTRLProximal)][:2]
['check_learn_one_returns_none_and_leaves_its_input_alone', 'check_predict_changes_nothing']
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import numpy as np

from learners.base import Learner, LearnerError

__all__ = ["Dataset", "check_dataset", "yield_checks"]

Dataset = tuple[list[dict[str, float]], list[int], list[float]]
Factory = Callable[[], Learner]


def check_dataset(n: int, seed: int = 0) -> Dataset:
    """``n`` feature dicts, labels and FNW-like sample weights, the same for every caller."""
    rng = np.random.default_rng(seed)
    user_bias = rng.normal(0.0, 0.7, 50)
    item_bias = rng.normal(0.0, 0.7, 80)
    users, items = rng.integers(0, 50, n), rng.integers(0, 80, n)
    ctr = rng.uniform(0.0, 0.3, n)
    logits = -1.0 + user_bias[users] + item_bias[items] + 4.0 * ctr
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(int).tolist()
    xs = [{"bias": 1.0, f"user=u{u}": 1.0, f"item=i{i}": 1.0, f"user×item=u{u}|i{i}": 1.0,
           "num.item_ctr": float(c)} for u, i, c in zip(users, items, ctr, strict=True)]
    weights = rng.uniform(0.5, 2.0, n).tolist()
    return xs, labels, weights


def _learn(model: Learner, data: Dataset, start: int = 0, stop: int | None = None) -> None:
    xs, ys, ws = data
    for x, y, w in zip(xs[start:stop], ys[start:stop], ws[start:stop], strict=True):
        model.learn_one(x, y, w)


def _scores(model: Learner, xs: list[dict[str, float]]) -> list[float]:
    return [model.predict_proba_one(x) for x in xs]


def check_learn_one_returns_none_and_leaves_its_input_alone(make: Factory, data: Dataset) -> None:
    model = make()
    xs, ys, _ = data
    for x, y in zip(xs[:50], ys[:50], strict=True):
        before = copy.deepcopy(x)
        assert model.learn_one(x, y) is None, "learn_one must return None"
        assert x == before, "learn_one changed its input dict"
        model.predict_proba_one(x)
        assert x == before, "predict_proba_one changed its input dict"


def check_predict_changes_nothing(make: Factory, data: Dataset) -> None:
    model = make()
    _learn(model, data, 0, len(data[0]) // 2)
    xs = data[0][len(data[0]) // 2:]
    first = _scores(model, xs)
    assert _scores(model, xs) == first, "predicting twice gave different scores"
    assert model.predict_proba_many(xs).tolist() == first, "predict_proba_many ≠ _one"


def check_probabilities_are_finite_and_in_0_1(make: Factory, data: Dataset) -> None:
    model = make()
    _learn(model, data)
    for p in _scores(model, data[0]):
        assert 0.0 <= p <= 1.0 and math.isfinite(p), p


def check_unseen_and_missing_features_are_handled(make: Factory, data: Dataset) -> None:
    model = make()
    _learn(model, data)
    for x in ({}, {"bias": 1.0}, {"user=never-seen": 1.0, "item=new": 1.0},
              {"num.item_ctr": 0.2}, {"num.brand_new_numeric": 3.0}):
        p = model.predict_proba_one(x)
        assert 0.0 <= p <= 1.0, (x, p)
        model.learn_one(x, 1)


def check_state_dict_round_trip_gives_identical_predictions(make: Factory, data: Dataset) -> None:
    half = len(data[0]) // 2
    model = make()
    _learn(model, data, 0, half)
    state = model.state_dict()
    _assert_plain(state)
    restored = make()
    restored.load_state_dict(state)
    xs = data[0][half:]
    assert _scores(restored, xs) == _scores(model, xs), "restored learner predicts differently"
    # ... and keeps learning identically from there.
    _learn(model, data, half)
    _learn(restored, data, half)
    assert _scores(restored, data[0]) == _scores(model, data[0]), "restored learner diverged"


def _assert_plain(state: object, where: str = "state") -> None:
    """Only numpy arrays (not of objects), plain scalars, strings and nested dicts: no pickle."""
    if isinstance(state, dict):
        for key, value in state.items():
            assert isinstance(key, str), f"{where}: key {key!r} is not a str"
            _assert_plain(value, f"{where}.{key}")
    elif isinstance(state, np.ndarray):
        assert state.dtype != object, f"{where}: an object array needs pickle"
    else:
        assert state is None or type(state) in (int, float, str, bool), (
            f"{where}: {type(state).__name__} is not a plain value")


def check_seeded_runs_are_identical(make: Factory, data: Dataset) -> None:
    a, b = make(), make()
    _learn(a, data)
    _learn(b, data)
    assert _scores(a, data[0]) == _scores(b, data[0]), "two identical runs differ"


def check_learn_many_equals_a_loop_of_learn_one(make: Factory, data: Dataset) -> None:
    xs, ys, ws = data
    one, many = make(), make()
    _learn(one, data)
    step = max(len(xs) // 3, 1)
    for k in range(0, len(xs), step):
        many.learn_many(xs[k:k + step], ys[k:k + step], ws[k:k + step])
    assert _scores(many, xs) == _scores(one, xs), "learn_many differs from learn_one in order"


def check_bad_label_raises_learner_error_and_changes_nothing(make: Factory,
                                                             data: Dataset) -> None:
    model = make()
    _learn(model, data, 0, 50)
    x = data[0][0]
    before = _scores(model, data[0][:50])
    for y in (2, -1, 0.5, None, "1"):
        try:
            model.learn_one(x, y)  # type: ignore[arg-type]
        except LearnerError:
            pass
        else:
            raise AssertionError(f"label {y!r} was accepted")
    assert _scores(model, data[0][:50]) == before, "a refused sample changed the model"


def yield_checks(learner: type) -> Iterator[Callable[[Factory, Dataset], None]]:
    """The checks that apply to learners of class ``learner``.

    A class whose ``learn_many`` is not a loop of ``learn_one`` sets
    ``batch_is_sequential = False`` and skips that one check.
    """
    yield check_learn_one_returns_none_and_leaves_its_input_alone
    yield check_predict_changes_nothing
    yield check_probabilities_are_finite_and_in_0_1
    yield check_unseen_and_missing_features_are_handled
    yield check_state_dict_round_trip_gives_identical_predictions
    yield check_seeded_runs_are_identical
    yield check_bad_label_raises_learner_error_and_changes_nothing
    if getattr(learner, "batch_is_sequential", True):
        yield check_learn_many_equals_a_loop_of_learn_one
