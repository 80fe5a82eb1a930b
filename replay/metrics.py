"""Offline CTR metrics of a replay, and a rolling window for the service's live gauges.

Every function takes array-likes (numpy arrays, lists, polars or pandas Series)
of equal length and returns a Python ``float``. Labels ``y`` are clicks in
``{0, 1}`` (``bool`` is accepted); scores ``p`` are predicted click
probabilities (:func:`auc` and :func:`gauc` only use their order, so any real
score works there).

- :func:`auc`: exact ROC AUC (tied scores count 1/2), optional sample weights;
  :func:`auc_over_time` the same per time bucket.
- :func:`gauc` / :func:`gauc_details`: impression-weighted per-user AUC
  (Zhou et al. 2018, DIN), or click-weighted (RecBole's); users with a single class are
  skipped and counted.
- :func:`logloss`: mean binary cross-entropy, ``p`` clipped to ``[1e-15, 1 - 1e-15]``.
- :func:`normalized_entropy`: logloss over the entropy of the background CTR
  (He et al. 2014, Facebook).
- :func:`calibration`: mean predicted CTR over observed CTR; :func:`calibration_buckets`
  the same per score bucket (a reliability table).
- :func:`ndcg_at_k`: mean per-request NDCG@k; requests without a relevant item are skipped.

Input that makes a metric undefined or meaningless (different lengths, no rows,
NaN scores, probabilities outside ``[0, 1]``, labels outside ``{0, 1}``, a
single class for AUC, ...) raises :class:`MetricError`, a ``ValueError`` whose
message is one line. :class:`RollingWindow` is the exception: a live gauge must
not crash, so its metrics return ``nan`` where undefined.

>>> auc([0, 1, 0, 1], [0.1, 0.9, 0.4, 0.4])
0.875
>>> calibration([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5])
2.0
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "CalibrationBucket",
    "GAUCResult",
    "MetricError",
    "RollingWindow",
    "TimeBucketAUC",
    "auc",
    "auc_over_time",
    "calibration",
    "calibration_buckets",
    "gauc",
    "gauc_details",
    "logloss",
    "ndcg_at_k",
    "normalized_entropy",
]

_EPS = 1e-15  # logloss clipping, as the task and older scikit-learn define it


class MetricError(ValueError):
    """A metric's input is invalid or the metric is undefined on it (one-line message)."""


@dataclass(frozen=True, slots=True)
class GAUCResult:
    """GAUC value and how many groups (users) it used and skipped (single-class groups)."""

    value: float
    groups_used: int
    groups_skipped: int


# ---------------------------------------------------------------------------------------------
# Input conversion and validation


