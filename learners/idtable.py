"""A collision-free ID → embedding-row table with frequency admission and TTL eviction.

The DIN learner keeps one embedding row per ID (an int64 hash such as
:func:`features.hashing.hash_names` of ``"item=it3"``). IDs arrive forever, so the table
bounds both the rows and the memory spent on rare IDs, after Monolith's expirable
embeddings and frequency filtering (Liu et al., 2022):

* **Rows.** Row 0 is the shared default row; rows ``1..capacity`` are own rows. The table
  only manages row numbers: the learner owns an embedding matrix of :attr:`IDTable.n_rows`
  rows and initialises row 0 itself.
* **Admission.** An ID gets its own row at its ``admit_after``-th sighting (learning
  sightings only). Sightings of IDs without a row are counted in a count-min sketch with
  conservative update (``sketch_depth × sketch_width`` uint32 counters, 4 bytes each:
  16 MiB by default, whatever the number of rare IDs). A sketch may over-count, when other
  IDs share all of an ID's counters, and so admit an ID *early*; it never under-counts, so
  an ID is never admitted *late*. Counters never decay, so over a long stream of rare IDs
  they fill up and ever more IDs are admitted early: 10M sightings of 4.9M distinct IDs
  (Zipf 1.05), of which 0.27M are seen twice or more, admit 2.97M IDs through the
  default 2**20 × 4 sketch at ``admit_after=2``, 0.28M through a 2**24-wide one. Size the
  sketch for the distinct IDs expected (a few times ``sketch_width``'s worth at most).
  With ``admit_after=1`` the sketch is never touched (calloc-backed, it then takes no
  memory until :meth:`IDTable.state_dict` copies it).
* **Expiry.** With ``ttl_ms``, an ID unseen for more than ``ttl_ms`` of *event time*
  (``now_ms``, passed in by the caller, never the wall clock, so replays are deterministic)
  has lost its row: looked up for prediction it gets row 0; looked up for learning it is
  re-admitted at once (its sketch count stands) into the same row number, reported fresh.
  Its row may also be reclaimed for another ID first, when the table is full.
* **Capacity.** Rows are handed out in order until all are used; after that a new ID
  takes the first expired row a clock hand finds, scanning at most :data:`RECLAIM_SCAN`
  rows per attempt (so no lookup is O(capacity); the hand resumes where it stopped, so an
  expired row is found within ``capacity / RECLAIM_SCAN`` failed attempts). If it finds
  none, the ID keeps row 0 (a *full miss*) and tries again at its next sighting.
* **Fresh rows.** Every row (re)assigned is listed, once, until :meth:`IDTable.take_fresh_rows`
  returns the list: the learner re-initialises those embedding rows before using them.

The main call, :meth:`IDTable.lookup`, is one compiled loop over the IDs, over the
plain-array hash tables of :mod:`features.compiled`. Those take non-negative keys, so IDs
live in two tables, by sign, keyed by their low 63 bits: every int64 is its own key and
no two IDs ever share a row (masking to 63 bits in one table would merge each ID with
its sign-bit twin, about n²/2**65 colliding pairs among n IDs).

Memory per own row: 8 bytes of ID, 8 of last-seen time, 9 for the fresh list, and 32-64
for the hash-table place (16 bytes a place, tables kept at most half full, doubled when
needed; a single call with more than ``capacity / 2`` IDs may reserve up to twice that):
57-89 bytes a row in use, plus the sketch, ``4 × sketch_depth × sketch_width`` bytes.

>>> table = IDTable(capacity=2, admit_after=2, ttl_ms=1_000)
>>> ids = np.array([7, -7, 7], np.int64)
>>> table.lookup(ids, now_ms=0).tolist()  # 7 is admitted at its second sighting
[0, 0, 1]
>>> table.take_fresh_rows().tolist()
[1]
>>> table.lookup(np.array([-7, 9, 9]), now_ms=500).tolist()
[2, 0, 0]
>>> table.lookup(np.array([7, -7, 9]), now_ms=500, learn=False).tolist()  # changes nothing
[1, 2, 0]
>>> table.lookup(np.array([9]), now_ms=1_600).tolist()  # 7's row expired: reclaimed
[1]
>>> table.take_fresh_rows().tolist()
[2, 1]
>>> len(table), table.stats()["evicted"], table.stats()["full_misses"]
(2, 1, 1)
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numba as nb
import numpy as np

from features.compiled import (
    HashTable,
    new_table,
    prefetch_row,
    table_from_items,
    table_get,
    table_pop,
    table_reserve,
    table_set,
)
from learners.base import LearnerError, check_int, check_state

__all__ = ["RECLAIM_SCAN", "IDTable"]

# Rows the clock hand inspects, at most, for one allocation in a full table.
RECLAIM_SCAN = 64

_FORMAT = "streamctr.learners.idtable"
_VERSION = 1
_HYPER = ("capacity", "admit_after", "ttl_ms", "sketch_width", "sketch_depth")
_MAX_CAPACITY = 1 << 32
_MAX_ADMIT = (1 << 32) - 1  # counters are uint32, capped at admit_after
_MAX_WIDTH = 1 << 31
_MAX_DEPTH = 16
_INT64_MAX = (1 << 63) - 1
_LOW63 = _INT64_MAX

# Counters (int64 array ``counts``): the next never-used row, the clock hand (a row in
# 1..capacity), fresh rows listed, then the statistics.
_NEXT, _HAND, _N_FRESH, _ADMITTED, _EVICTED, _FULL, _LOOKUPS, _DEFAULT = range(8)
_STATS = ("admitted", "evicted", "full_misses", "lookups", "default_hits")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FAR, _NEAR = 16, 8  # prefetch distances (IDs ahead), the fastest on a Zipf stream


# -- the compiled kernel ----------------------------------------------------------------


@nb.njit(cache=True, inline="always")
def _mix(x: np.uint64) -> np.uint64:
    """SplitMix64's finaliser: a 64-bit bijection whose low bits depend on all input bits."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@nb.njit(cache=True, inline="always")
