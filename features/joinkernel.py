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
* **heaps** of window ends, retention ends and held-click expiries;
* the behaviour store and the counters (see :mod:`features.store`,
  :mod:`features.counting`).

Outputs: a status and a feature row per event, the releases (samples whose label
the caller must act on) in the order they happen, and orphaned clicks.
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

import numba as nb
import numpy as np
from numba.typed import Dict, List

from features.compiled import get_or
from features.counting import CounterArrays, counters_add, counters_read
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
# Slot states.
FREE, OPEN, CLOSED = 0, 1, 2
# Click time of a slot without a joined click: none yet, or only one after the window
# (so a repeat of a late click is a duplicate, not another behaviour).
NO_CLICK, LATE_CLICK = -1, -2
# Statistics, in JoinStats field order.
STAT_NAMES = (
    "impressions", "duplicate_impressions", "clicks", "clicks_joined", "duplicate_clicks",
    "late_clicks", "orphan_clicks", "samples_positive", "samples_negative", "behaviours",
)
(S_IMPS, S_DUP_IMPS, S_CLICKS, S_JOINED, S_DUP_CLICKS, S_LATE, S_ORPHANS, S_POS, S_NEG,
 S_BEHAVIOURS) = range(len(STAT_NAMES))
# Configuration vector.
(C_WINDOW, C_LATENESS, C_RETENTION, C_MODE, C_RECENT, C_TOPK, C_CAP, C_TTL) = range(8)
# Clock vector.
K_WATERMARK, K_MAX_TS, K_FREE_SLOTS, K_FREE_ROWS, K_PENDING_ROWS = range(5)


class JoinArrays(NamedTuple):
    cfg: np.ndarray  # int64 (8,)
    clock: np.ndarray  # int64 (5,)
    stats: np.ndarray  # int64 (len(STAT_NAMES),)
    slot_key: np.ndarray  # int64 (S,)
    slot_ts: np.ndarray  # int64 (S,)
    slot_user: np.ndarray  # int32 (S,)
    slot_item: np.ndarray  # int32 (S,)
    slot_cat: np.ndarray  # int32 (S,)
    slot_click_ts: np.ndarray  # int64 (S,) time of the joined click, or NO_CLICK / LATE_CLICK
    slot_row: np.ndarray  # int64 (S,) feature row while open
    slot_state: np.ndarray  # int8 (S,)
    free_slots: np.ndarray  # int64 (S,) stack; clock[K_FREE_SLOTS] entries
    free_rows: np.ndarray  # int64 (R,) stack; clock[K_FREE_ROWS] entries
    pending_rows: np.ndarray  # int64 (R,) rows released in the last batch
    index: Dict  # impression key -> slot
    ends: List  # heap of (window end, arrival number, slot)
    expiries: List  # heap of (retention end, slot)
    held: Dict  # impression key -> click time, for clicks waiting for their impression
    held_expiries: List  # heap of (click time + window, impression key)
    recent_item: np.ndarray  # int32 (R, N)
    recent_cat: np.ndarray  # int32 (R, N)
    recent_age: np.ndarray  # float32 (R, N) seconds
    recent_len: np.ndarray  # int32 (R,)
    topk_item: np.ndarray  # int32 (R, K)
    topk_cat: np.ndarray  # int32 (R, K)
    topk_age: np.ndarray  # float32 (R, K)
    topk_len: np.ndarray  # int32 (R,)
    counts: np.ndarray  # float32 (R, F)


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


@nb.njit(cache=True)
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


@nb.njit(cache=True)
def _orphan(j, out, key, event):
    j.stats[S_ORPHANS] += 1
    o = out.counts[1]
    out.counts[1] = o + 1
    out.orphan_key[o] = key
    out.orphan_event[o] = event


