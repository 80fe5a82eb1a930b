"""GBDT+LR hybrid (He et al., 2014, "Practical Lessons from Predicting Clicks on Ads at
Facebook"): boosted trees turn dense features into leaf indicators for an online FTRL-LR.

How it runs
-----------
* **Dense inputs.** The trees see the feature dict's numeric features whose names start
  with ``dense_prefix`` (``num.`` — the point-in-time counting features that
  :func:`features.featurize.impression_features` adds: smoothed user / item / user ×
  category CTRs and log counts over 1 h, 1 d, 7 d, sequence depths). Their names are
  fixed at the first learned sample (sorted) unless given as ``dense_features``; a
  missing one is NaN, which LightGBM routes as missing.
* **Trees in batch, LR in real time.** Every learned sample goes into a ring buffer of the
  ``buffer_size`` most recent ones (dense vector, label, weight). LightGBM trees are
  refitted on that buffer in a background thread (LightGBM releases the GIL;
  ``num_threads=1, deterministic=True, seed=seed``) — first once ``min_samples`` are
  buffered, then every ``refit_every`` samples, and as soon as a Page-Hinkley detector
  fires on the serving LR's log loss (a concept change). Each tree's leaf is a one-hot
  feature ``leaf=<generation>:<tree>:<leaf>`` of the FTRL-LR, which learns every sample.
* **Deterministic adoption.** A refit started at sample ``s`` (on a copy of the buffer
  as of ``s``) is adopted at exactly sample ``s + adopt_after``; if the thread is not done
  by then the learner waits for it (a fit of 30 trees on 50K rows takes ~0.25 s on one
  free core; a replay feeding several thousand samples a second on busy cores waits now
  and then — it costs time, never determinism). So when the trees change never depends on
  thread timing: seeded runs are identical, and a state saved mid-refit holds the
  refit's training set, which a restore refits (LightGBM is deterministic here) and
  adopts at the same sample.
* **Shadow LR and swaps.** New trees do not replace the serving ones at once: they get a
  new LR — warm-started from the serving LR's weights, so what it learned about the raw
  features is kept; its new leaf features start at 0 (the generation in their names keeps
  them apart from the old trees' leaves) — that trains in shadow on the live samples and
  takes over when its log loss over the last ``shadow_window`` samples (both models
  scored before learning each one) is lower than the serving LR's, or anyway after
  ``shadow_max`` samples (the new trees are fitted on fresher data; a bound keeps stale
  trees from serving forever). Trees adopted while a shadow still trains replace it.
* **Cold start.** Until the first trees are adopted the serving LR is an FTRL on the raw
  hashed features only; the first trees' LR shadows it like any other.

Does the LR keep the raw sparse features?
-----------------------------------------
Yes (``keep_raw=True``, the default). In He et al. the LR's input is the trees' leaves
(their Table 1 compares that with an LR on the raw features and with the trees alone).
Here the strongest signal of a CTR stream is memorised per id and per cross (user, item,
user × category, item × position) with millions of values: trees on a 50K-sample buffer
cannot split on them, and the counting features summarise them only partially. Dropping
them makes the hybrid worse than plain FTRL (AUC 0.650 against 0.742 on the synthetic
stream, 0.641 against 0.673 on MIND). With them, the leaves add what a linear model
cannot express — non-linear transforms and interactions of the dense features — on top
of FTRL. ``keep_raw=False`` gives the paper's leaves-only LR.

Defaults, and what they gave
----------------------------
Buffer 50K samples (several hours of a busy stream: enough rows for 30 trees of 16
leaves with >= 100 samples a leaf, recent enough to follow drift); first fit at 10K;
refits every 25K; adoption 10K after a fit starts; shadow window 5K (~250 clicks at 5%
CTR, enough to compare log losses), warm-up bound 20K (< ``refit_every``, so a shadow
normally serves before the next trees arrive). Replays of ``streamctr replay DIR
--learners ftrl,gbdt_lr`` (``wait`` mode, AUC / NE): synthetic 200K events
0.7417 / 0.9048 (ftrl) vs 0.7420 / 0.9042; Taobao slice 0.9054 / 0.5931 vs
0.9216 / 0.5415; MIND slice 0.6734 / 0.9454 vs 0.6735 / 0.9431. Trees alone and the
leaves-only LR (``keep_raw=False``) lose to FTRL on the synthetic and MIND streams and
beat it on Taobao, where the hybrid beats both by more than 6% NE.

Drift detector
--------------
``river.drift.PageHinkley`` (``mode="up"``) on the serving LR's per-sample log loss.
river's ADWIN keeps its window inside a Rust object whose state cannot be read without
pickle; Page-Hinkley's state is six numbers, saved and restored explicitly. Loss is
clipped at 10 so one confidently wrong sample cannot trip it. A detection starts a refit
unless one is pending, a shadow is still training (its trees are fresh already), or one
started less than ``adopt_after`` samples ago. On Taobao, without the shadow condition,
detections every few thousand samples kept replacing shadows before they could serve.

State
-----
:meth:`state_dict` holds numpy arrays, plain scalars and strings only: hyper-parameters,
the buffer, trees as LightGBM ``model_to_string()`` text, the FTRL states (nested
dicts), the pending refit's training set, the shadow's rolling losses, the detector's
numbers and the counters. No pickle. Restoring gives identical next predictions and an
identical continuation.

Tree inference
--------------
``booster.predict(pred_leaf=True)`` costs 50-200 us per call; the trees are flattened
from ``booster.dump_model()`` into numpy arrays and walked by a small numba kernel
(:func:`_find_leaves`) that replicates LightGBM's numerical decision, missing values
and its reading of |x| <= 1e-35 as 0 included (tested equal to ``pred_leaf``): ~1.2 us
for 30 trees, ~3.5 us with the leaf feature names.
"""

