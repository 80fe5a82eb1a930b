"""The joiner's compiled core: one pass over a batch of encoded events.

:mod:`features.joiner` documents the semantics and owns the state; this module
is the loop it runs. Everything is indexed by integers: impression ids by their
63-bit key, users, items and categories by interned codes.

State (``JoinArrays``):

* **slots** — one per impression that is open (window not yet closed) or closed
  but remembered (so late and duplicate clicks are told from orphans); ``index``
  maps impression key → slot;
* **feature rows** — one per *open* impression: its recent sequence, same-category
  (lifelong) sequence and counting features as of its event time. A row is
  handed back to the pool one batch after its impression's final release, so the
  caller can still read it while handling that release;
* **queues** of window ends (a FIFO ring: impressions come in event-time order, so
  their window ends do too; a heap takes the few late ones), retention ends (a
  ring) and held-click expiries (a heap);
* the behaviour store and the counters (see :mod:`features.store`,
  :mod:`features.counting`), indexed by user and item codes and by pair ids; a key
  idle past the key TTL reads as new, and the ids of pairs the joiner's sweep
  evicted wait in a free stack for the next new pair.

Outputs: a status and a feature row per event, the releases (samples whose label
the caller must act on) in the order they happen, and orphaned clicks.
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

from features.compiled import (
    HashTable,
    heap_pop,
    heap_push,
    prefetch_row,
    ring_pop,
    ring_push,
    table_get,
    table_pop,
    table_prefetch,
    table_set,
)
from features.counting import CounterArrays, counters_add, counters_observe
from features.store import StoreArrays, store_add, store_recent, store_same_category

# Event kinds.
IMPRESSION, CLICK = 0, 1
# Per-event status.
IMP_NEW, IMP_DUPLICATE, IMP_NEW_JOINED_HELD = 0, 1, 2
CLICK_JOINED, CLICK_DUPLICATE, CLICK_LATE, CLICK_HELD, CLICK_ORPHAN = 3, 4, 5, 6, 7
# Release kinds: FINAL is the label at window end; FNW_* are the fake-negative-weighting
# training samples (a negative at impression time, a positive when the click joins).
FINAL, FNW_NEGATIVE, FNW_POSITIVE = 0, 1, 2
# Modes.
MODE_WAIT, MODE_FNW = 0, 1
# Slot columns: impression key, event time, user, item, category, click time (or
# NO_CLICK / LATE_CLICK), feature row (-1 once the window closed), (user, category)
# pair id.
SL_KEY, SL_TS, SL_USER, SL_ITEM, SL_CAT, SL_CLICK_TS, SL_ROW, SL_PAIR = range(8)
# Click time of a slot without a joined click: none yet, or only one after the window
# (so a repeat of a late click is a duplicate, not another behaviour).
NO_CLICK, LATE_CLICK = -1, -2
# Statistics, in JoinStats field order.
STAT_NAMES = (
    "impressions", "duplicate_impressions", "clicks", "clicks_joined", "duplicate_clicks",
    "late_clicks", "orphan_clicks", "samples_positive", "samples_negative", "behaviours",
    "users_evicted", "items_evicted", "pairs_evicted",
)
(S_IMPS, S_DUP_IMPS, S_CLICKS, S_JOINED, S_DUP_CLICKS, S_LATE, S_ORPHANS, S_POS, S_NEG,
 S_BEHAVIOURS, S_USERS_EVICTED, S_ITEMS_EVICTED, S_PAIRS_EVICTED) = range(len(STAT_NAMES))
# Configuration vector.
(C_WINDOW, C_LATENESS, C_RETENTION, C_MODE, C_RECENT, C_TOPK, C_CAP, C_TTL,
 C_KEY_TTL) = range(9)
# FEATURES: layout of an impression's feature row (int32 units). The two lengths and
# the counting features come first (always written); then the recent sequence and the
# same-category sequence as (item, category, age) triples, interleaved so the first
# entries of a short history share a cache line with the rest of the row's head.
F_RECENT_LEN, F_TOPK_LEN, F_COUNTS = 0, 1, 2


@nb.njit(cache=True, inline="always")
def feature_layout(recent: int, top_k: int, counts: int) -> tuple[int, int, int]:
    """Column where the recent triples start, where the same-category ones start, width."""
    recent_at = F_COUNTS + counts
    topk_at = recent_at + 3 * recent
    return recent_at, topk_at, topk_at + 3 * top_k
# Clock vector: times, free-list tops, heap sizes, ring heads and lengths.
(K_WATERMARK, K_MAX_TS, K_FREE_SLOTS, K_FREE_ROWS, K_PENDING_ROWS, K_LATE_ENDS,
 K_HELD_EXPIRIES, K_ENDS_HEAD, K_ENDS, K_EXPIRIES_HEAD, K_EXPIRIES, K_PAIRS,
 K_FREE_PAIRS) = range(13)


class JoinArrays(NamedTuple):
    cfg: np.ndarray  # int64 (9,)
    clock: np.ndarray  # int64 (13,)
    stats: np.ndarray  # int64 (len(STAT_NAMES),)
    slots: np.ndarray  # int64 (S, 8): one cache line per impression, columns SL_*
    free_slots: np.ndarray  # int64 (S,) stack; clock[K_FREE_SLOTS] entries
    free_rows: np.ndarray  # int64 (R,) stack; clock[K_FREE_ROWS] entries
    pending_rows: np.ndarray  # int64 (R,) rows released in the last batch
    index: HashTable  # impression key -> slot
    pairs: HashTable  # user << 32 | category -> pair id (rows of store and counters)
    free_pairs: np.ndarray  # int64 stack of pair ids of evicted pairs; clock[K_FREE_PAIRS]
    ends: np.ndarray  # int64 (S, 3) ring of (window end, arrival number, slot)
    late_ends: np.ndarray  # int64 (S, 3) heap of the same, for ends pushed out of order
    expiries: np.ndarray  # int64 (S, 3) ring of (retention end, slot, impression key)
    held: HashTable  # impression key -> click time, for clicks waiting for their impression
    held_expiries: np.ndarray  # int64 (H, 3) heap of (click time + window, key, 0)
    features: np.ndarray  # int32 (R, W): one packed row per open impression, see FEATURES
    features_f: np.ndarray  # float32 view of the same memory, for ages and counts


class BatchOutput(NamedTuple):
    status: np.ndarray  # int8 (B,)
    row: np.ndarray  # int64 (B,) feature row of a new impression, -1: any other event
    rel_event: np.ndarray  # int64 (M,) event index; -1 for releases of a flush
    rel_phase: np.ndarray  # int8 (M,) 0: before the event takes effect, 1: after
    rel_kind: np.ndarray  # int8 (M,)
    rel_row: np.ndarray  # int64 (M,)
    rel_label: np.ndarray  # int8 (M,)
    rel_click_ts: np.ndarray  # int64 (M,) -1: none
    rel_final_ts: np.ndarray  # int64 (M,)
    orphan_key: np.ndarray  # int64 (O,)
    orphan_event: np.ndarray  # int64 (O,) event index of the click if in this batch, else -1
    counts: np.ndarray  # int64 (2,) releases, orphans written


@nb.njit(cache=True, inline="always")
def _release(out, event, phase, kind, row, label, click_ts, final_ts):
    m = out.counts[0]
    out.counts[0] = m + 1
    out.rel_event[m] = event
    out.rel_phase[m] = phase
    out.rel_kind[m] = kind
    out.rel_row[m] = row
    out.rel_label[m] = label
    out.rel_click_ts[m] = click_ts
    out.rel_final_ts[m] = final_ts


@nb.njit(cache=True, inline="always")
def _orphan(j, out, key, event):
    j.stats[S_ORPHANS] += 1
    o = out.counts[1]
    out.counts[1] = o + 1
    out.orphan_key[o] = key
    out.orphan_event[o] = event


@nb.njit(cache=True, inline="always")
def _close_window(j, out, slot, end, event):
    row = j.slots[slot, SL_ROW]
    click_ts = j.slots[slot, SL_CLICK_TS]
    label = 1 if click_ts >= 0 else 0
    j.stats[S_POS if label else S_NEG] += 1
    _release(out, event, 0, FINAL, row, label, click_ts if label else NO_CLICK, end)
    p = j.clock[K_PENDING_ROWS]
    j.pending_rows[p] = row
    j.clock[K_PENDING_ROWS] = p + 1
    j.slots[slot, SL_ROW] = -1
    # In close order, so nearly always in time order; a late impression's expiry may sit
    # behind a later one and be freed a little after its time (remembered longer).
    # The key rides along so the expiry need not read the (by then cold) slot.
    ring_push(j.expiries, j.clock, K_EXPIRIES_HEAD, K_EXPIRIES, end + j.cfg[C_RETENTION], slot,
              j.slots[slot, SL_KEY])


@nb.njit(cache=True, inline="always")
def _push_end(j, end, arrival, slot):
    n = j.clock[K_ENDS]
    tail = (j.clock[K_ENDS_HEAD] + n - 1) % j.ends.shape[0]
    if n == 0 or end >= j.ends[tail, 0]:  # arrival numbers only grow: the ring stays sorted
        ring_push(j.ends, j.clock, K_ENDS_HEAD, K_ENDS, end, arrival, slot)
    else:
        heap_push(j.late_ends, j.clock, K_LATE_ENDS, end, arrival, slot)


@nb.njit(cache=True, inline="always")
def _next_end_in_ring(j) -> int:
    """1 if the earliest window end is the ring's head, 0 if the late heap's top, -1: none."""
    in_ring, in_heap = j.clock[K_ENDS] > 0, j.clock[K_LATE_ENDS] > 0
    if not in_heap:
        return 1 if in_ring else -1
    if not in_ring:
        return 0
    h = j.clock[K_ENDS_HEAD]
    ring_first = (j.ends[h, 0], j.ends[h, 1])
    return 1 if ring_first < (j.late_ends[0, 0], j.late_ends[0, 1]) else 0


@nb.njit(cache=True, inline="always")
def _advance(j, out, watermark, event, flush):
    """Close windows ending before ``watermark`` (every window if ``flush``)."""
    while True:
        from_ring = _next_end_in_ring(j)
        if from_ring < 0:
            break
        first = j.ends[j.clock[K_ENDS_HEAD], 0] if from_ring else j.late_ends[0, 0]
        if not (flush or first < watermark):
            break
        if from_ring:
            end, _, slot = ring_pop(j.ends, j.clock, K_ENDS_HEAD, K_ENDS)
        else:
            end, _, slot = heap_pop(j.late_ends, j.clock, K_LATE_ENDS)
        _close_window(j, out, slot, end, event)
    while j.clock[K_EXPIRIES] > 0 and (flush or
                                       j.expiries[j.clock[K_EXPIRIES_HEAD], 0] < watermark):
        _, slot, key = ring_pop(j.expiries, j.clock, K_EXPIRIES_HEAD, K_EXPIRIES)
        table_pop(j.index, key, -1)
        f = j.clock[K_FREE_SLOTS]
        j.free_slots[f] = slot
        j.clock[K_FREE_SLOTS] = f + 1
    window = j.cfg[C_WINDOW]
    while j.clock[K_HELD_EXPIRIES] > 0 and (flush or j.held_expiries[0, 0] < watermark):
        end, key, _ = heap_pop(j.held_expiries, j.clock, K_HELD_EXPIRIES)
        # Entries of clicks that found their impression meanwhile are stale: skip them.
        if table_get(j.held, key, -1) + window == end:
            table_pop(j.held, key, -1)
            _orphan(j, out, key, -1)


@nb.njit(cache=True, inline="always")
def _tick(j, out, ts, event):
    # Allowed lateness is applied before the kernel (events arrive here in order, up to
    # the few that came later than it), so the watermark is the newest event time.
    if ts > j.clock[K_MAX_TS]:
        j.clock[K_MAX_TS] = ts
        j.clock[K_WATERMARK] = ts
        _advance(j, out, ts, event, False)


@nb.njit(cache=True, inline="always")
def _fresh_before(j) -> int:
    """Keys idle since before this time (the watermark minus the key TTL) count as new."""
    return j.clock[K_MAX_TS] - j.cfg[C_KEY_TTL]


@nb.njit(cache=True, inline="always")
def _behaviour(j, store, counters, slot, click_ts):
    """A click on a known impression is behaviour: stored and counted at its own time."""
    user, item, pair = j.slots[slot, SL_USER], j.slots[slot, SL_ITEM], j.slots[slot, SL_PAIR]
    store_add(store, user, item, j.slots[slot, SL_CAT], pair, click_ts)
    counters_add(counters, user, item, pair, click_ts, 1, _fresh_before(j))
    j.stats[S_BEHAVIOURS] += 1


@nb.njit(cache=True, inline="always")
def _join(j, store, counters, out, slot, click_ts, event, phase, click_event):
    """A click meets its (open) impression. Return the click's status."""
    if j.slots[slot, SL_CLICK_TS] != NO_CLICK:
        j.stats[S_DUP_CLICKS] += 1
        return CLICK_DUPLICATE
    imp_ts = j.slots[slot, SL_TS]
    if click_ts < imp_ts:  # a click cannot precede what it clicks: bad clock or bad id
        _orphan(j, out, j.slots[slot, SL_KEY], click_event)
        return CLICK_ORPHAN
    _behaviour(j, store, counters, slot, click_ts)
    if click_ts - imp_ts > j.cfg[C_WINDOW]:
        j.slots[slot, SL_CLICK_TS] = LATE_CLICK
        j.stats[S_LATE] += 1
        return CLICK_LATE
    j.slots[slot, SL_CLICK_TS] = click_ts
    j.stats[S_JOINED] += 1
    if j.cfg[C_MODE] == MODE_FNW:
        _release(out, event, phase, FNW_POSITIVE, j.slots[slot, SL_ROW], 1, click_ts, click_ts)
    return CLICK_JOINED


