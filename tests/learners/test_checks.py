"""The shared learner checks (learners/checks.py), run over every registered learner."""

from __future__ import annotations

from typing import Any

import pytest

from learners import LEARNERS, make_learner
from learners.checks import check_dataset, yield_checks

# Test-size settings per registered learner; every learner must have an entry.
PARAMS: dict[str, dict[str, Any]] = {
    "ftrl": {"n_bits": 16},
    "ftrl_sampled": {"n_bits": 16, "negative_rate": 0.5, "inclusion_p": 0.5, "seed": 3},
    # Small trees refitted every 150 samples, so the checks cross refits, adoptions, a
    # shadow LR and swaps within their 400 samples.
    "gbdt_lr": {"n_bits": 16, "n_trees": 5, "num_leaves": 8, "min_data_in_leaf": 10,
                "buffer_size": 400, "min_samples": 100, "refit_every": 150, "adopt_after": 30,
                "shadow_window": 40, "shadow_max": 80},
    # Steps of 32 samples, so the checks cross several optimiser steps and a part batch;
    # rows admitted on the second sighting.
    "din": {"embedding_dim": 4, "capacity": 256, "batch_size": 32, "attention_hidden": (8,),
            "mlp_hidden": (16,), "device": "cpu"},
}
ALIASES = {"ftrl_sampled": "ftrl"}

CASES = [
    pytest.param(label, check, id=f"{label}-{check.__name__}")
    for label in PARAMS
    for check in yield_checks(LEARNERS[ALIASES.get(label, label)])
]


def test_every_registered_learner_is_checked():
    assert set(LEARNERS) <= {ALIASES.get(label, label) for label in PARAMS}


@pytest.mark.parametrize(("label", "check"), CASES)
def test_learner_passes_check(label, check):
    name = ALIASES.get(label, label)
    check(lambda: make_learner(name, **PARAMS[label]), check_dataset(400))


def test_a_check_fails_for_a_learner_that_breaks_its_contract():
    """The checks can fail: a learner whose predictions drift on their own is caught."""

    class Drifting:
        def __init__(self) -> None:
            self.calls = 0

        def predict_proba_one(self, x: dict[str, float]) -> float:
            self.calls += 1
            return 1 / (1 + self.calls)

        def learn_one(self, x: dict[str, float], y: int, w: float = 1.0) -> None:
            pass

    check = next(c for c in yield_checks(object) if c.__name__ == "check_predict_changes_nothing")
    with pytest.raises(AssertionError, match="predicting twice gave different scores"):
        check(Drifting, ([{"a": 1.0}] * 4, [1, 0, 1, 0], [1.0] * 4))