def _array(x: Any, name: str) -> np.ndarray:
    """A 1-D numpy view of an array-like (polars / pandas Series via ``to_numpy``)."""
    if hasattr(x, "to_numpy") and not isinstance(x, np.ndarray):
        x = x.to_numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise MetricError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"len({k})={v}" for k, v in lengths.items())
        raise MetricError(f"inputs differ in length: {shown}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise MetricError("empty input: no rows to compute the metric on")
    return n


def _labels(y: Any) -> np.ndarray:
    """Binary labels as float64; raise unless every label is 0 or 1."""
    arr = _array(y, "y")
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    try:
        out = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise MetricError(f"labels y must be numeric 0/1, got dtype {arr.dtype}") from None
    bad = (out != 0.0) & (out != 1.0)
    if bad.any():
        raise MetricError(f"labels y must be 0 or 1, found {out[bad][0]!r}")
    return out


def _scores(p: Any, *, probabilities: bool) -> np.ndarray:
    """Scores as float64; raise on NaN, and outside [0, 1] when they are probabilities."""
    arr = _array(p, "p")
    try:
        out = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise MetricError(f"scores p must be numeric, got dtype {arr.dtype}") from None
    if np.isnan(out).any():
        raise MetricError(f"scores p contain NaN ({int(np.isnan(out).sum())} of {len(out)})")
    if probabilities:
        bad = (out < 0.0) | (out > 1.0)
        if bad.any():
            raise MetricError(f"probabilities p must lie in [0, 1], found {out[bad][0]!r}")
    return out


def _weights(sample_weight: Any) -> np.ndarray:
    arr = _array(sample_weight, "sample_weight")
    try:
        out = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise MetricError(f"sample_weight must be numeric, got dtype {arr.dtype}") from None
    if not np.isfinite(out).all():
        raise MetricError("sample_weight must be finite")
    if (out < 0).any():
        raise MetricError("sample_weight must be non-negative")
    return out


def _group_codes(group: Any) -> np.ndarray:
    """Dense int64 codes of a group column (order of the codes is irrelevant)."""
    arr = _array(group, "group")
    if arr.dtype != object:
        return np.unique(arr, return_inverse=True)[1].astype(np.int64, copy=False)
    # Object columns (strings, possibly with None) need not be orderable: hash them.
    index: dict[Hashable, int] = {}
    try:
        codes = [index.setdefault(v, len(index)) for v in arr.tolist()]
    except TypeError:
        raise MetricError("group values must be hashable") from None
    return np.asarray(codes, dtype=np.int64)


def _clip_log_likelihood(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-row binary cross-entropy with p clipped to [1e-15, 1 - 1e-15].

    The probability of the observed label is clipped (the same clipping, written so
    that a wrong certain prediction costs exactly ``-log(1e-15)`` for either label).
    """
    return -np.log(np.clip(np.where(y > 0.5, p, 1.0 - p), _EPS, 1.0 - _EPS))


# ---------------------------------------------------------------------------------------------
# AUC


def _auc_core(y: np.ndarray, p: np.ndarray, w: np.ndarray | None) -> float:
    """Exact AUC on validated arrays; nan when a class has no (weight) mass.

    Sort once by score, sum the positive and negative mass of each run of tied
    scores, and count for each positive the negatives strictly below it plus half
    of the negatives tied with it: ``sum_g pos_g * (neg_below_g + neg_g / 2)``.
    """
    if w is None and p.dtype == np.float64 and len(p) and float(np.abs(p).max()) < 2.0:
        pos_g, neg_g = _class_counts_by_packed_sort(y, p)
    else:
        order = np.argsort(p)  # stability is not needed: tied scores are grouped below
        ps = p[order]
        ys = y[order]
        if w is None:
            pos, neg = ys, 1.0 - ys
        else:
            ws = w[order]
            pos = ys * ws
            neg = ws - pos
        starts = np.flatnonzero(np.concatenate(([True], ps[1:] != ps[:-1])))
        pos_g = np.add.reduceat(pos, starts)
        neg_g = np.add.reduceat(neg, starts)
    total_pos = float(pos_g.sum())
    total_neg = float(neg_g.sum())
    if total_pos <= 0.0 or total_neg <= 0.0:
        return math.nan
    neg_below = np.cumsum(neg_g) - neg_g
    return float(np.dot(pos_g, neg_below + 0.5 * neg_g) / (total_pos * total_neg))


def _class_counts_by_packed_sort(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positives and negatives per run of tied scores, in score order, from one value sort.

    Each score's float64 bits become an int64 that orders as the score does (negative
    scores flip their magnitude bits; -0.0 is made 0.0 so it ties with it), shifted
    left to hold the label in the lowest bit: sorting these keys (a plain value sort,
    vectorised, ~3× faster than ``argsort``) orders by score and carries the labels
    along. Scores below 2 in magnitude fit the shift; the caller checks that.
    """
    bits = (p + 0.0).view(np.int64)  # + 0.0 turns -0.0 into 0.0
    keys = np.where(bits < 0, bits ^ np.int64(0x7FFF_FFFF_FFFF_FFFF), bits)
    keys <<= 1
    keys |= y.astype(np.int64)
    keys.sort()
    labels = keys & 1
    keys >>= 1
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    sizes = np.diff(np.append(starts, len(keys)))
    pos_g = np.add.reduceat(labels, starts).astype(np.float64)
    return pos_g, sizes - pos_g


def auc(y: Any, p: Any, sample_weight: Any = None) -> float:
    """Exact ROC AUC: the probability that a random positive outscores a random negative.

    Tied scores count 1/2, so the result equals scikit-learn's ``roc_auc_score``
    (trapezoidal ROC area) also with ties and ``sample_weight``. Cost: one sort.
    Raises :class:`MetricError` when only one class is present (AUC is undefined);
    :meth:`RollingWindow.auc` returns ``nan`` there instead.

    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> auc([0, 1, 1], [0.5, 0.5, 0.9], sample_weight=[1.0, 2.0, 2.0])
    0.75
    """
    yy = _labels(y)
    pp = _scores(p, probabilities=False)
    if sample_weight is None:
        _same_length(y=yy, p=pp)
        ww = None
    else:
        ww = _weights(sample_weight)
        _same_length(y=yy, p=pp, sample_weight=ww)
    value = _auc_core(yy, pp, ww)
    if math.isnan(value):
        raise MetricError("AUC is undefined: only one class (or one class has zero weight)")
    return value


# ---------------------------------------------------------------------------------------------
# GAUC


def gauc_details(group: Any, y: Any, p: Any,
                 weighting: Literal["impressions", "clicks"] = "impressions") -> GAUCResult:
    """Per-group AUC averaged with group weights, with the groups used and skipped.

    ``GAUC = sum_u n_u * AUC_u / sum_u n_u`` over the groups (users) ``u`` having
    both a click and a non-click, where ``n_u`` is the group's impression count
    (``weighting="impressions"``, the DIN paper's definition, Zhou et al. 2018) or its
    click count (``"clicks"``, RecBole's ``GAUC``, which weights users by their positive
    samples); single-class groups are skipped and counted in ``groups_skipped``. Ties count
    1/2 inside a group, as in :func:`auc`. Vectorised: one sort by (group, score).
    Raises :class:`MetricError` when no group has both classes.

    >>> gauc_details(["a", "a", "a", "b", "b", "c"], [1, 0, 0, 1, 0, 1],
    ...              [0.9, 0.5, 0.95, 0.2, 0.3, 0.5])
    GAUCResult(value=0.3, groups_used=2, groups_skipped=1)
    >>> gauc_details(["a", "a", "a", "b", "b", "c"], [1, 0, 0, 1, 0, 1],
    ...              [0.9, 0.5, 0.95, 0.2, 0.3, 0.5], weighting="clicks").value
    0.25
    """
    if weighting not in ("impressions", "clicks"):
        raise MetricError(f"weighting must be 'impressions' or 'clicks', got {weighting!r}")
    codes = _group_codes(group)
    yy = _labels(y)
    pp = _scores(p, probabilities=False)
    _same_length(group=codes, y=yy, p=pp)
    pos_u, neg_u, wins = _group_auc_counts(codes, yy, pp)
    n_groups = len(pos_u)
    used = (pos_u > 0) & (neg_u > 0)
    groups_used = int(used.sum())
    groups_skipped = n_groups - groups_used
    if groups_used == 0:
        raise MetricError(f"GAUC is undefined: all {n_groups} groups have a single class")
    n_u = pos_u[used] + neg_u[used] if weighting == "impressions" else pos_u[used]
    auc_u = wins[used] / (pos_u[used] * neg_u[used])
    value = float(np.dot(n_u, auc_u) / n_u.sum())
    return GAUCResult(value=value, groups_used=groups_used, groups_skipped=groups_skipped)


def _group_auc_counts(codes: np.ndarray, yy: np.ndarray,
                      pp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group code ``0..max``: positives, negatives, and the (positive, negative)
    pairs the positive wins (ties 1/2), so ``AUC_g = wins / (pos * neg)``. Vectorised:
    one sort by (group, score)."""
    order = np.lexsort((pp, codes))  # by group, then by score ascending
    gs, ps = codes[order], pp[order]
    pos = yy[order].astype(np.int64)
    neg = 1 - pos
    new_run = np.concatenate(([True], (gs[1:] != gs[:-1]) | (ps[1:] != ps[:-1])))
    starts = np.flatnonzero(new_run)
    run_group = gs[starts]
    pos_r = np.add.reduceat(pos, starts)
    neg_r = np.add.reduceat(neg, starts)

    n_groups = int(codes.max()) + 1
    pos_u = np.bincount(run_group, weights=pos_r, minlength=n_groups)
    neg_u = np.bincount(run_group, weights=neg_r, minlength=n_groups)
    # Negatives strictly below each run, within its group: global running count minus
    # the count of all earlier groups (integers, so exact).
    neg_cum = np.cumsum(neg_r) - neg_r
    group_first_run = np.flatnonzero(np.concatenate(([True], run_group[1:] != run_group[:-1])))
    offset = np.repeat(neg_cum[group_first_run], np.diff(np.append(group_first_run, len(starts))))
    below = (neg_cum - offset).astype(np.float64)
    wins = np.bincount(run_group, weights=pos_r * (below + 0.5 * neg_r), minlength=n_groups)
    return pos_u, neg_u, wins


@dataclass(frozen=True, slots=True)
class TimeBucketAUC:
    """Exact AUC of the rows whose time falls in ``[start, start + width)``; ``nan`` when
    they are all of one class."""

    start: int
    count: int
    clicks: int
    auc: float


def auc_over_time(ts: Any, y: Any, p: Any, width: int) -> list[TimeBucketAUC]:
    """Exact AUC (ties 1/2) per time bucket of ``width`` (in the unit of ``ts``, integers,
    e.g. milliseconds), buckets aligned to multiples of ``width``, empty ones left out, in
    time order: a metric-over-time series that is exact, not thresholded.

    >>> [(b.start, b.count, b.auc) for b in auc_over_time(
    ...     [0, 5, 9, 12, 15, 31], [0, 1, 1, 0, 1, 1], [0.1, 0.8, 0.3, 0.9, 0.4, 0.5], 10)]
    [(0, 3, 1.0), (10, 2, 0.0), (30, 1, nan)]
    """
    if isinstance(width, bool) or not isinstance(width, int | np.integer) or width < 1:
        raise MetricError(f"width must be a positive integer, got {width!r}")
    times = _array(ts, "ts")
    if times.dtype.kind not in "iu":
        raise MetricError(f"times ts must be integers, got dtype {times.dtype}")
    yy = _labels(y)
    pp = _scores(p, probabilities=False)
    _same_length(ts=times, y=yy, p=pp)
    starts, codes = np.unique(times.astype(np.int64) // int(width), return_inverse=True)
    pos, neg, wins = _group_auc_counts(codes.reshape(-1), yy, pp)
    with np.errstate(invalid="ignore", divide="ignore"):
        aucs = np.where((pos > 0) & (neg > 0), wins / (pos * neg), np.nan)
    return [TimeBucketAUC(int(s) * int(width), int(pos[i] + neg[i]), int(pos[i]), float(aucs[i]))
            for i, s in enumerate(starts)]


def gauc(group: Any, y: Any, p: Any,
         weighting: Literal["impressions", "clicks"] = "impressions") -> float:
    """Per-user AUC weighted by impressions (or clicks); see :func:`gauc_details` (which
    also counts skips).

    >>> gauc([1, 1, 2, 2, 2], [0, 1, 1, 0, 0], [0.2, 0.7, 0.6, 0.4, 0.9])
    0.7
    """
    return gauc_details(group, y, p, weighting).value


# ---------------------------------------------------------------------------------------------
# Probability metrics


def logloss(y: Any, p: Any) -> float:
    """Mean binary cross-entropy (natural log), ``p`` clipped to ``[1e-15, 1 - 1e-15]``.

    Equals scikit-learn's ``log_loss`` away from the clipping bounds.

    >>> round(logloss([1, 0, 1], [0.8, 0.2, 0.6]), 6)
    0.319038
    """
    yy = _labels(y)
    pp = _scores(p, probabilities=True)
    _same_length(y=yy, p=pp)
    return float(_clip_log_likelihood(yy, pp).mean())


def normalized_entropy(y: Any, p: Any) -> float:
    """Normalized entropy (He et al. 2014): logloss over the entropy of the background CTR.

    The background CTR is ``mean(y)``; predicting it for every row scores 1.0, and
    lower is better. Raises :class:`MetricError` when ``mean(y)`` is 0 or 1.

    >>> round(normalized_entropy([1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]), 12)
    1.0
    """
    yy = _labels(y)
    pp = _scores(p, probabilities=True)
    _same_length(y=yy, p=pp)
    ctr = float(yy.mean())
    if ctr in (0.0, 1.0):
        raise MetricError(f"normalized entropy is undefined: background CTR is {ctr:g}")
    background = -(ctr * math.log(ctr) + (1.0 - ctr) * math.log(1.0 - ctr))
    return float(_clip_log_likelihood(yy, pp).mean()) / background


def calibration(y: Any, p: Any) -> float:
    """Mean predicted CTR over observed CTR (1.0 is calibrated; above 1 over-predicts).

    Raises :class:`MetricError` when there is no positive label.

    >>> calibration([1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25])
    1.0
    >>> calibration([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5])
    2.0
    """
    yy = _labels(y)
    pp = _scores(p, probabilities=True)
    _same_length(y=yy, p=pp)
    observed = float(yy.mean())
    if observed == 0.0:
        raise MetricError("calibration is undefined: no positive label")
    return float(pp.mean()) / observed


@dataclass(frozen=True, slots=True)
class CalibrationBucket:
    """One score bucket of a reliability table: scores in ``[low, high)`` (the last bucket
    includes 1), how many, their mean prediction and their observed click rate."""

    low: float
    high: float
    count: int
    mean_predicted: float
    observed: float


def calibration_buckets(y: Any, p: Any, n_buckets: int = 10,
                        spacing: Literal["uniform", "quantile"] = "quantile"
                        ) -> list[CalibrationBucket]:
    """Reliability table: calibration per score bucket, empty buckets left out.

    ``"uniform"``: ``n_buckets`` equal-width buckets over ``[0, 1]``; ``"quantile"``
    (default): edges at the score quantiles, so every bucket holds about as many rows —
    CTR scores crowd near 0, where uniform buckets would put almost everything in the
    first one. Tied scores never straddle a quantile edge, so a bucket may hold more.

    >>> [(b.count, b.mean_predicted, b.observed) for b in calibration_buckets(
    ...     [0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], n_buckets=2, spacing="uniform")]
    [(2, 0.15000000000000002, 0.0), (2, 0.8, 1.0)]
    """
    if isinstance(n_buckets, bool) or not isinstance(n_buckets, int | np.integer) \
            or n_buckets < 1:
        raise MetricError(f"n_buckets must be a positive integer, got {n_buckets!r}")
    if spacing not in ("uniform", "quantile"):
        raise MetricError(f"spacing must be 'uniform' or 'quantile', got {spacing!r}")
    yy = _labels(y)
    pp = _scores(p, probabilities=True)
    _same_length(y=yy, p=pp)
    if spacing == "uniform":
        edges = np.linspace(0.0, 1.0, int(n_buckets) + 1)
    else:
        # Inner edges at the quantiles, outer ones at 0 and 1 (one bucket when every score
        # is the same).
        inner = np.quantile(pp, np.linspace(0.0, 1.0, int(n_buckets) + 1)[1:-1])
        edges = np.unique(np.concatenate([[0.0], inner[(inner > 0) & (inner < 1)], [1.0]]))
    # Bucket i holds edges[i] <= p < edges[i + 1]; p == 1 goes to the last bucket.
    index = np.clip(np.searchsorted(edges, pp, side="right") - 1, 0, len(edges) - 2)
    count = np.bincount(index, minlength=len(edges) - 1)
    predicted = np.bincount(index, weights=pp, minlength=len(edges) - 1)
    clicks = np.bincount(index, weights=yy, minlength=len(edges) - 1)
    return [CalibrationBucket(float(edges[i]), float(edges[i + 1]), int(count[i]),
                              float(predicted[i] / count[i]), float(clicks[i] / count[i]))
            for i in np.flatnonzero(count)]


# ---------------------------------------------------------------------------------------------
# NDCG


def _per_group_dcg(
    codes: np.ndarray, rank_key: np.ndarray, gains: np.ndarray, k: int, n_groups: int
) -> np.ndarray:
    """DCG@k of every group when its items are ranked by ``rank_key`` descending.

    Ties keep the input order (``np.lexsort`` is stable).
    """
    order = np.lexsort((-rank_key, codes))
    gs = codes[order]
    counts = np.bincount(codes, minlength=n_groups)
    first = np.cumsum(counts) - counts
    rank = np.arange(len(gs)) - first[gs]  # 0-based rank inside the group
    top = rank < k
    discount = 1.0 / np.log2(rank[top] + 2.0)
    return np.bincount(gs[top], weights=gains[order][top] * discount, minlength=n_groups)


def ndcg_at_k(
    group: Any, y: Any, p: Any, k: int, gain: Literal["linear", "exp"] = "linear"
) -> float:
    """Mean NDCG@k over groups (requests): each group's items ranked by ``p`` descending.

    ``y`` is the relevance grade (clicks 0/1; any grade ``>= 0`` is accepted); the
    gain is ``rel`` (``"linear"``) or ``2**rel - 1`` (``"exp"``; identical for 0/1
    labels), the discount ``1 / log2(rank + 1)`` with ranks from 1. Groups whose
    items all have relevance 0 have no ideal DCG, so their NDCG is undefined and
    they are skipped (not counted as 0). Tied scores keep the input order (stable
    sort), so the result is deterministic. Raises :class:`MetricError` when
    ``k < 1`` or no group has a relevant item.

    >>> ndcg_at_k(["r1", "r1", "r1", "r2", "r2"], [0, 1, 0, 0, 0],
    ...           [0.9, 0.8, 0.1, 0.5, 0.4], k=2)
    0.6309297535714575
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise MetricError(f"k must be a positive integer, got {k!r}")
    if gain not in ("linear", "exp"):
        raise MetricError(f"gain must be 'linear' or 'exp', got {gain!r}")
    codes = _group_codes(group)
    rel_arr = _array(y, "y")
    try:
        rel = rel_arr.astype(np.float64)
    except (TypeError, ValueError):
        raise MetricError(f"relevance y must be numeric, got dtype {rel_arr.dtype}") from None
    if not np.isfinite(rel).all() or (rel < 0).any():
        raise MetricError("relevance y must be finite and non-negative")
    pp = _scores(p, probabilities=False)
    _same_length(group=codes, y=rel, p=pp)

    gains = rel if gain == "linear" else np.exp2(rel) - 1.0
    n_groups = int(codes.max()) + 1
    dcg = _per_group_dcg(codes, pp, gains, int(k), n_groups)
    ideal = _per_group_dcg(codes, gains, gains, int(k), n_groups)
    has_relevant = ideal > 0
    if not has_relevant.any():
        raise MetricError(f"NDCG is undefined: none of the {n_groups} groups has a relevant item")
    return float(np.mean(dcg[has_relevant] / ideal[has_relevant]))


# ---------------------------------------------------------------------------------------------
# Rolling window for live gauges


class RollingWindow:
    """The last ``size`` (label, probability) pairs in numpy ring buffers, for live gauges.

    :meth:`add` and :meth:`add_many` validate their input like the metric functions
    (labels 0/1, probabilities in ``[0, 1]``, no NaN) and raise :class:`MetricError`
    on bad input; :meth:`logloss` and :meth:`auc` never raise: they return ``nan``
    where the metric is undefined (empty window, single class).

    >>> w = RollingWindow(3)
    >>> w.add_many([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6])  # (1, 0.9) is evicted
    >>> len(w), w.auc()
    (3, 0.5)
    """

    __slots__ = ("_count", "_next", "_p", "_y", "size")

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"window size must be a positive integer, got {size!r}")
        self.size = int(size)
        self._y = np.zeros(self.size, dtype=np.float64)
        self._p = np.zeros(self.size, dtype=np.float64)
        self._next = 0  # slot the next pair goes to
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"RollingWindow(size={self.size}, len={self._count})"

    def add(self, y: float, p: float) -> None:
        """Append one pair, evicting the oldest when the window is full."""
        if y not in (0, 1):  # bools and 0.0 / 1.0 compare equal too
            raise MetricError(f"labels y must be 0 or 1, found {y!r}")
        p = float(p)
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise MetricError(f"probabilities p must lie in [0, 1], found {p!r}")
        self._y[self._next] = y
        self._p[self._next] = p
        self._next = (self._next + 1) % self.size
        self._count = min(self._count + 1, self.size)

    def add_many(self, ys: Any, ps: Any) -> None:
        """Append pairs in order (only the last ``size`` of a long batch are kept)."""
        yy = _labels(ys)
        pp = _scores(ps, probabilities=True)
        if len(yy) != len(pp):
            raise MetricError(f"inputs differ in length: len(ys)={len(yy)}, len(ps)={len(pp)}")
        n = len(yy)
        if n == 0:
            return
        if n >= self.size:
            self._y[:] = yy[-self.size :]
            self._p[:] = pp[-self.size :]
            self._next = 0
            self._count = self.size
            return
        idx = (self._next + np.arange(n)) % self.size
        self._y[idx] = yy
        self._p[idx] = pp
        self._next = (self._next + n) % self.size
        self._count = min(self._count + n, self.size)

    def _contents(self) -> tuple[np.ndarray, np.ndarray]:
        # Slot order, not arrival order: neither metric depends on the order.
        return self._y[: self._count], self._p[: self._count]

    def logloss(self) -> float:
        """Logloss over the window; ``nan`` when empty."""
        if self._count == 0:
            return math.nan
        y, p = self._contents()
        return float(_clip_log_likelihood(y, p).mean())

    def auc(self) -> float:
        """Exact AUC over the window; ``nan`` when empty or a single class."""
        if self._count == 0:
            return math.nan
        y, p = self._contents()
        return _auc_core(y, p, None)