def _cell(x: int, j: int, mask: np.uint64) -> int:
    """Column of ID ``x`` in row ``j`` of the sketch (an independent-looking hash per row)."""
    return np.int64(_mix(np.uint64(x) + np.uint64(j + 1) * _GOLDEN) & mask)


@nb.njit(cache=True, inline="always")
def _sketch_add(sketch: np.ndarray, x: int, cap: int) -> int:
    """Count one sighting of ``x`` (conservative update, capped at ``cap``); its new estimate.

    Conservative update raises only the counters at the current minimum: the estimate (the
    minimum) grows by one, as in a plain count-min sketch, while counters shared with other
    IDs grow less, so over-counts are rarer.
    """
    mask = np.uint64(sketch.shape[1] - 1)
    est = cap
    for j in range(sketch.shape[0]):
        est = min(est, np.int64(sketch[j, _cell(x, j, mask)]))
    if est < cap:
        est += 1
        for j in range(sketch.shape[0]):
            c = _cell(x, j, mask)
            if sketch[j, c] < est:
                sketch[j, c] = est
    return est


@nb.njit(cache=True, inline="always")
def _mark_fresh(r: int, fresh: np.ndarray, flag: np.ndarray, counts: np.ndarray) -> None:
    if flag[r] == 0:
        flag[r] = 1
        fresh[counts[_N_FRESH]] = r
        counts[_N_FRESH] += 1


@nb.njit(cache=True, inline="always")
def _allocate(pos: HashTable, neg: HashTable, row_id: np.ndarray, last_seen: np.ndarray,
              counts: np.ndarray, capacity: int, limit: int, ttl: int) -> int:
    """A row for a new ID: a never-used one, else an expired one the clock hand finds
    within :data:`RECLAIM_SCAN` rows (its ID removed), else 0."""
    r = counts[_NEXT]
    if r <= capacity:
        counts[_NEXT] = r + 1
        return r
    if ttl < 0:
        return 0
    hand = counts[_HAND]
    for _ in range(min(RECLAIM_SCAN, capacity)):
        r = hand
        hand = hand + 1 if hand < capacity else 1
        if last_seen[r] < limit:
            counts[_HAND] = hand
            old = row_id[r]
            if old >= 0:
                table_pop(pos, old & _LOW63, 0)
            else:
                table_pop(neg, old & _LOW63, 0)
            counts[_EVICTED] += 1
            return r
    counts[_HAND] = hand
    return 0


