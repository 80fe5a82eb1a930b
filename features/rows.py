"""The hashed rows of :func:`~features.featurize.impression_features`, built in compiled code.

A learner that reads a feature dict only through the hashes of its names (FTRL without
crosses, :class:`learners.base.HashedRows`) does not need the dict: :class:`ImpressionRows`
writes each impression's row straight into a :class:`~features.hashing.SparseBatch` — the
same names' XXH3 hashes with the same values, in the dict's order — from the joiner's
feature rows. Building the dict and hashing its names was most of the online engine's
time per impression.

The per-impression part that the joiner's arrays lack (ids, position, context and their
crosses) is hashed once, when the impression is scored (:meth:`ImpressionRows.admit`),
and kept by feature row; the behaviour part (recent categories, whether the item was
clicked recently, the counting features) is read from the joiner's row each time a row is
built. The joiner keeps an open impression's row, and the codes in it, unchanged until
its final release, so a row built again at learning time is the one that was scored.

>>> from features.events import Click, Impression
>>> from features.featurize import impression_features
>>> from features.hashing import hash_names
>>> from features.joiner import EncodedEvents, Joiner
>>> j = Joiner()
>>> imp = Impression("i1", "r1", "u7", "it3", "c2", 1, 1000, {"device": "ios"})
>>> result = j.push([Impression("i0", "r0", "u7", "it1", "c2", 0, 0), Click("i0", "u7", 10), imp])
>>> result = j.settle()
>>> rows = ImpressionRows(j)
>>> rows.admit(result.rows, result.events)
>>> batch = rows.build(result.rows)
>>> x = impression_features(imp, j.features(int(result.rows[0])))
>>> batch.hashes.tolist() == hash_names(x).tolist(), batch.values.tolist() == list(x.values())
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba as nb
import numpy as np

from features import joinkernel as k
from features.events import Click, Impression
from features.featurize import (
    _COUNT_BUCKETS,
    _LIFT_CLIP,
    _LOG_COUNT_SCALE,
    _PRIOR_CTR,
    _PRIOR_STRENGTH,
    _RECENT_NORM,
    _TOPK_NORM,
    DENSE_PREFIX,
    _bucket,
    _dense_layout,
    _name_hashes,
)
from features.hashing import SparseBatch, hash_names
from features.joiner import EncodedEvents, Joiner

__all__ = ["ImpressionRows"]

# Hashes of recently seen crosses and context pairs: popular ones recur. Cleared when
# full, so memory stays bounded.
_CROSS_CACHE_SIZE = 1 << 20
_CONTEXT_CACHE_SIZE = 1 << 16
# What a cross key (kind, a, b) is of: (position, 0), (user stamp, category stamp), (item
# stamp, position), (category stamp, context pair number).
_POSITION, _USER_CATEGORY, _ITEM_POSITION, _CATEGORY_CTX = range(4)
_CROSS_KEY = nb.types.UniTuple(nb.types.int64, 3)
# Per-impression names kept by feature row: user, item, category, position, user×category,
# item×position, then two per context field.
_IDS = 6
# Columns of the fixed hashes: bias, recent_item_match, the count buckets, then the dense
# names in impression_features' order.
_BIAS, _MATCH, _BUCKETS = 0, 1, 2


class ImpressionRows:
    """Hashed rows of the impressions open in ``joiner``, by feature row (see the module doc)."""

    def __init__(self, joiner: Joiner) -> None:
        self._joiner = joiner
        layout = _dense_layout(joiner.count_names)
        dense_names = [name for ctr, imps, _, _ in layout for name in (ctr, imps)]
        dense_names += [f"{DENSE_PREFIX}recent_clicks", f"{DENSE_PREFIX}same_category_clicks"]
        buckets = [f"same_category_clicks={_bucket(n)}" for n in _COUNT_BUCKETS]
        buckets.append(f"same_category_clicks={_bucket(_COUNT_BUCKETS[-1] + 1)}")
        self._fixed = hash_names(["bias", "recent_item_match", *buckets, *dense_names])
        self._dense_at = _BUCKETS + len(buckets)
        self._count_columns = np.array([[i, c] for _, _, i, c in layout], np.int64).reshape(-1, 2)
        self._constants = np.array([_PRIOR_CTR * _PRIOR_STRENGTH, _PRIOR_STRENGTH, _PRIOR_CTR,
                                    _LIFT_CLIP, _LOG_COUNT_SCALE, _RECENT_NORM, _TOPK_NORM])
        self._bounds = np.array(_COUNT_BUCKETS, np.int64)
        # (kind, a, b) -> hash of a cross or position name (see admit), and the numbers
        # of context (key, value) pairs with their ctx.key=value hashes.
        self._crosses = nb.typed.Dict.empty(_CROSS_KEY, nb.types.int64)
        self._context: dict[tuple[str, str], int] = {}
        self._context_hashes = np.zeros(0, np.int64)
        self._ids = np.zeros((0, _IDS), np.int64)  # widened for context fields as they come
        self._n_ids = np.zeros(0, np.int64)
        self._item = np.zeros(0, np.int32)

    def admit(self, rows: np.ndarray, events: Sequence[Impression | Click],
              codes: EncodedEvents | None = None) -> None:
        """Hash the per-impression names of the new impressions among ``events`` (those
        whose ``rows`` entry, the joiner's feature row, is not -1). ``codes``: the events'
        user, item and category codes (:attr:`JoinResult.codes`), else looked up."""
        scored = np.flatnonzero(rows >= 0)
        if not scored.size:
            return
        new_rows = rows[scored]
        imps: list[Impression] = [events[i] for i in scored.tolist()]  # type: ignore[misc]
        joiner = self._joiner
        if codes is None:
            user = np.array([joiner.users.code(imp.user_id) for imp in imps], np.int64)
            items = np.array([joiner.items.code(imp.item_id) for imp in imps], np.int64)
            cats = np.array([joiner.categories.code(imp.category_id) for imp in imps], np.int64)
        else:
            user, items, cats = (np.asarray(c[scored], np.int64)
                                 for c in (codes.user, codes.item, codes.cat))
        n_context = np.fromiter((len(imp.context) for imp in imps), np.int64, len(imps))
        self._reserve(int(new_rows.max()) + 1, int(n_context.max()))
        ids = self._ids
        ids[new_rows, 0] = _name_hashes(joiner.users, "user=")(user)
        ids[new_rows, 1] = _name_hashes(joiner.items, "item=")(items)
        ids[new_rows, 2] = _name_hashes(joiner.categories, "category=")(cats)
        self._item[new_rows] = items
        # The crosses by the stamps of their ids' codes (a code reused for another string
        # has a new stamp), the context by (key, value) number: hashed once each, kept.
        positions = np.fromiter((imp.position for imp in imps), np.int64, len(imps))
        pairs = [kv for imp in imps for kv in imp.context.items()]
        context = self._context_numbers(pairs)
        of_pair = np.repeat(np.arange(len(imps)), n_context)
        user_at, item_at, cat_at = (interner.stamps[c] for interner, c in (
            (joiner.users, user), (joiner.items, items), (joiner.categories, cats)))
        n = len(imps)
        kinds = np.repeat(np.array([_POSITION, _USER_CATEGORY, _ITEM_POSITION, _CATEGORY_CTX],
                                   np.int64), [n, n, n, len(pairs)])
        a = np.concatenate([positions, user_at, item_at, cat_at[of_pair]])
        b = np.concatenate([np.zeros(n, np.int64), cat_at, positions, context])
        hashes = np.empty(kinds.size, np.int64)
        misses = _cached_hashes(self._crosses, kinds, a, b, hashes)
        if misses.size:
            names = []
            for j in misses.tolist():
                kind = int(kinds[j])
                imp = imps[j % n if kind != _CATEGORY_CTX else int(of_pair[j - 3 * n])]
                if kind == _POSITION:
                    names.append(f"position={imp.position}")
                elif kind == _USER_CATEGORY:
                    names.append(f"user×category={imp.user_id}|{imp.category_id}")
                elif kind == _ITEM_POSITION:
                    names.append(f"item×position={imp.item_id}|{imp.position}")
                else:
                    key, value = pairs[j - 3 * n]
                    names.append(f"category×ctx.{key}={imp.category_id}|{value}")
            hashes[misses] = hash_names(names)
            _remember(self._crosses, kinds[misses], a[misses], b[misses], hashes[misses],
                      _CROSS_CACHE_SIZE)
        _write_ids(ids, self._n_ids, new_rows, hashes[:n], hashes[n:2 * n],
                   hashes[2 * n:3 * n], n_context, self._context_hashes[context],
                   hashes[3 * n:])

    def _context_numbers(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """A number for each context (key, value), with ``ctx.key=value``'s hash by number."""
        numbers = self._context
        if len(numbers) + len(pairs) > _CONTEXT_CACHE_SIZE:  # bounded: numbers start over
            numbers.clear()
            self._crosses.clear()
        get = numbers.get
        found = [get(kv) for kv in pairs]
        if None in found:
            new = list(dict.fromkeys(
                kv for kv, number in zip(pairs, found, strict=True) if number is None))
            start = len(numbers)
            numbers.update(zip(new, range(start, start + len(new)), strict=True))
            hashes = np.resize(self._context_hashes, len(numbers))
            hashes[start:] = hash_names(f"ctx.{key}={value}" for key, value in new)
            self._context_hashes = hashes
            found = [numbers[kv] for kv in pairs]
        return np.array(found, np.int64)

    def build(self, rows: np.ndarray) -> SparseBatch:
        """The rows of the impressions at these feature rows (admitted, still open), in order."""
        rows = np.asarray(rows, np.int64)
        joiner = self._joiner
        categories = _name_hashes(joiner.categories, "recent_category=")(
            np.arange(joiner.categories.bound))
        a = joiner.arrays
        recent_at, topk_at, _ = joiner._layout
        width = (1 + _IDS + 1 + (self._ids.shape[1] - _IDS) + joiner.config.recent_length
                 + 1 + len(self._fixed) - self._dense_at)
        indptr = np.empty(len(rows) + 1, np.int64)
        hashes = np.empty(len(rows) * width, np.int64)
        values = np.empty(len(rows) * width, np.float64)
        _build(a.features, a.features_f, recent_at, topk_at, self._ids, self._n_ids, self._item,
               rows, categories, self._fixed, self._dense_at, self._count_columns,
               self._constants, self._bounds, indptr, hashes, values)
        return SparseBatch(indptr, hashes[:indptr[-1]], values[:indptr[-1]])

    def _reserve(self, rows: int, context_fields: int) -> None:
        width = max(self._ids.shape[1], _IDS + 2 * context_fields)
        have = self._ids.shape[0]
        if rows <= have and width == self._ids.shape[1]:
            return
        size = have if rows <= have else max(rows, have + have // 2)
        ids = np.zeros((size, width), np.int64)
        ids[:have, :self._ids.shape[1]] = self._ids
        self._ids = ids
        self._n_ids = np.concatenate([self._n_ids, np.zeros(size - have, np.int64)])
        self._item = np.concatenate([self._item, np.zeros(size - have, np.int32)])


@nb.njit(cache=True)
def _cached_hashes(cache, kinds, a, b, out):
    """out[j] = cache[(kinds[j], a[j], b[j])] where known; returns the j of the others."""
    misses = np.empty(kinds.size, np.int64)
    m = 0
    for j in range(kinds.size):
        key = (kinds[j], a[j], b[j])
        if key in cache:
            out[j] = cache[key]
        else:
            misses[m] = j
            m += 1
    return misses[:m]


@nb.njit(cache=True)
def _remember(cache, kinds, a, b, hashes, limit):
    if len(cache) + kinds.size > limit:
        cache.clear()
    for j in range(kinds.size):
        cache[(kinds[j], a[j], b[j])] = hashes[j]


@nb.njit(cache=True)
def _write_ids(ids, n_ids, rows, position, user_category, item_position, n_context,
               context, category_context):
    """Columns 3.. of each row's ids in impression_features' order: position, user×category,
    item×position, then ctx and category×ctx of each context field (flat, in order)."""
    f = 0
    for j in range(rows.size):
        row = rows[j]
        ids[row, 3] = position[j]
        ids[row, 4] = user_category[j]
        ids[row, 5] = item_position[j]
        column = 6
        for _ in range(n_context[j]):
            ids[row, column] = context[f]
            ids[row, column + 1] = category_context[f]
            column += 2
            f += 1
        n_ids[row] = column


@nb.njit(cache=True)
def _build(features, features_f, recent_at, topk_at, ids, n_ids, item, rows, categories,
           fixed, dense_at, count_columns, constants, bounds, indptr, hashes, values):
    """Write the rows of ``rows`` (feature rows) in impression_features' order.

    features / features_f: the joiner's (R, W) int32 rows and their float32 view; ids: int64
    (R, I) per-impression name hashes, n_ids (R,) how many; item: int32 (R,) item codes;
    categories: int64 (C,) hashes of ``recent_category=<c>`` by category code; fixed: int64
    hashes of bias, recent_item_match, the count buckets and the dense names; out: indptr
    (B + 1,), hashes and values (B * max row length,).
    """
    prior_clicks, strength, prior, clip = constants[0], constants[1], constants[2], constants[3]
    count_scale, recent_norm, topk_norm = constants[4], constants[5], constants[6]
    seen = np.empty(features.shape[1], np.int32)
    n = 0
    for b in range(rows.shape[0]):
        row = rows[b]
        f, ff = features[row], features_f[row]
        indptr[b] = n
        recent, topk = f[k.F_RECENT_LEN], f[k.F_TOPK_LEN]
        hashes[n] = fixed[_BIAS]
        values[n] = 1.0
        n += 1
        for q in range(_IDS):
            hashes[n] = ids[row, q]
            values[n] = 1.0
            n += 1
        bucket = bounds.shape[0]
        for q in range(bounds.shape[0]):
            if topk <= bounds[q]:
                bucket = q
                break
        hashes[n] = fixed[_BUCKETS + bucket]
        values[n] = 1.0
        n += 1
        for q in range(_IDS, n_ids[row]):
            hashes[n] = ids[row, q]
            values[n] = 1.0
            n += 1
        distinct = 0
        match = False
        for q in range(recent):
            c = f[recent_at + 3 * q + 1]
            if f[recent_at + 3 * q] == item[row]:
                match = True
            new = True
            for s in range(distinct):
                if seen[s] == c:
                    new = False
                    break
            if new:
                seen[distinct] = c
                distinct += 1
                hashes[n] = categories[c]
                values[n] = 1.0
                n += 1
        if match:
            hashes[n] = fixed[_MATCH]
            values[n] = 1.0
            n += 1
        d = dense_at
        for q in range(count_columns.shape[0]):
            imps = np.float64(ff[k.F_COUNTS + count_columns[q, 0]])
            clicks = np.float64(ff[k.F_COUNTS + count_columns[q, 1]])
            smoothed = (clicks + prior_clicks) / (imps + strength)
            lift = math.log(smoothed / prior)
            hashes[n] = fixed[d]
            values[n] = min(max(lift, -clip), clip) / clip
            hashes[n + 1] = fixed[d + 1]
            values[n + 1] = math.log1p(imps) / count_scale
            n += 2
            d += 2
        hashes[n] = fixed[d]
        values[n] = min(math.log1p(recent) / recent_norm, 1.0)
        hashes[n + 1] = fixed[d + 1]
        values[n + 1] = min(math.log1p(topk) / topk_norm, 1.0)
        n += 2
    indptr[rows.shape[0]] = n
