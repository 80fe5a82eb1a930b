"""The small protocol every learner implements, and the error it raises on bad input.

Learners are online binary classifiers over river-style sparse feature dicts
(``{"name": value}``). The service and the replay drive them only through this protocol,
so any learner can be swapped in by name (see :func:`learners.make_learner`).

>>> from learners.ftrl import FTRLProximal
>>> isinstance(FTRLProximal(n_bits=4), Learner)
True
>>> isinstance(object(), Learner)
False
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Learner", "LearnerError"]


class LearnerError(ValueError):
    """Bad input to a learner: a label not in {0, 1}, a non-finite feature value or sample
    weight, an invalid hyper-parameter, or a state dict of the wrong format, version or shape.

    Subclasses ``ValueError`` so generic callers that already catch bad values keep working;
    the service catches it narrowly to route one bad record to the dead-letter queue instead
    of crashing.
    """


@runtime_checkable
class Learner(Protocol):
    """Online binary CTR learner.

    ``predict_proba_one`` never changes the state; ``learn_one`` applies one sample.
    The ``_many`` forms are exactly a loop of the ``_one`` calls, in order.
    ``state_dict`` holds only numpy arrays and plain Python scalars / strings, so a
    checkpoint can be written without pickle; ``load_state_dict`` refuses (with
    :class:`LearnerError`) a state of another format, version or hyper-parameters.
    """

    def predict_proba_one(self, x: dict[str, float]) -> float:
        """Probability of a click for one feature dict."""
        ...

    def learn_one(self, x: dict[str, float], y: int, w: float = 1.0) -> None:
        """Learn one sample with label ``y`` in {0, 1} and sample weight ``w``."""
        ...

    def predict_proba_many(self, batch: Sequence[dict[str, float]]) -> np.ndarray:
        """Click probabilities of a batch, as a float64 array."""
        ...

    def learn_many(
        self,
        batch: Sequence[dict[str, float]],
        y: Sequence[int] | np.ndarray,
        w: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Learn a batch, in order; ``w=None`` means every weight is 1."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The learned state (and what identifies it), detached from the learner."""
        ...

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Replace the learned state with ``d`` (as returned by :meth:`state_dict`)."""
        ...