@nb.njit(cache=True, inline="always")
def _pair(j, user, cat) -> int:
    """The id of the (user, category) pair: an evicted pair's id if there is one, else the
    next unused one."""
    key = (np.int64(user) << 32) | np.int64(cat)
    pair = table_get(j.pairs, key, -1)
    if pair < 0:
        free = j.clock[K_FREE_PAIRS]
        if free > 0:
            pair = j.free_pairs[free - 1]
            j.clock[K_FREE_PAIRS] = free - 1
        else:
            pair = j.clock[K_PAIRS]
            j.clock[K_PAIRS] = pair + 1
        table_set(j.pairs, key, pair)
    return pair


@nb.njit(cache=True, inline="always")
def _impression(j, store, counters, out, i, key, user, item, cat, ts):
    j.stats[S_IMPS] += 1
    if table_get(j.index, key, -1) >= 0:
        j.stats[S_DUP_IMPS] += 1
        out.status[i] = IMP_DUPLICATE
        return
    f = j.clock[K_FREE_SLOTS] - 1
    slot = j.free_slots[f]
    j.clock[K_FREE_SLOTS] = f
    r = j.clock[K_FREE_ROWS] - 1
    row = j.free_rows[r]
    j.clock[K_FREE_ROWS] = r
    j.slots[slot, SL_KEY] = key
    j.slots[slot, SL_TS] = ts
    j.slots[slot, SL_USER] = user
    j.slots[slot, SL_ITEM] = item
    j.slots[slot, SL_CAT] = cat
    j.slots[slot, SL_CLICK_TS] = NO_CLICK
    j.slots[slot, SL_ROW] = row
    pair = _pair(j, user, cat)
    j.slots[slot, SL_PAIR] = pair
    table_set(j.index, key, slot)
    # Equal window ends close in arrival order, whatever slot numbers were free.
    _push_end(j, ts + j.cfg[C_WINDOW], j.stats[S_IMPS], slot)
    # Features as of ts (strictly earlier behaviour), then the impression is counted.
    cap, ttl, slack = j.cfg[C_CAP], j.cfg[C_TTL], j.cfg[C_LATENESS]  # slack: arrival vs ts
    n_recent, n_topk = j.cfg[C_RECENT], j.cfg[C_TOPK]
    f, ff = j.features, j.features_f
    recent_at, topk_at, _ = feature_layout(n_recent, n_topk, 6 * counters.decay_per_ms.size)
    counters_observe(counters, user, item, pair, ts, _fresh_before(j), ff, row, F_COUNTS)
    f[row, F_RECENT_LEN] = store_recent(store, user, ts, n_recent, cap, ttl, slack, f, ff, row,
                                        recent_at)
    f[row, F_TOPK_LEN] = store_same_category(store, user, pair, ts, n_topk, cap, ttl, slack, f,
                                             ff, row, topk_at)
    out.row[i] = row
    out.status[i] = IMP_NEW
    if j.cfg[C_MODE] == MODE_FNW:
        _release(out, i, 1, FNW_NEGATIVE, row, 0, -1, ts)
    click_ts = table_pop(j.held, key, -1) if j.held.size[0] > 0 else -1
    if click_ts >= 0:
        out.status[i] = IMP_NEW_JOINED_HELD
        _join(j, store, counters, out, slot, click_ts, i, 1, -1)