@nb.njit(cache=True)
def _close_window(j, out, slot, end, event):
    row = j.slot_row[slot]
    click_ts = j.slot_click_ts[slot]
    label = 1 if click_ts >= 0 else 0
    j.stats[S_POS if label else S_NEG] += 1
    _release(out, event, 0, FINAL, row, label, click_ts if label else NO_CLICK, end)
    p = j.clock[K_PENDING_ROWS]
    j.pending_rows[p] = row
    j.clock[K_PENDING_ROWS] = p + 1
    j.slot_row[slot] = -1
    j.slot_state[slot] = CLOSED
    heapq.heappush(j.expiries, (end + j.cfg[C_RETENTION], slot))


@nb.njit(cache=True)
def _advance(j, out, watermark, event, flush):
    """Close windows ending before ``watermark`` (every window if ``flush``)."""
    while len(j.ends) > 0 and (flush or j.ends[0][0] < watermark):
        end, _, slot = heapq.heappop(j.ends)
        _close_window(j, out, slot, end, event)
    while len(j.expiries) > 0 and (flush or j.expiries[0][0] < watermark):
        _, slot = heapq.heappop(j.expiries)
        del j.index[j.slot_key[slot]]
        j.slot_state[slot] = FREE
        f = j.clock[K_FREE_SLOTS]
        j.free_slots[f] = slot
        j.clock[K_FREE_SLOTS] = f + 1
    window = j.cfg[C_WINDOW]
    while len(j.held_expiries) > 0 and (flush or j.held_expiries[0][0] < watermark):
        end, key = heapq.heappop(j.held_expiries)
        # Entries of clicks that found their impression meanwhile are stale: skip them.
        if key in j.held and j.held[key] + window == end:
            del j.held[key]
            _orphan(j, out, key, -1)


@nb.njit(cache=True)
def _tick(j, out, ts, event):
    # Allowed lateness is applied before the kernel (events arrive here in order, up to
    # the few that came later than it), so the watermark is the newest event time.
    if ts > j.clock[K_MAX_TS]:
        j.clock[K_MAX_TS] = ts
        j.clock[K_WATERMARK] = ts
        _advance(j, out, ts, event, False)


@nb.njit(cache=True)
def _behaviour(j, store, counters, slot, click_ts):
    """A click on a known impression is behaviour: stored and counted at its own time."""
    user, item, cat = j.slot_user[slot], j.slot_item[slot], j.slot_cat[slot]
    store_add(store, user, item, cat, click_ts)
    counters_add(counters, user, item, cat, click_ts, 1)
    j.stats[S_BEHAVIOURS] += 1


@nb.njit(cache=True)
def _join(j, store, counters, out, slot, click_ts, event, phase, click_event):
    """A click meets its (open) impression. Return the click's status."""
    if j.slot_click_ts[slot] != NO_CLICK:
        j.stats[S_DUP_CLICKS] += 1
        return CLICK_DUPLICATE
    imp_ts = j.slot_ts[slot]
    if click_ts < imp_ts:  # a click cannot precede what it clicks: bad clock or bad id
        _orphan(j, out, j.slot_key[slot], click_event)
        return CLICK_ORPHAN
    _behaviour(j, store, counters, slot, click_ts)
    if click_ts - imp_ts > j.cfg[C_WINDOW]:
        j.slot_click_ts[slot] = LATE_CLICK
        j.stats[S_LATE] += 1
        return CLICK_LATE
    j.slot_click_ts[slot] = click_ts
    j.stats[S_JOINED] += 1
    if j.cfg[C_MODE] == MODE_FNW:
        _release(out, event, phase, FNW_POSITIVE, j.slot_row[slot], 1, click_ts, click_ts)
    return CLICK_JOINED