@nb.njit(cache=True)
def _lookup(pos: HashTable, neg: HashTable, row_id: np.ndarray, last_seen: np.ndarray,
            sketch: np.ndarray, fresh: np.ndarray, flag: np.ndarray, counts: np.ndarray,
            ids: np.ndarray, now: int, ttl: int, admit_after: int, capacity: int,
            learn: bool, out: np.ndarray) -> None:
    """Rows of ``ids`` into ``out``; when ``learn``, count, admit, touch and reclaim.

    pos / neg: the tables of non-negative / negative IDs, keyed by the low 63 bits, values
    rows >= 1; row_id, last_seen: int64 (capacity + 1,) per row; sketch: uint32 (depth,
    width); fresh: int64 (capacity,) rows listed fresh, flag: uint8 (capacity + 1,) whether
    listed; counts: int64 (8,) see ``_NEXT`` ...; ttl: -1 for none. Rows below
    ``counts[_NEXT]`` always hold an ID.
    """
    limit = now - ttl if ttl >= 0 else 0  # rows last seen before this have expired
    pos_e, neg_e = pos.entries, neg.entries
    pos_mask, neg_mask = np.uint64(pos_e.shape[0] - 1), np.uint64(neg_e.shape[0] - 1)
    seen, cells = last_seen.reshape((-1, 1)), sketch.reshape((-1, 1))
    width = sketch.shape[1]
    cell_mask = np.uint64(width - 1)
    size = ids.shape[0]
    for n in range(size):
        # Software prefetch in two stages, so that the memory latency of one ID overlaps the
        # work on others: the hash-table place of the ID _FAR ahead (its home place, hashed
        # as features.compiled hashes keys: a hint only, right or wrong never changes a
        # result), then, that place now cached, the last-seen time or the sketch counters
        # of the ID _NEAR ahead.
        if n + _FAR < size:
            y = ids[n + _FAR]
            if y >= 0:
                prefetch_row(pos_e, np.int64(_mix(np.uint64(y)) & pos_mask))
            else:
                prefetch_row(neg_e, np.int64(_mix(np.uint64(y & _LOW63)) & neg_mask))
        if n + _NEAR < size and (learn or ttl >= 0):
            y = ids[n + _NEAR]
            ry = table_get(pos, y & _LOW63, 0) if y >= 0 else table_get(neg, y & _LOW63, 0)
            if ry > 0:
                prefetch_row(seen, ry)
            elif learn and admit_after > 1:
                for j in range(sketch.shape[0]):
                    prefetch_row(cells, j * width + _cell(y, j, cell_mask))
        x = ids[n]
        key = x & _LOW63
        r = table_get(pos, key, 0) if x >= 0 else table_get(neg, key, 0)
        expired = r > 0 and ttl >= 0 and last_seen[r] < limit
        if not learn:
            out[n] = 0 if expired else r
            continue
        counts[_LOOKUPS] += 1
        if r > 0:
            if expired:  # forgotten, and re-admitted at once: its count stands
                counts[_EVICTED] += 1
                counts[_ADMITTED] += 1
                _mark_fresh(r, fresh, flag, counts)
            if last_seen[r] < now:
                last_seen[r] = now
            out[n] = r
            continue
        out[n] = 0
        counts[_DEFAULT] += 1
        if admit_after > 1 and _sketch_add(sketch, x, admit_after) < admit_after:
            continue
        r = _allocate(pos, neg, row_id, last_seen, counts, capacity, limit, ttl)
        if r == 0:
            counts[_FULL] += 1
            continue
        if x >= 0:
            table_set(pos, key, r)
        else:
            table_set(neg, key, r)
        row_id[r] = x
        last_seen[r] = now
        counts[_ADMITTED] += 1
        counts[_DEFAULT] -= 1
        _mark_fresh(r, fresh, flag, counts)
        out[n] = r


