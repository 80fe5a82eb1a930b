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
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["HashedRows", "Learner", "LearnerError", "PreparedInput", "QueuedScoring",
           "batch_labels", "check_float", "check_int", "check_state", "close_learner",
           "good_weight", "learn_each"]


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


@runtime_checkable
class QueuedScoring(Protocol):
    """Optional for learners whose predictions are much cheaper in batches (DIN).

    ``queue_predict(x)`` takes an impression now and returns a ticket; ``queued_score``
    returns, for that ticket, the score of the model as it was at ``queue_predict`` — the
    learner scores its whole queue in one batch before its parameters next change (or
    when a score is asked for), so it equals ``predict_proba_one(x)`` at that time up to
    the rounding of batched arithmetic — and forgets the ticket.
    The engine uses it so that each impression is still scored with the model of its
    event time, without a forward pass per impression.
    """

    def queue_predict(self, x: dict[str, float]) -> int:
        """Take ``x`` for scoring with the current model; a ticket for its score."""
        ...

    def queued_score(self, ticket: int) -> float:
        """The score of a queued impression (each ticket can be read once)."""
        ...


@runtime_checkable
class PreparedInput(Protocol):
    """Optional for learners that turn a feature dict into their own input first (FTRL:
    the hashed row), so that an impression scored now and learned later is turned once.

    ``prepare(x)`` validates and converts ``x`` (raising :class:`LearnerError` as
    ``predict_proba_one`` would); the result depends on ``x`` and the hyper-parameters
    only, never on the learned state. ``predict_prepared(p)`` and
    ``learn_prepared(p, y, w)`` then equal ``predict_proba_one(x)`` and
    ``learn_one(x, y, w)`` exactly.
    """

    def prepare(self, x: dict[str, float]) -> Any: ...

    def predict_prepared(self, prepared: Any) -> float: ...

    def learn_prepared(self, prepared: Any, y: int, w: float = 1.0) -> None: ...


@runtime_checkable
class HashedRows(Protocol):
    """Optional for learners that read a feature dict only through its hashed names (FTRL
    without crosses): the engine then builds an impression's row in compiled code
    (:class:`features.rows.ImpressionRows`) and hands over a whole batch of scores and
    learns in one call.

    ``reads_hashed_rows`` says whether this instance qualifies (a cross needs the names).
    ``score_learn_rows(batch, y)`` goes through the rows in order: each is scored; a row
    labelled 0 or 1 is then learned with weight 1, one labelled -1 is only scored. It
    returns the scores, and equals ``predict_proba_one`` / ``learn_one`` over the same
    rows as dicts exactly.
    """

    reads_hashed_rows: bool

    def score_learn_rows(self, batch: Any, y: np.ndarray) -> np.ndarray: ...


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int if it is one in ``[low, high]``, else :class:`LearnerError`.

    >>> check_int("n_trees", 3, 1)
    3
    >>> check_int("n_trees", True, 1)
    Traceback (most recent call last):
    ...
    learners.base.LearnerError: n_trees must be an int, got True
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise LearnerError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise LearnerError(f"{name} must be {bound}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, low: float, strict: bool) -> float:
    """``value`` as a finite float ``>= low`` (``> low`` when ``strict``), else
    :class:`LearnerError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LearnerError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < low or (strict and value == low):
        raise LearnerError(f"{name} must be finite and {'>' if strict else '>='} {low}, "
                           f"got {value!r}")
    return value


def check_state(d: Any, fmt: str, version: int, required: Sequence[str] = (),
                hyper: Mapping[str, Any] | None = None,
                error: type[ValueError] = LearnerError) -> None:
    """Refuse (with ``error``, :class:`LearnerError` by default) a state dict that is not a
    mapping, lacks a required key, is of another format or version, or was learned with
    other hyper-parameters than ``hyper`` (arrays compared by value, NaN equal to NaN in
    float arrays).

    >>> check_state({"format": "f", "version": 2, "alpha": 0.1}, "f", 2, hyper={"alpha": 0.2})
    Traceback (most recent call last):
    ...
    learners.base.LearnerError: state dict was learned with alpha=0.1, this one has alpha=0.2
    """
    if not isinstance(d, Mapping):
        raise error(f"state dict must be a mapping, got {type(d).__name__}")
    hyper = hyper or {}
    missing = [k for k in ("format", "version", *hyper, *required) if k not in d]
    if missing:
        raise error(f"state dict lacks {', '.join(missing)}")
    if d["format"] != fmt:
        raise error(f"state dict format is {d['format']!r}, expected {fmt!r}")
    if d["version"] != version:
        raise error(f"state dict version {d['version']!r} is not supported "
                    f"(expected {version})")
    for name, mine in hyper.items():
        theirs = d[name]
        if not _same_value(theirs, mine):
            raise error(f"state dict was learned with {name}={_plain(theirs)!r}, "
                        f"this one has {name}={_plain(mine)!r}")


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def _same_value(theirs: Any, mine: Any) -> bool:
    if not isinstance(mine, np.ndarray):
        return bool(theirs == mine)
    try:
        return bool(np.array_equal(np.asarray(theirs), mine, equal_nan=mine.dtype.kind == "f"))
    except (TypeError, ValueError):  # not comparable with an array of numbers
        return False


def learn_each(learner: Learner, batch: Sequence[dict[str, float]],
               y: Sequence[int] | np.ndarray, w: Sequence[float] | np.ndarray | None) -> None:
    """``learner.learn_one`` on each sample in order, labels and weights checked first; an
    error names the sample. The ``learn_many`` of learners without a batch kernel."""
    ys, ws = batch_labels(y, w, len(batch))
    for k, (xk, yk, wk) in enumerate(zip(batch, ys.tolist(), ws.tolist(), strict=True)):
        try:
            learner.learn_one(xk, yk, wk)
        except LearnerError as e:
            raise LearnerError(f"sample {k}: {e}") from None


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


def close_learner(learner: object) -> None:
    """Release what a learner holds besides its state — processes, such as DIN's
    data-parallel gradient workers — if it has a ``close()``; the state stays usable."""
    close = getattr(learner, "close", None)
    if callable(close):
        close()
