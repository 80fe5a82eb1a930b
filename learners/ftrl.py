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

State is one float64 array of ``2**n_bits`` rows ``(z, n, w, sqrt(n))`` (the stored weight
``w`` is needed because of point 3; ``sqrt(n)`` is kept so each update takes one square
root instead of two — the same value the second one would compute, so results are
unchanged — and is not saved, only rebuilt on load); a row is 32 bytes, aligned, so a
feature's state never straddles two cache lines: one miss per feature.

Every path runs the same compiled kernel (:func:`_run`): ``learn_one`` is a batch of one,
so ``learn_many`` of a batch gives bit-identical weights to ``learn_one`` over its rows in
order (river's ``learn_many`` is a mini-batch step instead, river issue #1912). Batches may
be feature dicts, a polars frame (every column a field, :func:`features.hashing.batch_from_frame`)
or a :class:`~features.hashing.SparseBatch` of pre-hashed names.

Two production options of McMahan et al. and He et al., both off by default (river has
neither, so parity holds with the defaults):

* **Negative downsampling** (``negative_rate`` r < 1): a negative is learned with
  probability r, and predictions are re-calibrated, ``q = p / (p + (1 - p) / r)``, i.e.
  ``r`` is added to the log-odds (He et al. 2014, section 6.2).
* **Poisson inclusion** (``inclusion_p`` < 1): a feature not yet in the model (no update
  so far) enters it with probability p at each sighting, ~1/p sightings on average; until
  then its weight stays 0, so rare features take no state (McMahan et al. 2013, 4.1).

Both draw from a counter-based generator (SplitMix64 of ``seed`` and a draw counter kept
in the state), so runs, restarts and ``_one``/``_many`` calls make the same draws.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numba as nb
import numpy as np
import polars as pl
import xxhash

from features.compiled import prefetch_row, splitmix_uniform
from features.hashing import MAX_BITS, SparseBatch, batch_from_dicts, batch_from_frame, cross_names
from learners.base import LearnerError, batch_labels, check_state, good_weight

__all__ = ["FTRLProximal"]

_xxh3 = xxhash.xxh3_64_intdigest
# Masked hashes of recently seen names, per learner: most names of an impression's row
# (bias, the num.* features, popular ids) recur from event to event, and hashing them again
# was the largest part of scoring one. Cleared when full, so memory stays bounded.
_NAME_CACHE_SIZE = 1 << 18
_isfinite = math.isfinite

# river's GLM default ``clip_gradient``: the loss gradient is clamped to +-this value.
_CLIP_GRADIENT = 1e12

_FORMAT = "streamctr.learners.ftrl"
_VERSION = 2
_HYPER = ("alpha", "beta", "l1", "l2", "n_bits", "negative_rate", "inclusion_p", "seed")
_ARRAYS = ("index", "z", "n", "w")
_Z, _N, _W, _SQRT_N = 0, 1, 2, 3  # columns of the state table
# Counters kept in the state (int64 array ``counts``): samples learned, negatives skipped by
# downsampling, random draws made.
_LEARNED, _SKIPPED, _DRAWS = 0, 1, 2

Batch = Sequence[Mapping[str, float]] | pl.DataFrame | SparseBatch


# -- the compiled kernel ----------------------------------------------------------------


@nb.njit(cache=True, inline="always")
def _sigmoid(raw: float) -> float:
    # river.utils.math.sigmoid, clamps included, so saturated scores compare exactly.
    if raw < -30.0:
        return 0.0
    if raw > 30.0:
        return 1.0
    return 1.0 / (1.0 + math.exp(-raw))


@nb.njit(cache=True)
def _run(table, mask, indptr, hashes, values, y, sw, hyper, seed, counts, scores):
    """Score rows in order; a row labelled 0 or 1 then takes its FTRL step, one labelled
    -1 is only scored (so one pass can interleave an engine's scores and learns).

    table: float64 (2**n_bits, 4) rows (z, n, w, sqrt(n)); indptr: int64 (B + 1,);
    hashes: int64 (nnz,) feature name hashes (masked here); values: float64 (nnz,);
    y: int8 (B,) labels, -1: score only; sw: float64 (B,)
    sample weights; hyper: float64 (6,) alpha, beta, l1, l2, log(negative_rate),
    inclusion_p; counts: int64 (3,) learned, skipped, draws (updated); scores: float64 (B,)
    out, the calibrated probability of each row before it was learned.

    Returns the first row whose score is not finite (-1 if none); that row and the rows
    after it are left unlearned.
    """
    alpha, beta, l1, l2 = hyper[0], hyper[1], hyper[2], hyper[3]
    log_rate, inclusion_p = hyper[4], hyper[5]
    rate = math.exp(log_rate)
    rows = indptr.shape[0] - 1
    for r in range(rows):
        if r + 1 < rows:  # the next row's state travels from memory while this one computes
            for j in range(indptr[r + 1], indptr[r + 2]):
                prefetch_row(table, hashes[j] & mask)
        lo, hi = indptr[r], indptr[r + 1]
        raw = 0.0
        for j in range(lo, hi):
            raw += table[hashes[j] & mask, _W] * values[j]
        if not math.isfinite(raw):
            return r
        scores[r] = _sigmoid(raw + log_rate)
        if y[r] < 0:
            continue
        if y[r] == 0 and rate < 1.0:
            counts[_DRAWS] += 1
            if splitmix_uniform(seed, counts[_DRAWS]) >= rate:
                counts[_SKIPPED] += 1
                continue
        # river.optim.losses.Log.gradient (unit class weights), branches included.
        s = 1.0 if y[r] == 1 else -1.0
        m = raw * s
        if m > 18.0:
            lg = math.exp(-m) * -s
        elif m < -18.0:
            lg = -s
        else:
            lg = -s / (math.exp(m) + 1.0)
        lg = max(min(lg * sw[r], _CLIP_GRADIENT), -_CLIP_GRADIENT)
        # river materialises all weights of the step before updating any z/n; features of
        # one row hit distinct slots unless hashes collide, so one interleaved pass is the
        # same thing (with a collision, the shared slot simply takes successive updates).
        for j in range(lo, hi):
            i = hashes[j] & mask
            zi, ni, sqrt_ni = table[i, _Z], table[i, _N], table[i, _SQRT_N]
            if inclusion_p < 1.0 and ni == 0.0 and zi == 0.0:
                counts[_DRAWS] += 1
                if splitmix_uniform(seed, counts[_DRAWS]) >= inclusion_p:
                    continue  # not in the model yet: this sighting leaves no state
            if abs(zi) > l1:
                # The FTRL-Proximal closed form, written as river writes it.
                wi = -(1.0 / ((beta + sqrt_ni) / alpha + l2)) * (
                    (zi - l1) if zi > 0.0 else (zi + l1)
                )
                table[i, _W] = wi
            else:
                wi = table[i, _W]  # river leaves the stored weight untouched (not 0)
            g = values[j] * lg
            g2 = g * g
            sqrt_next = math.sqrt(ni + g2)
            sigma = (sqrt_next - sqrt_ni) / alpha
            table[i, _Z] = zi + (g - sigma * wi)
            table[i, _N] = ni + g2
            table[i, _SQRT_N] = sqrt_next
        counts[_LEARNED] += 1
    return -1


# -- validation helpers -----------------------------------------------------------------


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LearnerError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not _isfinite(value):
        raise LearnerError(f"{name} must be finite, got {value!r}")
    return value


def _bad_values(x: Mapping[str, float]) -> LearnerError:
    for k, v in x.items():
        if not isinstance(k, str):
            return LearnerError(f"feature names must be str, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return LearnerError(f"feature {k!r} has non-numeric value {v!r}")
        if not _isfinite(v):
            return LearnerError(f"feature {k!r} has non-finite value {v!r}")
    return LearnerError(_OVERFLOW)


_OVERFLOW = "feature values overflow the score to a non-finite value"


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
    crosses
        Feature crosses, as tuples of field names: ``("user", "category")`` adds
        ``user×category=u7|c2`` for ``user=u7`` and ``category=c2`` (dicts, frames alike).
    negative_rate
        Fraction of negatives learned (negative downsampling); predictions are re-calibrated.
    inclusion_p
        Probability that a sighting of a feature not yet in the model adds it.
    seed
        Seed of the draws of downsampling and inclusion.

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

    Scoring each row before learning it (progressive validation), from a polars frame:

    >>> import polars as pl
    >>> frame = pl.DataFrame({"user": ["u1", "u2"] * 3, "item": ["i9", "i3"] * 3})
    >>> model = FTRLProximal(alpha=0.1, n_bits=16)
    >>> model.predict_learn_many(frame, [1, 0] * 3).round(4).tolist()
    [0.5, 0.5, 0.5, 0.5, 0.5156, 0.4844]

    (A weight is materialised when its feature is next updated, as in river, hence the
    lag of one sighting.)
    """

    def __init__(
        self,
        alpha: float = 0.05,
        beta: float = 1.0,
        l1: float = 0.0,
        l2: float = 1.0,
        n_bits: int = 20,
        crosses: Iterable[Sequence[str]] = (),
        negative_rate: float = 1.0,
        inclusion_p: float = 1.0,
        seed: int = 0,
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
        try:
            self.crosses = tuple(tuple(str(f) for f in c) for c in crosses)
        except TypeError:
            raise LearnerError(f"crosses must be tuples of field names, got {crosses!r}") from None
        if any(len(c) < 2 for c in self.crosses):
            raise LearnerError(f"a cross needs two or more fields, got {crosses!r}")
        self.negative_rate = _real("negative_rate", negative_rate)
        self.inclusion_p = _real("inclusion_p", inclusion_p)
        for name in ("negative_rate", "inclusion_p"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise LearnerError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise LearnerError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        self._mask = (1 << self.n_bits) - 1
        self._hyper = np.array([self.alpha, self.beta, self.l1, self.l2,
                                math.log(self.negative_rate), self.inclusion_p])
        # np.zeros is calloc-backed: untouched rows of a large table cost no memory.
        self._table = np.zeros((1 << self.n_bits, 4))
        self._counts = np.zeros(3, np.int64)
        self._name_hashes: dict[str, int] = {}

    def __repr__(self) -> str:
        options = "".join(
            f", {name}={getattr(self, name)!r}"
            for name, default in (("crosses", ()), ("negative_rate", 1.0),
                                  ("inclusion_p", 1.0), ("seed", 0))
            if getattr(self, name) != default
        )
        return (f"FTRLProximal(alpha={self.alpha!r}, beta={self.beta!r}, l1={self.l1!r}, "
                f"l2={self.l2!r}, n_bits={self.n_bits!r}{options})")

    @property
    def n_learned(self) -> int:
        """Samples learned (negatives skipped by downsampling not counted)."""
        return int(self._counts[_LEARNED])

    @property
    def n_skipped(self) -> int:
        """Negatives skipped by downsampling."""
        return int(self._counts[_SKIPPED])

    @property
    def n_coordinates(self) -> int:
        """Slots of the hashed space that hold state (what a sparse store would keep)."""
        return int(np.count_nonzero(self._table.any(axis=1)))

    # -- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Format, version, hyper-parameters, counters and the slots that hold state.

        Sparse: ``index`` lists the slots with any non-zero ``z``, ``n`` or ``w`` and the
        three arrays their values, so a checkpoint grows with the features seen, not with
        ``2**n_bits``. Only numpy arrays and plain Python scalars / strings: a checkpoint
        can be written with ``numpy.savez`` or similar, without pickle.
        """
        index = np.flatnonzero(self._table.any(axis=1))
        rows = self._table[index]
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "alpha": self.alpha,
            "beta": self.beta,
            "l1": self.l1,
            "l2": self.l2,
            "n_bits": self.n_bits,
            "crosses": np.array(["×".join(c) for c in self.crosses], dtype=str),
            "negative_rate": self.negative_rate,
            "inclusion_p": self.inclusion_p,
            "seed": self.seed,
            "n_learned": self.n_learned,
            "n_skipped": self.n_skipped,
            "n_draws": int(self._counts[_DRAWS]),
            "index": index.astype(np.int64),
            "z": rows[:, _Z].copy(),
            "n": rows[:, _N].copy(),
            "w": rows[:, _W].copy(),
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Replace the learned state with ``d``; nothing changes if ``d`` is refused.

        Raises :class:`LearnerError` if ``d`` is not an FTRL state of this version, was
        learned with other hyper-parameters, or has arrays of the wrong shape or values.
        """
        counters = ("n_learned", "n_skipped", "n_draws")
        check_state(d, _FORMAT, _VERSION, ("crosses", *counters, *_ARRAYS),
                    {name: getattr(self, name) for name in _HYPER})
        crosses = [str(c) for c in np.asarray(d["crosses"]).tolist()]
        if crosses != ["×".join(c) for c in self.crosses]:
            raise LearnerError(f"state dict was learned with crosses {crosses}, "
                               f"this learner has {list(self.crosses)}")
        counts = []
        for name in counters:
            value = d[name]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise LearnerError(f"state dict {name} must be a non-negative int, got {value!r}")
            counts.append(int(value))
        index = d["index"]
        if (not isinstance(index, np.ndarray) or index.dtype.kind not in "iu"
                or index.ndim != 1):
            raise LearnerError("state dict index must be a 1-d integer array")
        if index.size and (index.min() < 0 or index.max() > self._mask):
            raise LearnerError(f"state dict index has slots outside [0, {self._mask}]")
        if np.unique(index).size != index.size:
            raise LearnerError("state dict index has repeated slots")
        table = np.zeros_like(self._table)
        for col, name in ((_Z, "z"), (_N, "n"), (_W, "w")):
            a = d[name]
            if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.shape != index.shape:
                shape = getattr(a, "shape", None)
                dtype = getattr(a, "dtype", type(a).__name__)
                raise LearnerError(
                    f"state dict {name} must be a float array shaped like index "
                    f"{index.shape}, got {dtype} of shape {shape}"
                )
            if not np.isfinite(a).all():
                raise LearnerError(f"state dict {name} has non-finite values")
            table[index, col] = a
        if (table[:, _N] < 0.0).any():
            raise LearnerError("state dict n has negative values")
        table[index, _SQRT_N] = np.sqrt(table[index, _N])
        self._table = table
        self._counts = np.array(counts, np.int64)

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> FTRLProximal:
        """A learner with the hyper-parameters recorded in ``d`` and its state."""
        try:
            params = {name: d[name] for name in _HYPER}
            params["crosses"] = [str(c).split("×") for c in np.asarray(d["crosses"]).tolist()]
            model = cls(**params)
        except (KeyError, TypeError) as e:
            raise LearnerError(f"state dict lacks hyper-parameters: {e}") from None
        model.load_state_dict(d)
        return model

    # -- the kernel's inputs ------------------------------------------------------------

    def _row(self, x: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """indptr, hashes and values of one feature dict (crosses added)."""
        if self.crosses:
            x = {**x, **cross_names(x, self.crosses)}
        cache = self._name_hashes
        if len(cache) > _NAME_CACHE_SIZE:
            cache.clear()
        try:
            hashes = np.array([cache[k] if k in cache else self._hash_name(k) for k in x],
                              np.int64)
        except AttributeError:
            raise _bad_values(x) from None
        values = np.array(list(x.values()))
        if values.dtype.kind not in "fiu":  # not np.fromiter: it parses the string "1"
            raise _bad_values(x)
        return np.array([0, len(x)], np.int64), hashes, values.astype(np.float64)

    def _hash_name(self, name: str) -> int:
        """The masked hash of ``name``, remembered (``AttributeError`` if not a str)."""
        h = self._name_hashes[name] = _xxh3(name.encode("utf-8")) & self._mask
        return h

    def _batch(self, batch: Batch) -> SparseBatch:
        if isinstance(batch, SparseBatch):
            if not (len(batch.hashes) == len(batch.values) == batch.indptr[-1]
                    and batch.indptr[0] == 0 and (np.diff(batch.indptr) >= 0).all()):
                raise LearnerError("sparse batch: indptr does not index hashes and values")
            sparse = SparseBatch(np.asarray(batch.indptr, np.int64),
                                 np.asarray(batch.hashes, np.int64),
                                 np.asarray(batch.values, np.float64))
        elif isinstance(batch, pl.DataFrame):
            try:
                sparse = batch_from_frame(batch, self.crosses)
            except ValueError as e:
                raise LearnerError(str(e)) from None
        else:
            try:
                sparse = batch_from_dicts(batch, self.crosses)
            except (TypeError, ValueError):
                sparse = None
            if sparse is None or not np.isfinite(sparse.values).all():
                k, why = next((k, _bad_values(x)) for k, x in enumerate(batch)
                              if _bad_values(x).args[0] != _OVERFLOW)
                raise LearnerError(f"sample {k}: {why}")
        if not np.isfinite(sparse.values).all():
            bad = np.flatnonzero(~np.isfinite(sparse.values))[0]
            row = int(np.searchsorted(sparse.indptr, bad, side="right")) - 1
            raise LearnerError(f"sample {row}: a feature has non-finite value "
                               f"{sparse.values[bad]!r}")
        return sparse

    def _call(self, indptr, hashes, values, y, sw) -> np.ndarray:
        scores = np.empty(len(indptr) - 1)
        bad = _run(self._table, self._mask, indptr, hashes, values, y, sw, self._hyper,
                   self.seed, self._counts, scores)
        if bad >= 0:
            raise LearnerError(f"sample {bad}: {_OVERFLOW}")
        return scores

    # -- the protocol -------------------------------------------------------------------

    def predict_proba_one(self, x: Mapping[str, float]) -> float:
        """Click probability for ``x``; does not change the state."""
        indptr, hashes, values = self._row(x)
        try:
            return float(self._call(indptr, hashes, values, _NO_LABEL, _NO_WEIGHT)[0])
        except LearnerError:
            raise _bad_values(x) from None

    def learn_one(self, x: Mapping[str, float], y: int, w: float = 1.0) -> None:
        """One FTRL-Proximal step on ``(x, y)`` with sample weight ``w`` (scales the gradient).

        Sample weight ``w`` is not the same as repeating the sample ``w`` times: FTRL's
        per-coordinate rates depend on the sum of *squared* gradients.
        """
        self.predict_learn_one(x, y, w)

    def predict_learn_one(self, x: Mapping[str, float], y: int, w: float = 1.0) -> float:
        """:meth:`learn_one`, returning the probability of ``x`` just before the step (what
        :meth:`predict_proba_one` said), at the cost of the step alone."""
        _check_step(y, w)
        indptr, hashes, values = self._row(x)
        try:
            return float(self._call(indptr, hashes, values, _LABEL[y], np.array([float(w)]))[0])
        except LearnerError:
            raise _bad_values(x) from None

    # -- PreparedInput: the engine hashes an impression's row once, to score and learn it --

    def prepare(self, x: Mapping[str, float]) -> _Row:
        """``x``'s hashed row (crosses added); bad values raise :class:`LearnerError`."""
        row = _Row(*self._row(x))
        if not np.isfinite(row.values).all():
            raise _bad_values(x)
        return row

    def predict_prepared(self, prepared: _Row) -> float:
        """:meth:`predict_proba_one` of the ``x`` that was prepared."""
        return float(self._call(*prepared, _NO_LABEL, _NO_WEIGHT)[0])

    def learn_prepared(self, prepared: _Row, y: int, w: float = 1.0) -> None:
        """:meth:`learn_one` of the ``x`` that was prepared."""
        _check_step(y, w)
        self._call(*prepared, _LABEL[y], np.array([float(w)]))

    # -- HashedRows: the engine's compiled rows, a batch of scores and learns in one call --

    @property
    def reads_hashed_rows(self) -> bool:
        """Whether a row of hashed names is all this learner reads (not with crosses)."""
        return not self.crosses

    def score_learn_rows(self, batch: SparseBatch, y: np.ndarray) -> np.ndarray:
        """Score each row in order; learn those labelled 0 or 1 right after (weight 1).

        Rows labelled -1 are only scored. ``batch`` comes from the engine's compiled
        featurizer, so it is trusted as built (finite values, consistent ``indptr``).
        """
        return self._call(batch.indptr, batch.hashes, batch.values, y, np.ones(len(y)))

    def predict_proba_many(self, batch: Batch) -> np.ndarray:
        """Click probabilities of ``batch`` as a float64 array (no state change)."""
        b = self._batch(batch)
        n = len(b)
        return self._call(b.indptr, b.hashes, b.values, np.full(n, -1, np.int8), np.ones(n))

    def learn_many(self, batch: Batch, y: Sequence[int] | np.ndarray,
                   w: Sequence[float] | np.ndarray | None = None) -> None:
        """Exactly ``learn_one`` on each sample in order, in one compiled call.

        Labels, weights and feature values are all checked first, so bad input changes
        nothing (only a score overflowing to infinity is found during the pass: it raises
        with its position, the samples before it having been learned).
        """
        self.predict_learn_many(batch, y, w)

    def predict_learn_many(self, batch: Batch, y: Sequence[int] | np.ndarray,
                           w: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """Score each sample, then learn it, in order: the progressive-validation scores.

        The same state changes as :meth:`learn_many`; returns each sample's probability
        as the model had it just before learning that sample.
        """
        b = self._batch(batch)
        ys, ws = batch_labels(y, w, len(b))
        return self._call(b.indptr, b.hashes, b.values, ys, ws)


def _check_step(y: int, w: float) -> None:
    if isinstance(y, bool) or y not in (0, 1):
        raise LearnerError(f"label must be 0 or 1, got {y!r}")
    if not good_weight(w):
        raise LearnerError(f"sample weight must be finite and >= 0, got {w!r}")


class _Row(NamedTuple):
    """One sample as the kernel reads it (``indptr`` is ``[0, n]``)."""

    indptr: np.ndarray
    hashes: np.ndarray
    values: np.ndarray


_NO_LABEL = np.full(1, -1, np.int8)  # score only
_NO_WEIGHT = np.ones(1)
_LABEL = (np.zeros(1, np.int8), np.ones(1, np.int8))