@nb.njit(cache=True, inline="always")
def _click(j, store, counters, out, i, key, ts):
    j.stats[S_CLICKS] += 1
    slot = table_get(j.index, key, -1)
    if slot >= 0:
        if j.slots[slot, SL_ROW] >= 0:  # window still open
            out.status[i] = _join(j, store, counters, out, slot, ts, i, 0, i)
        elif j.slots[slot, SL_CLICK_TS] != NO_CLICK:
            j.stats[S_DUP_CLICKS] += 1
            out.status[i] = CLICK_DUPLICATE
        elif ts < j.slots[slot, SL_TS]:
            _orphan(j, out, key, i)
            out.status[i] = CLICK_ORPHAN
        else:
            j.slots[slot, SL_CLICK_TS] = LATE_CLICK
            j.stats[S_LATE] += 1
            _behaviour(j, store, counters, slot, ts)
            out.status[i] = CLICK_LATE
    elif table_get(j.held, key, -1) >= 0:
        j.stats[S_DUP_CLICKS] += 1
        out.status[i] = CLICK_DUPLICATE
    else:
        table_set(j.held, key, ts)
        heap_push(j.held_expiries, j.clock, K_HELD_EXPIRIES, ts + j.cfg[C_WINDOW], key, 0)
        out.status[i] = CLICK_HELD


