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

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Learner", "LearnerError", "batch_labels", "good_weight"]


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


def good_weight(w: Any) -> bool:
    """Whether ``w`` is a usable sample weight: a finite number >= 0."""
    try:
        return 0.0 <= w < math.inf  # also False for NaN
    except TypeError:
        return False


def batch_labels(y: Sequence[int] | np.ndarray, w: Sequence[float] | np.ndarray | None,
                 n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int8) and sample weights (float64) of a batch of ``n``, all checked first.

    Raises :class:`LearnerError` naming the first bad sample, so a learner can refuse a
    batch before learning any of it.

    >>> batch_labels([1, 0, True], None, 3)
    (array([1, 0, 1], dtype=int8), array([1., 1., 1.]))
    >>> batch_labels([1, 2], [1.0, 1.0], 2)
    Traceback (most recent call last):
    ...
    learners.base.LearnerError: sample 1: label must be 0 or 1, got np.int64(2)
    """
    ys = np.asarray(y)
    ws = np.ones(n) if w is None else np.asarray(w)
    if ys.shape != (n,) or ws.shape != (n,):
        raise LearnerError(f"batch has {n} samples but {ys.size} labels and {ws.size} weights")
    if ys.dtype.kind in "biuf":
        good = (ys == 0) | (ys == 1)
    else:  # strings, None and other objects: only the numbers 0 and 1 are labels
        good = np.fromiter((not isinstance(v, str) and v in (0, 1) for v in ys.tolist()),
                           bool, n)
    if not good.all():
        k = int(np.argmin(good))
        raise LearnerError(f"sample {k}: label must be 0 or 1, got {ys[k]!r}")
    if ws.dtype.kind in "fiu":
        with np.errstate(invalid="ignore"):
            good = np.isfinite(ws) & (ws >= 0)
    else:
        good = np.fromiter((good_weight(v) for v in ws.tolist()), bool, n)
    if not good.all():
        k = int(np.argmin(good))
        raise LearnerError(f"sample {k}: sample weight must be finite and >= 0, got {ws[k]!r}")
    return ys.astype(np.int8), ws.astype(np.float64)