@nb.njit(cache=True)
def _impression(j, store, counters, out, i, key, user, item, cat, ts):
    j.stats[S_IMPS] += 1
    if key in j.index:
        j.stats[S_DUP_IMPS] += 1
        out.status[i] = IMP_DUPLICATE
        return
    f = j.clock[K_FREE_SLOTS] - 1
    slot = j.free_slots[f]
    j.clock[K_FREE_SLOTS] = f
    r = j.clock[K_FREE_ROWS] - 1
    row = j.free_rows[r]
    j.clock[K_FREE_ROWS] = r
    j.slot_key[slot] = key
    j.slot_ts[slot] = ts
    j.slot_user[slot] = user
    j.slot_item[slot] = item
    j.slot_cat[slot] = cat
    j.slot_click_ts[slot] = NO_CLICK
    j.slot_row[slot] = row
    j.slot_state[slot] = OPEN
    j.index[key] = slot
    # Equal window ends close in arrival order, whatever slot numbers were free.
    heapq.heappush(j.ends, (ts + j.cfg[C_WINDOW], j.stats[S_IMPS], slot))
    # Features as of ts (strictly earlier behaviour), then the impression is counted.
    cap, ttl, slack = j.cfg[C_CAP], j.cfg[C_TTL], j.cfg[C_LATENESS]  # slack: arrival vs ts
    j.recent_len[row] = store_recent(store, user, ts, j.cfg[C_RECENT], cap, ttl, slack,
                                     j.recent_item[row], j.recent_cat[row], j.recent_age[row])
    j.topk_len[row] = store_same_category(store, user, cat, ts, j.cfg[C_TOPK], cap, ttl, slack,
                                          j.topk_item[row], j.topk_cat[row], j.topk_age[row])
    counters_read(counters, user, item, cat, ts, j.counts[row])
    counters_add(counters, user, item, cat, ts, 0)
    out.row[i] = row
    out.status[i] = IMP_NEW
    if j.cfg[C_MODE] == MODE_FNW:
        _release(out, i, 1, FNW_NEGATIVE, row, 0, -1, ts)
    if key in j.held:
        click_ts = j.held.pop(key)
        out.status[i] = IMP_NEW_JOINED_HELD
        _join(j, store, counters, out, slot, click_ts, i, 1, -1)


@nb.njit(cache=True)
def _click(j, store, counters, out, i, key, ts):
    j.stats[S_CLICKS] += 1
    slot = get_or(j.index, key, -1)
    if slot >= 0:
        if j.slot_state[slot] == OPEN:
            out.status[i] = _join(j, store, counters, out, slot, ts, i, 0, i)
        elif j.slot_click_ts[slot] != NO_CLICK:
            j.stats[S_DUP_CLICKS] += 1
            out.status[i] = CLICK_DUPLICATE
        elif ts < j.slot_ts[slot]:
            _orphan(j, out, key, i)
            out.status[i] = CLICK_ORPHAN
        else:
            j.slot_click_ts[slot] = LATE_CLICK
            j.stats[S_LATE] += 1
            _behaviour(j, store, counters, slot, ts)
            out.status[i] = CLICK_LATE
    elif key in j.held:
        j.stats[S_DUP_CLICKS] += 1
        out.status[i] = CLICK_DUPLICATE
    else:
        j.held[key] = ts
        heapq.heappush(j.held_expiries, (ts + j.cfg[C_WINDOW], key))
        out.status[i] = CLICK_HELD


@nb.njit(cache=True)
def _recycle_rows(j):
    f = j.clock[K_FREE_ROWS]
    for p in range(j.clock[K_PENDING_ROWS]):
        j.free_rows[f] = j.pending_rows[p]
        f += 1
    j.clock[K_FREE_ROWS] = f
    j.clock[K_PENDING_ROWS] = 0


@nb.njit(cache=True)
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
    for i in range(kind.size):
        out.row[i] = -1
        _tick(j, out, ts[i], i)
        if kind[i] == IMPRESSION:
            _impression(j, store, counters, out, i, key[i], user[i], item[i], cat[i], ts[i])
        else:
            _click(j, store, counters, out, i, key[i], ts[i])
    _tick(j, out, until, -1)
    if final:
        _advance(j, out, 0, -1, True)