@nb.njit(cache=True, inline="always")
def _recycle_rows(j):
    f = j.clock[K_FREE_ROWS]
    for p in range(j.clock[K_PENDING_ROWS]):
        j.free_rows[f] = j.pending_rows[p]
        f += 1
    j.clock[K_FREE_ROWS] = f
    j.clock[K_PENDING_ROWS] = 0


@nb.njit(cache=True)
def event_order(ts: np.ndarray, kind: np.ndarray, key: np.ndarray) -> np.ndarray:
    """The permutation that puts events in (time, impressions first, key) order.

    Same as ``np.lexsort((key, kind, ts))``, but input that is already in time order
    (replay, a caught-up consumer) costs one pass plus a short sort of each run of
    simultaneous events.
    """
    n = ts.size
    order = np.arange(n)
    for i in range(1, n):
        if (ts[i], kind[i]) < (ts[i - 1], kind[i - 1]):
            order = np.argsort(ts * 2 + kind, kind="mergesort")
            break
    start = 0
    while start < n:
        end = start + 1
        first = order[start]
        while end < n and ts[order[end]] == ts[first] and kind[order[end]] == kind[first]:
            end += 1
        for i in range(start + 1, end):  # insertion sort by key: runs are short
            moving = order[i]
            j = i - 1
            while j >= start and key[order[j]] > key[moving]:
                order[j + 1] = order[j]
                j -= 1
            order[j + 1] = moving
        start = end
    return order