from __future__ import annotations

import math
import numbers
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numba as nb
import numpy as np
from river import drift

from learners.base import LearnerError, check_float, check_int, check_state, good_weight, learn_each
from learners.ftrl import FTRLProximal

__all__ = ["GBDTLR"]

_FORMAT = "streamctr.learners.gbdt_lr"
_VERSION = 1
_LOSS_CLIP = 10.0  # per-sample log loss cap for the detector and the shadow comparison
_P_EPS = 1e-15
# LightGBM's kZeroThreshold (a float constant, compared in double).
_ZERO = float(np.float32(1e-35))
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}

_INT_HYPER = ("n_bits", "n_trees", "num_leaves", "min_data_in_leaf", "max_bin", "buffer_size",
              "min_samples", "refit_every", "adopt_after", "shadow_window", "shadow_max",
              "drift_min_instances", "seed")
_FLOAT_HYPER = ("alpha", "beta", "l1", "l2", "learning_rate", "leaf_value", "drift_delta",
                "drift_threshold")
_BOOL_HYPER = ("keep_raw", "drift")
_COUNTERS = ("refits", "drift_refits", "refits_adopted", "refits_skipped", "refit_failures",
             "swaps", "swaps_on_loss", "swaps_on_warmup", "shadows_replaced", "drifts")


# -- tree flattening and the leaf kernel ---------------------------------------------------


@nb.njit(cache=True)
def _find_leaves(x, roots, feature, threshold, flags, left, right, out):  # pragma: no cover
    """Leaf index of every tree for one dense row ``x`` (LightGBM's NumericalDecision).

    Nodes of all trees share the arrays; a child ``< 0`` is leaf ``-child - 1``.
    ``flags``: bits 0-1 the missing type (0 none, 1 zero, 2 NaN), bit 2 default-left.
    """
    for t in range(roots.size):
        node = roots[t]
        while node >= 0:
            v = x[feature[node]]
            fl = flags[node]
            missing = fl & 3
            if np.isnan(v):
                if missing != 2:
                    v = 0.0
            elif -_ZERO <= v <= _ZERO:
                # LightGBM's predictor reads rows as sparse: values this close to 0 are
                # dropped, i.e. become exactly 0.0 (it matters at the -1e-35 thresholds).
                v = 0.0
            if (missing == 1 and -_ZERO <= v <= _ZERO) or (missing == 2 and np.isnan(v)):
                node = left[node] if (fl >> 2) & 1 else right[node]
            elif v <= threshold[node]:
                node = left[node]
            else:
                node = right[node]
        out[t] = -node - 1


@dataclass
class _Forest:
    """One fitted tree set: its LightGBM text, flattened arrays and leaf feature names."""

    generation: int
    model: str
    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    flags: np.ndarray
    left: np.ndarray
    right: np.ndarray
    names: list[list[str]]  # names[tree][leaf]: the LR feature of that leaf
    values: np.ndarray  # float64 (n_trees, max_leaves): LightGBM's output of each leaf

    @property
    def n_trees(self) -> int:
        return int(self.roots.size)

    def leaves(self, dense: np.ndarray) -> np.ndarray:
        out = np.empty(self.roots.size, np.int32)
        _find_leaves(dense, self.roots, self.feature, self.threshold, self.flags, self.left,
                     self.right, out)
        return out

    def raw_score(self, dense: np.ndarray) -> float:
        """The trees' own log-odds for one row: the sum of its leaves' outputs."""
        return float(self.values[np.arange(self.roots.size), self.leaves(dense)].sum())

    def leaf_features(self, dense: np.ndarray, value: float) -> dict[str, float]:
        names = self.names
        return {names[t][leaf]: value for t, leaf in enumerate(self.leaves(dense).tolist())}