@nb.njit(cache=True)
def _take_fresh(fresh: np.ndarray, flag: np.ndarray, counts: np.ndarray) -> np.ndarray:
    rows = fresh[:counts[_N_FRESH]].copy()
    for r in rows:
        flag[r] = 0
    counts[_N_FRESH] = 0
    return rows


# -- validation helpers -----------------------------------------------------------------


def _array(d: Mapping[str, Any], name: str, dtype: type, ndim: int) -> np.ndarray:
    a = d[name]
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim:
        got = f"{getattr(a, 'dtype', type(a).__name__)} of shape {getattr(a, 'shape', None)}"
        raise LearnerError(f"state dict {name} must be a {ndim}-d {np.dtype(dtype)} array, "
                           f"got {got}")
    return a


class IDTable:
    """Own embedding rows for frequent, recently seen IDs; row 0 for the rest.

    Parameters
    ----------
    capacity
        Own rows, numbered ``1..capacity`` (row 0 is the shared default row).
    admit_after
        Learning sightings an ID needs before it gets its own row (1: at first sight).
    ttl_ms
        Event time, in milliseconds, after which an ID not seen since loses its row;
        ``None``: rows never expire (a full table then serves row 0 to every new ID).
    sketch_width, sketch_depth
        Shape of the count-min sketch counting IDs without a row: ``sketch_width`` (a power
        of two) counters in each of ``sketch_depth`` rows, 4 bytes each.

    The constructor holds hyper-parameters only; the state is what :meth:`state_dict`
    returns. Same calls, same rows: nothing depends on the wall clock, on randomness, or
    on the layout of the hash tables.

    Speed: a lookup is a hash-table probe and, for an ID without a row, ``sketch_depth``
    counter reads, prefetched a few IDs ahead; it is bound by memory latency. Measured on
    one core (``capacity=1_000_000``, ``admit_after=2``, ``ttl_ms=2000``, calls of 10k IDs,
    a new table filling up): 11M IDs/s over a Zipf 1.1 stream, 6M/s at Zipf 1.05 (where
    half the sightings admit or evict), 18M/s at Zipf 1.2.
    """

    def __init__(self, capacity: int, admit_after: int = 1, ttl_ms: int | None = None,
                 sketch_width: int = 1 << 20, sketch_depth: int = 4) -> None:
        self.capacity = check_int("capacity", capacity, 1, _MAX_CAPACITY)
        self.admit_after = check_int("admit_after", admit_after, 1, _MAX_ADMIT)
        self.ttl_ms = None if ttl_ms is None else check_int("ttl_ms", ttl_ms, 0, _INT64_MAX)
        self.sketch_width = check_int("sketch_width", sketch_width, 1, _MAX_WIDTH)
        if self.sketch_width & (self.sketch_width - 1):
            raise LearnerError(f"sketch_width must be a power of two, got {sketch_width!r}")
        self.sketch_depth = check_int("sketch_depth", sketch_depth, 1, _MAX_DEPTH)
        self._ttl = -1 if self.ttl_ms is None else self.ttl_ms
        self._set_state(
            new_table(16), new_table(16),
            np.zeros(self.capacity + 1, np.int64), np.zeros(self.capacity + 1, np.int64),
            # np.zeros is calloc-backed: the sketch's untouched pages cost no memory.
            np.zeros((self.sketch_depth, self.sketch_width), np.uint32),
            np.zeros(self.capacity, np.int64), np.zeros(self.capacity + 1, np.uint8),
            np.array([1, 1, 0, 0, 0, 0, 0, 0], np.int64),
        )

    def _set_state(self, pos, neg, row_id, last_seen, sketch, fresh, flag, counts) -> None:
        self._pos, self._neg = pos, neg
        self._row_id, self._last_seen, self._sketch = row_id, last_seen, sketch
        self._fresh, self._flag, self._counts = fresh, flag, counts

    def __repr__(self) -> str:
        return (f"IDTable(capacity={self.capacity!r}, admit_after={self.admit_after!r}, "
                f"ttl_ms={self.ttl_ms!r}, sketch_width={self.sketch_width!r}, "
                f"sketch_depth={self.sketch_depth!r})")

    @property
    def n_rows(self) -> int:
        """Rows of the learner's embedding matrix: ``capacity + 1`` (row 0 the default)."""
        return self.capacity + 1

    def __len__(self) -> int:
        """IDs holding own rows (expired ones included until they are reclaimed)."""
        return int(self._counts[_NEXT]) - 1

    def stats(self) -> dict[str, int]:
        """Counters since the table was new, of learning lookups only.

        ``rows_in_use`` (``len(table)``); ``admitted``: rows (re)assigned; ``evicted``: IDs
        that lost their row to expiry; ``full_misses``: IDs due a row that found none;
        ``lookups``: IDs looked up to learn; ``default_hits``: those served row 0.
        """
        stats = zip(_STATS, self._counts[_ADMITTED:].tolist(), strict=True)
        return {"rows_in_use": len(self), **dict(stats)}

    # -- the main call ------------------------------------------------------------------

    def lookup(self, ids: np.ndarray, now_ms: int, learn: bool = True) -> np.ndarray:
        """The rows (int64, shaped like ``ids``) of ``ids``, an integer array of any shape.

        IDs are taken in C order at event time ``now_ms`` (an int >= 0; it may go back, a
        late event never moves an ID's last-seen time back). With ``learn`` (training)
        sightings are counted, IDs admitted or re-admitted, last-seen times updated and
        expired rows reclaimed; a row assigned during the call is returned at once and
        listed by :meth:`take_fresh_rows`. With ``learn=False`` (prediction) nothing
        changes, counters included: IDs without a live row get row 0.

        uint64 IDs are taken bit for bit as int64 (as :func:`features.hashing.hash_names`
        gives them).
        """
        a = np.asarray(ids)
        if a.dtype.kind not in "iu":
            raise LearnerError(f"ids must be an integer array, got dtype {a.dtype}")
        flat = np.ascontiguousarray(a).reshape(-1)
        flat = flat.view(np.int64) if a.dtype == np.uint64 else flat.astype(np.int64, copy=False)
        now = check_int("now_ms", now_ms, 0, _INT64_MAX)
        if not isinstance(learn, bool | np.bool_):
            raise LearnerError(f"learn must be a bool, got {learn!r}")
        if learn:  # room for every ID of the call, so the compiled loop never reallocates
            for name in ("_pos", "_neg"):
                t = getattr(self, name)
                extra = min(flat.size, self.capacity - int(t.size[0]))
                setattr(self, name, table_reserve(t, extra))
        out = np.empty(flat.size, np.int64)
        _lookup(self._pos, self._neg, self._row_id, self._last_seen, self._sketch,
                self._fresh, self._flag, self._counts, flat, now, self._ttl,
                self.admit_after, self.capacity, bool(learn), out)
        return out.reshape(a.shape)

    def take_fresh_rows(self) -> np.ndarray:
        """Rows (re)assigned since the last call, in order of assignment, each once (int64).

        The learner re-initialises these embedding rows (and their optimiser state): a row
        reclaimed from an expired ID and given to another, or to the same ID again, is
        listed like a first assignment. Row 0 is never listed.
        """
        return _take_fresh(self._fresh, self._flag, self._counts)

    # -- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Format, version, hyper-parameters, counters and the arrays of the state.

        ``row_id`` / ``last_seen`` (int64) hold the ID and last-seen time of rows
        ``1..len(table)`` (all rows handed out so far hold an ID); the hash tables are
        exactly ``row_id[r] → r`` and are rebuilt from them on load. ``sketch``: uint32
        (depth, width); ``fresh``: the rows :meth:`take_fresh_rows` would return;
        ``hand``: the clock hand; ``ttl_ms`` -1 for none. Only numpy arrays and plain
        Python ints / strings, so a checkpoint is written without pickle.
        """
        used = slice(1, len(self) + 1)
        counts = self._counts
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "capacity": self.capacity,
            "admit_after": self.admit_after,
            "ttl_ms": self._ttl,
            "sketch_width": self.sketch_width,
            "sketch_depth": self.sketch_depth,
            "hand": int(counts[_HAND]),
            **dict(zip(_STATS, counts[_ADMITTED:].tolist(), strict=True)),
            "row_id": self._row_id[used].copy(),
            "last_seen": self._last_seen[used].copy(),
            "sketch": self._sketch.copy(),
            "fresh": self._fresh[:counts[_N_FRESH]].copy(),
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Replace the state with ``d``; nothing changes if ``d`` is refused.

        Raises :class:`LearnerError` if ``d`` is not an ID-table state of this version, was
        made with other hyper-parameters, or has arrays of the wrong dtype, shape or values.
        """
        mine = {"capacity": self.capacity, "admit_after": self.admit_after, "ttl_ms": self._ttl,
                "sketch_width": self.sketch_width, "sketch_depth": self.sketch_depth}
        check_state(d, _FORMAT, _VERSION,
                    ("hand", *_STATS, "row_id", "last_seen", "sketch", "fresh"), mine)
        hand = check_int("state dict hand", d["hand"], 1, self.capacity)
        stats = [check_int(f"state dict {k}", d[k], 0, _INT64_MAX) for k in _STATS]
        row_id = _array(d, "row_id", np.int64, 1)
        n = row_id.shape[0]
        if n > self.capacity:
            raise LearnerError(f"state dict has {n} rows, more than capacity {self.capacity}")
        last_seen = _array(d, "last_seen", np.int64, 1)
        sketch = _array(d, "sketch", np.uint32, 2)
        fresh = _array(d, "fresh", np.int64, 1)
        k = fresh.shape[0]
        if last_seen.shape != (n,):
            raise LearnerError(f"state dict last_seen has shape {last_seen.shape}, "
                               f"row_id {row_id.shape}")
        if sketch.shape != (self.sketch_depth, self.sketch_width):
            raise LearnerError(f"state dict sketch has shape {sketch.shape}, expected "
                               f"{(self.sketch_depth, self.sketch_width)}")
        if np.unique(row_id).size != n:
            raise LearnerError("state dict row_id has an ID in two rows")
        if n and last_seen.min() < 0:
            raise LearnerError("state dict last_seen has negative times")
        if int(sketch.max()) > self.admit_after:
            raise LearnerError(f"state dict sketch has counters above admit_after "
                               f"{self.admit_after}")
        if k and (fresh.min() < 1 or fresh.max() > n or np.unique(fresh).size != k):
            raise LearnerError(f"state dict fresh must list distinct rows in [1, {n}]")
        rows = np.arange(1, n + 1, dtype=np.int64)
        sign = row_id >= 0
        pos = table_from_items(row_id[sign], rows[sign])
        neg = table_from_items(row_id[~sign] & _LOW63, rows[~sign])
        size = self.capacity + 1
        full_row_id, full_last_seen = np.zeros(size, np.int64), np.zeros(size, np.int64)
        full_row_id[1:n + 1], full_last_seen[1:n + 1] = row_id, last_seen
        full_fresh, flag = np.zeros(self.capacity, np.int64), np.zeros(size, np.uint8)
        full_fresh[:k], flag[fresh] = fresh, 1
        counts = np.array([n + 1, hand, k, *stats], np.int64)
        self._set_state(pos, neg, full_row_id, full_last_seen, sketch.copy(), full_fresh,
                        flag, counts)

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> IDTable:
        """A table with the hyper-parameters recorded in ``d`` and its state."""
        try:
            params = {name: d[name] for name in _HYPER}
        except (KeyError, TypeError) as e:
            raise LearnerError(f"state dict lacks hyper-parameters: {e}") from None
        if isinstance(params["ttl_ms"], numbers.Integral) and params["ttl_ms"] == -1:
            params["ttl_ms"] = None
        table = cls(**params)
        table.load_state_dict(d)
        return table
