"""Sparse features of an impression for linear learners, as a river-style feature dict.

Names are ``field=value`` strings with value 1.0; learners hash the names.

* ids and position, and crosses whose interaction matters for CTR: a user's taste
  for a category, an item's position effect, a category's appeal in a context;
* behaviour, from the joiner (strictly before the impression): the categories of
  the user's recent clicks, whether the user recently clicked this very item, and
  how many of the user's recent clicks fall in the impression's category (the
  lifelong hard search), bucketed;
* a constant ``bias``, which gives linear learners an intercept with its own
  per-coordinate learning rate (river's intercept is off in the parity setting);
* dense numeric features under the prefix ``num.`` (see :data:`DENSE_PREFIX`), built
  from the joiner's point-in-time counts (``JoinedFeatures.counts``): for the user, the
  item and the user × category pair over each half-life, a smoothed CTR as a clipped
  log-lift over a fixed prior, ``num.<key>_ctr_<h>`` =
  ``clip(ln(((clicks + prior·a) / (imps + a)) / prior), -3, 3) / 3``, and the volume
  ``num.<key>_imps_<h>`` = ``log1p(imps) / 10``; plus the depth of the behaviour
  sequences (``num.recent_clicks``, ``num.same_category_clicks``, in [0, 1]). They feed
  the trees of the GBDT+LR hybrid, which split on them whatever their scale; but FTRL
  sees the whole dict too, so every transform is bounded (|value| ≤ 1, counts ≤ ~1.4 up
  to a million decayed impressions) and centred on "no evidence" (a key never seen
  scores 0 on all of them), so they cannot swamp the one-hot features' gradients.

>>> from features.events import Click, Impression
>>> from features.joiner import Joiner
>>> j = Joiner()
>>> imp = Impression("i1", "r1", "u7", "it3", "c2", 1, 1000, {"device": "ios"})
>>> _ = j.push([Impression("i0", "r0", "u7", "it1", "c2", 0, 0), Click("i0", "u7", 10), imp])
>>> row = j.settle().rows[0]  # the newest event waits for a newer one, or for settle()
>>> x = impression_features(imp, j.features(row))
>>> sorted(k for k in x if not k.startswith(DENSE_PREFIX))
... # doctest: +NORMALIZE_WHITESPACE
['bias', 'category=c2', 'category×ctx.device=c2|ios', 'ctx.device=ios', 'item=it3',
 'item×position=it3|1', 'position=1', 'recent_category=c2', 'same_category_clicks=1',
 'user=u7', 'user×category=u7|c2']
>>> [k for k in x if k.endswith("_1h")]  # also _1d and _7d  # doctest: +NORMALIZE_WHITESPACE
['num.user_ctr_1h', 'num.user_imps_1h', 'num.item_ctr_1h', 'num.item_imps_1h',
 'num.user_category_ctr_1h', 'num.user_category_imps_1h']
>>> round(x["num.user_ctr_1h"], 4), round(x["num.user_imps_1h"], 4)  # 1 click in 1 imp
(0.3344, 0.0693)
>>> x["num.item_ctr_7d"], x["num.item_imps_7d"]  # an item never seen: no evidence
(0.0, 0.0)
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

from features.events import Impression
from features.hashing import hash_names
from features.ids import Interner
from features.joiner import JoinedFeatures

__all__ = ["DENSE_PREFIX", "Behaviours", "Features", "dense_features", "impression_features"]

# Names of dense numeric features start with this; learners that need a dense vector
# (the trees of learners.gbdt_lr) pick the features by it.
DENSE_PREFIX = "num."

# Smoothing of the CTRs: a key with few impressions reads as the prior. The prior is a
# fixed, typical display CTR rather than a running estimate, so that features stay a pure
# function of the impression's counts (a replay and a restarted service agree); a wrong
# prior only shifts every lift by a constant, which the bias absorbs.
_PRIOR_CTR = 0.05
_PRIOR_STRENGTH = 10.0
_LIFT_CLIP = 3.0  # |ln lift| beyond this (20x) is noise from tiny denominators
_LOG_COUNT_SCALE = 10.0
# The joiner's sequence lengths are capped (defaults 50 and 32); normalised by log1p of a
# cap so the value stays in [0, 1] for the defaults.
_RECENT_NORM = math.log1p(50.0)
_TOPK_NORM = math.log1p(32.0)

# Upper bounds of the buckets of "how many recent clicks in this category".
_COUNT_BUCKETS = (0, 1, 2, 4, 8, 16)


def _bucket(n: int) -> str:
    for bound in _COUNT_BUCKETS:
        if n <= bound:
            return str(bound)
    return f">{_COUNT_BUCKETS[-1]}"


def _half_life_label(label: str) -> str:
    # The counters name half-lives in hours ("24h"); whole days read better ("1d").
    if label.endswith("h") and label[:-1].isdigit():
        hours = int(label[:-1])
        if hours % 24 == 0:
            return f"{hours // 24}d"
    return label


_LAYOUTS: dict[tuple[str, ...], list[tuple[str, str, int, int]]] = {}


def _dense_layout(count_names: list[str]) -> list[tuple[str, str, int, int]]:
    """(ctr name, imps name, imps column, clicks column) per key and half-life, cached per
    counter layout (it only depends on the joiner's configured half-lives)."""
    key = tuple(count_names)
    layout = _LAYOUTS.get(key)
    if layout is None:
        column = {name: i for i, name in enumerate(count_names)}
        layout = []
        for name, i in column.items():
            stem, sep, label = name.rpartition("_imps_")
            if not sep:
                continue
            h = _half_life_label(label)
            layout.append((f"{DENSE_PREFIX}{stem}_ctr_{h}", f"{DENSE_PREFIX}{stem}_imps_{h}",
                           i, column[f"{stem}_clicks_{label}"]))
        _LAYOUTS[key] = layout
    return layout


def dense_features(joined: JoinedFeatures) -> dict[str, float]:
    """The ``num.*`` features of an impression (see the module doc), in a fixed order."""
    counts = joined.counts.tolist()
    out: dict[str, float] = {}
    log, log1p = math.log, math.log1p
    lo, hi = -_LIFT_CLIP, _LIFT_CLIP
    for ctr_name, imps_name, i, c in _dense_layout(joined._joiner.count_names):
        imps, clicks = counts[i], counts[c]
        smoothed = (clicks + _PRIOR_CTR * _PRIOR_STRENGTH) / (imps + _PRIOR_STRENGTH)
        lift = log(smoothed / _PRIOR_CTR)
        out[ctr_name] = min(max(lift, lo), hi) / _LIFT_CLIP
        out[imps_name] = log1p(imps) / _LOG_COUNT_SCALE
    out[f"{DENSE_PREFIX}recent_clicks"] = min(log1p(len(joined.recent_item)) / _RECENT_NORM, 1.0)
    out[f"{DENSE_PREFIX}same_category_clicks"] = min(
        log1p(len(joined.topk_item)) / _TOPK_NORM, 1.0)
    return out


@dataclass(frozen=True, slots=True)
class Behaviours:
    """An impression's behaviour sequences as of its event time, for sequence learners.

    Items and categories are :func:`features.hashing.hash_names` of ``item=<id>`` and
    ``category=<id>`` — the names of the impression's own ``item`` / ``category``
    features — so a learner keying embeddings by name hash gives a behaviour and a
    target of the same item one row. Newest first; ages in seconds before the impression.
    Copies: they stay valid after the joiner moves on.
    """

    recent_item: np.ndarray  # int64 (n,) the user's last n clicks (n <= recent_length)
    recent_category: np.ndarray  # int64 (n,)
    recent_age_s: np.ndarray  # float32 (n,)
    lifelong_item: np.ndarray  # int64 (m,) most recent same-category clicks (m <= top-K)
    lifelong_category: np.ndarray  # int64 (m,)
    lifelong_age_s: np.ndarray  # float32 (m,)
    ts_ms: int  # the impression's event time (a sequence learner's clock, e.g. for ID TTLs)


class Features(dict):
    """A feature dict (``{"name": value}``, what every learner reads) that can also carry
    the impression's :class:`Behaviours` (``behaviours``, None when not asked for).
    Learners without sequences see an ordinary dict."""

    __slots__ = ("behaviours",)

    def __init__(self, *args, behaviours: Behaviours | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.behaviours = behaviours


class _NameHashes:
    """``hash_names`` of ``prefix + value`` for every code of an interner, kept current as
    it grows and as the joiner reuses the codes of evicted keys for new strings (a code's
    stamp says which string its hash is of; a restored joiner has new interners)."""

    def __init__(self, interner: Interner, prefix: str) -> None:
        self._interner = weakref.ref(interner)
        self._prefix = prefix
        self._hashes = np.empty(0, np.int64)
        self._stamps = np.empty(0, np.int64)
        self._assigned = -1

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        interner = self._interner()
        assert interner is not None  # the cache entry dies with its interner
        if self._assigned != interner.assigned:
            self._refresh(interner)
        return self._hashes[codes]

    def _refresh(self, interner: Interner) -> None:
        stamps = interner.stamps
        have = self._hashes.size
        hashes = np.zeros(stamps.size, np.int64)
        hashes[:have] = self._hashes
        stale = np.flatnonzero(np.concatenate([self._stamps != stamps[:have],
                                               np.ones(stamps.size - have, bool)]))
        # A free code's hash is never looked up: it gets one when a string takes the code.
        live = [c for c in stale.tolist() if interner.get(c) is not None]
        hashes[live] = hash_names(self._prefix + interner.value(c) for c in live)
        self._hashes, self._stamps = hashes, stamps.copy()
        self._assigned = interner.assigned


_NAME_HASHES: weakref.WeakKeyDictionary[Interner, dict[str, _NameHashes]] = (
    weakref.WeakKeyDictionary())


def _name_hashes(interner: Interner, prefix: str) -> _NameHashes:
    by_prefix = _NAME_HASHES.setdefault(interner, {})
    cached = by_prefix.get(prefix)
    if cached is None:
        cached = by_prefix[prefix] = _NameHashes(interner, prefix)
    return cached


def behaviours(imp: Impression, joined: JoinedFeatures) -> Behaviours:
    """The :class:`Behaviours` of an impression from the joiner's features."""
    items = _name_hashes(joined._joiner.items, "item=")
    categories = _name_hashes(joined._joiner.categories, "category=")
    return Behaviours(items(joined.recent_item), categories(joined.recent_cat),
                      joined.recent_age_s.astype(np.float32),
                      items(joined.topk_item), categories(joined.topk_cat),
                      joined.topk_age_s.astype(np.float32), imp.ts)


def impression_features(imp: Impression, joined: JoinedFeatures, *,
                        with_behaviours: bool = False) -> Features:
    """Feature dict of one impression: ids, position, context, behaviour, crosses, and
    the dense ``num.*`` counting features; with ``with_behaviours``, also the behaviour
    sequences (:class:`Behaviours`) for sequence learners."""
    x = Features({
        "bias": 1.0,
        f"user={imp.user_id}": 1.0,
        f"item={imp.item_id}": 1.0,
        f"category={imp.category_id}": 1.0,
        f"position={imp.position}": 1.0,
        f"user×category={imp.user_id}|{imp.category_id}": 1.0,
        f"item×position={imp.item_id}|{imp.position}": 1.0,
        f"same_category_clicks={_bucket(len(joined.topk_item))}": 1.0,
    }, behaviours=behaviours(imp, joined) if with_behaviours else None)
    for key, value in imp.context.items():
        x[f"ctx.{key}={value}"] = 1.0
        x[f"category×ctx.{key}={imp.category_id}|{value}"] = 1.0
    for category in joined.categories_of_recent():
        x[f"recent_category={category}"] = 1.0
    if joined.recently_clicked(imp.item_id):
        x["recent_item_match"] = 1.0
    x.update(dense_features(joined))
    return x