def _flatten_forest(model: str, generation: int) -> _Forest:
    """Parse LightGBM model text into the arrays :func:`_find_leaves` walks."""
    import lightgbm as lgb  # imported lazily: only learners with trees pay for it

    try:
        dump = lgb.Booster(model_str=model).dump_model()
    except Exception as e:  # LightGBM raises its own error type on unparsable text
        raise LearnerError(f"cannot parse the LightGBM model: {e}") from None
    feature: list[int] = []
    threshold: list[float] = []
    flags: list[int] = []
    left: list[int] = []
    right: list[int] = []
    roots: list[int] = []
    names: list[list[str]] = []
    values: list[dict[int, float]] = []

    def walk(node: dict[str, Any]) -> int:
        if "split_index" not in node:  # a leaf (a one-leaf tree has no leaf_index)
            leaf = int(node.get("leaf_index", 0))
            values[-1][leaf] = float(node["leaf_value"])
            return -leaf - 1
        if node.get("decision_type", "<=") != "<=":
            raise LearnerError("categorical splits are not supported")
        i = len(feature)
        feature.append(int(node["split_feature"]))
        t = float(node["threshold"])
        # dump_model writes an infinite threshold (a NaN-vs-number split) as +-1e300.
        threshold.append(math.copysign(math.inf, t) if abs(t) >= 1e300 else t)
        flags.append(_MISSING[node.get("missing_type", "None")]
                     | (4 if node.get("default_left", False) else 0))
        left.append(0)
        right.append(0)
        left[i] = walk(node["left_child"])
        right[i] = walk(node["right_child"])
        return i

    for t, tree in enumerate(dump["tree_info"]):
        values.append({})
        roots.append(walk(tree["tree_structure"]))
        names.append([f"leaf={generation}:{t}:{leaf}" for leaf in range(int(tree["num_leaves"]))])
    leaf_values = np.zeros((len(roots), max((len(v) for v in values), default=1)), np.float64)
    for t, tree_values in enumerate(values):
        for leaf, v in tree_values.items():
            leaf_values[t, leaf] = v
    return _Forest(generation, model, np.array(roots, np.int32), np.array(feature, np.int32),
                   np.array(threshold, np.float64), np.array(flags, np.int8),
                   np.array(left, np.int32), np.array(right, np.int32), names, leaf_values)


# -- the background refit -------------------------------------------------------------------


class _Refit:
    """A LightGBM fit on a frozen copy of the buffer, run in a daemon thread."""

    def __init__(self, start: int, reason: str, X: np.ndarray, y: np.ndarray, w: np.ndarray,
                 params: dict[str, Any], n_trees: int) -> None:
        self.start, self.reason = start, reason
        self.X, self.y, self.w = X, y, w
        self.model: str | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(params, n_trees), daemon=True,
                                        name=f"gbdt-refit-{start}")
        self._thread.start()

    def _run(self, params: dict[str, Any], n_trees: int) -> None:
        try:
            import lightgbm as lgb

            data = lgb.Dataset(self.X, label=self.y, weight=self.w, params=params,
                               free_raw_data=True)
            self.model = lgb.train(params, data, num_boost_round=n_trees).model_to_string()
        except Exception as e:  # reported at adoption; the learner keeps serving
            self.error = f"{type(e).__name__}: {e}"

    def result(self) -> tuple[str | None, bool]:
        """(model text or None on failure, whether the caller had to wait)."""
        waited = self._thread.is_alive()
        self._thread.join()
        return self.model, waited


# -- helpers --------------------------------------------------------------------------------


def _logloss(p: float, y: int) -> float:
    p = min(max(p, _P_EPS), 1.0 - _P_EPS)
    return min(-math.log(p if y else 1.0 - p), _LOSS_CLIP)


class _PageHinkley:
    """river's PageHinkley, with its state read and written as plain numbers."""

    FIELDS = ("ph_n", "ph_mean", "ph_sum_increase", "ph_sum_decrease", "ph_min_increase",
              "ph_max_decrease", "ph_detected")

    def __init__(self, min_instances: int, delta: float, threshold: float) -> None:
        self.detector = drift.PageHinkley(min_instances=min_instances, delta=delta,
                                          threshold=threshold, mode="up")

    def update(self, loss: float) -> bool:
        self.detector.update(loss)
        return self.detector.drift_detected

    def reset(self) -> None:
        self.detector._reset()

    def state(self) -> dict[str, Any]:
        d = self.detector
        return {"ph_n": float(d._x_mean.n), "ph_mean": float(d._x_mean._mean),
                "ph_sum_increase": float(d._sum_increase),
                "ph_sum_decrease": float(d._sum_decrease),
                "ph_min_increase": float(d._min_increase),
                "ph_max_decrease": float(d._max_decrease),
                "ph_detected": bool(d._drift_detected)}

    def load(self, s: Mapping[str, Any]) -> None:
        d = self.detector
        d._reset()
        d._x_mean.n = float(s["ph_n"])
        d._x_mean._mean = float(s["ph_mean"])
        d._sum_increase = float(s["ph_sum_increase"])
        d._sum_decrease = float(s["ph_sum_decrease"])
        d._min_increase = float(s["ph_min_increase"])
        d._max_decrease = float(s["ph_max_decrease"])
        d._drift_detected = bool(s["ph_detected"])


# -- the learner ----------------------------------------------------------------------------


