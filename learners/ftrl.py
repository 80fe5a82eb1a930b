"""FTRL-Proximal logistic regression over hashed sparse features (McMahan et al., 2013).

The reference semantics are river's
``linear_model.LogisticRegression(optimizer=optim.FTRLProximal(alpha, beta, l1, l2),
intercept_lr=0)`` (river 0.22 - 0.26), which this class reproduces step for step so that,
with no hash collisions, both give the same predictions (checked in
``tests/learners/test_ftrl.py`` to 1e-9 over thousands of events). What river does, per
``learn_one(x, y, w)``:

1. ``p_raw = sum_i w_i * x_i`` (intercept fixed at 0 since ``intercept_lr=0``), using the
   *stored* weights ``w``.
2. Loss gradient of the log loss with ``y`` mapped to ``s = ±1`` and ``m = s * p_raw``:
   ``-s / (exp(m) + 1)``, with river's branches ``exp(-m) * -s`` for ``m > 18`` and exactly
   ``-s`` for ``m < -18``; then multiplied by the sample weight and clamped to ``±1e12``.
3. For every feature of ``x`` (``g_i = x_i * loss_gradient``), *first* the weight is
   materialised from the current ``z_i, n_i`` - but only if ``|z_i| > l1``; otherwise the
   stored ``w_i`` is left as it was (it is **not** reset to 0) - and *then* ``z_i, n_i`` are
   updated with that weight. So the weights used by later predictions lag ``z, n`` by one
   update of each feature, and an L1-"zeroed" feature keeps its last weight.

Predictions apply river's sigmoid, which returns exactly 0 below -30 and 1 above 30.

State lives in three float64 arrays of ``2**n_bits`` slots (``z``, ``n`` and the stored
weights ``w``, needed because of point 3). The hot loop reads and writes them through
``memoryview`` objects: indexing a memoryview yields a Python ``float`` (~35 ns), where
indexing the ndarray yields a ``numpy.float64`` whose arithmetic is several times slower.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xxhash

from features.hashing import MAX_BITS
from learners.base import LearnerError

__all__ = ["FTRLProximal"]

_xxh3 = xxhash.xxh3_64_intdigest
_exp = math.exp
_isfinite = math.isfinite
_INF = math.inf

# river's GLM default ``clip_gradient``: the loss gradient is clamped to +-this value.
_CLIP_GRADIENT = 1e12

_FORMAT = "streamctr.learners.ftrl"
_VERSION = 1
_HYPER = ("alpha", "beta", "l1", "l2", "n_bits")
_ARRAYS = ("z", "n", "w")


def _sigmoid(raw: float) -> float:
    # river.utils.math.sigmoid, clamps included, so saturated scores compare exactly.
    if raw < -30.0:
        return 0.0
    if raw > 30.0:
        return 1.0
    return 1.0 / (1.0 + _exp(-raw))


def _good_weight(w: Any) -> bool:
    try:
        return 0.0 <= w < _INF  # also False for NaN
    except TypeError:
        return False


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LearnerError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not _isfinite(value):
        raise LearnerError(f"{name} must be finite, got {value!r}")
    return value


class FTRLProximal:
    """FTRL-Proximal logistic regression over hashed river-style feature dicts.

    Parameters
    ----------
    alpha, beta
        Per-coordinate learning rate ``alpha / (beta + sqrt(n_i))``.
    l1, l2
        Regularisation of the FTRL-Proximal solution (the optimizer's, as in river's
        ``optim.FTRLProximal``; river's model-level ``l2`` stays 0).
    n_bits
        Feature names are hashed (XXH3-64, stable across processes) into ``2**n_bits`` slots.

    The constructor holds hyper-parameters only; the learned state is what
    :meth:`state_dict` returns.

    >>> model = FTRLProximal(alpha=0.1, n_bits=16)
    >>> x = {"user=u1": 1.0, "item=i9": 1.0}
    >>> model.predict_proba_one(x)
    0.5
    >>> for _ in range(20):
    ...     model.learn_one(x, 1)
    >>> round(model.predict_proba_one(x), 4)
    0.6627
    >>> model.predict_proba_one({"user=u2": 1.0})  # unseen features: weight 0
    0.5
    """

    def __init__(
        self,
        alpha: float = 0.05,
        beta: float = 1.0,
        l1: float = 0.0,
        l2: float = 1.0,
        n_bits: int = 20,
    ) -> None:
        self.alpha = _real("alpha", alpha)
        self.beta = _real("beta", beta)
        self.l1 = _real("l1", l1)
        self.l2 = _real("l2", l2)
        if self.alpha <= 0.0:
            raise LearnerError(f"alpha must be > 0, got {alpha!r}")
        for name in ("beta", "l1", "l2"):
            if getattr(self, name) < 0.0:
                raise LearnerError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if isinstance(n_bits, bool) or not isinstance(n_bits, numbers.Integral):
            raise LearnerError(f"n_bits must be an int, got {n_bits!r}")
        if not 1 <= n_bits <= MAX_BITS:
            raise LearnerError(f"n_bits must be in [1, {MAX_BITS}], got {n_bits!r}")
        self.n_bits = int(n_bits)
        self._mask = (1 << self.n_bits) - 1
        size = 1 << self.n_bits
        # np.zeros is calloc-backed: untouched slots of a large table cost no memory.
        self._set_state(np.zeros(size), np.zeros(size), np.zeros(size), 0)

    # -- state --------------------------------------------------------------------------

    def _set_state(self, z: np.ndarray, n: np.ndarray, w: np.ndarray, n_learned: int) -> None:
        self._z, self._n, self._w = z, n, w
        # Python-float views of the same memory for the per-feature loop (see module doc).
        self._zv, self._nv, self._wv = memoryview(z), memoryview(n), memoryview(w)
        self.n_learned = n_learned

    def __getstate__(self) -> dict[str, Any]:
        # memoryviews cannot be pickled or deep-copied; they are rebuilt from the arrays.
        state = self.__dict__.copy()
        for view in ("_zv", "_nv", "_wv"):
            del state[view]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._set_state(self._z, self._n, self._w, self.n_learned)

    def __repr__(self) -> str:
        return (
            f"FTRLProximal(alpha={self.alpha!r}, beta={self.beta!r}, l1={self.l1!r}, "
            f"l2={self.l2!r}, n_bits={self.n_bits!r})"
        )

    def state_dict(self) -> dict[str, Any]:
        """Format, version, hyper-parameters, sample count and copies of ``z``, ``n``, ``w``.

        Only numpy arrays and plain Python scalars / strings: a checkpoint can be written
        with ``numpy.savez`` or similar, without pickle.
        """
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "alpha": self.alpha,
            "beta": self.beta,
            "l1": self.l1,
            "l2": self.l2,
            "n_bits": self.n_bits,
            "n_learned": self.n_learned,
            "z": self._z.copy(),
            "n": self._n.copy(),
            "w": self._w.copy(),
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Replace the learned state with ``d``; nothing changes if ``d`` is refused.

        Raises :class:`LearnerError` if ``d`` is not an FTRL state of this version, was
        learned with other hyper-parameters, or has arrays of the wrong shape or values.
        """
        if not isinstance(d, Mapping):
            raise LearnerError(f"state dict must be a mapping, got {type(d).__name__}")
        missing = [k for k in ("format", "version", *_HYPER, "n_learned", *_ARRAYS) if k not in d]
        if missing:
            raise LearnerError(f"state dict lacks {', '.join(missing)}")
        if d["format"] != _FORMAT:
            raise LearnerError(f"state dict format is {d['format']!r}, expected {_FORMAT!r}")
        if d["version"] != _VERSION:
            raise LearnerError(
                f"state dict version {d['version']!r} is not supported (expected {_VERSION})"
            )
        for name in _HYPER:
            if d[name] != getattr(self, name):
                raise LearnerError(
                    f"state dict was learned with {name}={d[name]!r}, "
                    f"this learner has {name}={getattr(self, name)!r}"
                )
        n_learned = d["n_learned"]
        if isinstance(n_learned, bool) or not isinstance(n_learned, numbers.Integral):
            raise LearnerError(f"state dict n_learned must be an int, got {n_learned!r}")
        size = 1 << self.n_bits
        arrays = []
        for name in _ARRAYS:
            a = d[name]
            if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.shape != (size,):
                shape = getattr(a, "shape", None)
                dtype = getattr(a, "dtype", type(a).__name__)
                raise LearnerError(
                    f"state dict {name} must be a float array of shape ({size},), "
                    f"got {dtype} of shape {shape}"
                )
            # A copy: later learning must not write into the caller's arrays.
            a = np.array(a, dtype=np.float64, order="C", copy=True)
            if not np.isfinite(a).all():
                raise LearnerError(f"state dict {name} has non-finite values")
            arrays.append(a)
        if (arrays[1] < 0.0).any():
            raise LearnerError("state dict n has negative values")
        self._set_state(arrays[0], arrays[1], arrays[2], int(n_learned))

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> FTRLProximal:
        """A learner with the hyper-parameters recorded in ``d`` and its state."""
        try:
            model = cls(**{name: d[name] for name in _HYPER})
        except (KeyError, TypeError) as e:
            raise LearnerError(f"state dict lacks hyper-parameters: {e}") from None
        model.load_state_dict(d)
        return model

    # -- prediction ---------------------------------------------------------------------

    def _indices(self, x: dict[str, float]) -> list[int]:
        mask = self._mask
        try:
            # Same as features.hashing.hash_feature, inlined: it is on the hot path.
            return [_xxh3(k.encode("utf-8")) & mask for k in x]
        except AttributeError:
            bad = next(k for k in x if not isinstance(k, str))
            raise LearnerError(f"feature names must be str, got {bad!r}") from None

    def _bad_values(self, x: dict[str, float]) -> LearnerError:
        for k, v in x.items():
            if not isinstance(v, numbers.Real):
                return LearnerError(f"feature {k!r} has non-numeric value {v!r}")
            if not _isfinite(v):
                return LearnerError(f"feature {k!r} has non-finite value {v!r}")
        return LearnerError("feature values overflow the score to a non-finite value")

    def _raw(self, x: dict[str, float], idx: list[int]) -> float:
        wv = self._wv
        raw = 0.0
        try:
            for i, v in zip(idx, x.values(), strict=True):
                raw += wv[i] * v
            # NaN or inf in any value makes the sum non-finite (inf * 0 is NaN too), so one
            # check of the sum replaces a per-feature check.
            if _isfinite(raw):
                return raw
        except TypeError:
            pass
        raise self._bad_values(x)

    def predict_proba_one(self, x: dict[str, float]) -> float:
        """Click probability for ``x``; does not change the state."""
        return _sigmoid(self._raw(x, self._indices(x)))

    def predict_proba_many(self, batch: Sequence[dict[str, float]]) -> np.ndarray:
        """Click probabilities of ``batch`` as a float64 array (no state change)."""
        predict = self.predict_proba_one
        return np.array([predict(x) for x in batch], dtype=np.float64)

    # -- learning -----------------------------------------------------------------------

    def learn_one(self, x: dict[str, float], y: int, w: float = 1.0) -> None:
        """One FTRL-Proximal step on ``(x, y)`` with sample weight ``w`` (scales the gradient).

        Sample weight ``w`` is not the same as repeating the sample ``w`` times: FTRL's
        per-coordinate rates depend on the sum of *squared* gradients.
        """
        if y == 1:
            s = 1
        elif y == 0:
            s = -1
        else:
            raise LearnerError(f"label must be 0 or 1, got {y!r}")
        if not _good_weight(w):
            raise LearnerError(f"sample weight must be finite and >= 0, got {w!r}")
        idx = self._indices(x)
        raw = self._raw(x, idx)  # validates x before any state changes

        # river.optim.losses.Log.gradient (unit class weights), branches included.
        m = raw * s
        if m > 18.0:
            lg = _exp(-m) * -s
        elif m < -18.0:
            lg = float(-s)
        else:
            lg = -s / (_exp(m) + 1.0)
        lg *= w
        lg = max(min(lg, _CLIP_GRADIENT), -_CLIP_GRADIENT)

        alpha, beta, l1, l2 = self.alpha, self.beta, self.l1, self.l2
        zv, nv, wv = self._zv, self._nv, self._wv
        # river materialises all weights of the step before updating any z/n; features of
        # one dict hit distinct slots unless hashes collide, so one interleaved pass is the
        # same thing (with a collision, the shared slot simply takes successive updates).
        for i, v in zip(idx, x.values(), strict=True):
            zi = zv[i]
            ni = nv[i]
            sqrt_ni = ni**0.5
            if abs(zi) > l1:
                # The FTRL-Proximal closed form, written as river writes it for bit parity.
                wi = -(((beta + sqrt_ni) / alpha + l2) ** -1) * (
                    (zi - l1) if zi > 0.0 else (zi + l1)
                )
                wv[i] = wi
            else:
                # river leaves the stored weight untouched here (not reset to 0).
                wi = wv[i]
            g = v * lg
            g2 = g**2
            sigma = ((ni + g2) ** 0.5 - sqrt_ni) / alpha
            zv[i] = zi + (g - sigma * wi)
            nv[i] = ni + g2
        self.n_learned += 1

    def learn_many(
        self,
        batch: Sequence[dict[str, float]],
        y: Sequence[int] | np.ndarray,
        w: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Exactly ``learn_one`` on each sample in order.

        Labels and weights are all checked first, so a bad one changes nothing; a bad feature
        dict raises with its position, the samples before it having been learned.
        """
        n = len(batch)
        ys = list(y)
        ws = [1.0] * n if w is None else list(w)
        if len(ys) != n or len(ws) != n:
            raise LearnerError(f"batch has {n} samples but {len(ys)} labels and {len(ws)} weights")
        for k, (yk, wk) in enumerate(zip(ys, ws, strict=True)):
            if not (yk == 0 or yk == 1):
                raise LearnerError(f"sample {k}: label must be 0 or 1, got {yk!r}")
            if not _good_weight(wk):
                raise LearnerError(f"sample {k}: sample weight must be finite and >= 0, got {wk!r}")
        learn = self.learn_one
        for k, (xk, yk, wk) in enumerate(zip(batch, ys, ws, strict=True)):
            try:
                learn(xk, yk, wk)
            except LearnerError as e:
                raise LearnerError(f"sample {k}: {e}") from None