# Events ahead of the current one whose state rows are prefetched: far enough for the
# loads to land before they are needed, near enough to stay in cache.
_PREFETCH_AHEAD = 4


@nb.njit(cache=True, inline="always")
def _prefetch(j, store, counters, kind, key, user, item, cat) -> None:
    """Start loading the rows a coming event will touch: the impression index, and for an
    impression its user's and item's counters, its pair's place and its user's history."""
    table_prefetch(j.index, key)
    if kind == IMPRESSION:
        users, items = counters.tables[0], counters.tables[1]
        if user < users.shape[0]:
            prefetch_row(users, np.int64(user))
        if item < items.shape[0]:
            prefetch_row(items, np.int64(item))
        if user < store.users.shape[0]:
            prefetch_row(store.users, np.int64(user))
        table_prefetch(j.pairs, (np.int64(user) << 32) | np.int64(cat))


# Without numba's runtime (NRT): every read of an array field of the state tuples cost an
# atomic reference-count increment and decrement, and those were 54% of the kernel's time
# (perf; 0.4M events/s with them, 3M without, on the 1M-user benchmark). The kernel only
# reads and writes arrays its caller owns and allocates nothing — it would not compile
# without NRT otherwise — so nothing needs counting. (``_nrt`` is numba's private switch
# for this; the property and snapshot tests pin the kernel's behaviour.)
@nb.njit(cache=True, _nrt=False)
def process_batch(j: JoinArrays, store: StoreArrays, counters: CounterArrays,
                  kind, key, user, item, cat, ts, out: BatchOutput, until: int,
                  final: bool) -> None:
    """Run a batch of events through the joiner, then move event time to ``until``.

    ``final`` closes every window and gives up on every held click afterwards (end
    of input). Releases caused by ``until`` or ``final`` carry event index -1.
    Capacity must have been reserved by the caller.
    """
    _recycle_rows(j)
    out.counts[:] = 0
    n = kind.size
    for i in range(n):
        ahead = i + _PREFETCH_AHEAD
        if ahead < n:
            _prefetch(j, store, counters, kind[ahead], key[ahead], user[ahead], item[ahead],
                      cat[ahead])
        out.row[i] = -1
        _tick(j, out, ts[i], i)
        if kind[i] == IMPRESSION:
            _impression(j, store, counters, out, i, key[i], user[i], item[i], cat[i], ts[i])
        else:
            _click(j, store, counters, out, i, key[i], ts[i])
    _tick(j, out, until, -1)
    if final:
        _advance(j, out, 0, -1, True)