class GBDTLR:
    """GBDT+LR: LightGBM leaves of dense features as extra features of an online FTRL-LR.

    Parameters
    ----------
    alpha, beta, l1, l2, n_bits
        Of the FTRL-Proximal LRs (see :class:`learners.ftrl.FTRLProximal`).
    n_trees, num_leaves, learning_rate, min_data_in_leaf, max_bin
        Of each LightGBM fit (binary objective).
    buffer_size
        The trees are fitted on this many most recent learned samples.
    min_samples
        The first fit starts once this many samples have been learned.
    refit_every
        Samples between the starts of two scheduled fits.
    adopt_after
        A fit started at sample ``s`` is adopted at sample ``s + adopt_after``.
    shadow_window, shadow_max
        A new tree set's LR replaces the serving one when its log loss over the last
        ``shadow_window`` samples is lower, or after ``shadow_max`` samples in shadow.
    keep_raw
        Whether the LR also gets the raw sparse features (see the module doc).
    leaf_value
        The value of a leaf feature (default ``1 / sqrt(n_trees)``).
    drift, drift_delta, drift_threshold, drift_min_instances
        Page-Hinkley on the serving LR's log loss; ``drift=False`` turns it off.
    dense_prefix, dense_features
        Which features the trees see: those named in ``dense_features``, or (``None``)
        those whose names start with ``dense_prefix`` in the first learned sample.
    seed
        LightGBM's seed.

    >>> import random
    >>> rng = random.Random(1)
    >>> model = GBDTLR(n_bits=16, n_trees=5, min_samples=200, refit_every=400,
    ...                adopt_after=50, shadow_window=100, shadow_max=200, buffer_size=1000)
    >>> model.predict_proba_one({"user=u1": 1.0, "num.ctr": 0.0})  # nothing learned yet
    0.5
    >>> for _ in range(1000):
    ...     ctr = rng.random()
    ...     x = {"bias": 1.0, f"user=u{rng.randrange(20)}": 1.0, "num.ctr": ctr}
    ...     model.learn_one(x, int(rng.random() < (0.8 if ctr > 0.7 else 0.05)))
    >>> stats = model.stats()  # fits start at samples 200, 600, 1000; adopted 50 later
    >>> {k: stats[k] for k in ("refits", "refits_adopted", "refit_pending", "swaps", "trees")}
    {'refits': 3, 'refits_adopted': 2, 'refit_pending': 1, 'swaps': 2, 'trees': 5}
    >>> hi = model.predict_proba_one({"bias": 1.0, "user=u3": 1.0, "num.ctr": 0.9})
    >>> lo = model.predict_proba_one({"bias": 1.0, "user=u3": 1.0, "num.ctr": 0.2})
    >>> round(hi, 2), round(lo, 2)
    (0.46, 0.22)
    """

    def __init__(
        self,
        alpha: float = 0.05,
        beta: float = 1.0,
        l1: float = 0.0,
        l2: float = 1.0,
        n_bits: int = 20,
        n_trees: int = 30,
        num_leaves: int = 16,
        learning_rate: float = 0.1,
        min_data_in_leaf: int = 100,
        max_bin: int = 63,
        buffer_size: int = 50_000,
        min_samples: int = 10_000,
        refit_every: int = 25_000,
        adopt_after: int = 10_000,
        shadow_window: int = 5_000,
        shadow_max: int = 20_000,
        keep_raw: bool = True,
        leaf_value: float | None = None,
        drift: bool = True,
        drift_delta: float = 0.02,
        drift_threshold: float = 100.0,
        drift_min_instances: int = 1_000,
        dense_prefix: str = "num.",
        dense_features: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        # The LR's own checks (alpha > 0, n_bits range, ...) with their messages.
        FTRLProximal(alpha, beta, l1, l2, 1)
        from features.hashing import MAX_BITS

        self.alpha, self.beta, self.l1, self.l2 = float(alpha), float(beta), float(l1), float(l2)
        self.n_bits = check_int("n_bits", n_bits, 1)
        if self.n_bits > MAX_BITS:
            raise LearnerError(f"n_bits must be in [1, {MAX_BITS}], got {n_bits!r}")
        self.n_trees = check_int("n_trees", n_trees, 1)
        self.num_leaves = check_int("num_leaves", num_leaves, 2)
        self.learning_rate = check_float("learning_rate", learning_rate, 0.0, strict=True)
        self.min_data_in_leaf = check_int("min_data_in_leaf", min_data_in_leaf, 1)
        self.max_bin = check_int("max_bin", max_bin, 2)
        self.buffer_size = check_int("buffer_size", buffer_size, 2)
        self.min_samples = check_int("min_samples", min_samples, 2)
        self.refit_every = check_int("refit_every", refit_every, 1)
        self.adopt_after = check_int("adopt_after", adopt_after, 1)
        self.shadow_window = check_int("shadow_window", shadow_window, 1)
        self.shadow_max = check_int("shadow_max", shadow_max, 1)
        if self.min_samples > self.buffer_size:
            raise LearnerError(f"min_samples ({min_samples}) must be <= buffer_size "
                               f"({buffer_size})")
        if self.adopt_after > self.refit_every:
            raise LearnerError(f"adopt_after ({adopt_after}) must be <= refit_every "
                               f"({refit_every}): one refit is pending at a time")
        if self.shadow_window > self.shadow_max:
            raise LearnerError(f"shadow_window ({shadow_window}) must be <= shadow_max "
                               f"({shadow_max})")
        for name, value in (("keep_raw", keep_raw), ("drift", drift)):
            if not isinstance(value, bool | np.bool_):
                raise LearnerError(f"{name} must be a bool, got {value!r}")
        self.keep_raw, self.drift = bool(keep_raw), bool(drift)
        # Every sample switches on one leaf per tree: with value 1, FTRL's per-coordinate
        # steps move the score ~n_trees times as far as one raw feature's, and the
        # hybrid's predictions get noisy (measured: AUC 0.737 with 1.0, 0.742 with 0.05-0.2
        # on the synthetic stream). 1/sqrt(n_trees) keeps the leaves' summed step near
        # one feature's.
        if leaf_value is None:
            leaf_value = 1.0 / math.sqrt(self.n_trees)
        self.leaf_value = check_float("leaf_value", leaf_value, 0.0, strict=True)
        self.drift_delta = check_float("drift_delta", drift_delta, 0.0, strict=False)
        self.drift_threshold = check_float("drift_threshold", drift_threshold, 0.0, strict=True)
        self.drift_min_instances = check_int("drift_min_instances", drift_min_instances, 1)
        if not isinstance(dense_prefix, str) or not dense_prefix:
            raise LearnerError(f"dense_prefix must be a non-empty str, got {dense_prefix!r}")
        self.dense_prefix = dense_prefix
        if dense_features is not None:
            if isinstance(dense_features, str) or not all(
                    isinstance(n, str) for n in dense_features) or not dense_features:
                raise LearnerError("dense_features must be a non-empty sequence of str")
            if len(set(dense_features)) != len(dense_features):
                raise LearnerError("dense_features has repeated names")
        self.dense_features = None if dense_features is None else tuple(dense_features)
        self.seed = check_int("seed", seed, 0)
        self._reset()

    # -- construction of the learned state ----------------------------------------------

    def _new_lr(self) -> FTRLProximal:
        return FTRLProximal(self.alpha, self.beta, self.l1, self.l2, self.n_bits)

    def _reset(self) -> None:
        self.n_learned = 0
        self._dense_names: list[str] | None = (
            None if self.dense_features is None else list(self.dense_features))
        n_dense = 0 if self._dense_names is None else len(self._dense_names)
        self._buf_X = np.zeros((self.buffer_size, n_dense), np.float32)
        self._buf_y = np.zeros(self.buffer_size, np.float32)
        self._buf_w = np.zeros(self.buffer_size, np.float64)
        self._buf_pos = 0  # next slot to write
        self._buf_len = 0
        self._lr = self._new_lr()  # the serving LR
        self._forest: _Forest | None = None  # its trees (None: raw features only)
        self._shadow_lr: FTRLProximal | None = None
        self._shadow_forest: _Forest | None = None
        self._shadow_seen = 0
        # Per-sample losses of the serving and the shadow LR since the shadow started,
        # on the same samples, in rings of shadow_window.
        self._loss_serve = np.zeros(self.shadow_window, np.float64)
        self._loss_shadow = np.zeros(self.shadow_window, np.float64)
        self._pending: _Refit | None = None
        self._next_refit = self.min_samples  # sample count at which the next fit starts
        self._last_refit_start = -(10**18)
        self._generation = 0  # of the last adopted tree set
        self._detector = _PageHinkley(self.drift_min_instances, self.drift_delta,
                                      self.drift_threshold)
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self.adoption_waits = 0  # adoptions that waited for the thread (timing; not state)

    def _lgb_params(self) -> dict[str, Any]:
        return {
            "objective": "binary", "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate, "min_data_in_leaf": self.min_data_in_leaf,
            "max_bin": self.max_bin, "num_threads": 1, "deterministic": True,
            "force_row_wise": True, "seed": self.seed, "verbose": -1,
            # NaN means missing (a dense feature absent from the dict); 0 is a value.
            "use_missing": True, "zero_as_missing": False,
        }

    _REPR = ("alpha", "beta", "l1", "l2", "n_bits", "n_trees", "num_leaves", "buffer_size",
             "refit_every", "adopt_after", "keep_raw", "seed")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._REPR)
        return f"GBDTLR({args})"

    # -- features -----------------------------------------------------------------------

    def _dense(self, x: dict[str, float], names: list[str]) -> np.ndarray:
        """The trees' input row; a name missing from ``x`` is NaN (LightGBM: missing)."""
        out = np.empty(len(names), np.float64)
        get, nan, isfinite = x.get, math.nan, math.isfinite
        for i, name in enumerate(names):
            v = get(name)
            if v is None:
                out[i] = nan
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not isfinite(v):
                raise LearnerError(f"feature {name!r} has a non-finite or non-numeric "
                                   f"value {v!r}")
            out[i] = v
        # The buffer stores float32; trees must see the values they were fitted on.
        return out.astype(np.float32).astype(np.float64)

    def _lr_input(self, x: dict[str, float], forest: _Forest | None,
                  dense: np.ndarray | None) -> dict[str, float]:
        if forest is None:
            return x
        leaves = forest.leaf_features(dense, self.leaf_value)  # type: ignore[arg-type]
        if not self.keep_raw:
            return leaves
        return {**x, **leaves}

    def _check_x(self, x: Any) -> None:
        if not isinstance(x, dict):
            raise LearnerError(f"features must be a dict, got {type(x).__name__}")
        if not self.keep_raw and self._forest is not None:
            # The LR, which checks values, does not see the raw features: check them here.
            for k, v in x.items():
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                    raise LearnerError(f"feature {k!r} has a non-finite or non-numeric "
                                       f"value {v!r}")

    # -- prediction ---------------------------------------------------------------------

    def predict_proba_one(self, x: dict[str, float]) -> float:
        """Click probability from the serving LR (and trees); does not change the state."""
        self._check_x(x)
        dense = None
        if self._forest is not None:
            dense = self._dense(x, self._dense_names)  # type: ignore[arg-type]
        return self._lr.predict_proba_one(self._lr_input(x, self._forest, dense))

    def predict_trees_one(self, x: dict[str, float]) -> float | None:
        """Click probability of the newest trees alone (the shadow's when one trains), or
        None before the first trees: the "trees only" model of He et al.'s Table 1, for
        ablations and monitoring; the hybrid never serves it."""
        self._check_x(x)
        forest = self._shadow_forest or self._forest
        if forest is None:
            return None
        raw = forest.raw_score(self._dense(x, self._dense_names))  # type: ignore[arg-type]
        return 1.0 / (1.0 + math.exp(-raw))

    def predict_proba_many(self, batch: Sequence[dict[str, float]]) -> np.ndarray:
        """Click probabilities of ``batch`` as a float64 array (no state change)."""
        predict = self.predict_proba_one
        return np.array([predict(x) for x in batch], dtype=np.float64)

    # -- learning -----------------------------------------------------------------------

    def learn_one(self, x: dict[str, float], y: int, w: float = 1.0) -> None:
        """Learn one sample (both LRs when a shadow trains); may start or adopt a refit.

        Everything is validated before anything changes: a bad sample raises
        :class:`LearnerError` and leaves the learner as it was.
        """
        if not (y == 0 or y == 1):
            raise LearnerError(f"label must be 0 or 1, got {y!r}")
        y = int(y)
        if not good_weight(w):
            raise LearnerError(f"sample weight must be finite and >= 0, got {w!r}")
        self._check_x(x)
        names = self._dense_names
        if names is None:  # the first learned sample fixes the trees' inputs
            names = sorted(k for k in x if isinstance(k, str) and k.startswith(self.dense_prefix))
        dense = self._dense(x, names)
        xs = self._lr_input(x, self._forest, dense)
        p = self._lr.predict_proba_one(xs)  # raises on bad feature names / values
        if self._shadow_lr is not None:
            xsh = self._lr_input(x, self._shadow_forest, dense)
            ps = self._shadow_lr.predict_proba_one(xsh)

        # -- nothing has changed so far; from here on the sample is applied --
        if self._dense_names is None:
            self._dense_names = names
            self._buf_X = np.zeros((self.buffer_size, len(names)), np.float32)
        loss = _logloss(p, y)
        self._lr.learn_one(xs, y, w)
        if self._shadow_lr is not None:
            self._shadow_lr.learn_one(xsh, y, w)
            slot = self._shadow_seen % self.shadow_window
            self._loss_serve[slot] = w * loss
            self._loss_shadow[slot] = w * _logloss(ps, y)
            self._shadow_seen += 1
        pos = self._buf_pos
        self._buf_X[pos] = dense
        self._buf_y[pos] = y
        self._buf_w[pos] = w
        self._buf_pos = (pos + 1) % self.buffer_size
        self._buf_len = min(self._buf_len + 1, self.buffer_size)
        self.n_learned += 1
        drifted = self.drift and w > 0.0 and self._detector.update(loss)
        if drifted:
            self._counters["drifts"] += 1

        # Fixed order at each sample: a shadow may take over, then a pending refit is
        # adopted, then a new refit may start.
        self._maybe_swap()
        if self._pending is not None and self.n_learned >= self._pending.start + self.adopt_after:
            self._adopt()
        if self._pending is None:
            if self.n_learned >= self._next_refit:
                self._start_refit("schedule")
            elif (drifted and self._shadow_lr is None and self._buf_len >= self.min_samples
                  and self.n_learned - self._last_refit_start >= self.adopt_after):
                # Not while a shadow trains: its trees are newer than the detected change
                # (or nearly), and replacing it again and again would never let it serve.
                self._start_refit("drift")

    def learn_many(
        self,
        batch: Sequence[dict[str, float]],
        y: Sequence[int] | np.ndarray,
        w: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Exactly ``learn_one`` on each sample in order (labels and weights checked first)."""
        learn_each(self, batch, y, w)

    # -- refits, adoption, swaps --------------------------------------------------------

    def _buffer(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the buffered samples, oldest first."""
        n, pos = self._buf_len, self._buf_pos
        order = np.arange(pos - n, pos) % self.buffer_size
        return self._buf_X[order], self._buf_y[order], self._buf_w[order]

    def _start_refit(self, reason: str) -> None:
        self._next_refit = self.n_learned + self.refit_every
        self._last_refit_start = self.n_learned
        X, yb, wb = self._buffer()
        pos_w = float(wb[yb == 1].sum())
        neg_w = float(wb[yb == 0].sum())
        if X.shape[1] == 0 or pos_w <= 0.0 or neg_w <= 0.0:
            # No dense features, or one class only: trees would carry nothing.
            self._counters["refits_skipped"] += 1
            return
        self._counters["refits"] += 1
        if reason == "drift":
            self._counters["drift_refits"] += 1
        self._launch(self.n_learned, reason, X, yb, wb)

    def _launch(self, start: int, reason: str, X: np.ndarray, y: np.ndarray,
                w: np.ndarray) -> None:
        self._pending = _Refit(start, reason, X, y, w, self._lgb_params(), self.n_trees)

    def _adopt(self) -> None:
        refit, self._pending = self._pending, None
        assert refit is not None
        model, waited = refit.result()
        self.adoption_waits += int(waited)
        if model is None:
            self._counters["refit_failures"] += 1
            warnings.warn(f"GBDT refit started at sample {refit.start} failed: {refit.error}",
                          RuntimeWarning, stacklevel=3)
            return
        self._generation += 1
        forest = _flatten_forest(model, self._generation)
        self._counters["refits_adopted"] += 1
        if self._shadow_lr is not None:
            self._counters["shadows_replaced"] += 1
        self._shadow_forest = forest
        # Warm start: the serving LR's weights (raw features, old leaves that the new
        # leaves' names never hit); its per-coordinate rates carry over too.
        self._shadow_lr = FTRLProximal.from_state_dict(self._lr.state_dict())
        self._shadow_seen = 0
        self._loss_serve[:] = 0.0
        self._loss_shadow[:] = 0.0

    def _maybe_swap(self) -> None:
        if self._shadow_lr is None:
            return
        seen = self._shadow_seen
        on_loss = seen >= self.shadow_window and (
            float(self._loss_shadow.sum()) < float(self._loss_serve.sum()))
        on_warmup = seen >= self.shadow_max
        if not (on_loss or on_warmup):
            return
        self._counters["swaps"] += 1
        self._counters["swaps_on_loss" if on_loss else "swaps_on_warmup"] += 1
        self._lr, self._forest = self._shadow_lr, self._shadow_forest
        self._shadow_lr, self._shadow_forest = None, None
        self._shadow_seen = 0
        # The serving loss level changed by design: do not read it as a drift.
        self._detector.reset()

    # -- introspection ------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters for monitoring: refits started (and by drift), adopted, skipped, failed;
        swaps (on loss / on the warm-up bound), shadows replaced by newer trees, detector
        firings; samples learned and buffered; trees serving; shadow / refit in flight."""
        return {
            **self._counters,
            "samples": self.n_learned,
            "buffered": self._buf_len,
            "trees": 0 if self._forest is None else self._forest.n_trees,
            "generation": 0 if self._forest is None else self._forest.generation,
            "shadow_active": int(self._shadow_lr is not None),
            "shadow_samples": self._shadow_seen,
            "refit_pending": int(self._pending is not None),
        }

    # -- state --------------------------------------------------------------------------

    def _hyper(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in (*_INT_HYPER, *_FLOAT_HYPER,
                                                            *_BOOL_HYPER)}
        d["dense_prefix"] = self.dense_prefix
        d["dense_features"] = "\n".join(self.dense_features) if self.dense_features else ""
        return d

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters and the whole learned state, as arrays / scalars / strings."""
        names = self._dense_names
        d: dict[str, Any] = {"format": _FORMAT, "version": _VERSION, **self._hyper()}
        d.update({
            "n_learned": self.n_learned,
            "dense_known": names is not None,
            "dense_names": np.array(names or [], dtype=str),
            "buf_X": self._buf_X.copy(), "buf_y": self._buf_y.copy(),
            "buf_w": self._buf_w.copy(), "buf_pos": self._buf_pos, "buf_len": self._buf_len,
            "next_refit": self._next_refit, "last_refit_start": self._last_refit_start,
            "generation": self._generation,
            "lr": self._lr.state_dict(),
            "forest_model": "" if self._forest is None else self._forest.model,
            "forest_generation": 0 if self._forest is None else self._forest.generation,
            "shadow_active": self._shadow_lr is not None,
            "shadow_seen": self._shadow_seen,
            "loss_serve": self._loss_serve.copy(), "loss_shadow": self._loss_shadow.copy(),
            "pending_active": self._pending is not None,
            **self._detector.state(),
            **{f"count_{k}": v for k, v in self._counters.items()},
        })
        if self._shadow_lr is not None:
            assert self._shadow_forest is not None
            d["shadow_lr"] = self._shadow_lr.state_dict()
            d["shadow_model"] = self._shadow_forest.model
            d["shadow_generation"] = self._shadow_forest.generation
        if self._pending is not None:
            # The refit's training set, so that a restore refits the same trees and adopts
            # them at the same sample, whether or not the thread had finished.
            p = self._pending
            d.update({"pending_start": p.start, "pending_reason": p.reason,
                      "pending_X": p.X.copy(), "pending_y": p.y.copy(),
                      "pending_w": p.w.copy()})
        return d

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Replace the learned state with ``d``; nothing changes if ``d`` is refused.

        A refit that was in flight when ``d`` was taken is started again on its saved
        training set (LightGBM is deterministic here), to be adopted at the same sample.
        """
        if not isinstance(d, Mapping):
            raise LearnerError(f"state dict must be a mapping, got {type(d).__name__}")
        try:
            staged = self._stage(d)
        except LearnerError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise LearnerError(f"state dict is malformed: {type(e).__name__}: {e}") from None
        # Validated: commit. A refit thread of the old state is abandoned (its result is
        # never read).
        pending = staged.pop("_pending_args")
        for name, value in staged.items():
            setattr(self, name, value)
        self._pending = None
        if pending is not None:
            self._launch(*pending)

    def _stage(self, d: Mapping[str, Any]) -> dict[str, Any]:
        check_state(d, _FORMAT, _VERSION, ("n_learned", "lr", "buf_X"), self._hyper())

        def count(name: str, low: int = 0) -> int:
            v = d[name]
            if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Integral) or v < low:
                raise LearnerError(f"state dict {name} must be an int >= {low}, got {v!r}")
            return int(v)

        def array(name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
            a = d[name]
            if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype.kind not in "fiub":
                raise LearnerError(f"state dict {name} must be a numeric array of shape "
                                   f"{shape}, got {getattr(a, 'dtype', type(a).__name__)} of "
                                   f"shape {getattr(a, 'shape', None)}")
            a = np.array(a, dtype=dtype, copy=True)
            if not np.isfinite(a).all():
                raise LearnerError(f"state dict {name} has non-finite values")
            return a

        known = bool(d["dense_known"])
        names = [str(n) for n in np.asarray(d["dense_names"]).tolist()]
        n_dense = len(names)
        s: dict[str, Any] = {"n_learned": count("n_learned"),
                             "_dense_names": names if known else None}
        if not known and names:
            raise LearnerError("state dict has dense names but says they are unknown")
        b = self.buffer_size
        s["_buf_X"] = array("buf_X", np.float32, (b, n_dense))
        s["_buf_y"] = array("buf_y", np.float32, (b,))
        s["_buf_w"] = array("buf_w", np.float64, (b,))
        s["_buf_pos"], s["_buf_len"] = count("buf_pos"), count("buf_len")
        if s["_buf_pos"] >= b or s["_buf_len"] > b:
            raise LearnerError("state dict buffer position or length out of range")
        s["_next_refit"] = count("next_refit")
        s["_last_refit_start"] = int(d["last_refit_start"])
        s["_generation"] = count("generation")
        s["_lr"] = self._load_lr(d["lr"], "lr")
        s["_forest"] = None
        if d["forest_model"]:
            s["_forest"] = self._load_forest(str(d["forest_model"]), count("forest_generation"),
                                             n_dense)
        s["_shadow_lr"] = s["_shadow_forest"] = None
        if bool(d["shadow_active"]):
            s["_shadow_lr"] = self._load_lr(d["shadow_lr"], "shadow_lr")
            s["_shadow_forest"] = self._load_forest(str(d["shadow_model"]),
                                                    count("shadow_generation"), n_dense)
        s["_shadow_seen"] = count("shadow_seen")
        w = self.shadow_window
        s["_loss_serve"] = array("loss_serve", np.float64, (w,))
        s["_loss_shadow"] = array("loss_shadow", np.float64, (w,))
        s["_pending_args"] = None
        if bool(d["pending_active"]):
            rows = d["pending_X"].shape[0] if isinstance(d["pending_X"], np.ndarray) else -1
            if not 0 < rows <= b:
                raise LearnerError(f"state dict pending_X must have 1..{b} rows")
            reason = str(d["pending_reason"])
            if reason not in ("schedule", "drift"):
                raise LearnerError(f"state dict pending_reason {reason!r} is unknown")
            s["_pending_args"] = (count("pending_start"), reason,
                                  array("pending_X", np.float32, (rows, n_dense)),
                                  array("pending_y", np.float32, (rows,)),
                                  array("pending_w", np.float64, (rows,)))
        detector = _PageHinkley(self.drift_min_instances, self.drift_delta,
                                self.drift_threshold)
        detector.load({k: d[k] for k in _PageHinkley.FIELDS})
        s["_detector"] = detector
        s["_counters"] = {k: count(f"count_{k}") for k in _COUNTERS}
        return s

    def _load_lr(self, d: Any, name: str) -> FTRLProximal:
        if not isinstance(d, Mapping):
            raise LearnerError(f"state dict {name} must be an FTRL state dict")
        lr = self._new_lr()
        try:
            lr.load_state_dict(d)
        except LearnerError as e:
            raise LearnerError(f"state dict {name}: {e}") from None
        return lr

    def _load_forest(self, model: str, generation: int, n_dense: int) -> _Forest:
        forest = _flatten_forest(model, generation)
        if forest.feature.size and int(forest.feature.max()) >= n_dense:
            raise LearnerError("state dict trees split on more dense features than it names")
        return forest

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> GBDTLR:
        """A learner with the hyper-parameters recorded in ``d`` and its state."""
        try:
            params = {k: d[k] for k in (*_INT_HYPER, *_FLOAT_HYPER, *_BOOL_HYPER,
                                        "dense_prefix")}
            features = d["dense_features"]
        except (KeyError, TypeError) as e:
            raise LearnerError(f"state dict lacks hyper-parameters: {e}") from None
        params["dense_features"] = str(features).split("\n") if features else None
        model = cls(**params)
        model.load_state_dict(d)
        return model
