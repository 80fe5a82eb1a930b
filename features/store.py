"""Behaviour store: every click of every user, for recent and lifelong (SIM) sequences.

Each behaviour (user, item, category, event time) is one row of flat arrays, 32
bytes in all, plus two back-pointers that thread it into two lists:

* the user's list (newest first): the *recent sequence* is its first N entries
  older than the impression;
* the user × category list: a SIM-style *hard search* for the impression's
  category walks K entries of it — O(K), whatever the user's history length. The
  joiner numbers (user, category) pairs; the store keeps each pair's newest entry.

A user keeps at most ``cap`` behaviours (older ones are skipped, then reclaimed)
and none older than ``ttl_ms``. Reading for an impression at time ``t`` returns only
behaviours with event time < ``t``: entries inserted out of order with later
times are skipped, never returned.

The arrays have a fixed capacity that :meth:`BehaviourStore.reserve` grows from
Python before a batch (compiled code cannot reallocate them); when they fill up,
rows a cap or the TTL made unreachable are reclaimed first.

The compiled functions take the store as a tuple of arrays (see ``arrays``) so one
batch kernel can call them without Python in between.
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

__all__ = ["BehaviourStore", "StoreArrays"]

_INT32_MAX = np.iinfo(np.int32).max
HEAD, TOTAL = 0, 1  # columns of StoreArrays.users


def _new_users(n: int) -> np.ndarray:
    users = np.zeros((n, 2), np.int32)
    users[:, HEAD] = -1
    return users


class StoreArrays(NamedTuple):
    """The store's state as arrays; ``size[0]`` is the number of rows in use."""

    user: np.ndarray  # int32 (C,)
    item: np.ndarray  # int32 (C,)
    cat: np.ndarray  # int32 (C,)
    ts: np.ndarray  # int64 (C,)
    prev_user: np.ndarray  # int32 (C,) previous behaviour of the same user, -1: none
    prev_uc: np.ndarray  # int32 (C,) previous behaviour of the same user and category
    seq: np.ndarray  # int32 (C,) the behaviour's number in its user's history
    size: np.ndarray  # int64 (1,)
    users: np.ndarray  # int32 (U, 2): newest behaviour of each user (-1: none) and the
    # number of behaviours ever stored for it, side by side: one cache line per user
    pair_head: np.ndarray  # int32 (P,) newest behaviour of each user × category pair


@nb.njit(cache=True, inline="always")
def store_add(s: StoreArrays, user: int, item: int, cat: int, pair: int, ts: int) -> None:
    """Append one behaviour; ``pair`` is the joiner's id of (user, cat) (capacity reserved)."""
    row = s.size[0]
    s.size[0] = row + 1
    s.user[row] = user
    s.item[row] = item
    s.cat[row] = cat
    s.ts[row] = ts
    s.prev_user[row] = s.users[user, HEAD]
    s.users[user, HEAD] = row
    s.seq[row] = s.users[user, TOTAL]
    s.users[user, TOTAL] += 1
    s.prev_uc[row] = s.pair_head[pair]
    s.pair_head[pair] = row


@nb.njit(cache=True, inline="always")
def store_read(
    s: StoreArrays, head: int, by_category: bool, user: int, t: int, n: int, cap: int,
    ttl_ms: int, slack_ms: int, out: np.ndarray, out_f: np.ndarray, out_row: int,
    offset: int,
) -> int:
    """Write up to ``n`` behaviours older than ``t`` from a list into row ``out_row`` of
    ``out`` from column ``offset``, as (item, category, age) triples; return the count.

    ``out_f`` is a float32 view of ``out`` (the age, in seconds, is a float32). The
    triples are interleaved so the first behaviours share a cache line, and the
    arrays are indexed, not sliced: a view would cost reference counting. The walk
    stops at the user's cap, or at an entry older than the TTL by more than
    ``slack_ms`` (lists are in arrival order, which trails event-time order by at most
    the allowed lateness).
    """
    if head < 0:
        return 0
    oldest_seq = s.users[user, TOTAL] - cap
    row = head
    k = 0
    while row >= 0 and k < n:
        if s.seq[row] < oldest_seq or s.ts[row] < t - ttl_ms - slack_ms:
            break
        bt = s.ts[row]
        if bt < t and bt >= t - ttl_ms:
            at = offset + 3 * k
            out[out_row, at] = s.item[row]
            out[out_row, at + 1] = s.cat[row]
            out_f[out_row, at + 2] = (t - bt) * 0.001
            k += 1
        row = s.prev_uc[row] if by_category else s.prev_user[row]
    return k


@nb.njit(cache=True, inline="always")
def store_recent(s, user, t, n, cap, ttl_ms, slack_ms, out, out_f, out_row, offset) -> int:
    """The user's last ``n`` behaviours before ``t``, newest first."""
    if user >= s.users.shape[0]:
        return 0
    return store_read(s, s.users[user, HEAD], False, user, t, n, cap, ttl_ms, slack_ms,
                      out, out_f, out_row, offset)


@nb.njit(cache=True, inline="always")
def store_same_category(s, user, pair, t, k, cap, ttl_ms, slack_ms, out, out_f, out_row,
                        offset) -> int:
    """Hard search: the user's ``k`` most recent behaviours of the pair's category before ``t``."""
    head = s.pair_head[pair] if pair < s.pair_head.size else -1
    return store_read(s, head, True, user, t, k, cap, ttl_ms, slack_ms, out, out_f, out_row,
                      offset)


@nb.njit(cache=True, inline="always")
def _live_rows(s: StoreArrays, now: int, cap: int, ttl_ms: int) -> np.ndarray:
    n = s.size[0]
    keep = np.empty(n, dtype=np.bool_)
    for row in range(n):
        u = s.user[row]
        keep[row] = s.seq[row] >= s.users[u, TOTAL] - cap and s.ts[row] >= now - ttl_ms
    return keep


@nb.njit(cache=True, inline="always")
def _remap_pointers(s: StoreArrays, new_index: np.ndarray, n_users: int) -> None:
    # Pointers to reclaimed rows become -1: lists end where a cap or the TTL ended them.
    for u in range(n_users):
        h = s.users[u, HEAD]
        s.users[u, HEAD] = -1 if h < 0 else new_index[h]
    for p in range(s.pair_head.size):
        h = s.pair_head[p]
        s.pair_head[p] = -1 if h < 0 else new_index[h]


def _remap_chain(prev: np.ndarray, new_index: np.ndarray) -> np.ndarray:
    out = prev.copy()
    linked = prev >= 0
    out[linked] = new_index[prev[linked]]
    return out


class BehaviourStore:
    """Python owner of the store's arrays: growth, reclamation, snapshots."""

    def __init__(self, cap: int, ttl_ms: int, capacity: int = 1 << 16, users: int = 1 << 12,
                 pairs: int = 1 << 14):
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        if ttl_ms < 1:
            raise ValueError(f"ttl_ms must be >= 1, got {ttl_ms}")
        self.cap, self.ttl_ms = cap, ttl_ms
        self.arrays = StoreArrays(
            user=np.zeros(capacity, np.int32), item=np.zeros(capacity, np.int32),
            cat=np.zeros(capacity, np.int32), ts=np.zeros(capacity, np.int64),
            prev_user=np.zeros(capacity, np.int32), prev_uc=np.zeros(capacity, np.int32),
            seq=np.zeros(capacity, np.int32), size=np.zeros(1, np.int64),
            users=_new_users(users),
            pair_head=np.full(pairs, -1, np.int32),
        )

    def __len__(self) -> int:
        return int(self.arrays.size[0])

    @property
    def capacity(self) -> int:
        return self.arrays.user.size

    def reserve(self, rows: int, users: int, pairs: int, now: int) -> None:
        """Make room for ``rows`` more behaviours, user codes < ``users``, pair ids < ``pairs``."""
        a = self.arrays
        if pairs > a.pair_head.size:
            grow = max(pairs, a.pair_head.size * 2) - a.pair_head.size
            a = a._replace(pair_head=np.concatenate([a.pair_head, np.full(grow, -1, np.int32)]))
        if users > len(a.users):
            grow = max(users, len(a.users) * 2) - len(a.users)
            a = a._replace(users=np.concatenate([a.users, _new_users(grow)]))
        self.arrays = a
        if len(self) + rows <= self.capacity:
            return
        self.reclaim(now)
        a = self.arrays
        needed = len(self) + rows
        if needed > self.capacity or len(self) > 0.75 * self.capacity:
            new_capacity = max(needed, self.capacity * 3 // 2)
            if new_capacity > _INT32_MAX:
                raise MemoryError("behaviour store exceeds 2**31 rows")
            self.arrays = a._replace(**{
                name: np.concatenate([getattr(a, name),
                                      np.zeros(new_capacity - self.capacity,
                                               getattr(a, name).dtype)])
                for name in ("user", "item", "cat", "ts", "prev_user", "prev_uc", "seq")
            })

    def forget(self, users: np.ndarray, pairs: np.ndarray) -> None:
        """Make ``users`` and ``pairs`` (evicted keys, whose codes will be reused) keys with
        no history. Call :meth:`reclaim` first, so no row is left that refers to them."""
        a = self.arrays
        a.users[users, HEAD] = -1
        a.users[users, TOTAL] = 0
        a.pair_head[pairs] = -1

    def reclaim(self, now: int) -> None:
        """Drop rows no read can reach any more (past the cap or the TTL), in place."""
        a = self.arrays
        n = len(self)
        keep = _live_rows(a, now, self.cap, self.ttl_ms)
        if keep.all():
            return
        new_index = np.full(n, -1, np.int32)
        kept = np.flatnonzero(keep)
        new_index[kept] = np.arange(kept.size, dtype=np.int32)
        prev_user = _remap_chain(a.prev_user[:n], new_index)[kept]
        prev_uc = _remap_chain(a.prev_uc[:n], new_index)[kept]
        for name in ("user", "item", "cat", "ts", "seq"):
            column = getattr(a, name)
            column[: kept.size] = column[kept]
        a.prev_user[: kept.size] = prev_user
        a.prev_uc[: kept.size] = prev_uc
        _remap_pointers(a, new_index, len(a.users))
        a.size[0] = kept.size

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """Rows in use and the list heads."""
        a, n = self.arrays, len(self)
        state: dict[str, np.ndarray | int] = {"cap": self.cap, "ttl_ms": self.ttl_ms}
        for name in ("user", "item", "cat", "ts", "prev_user", "prev_uc", "seq"):
            state[name] = getattr(a, name)[:n].copy()
        state["users"] = a.users.copy()
        state["pair_head"] = a.pair_head.copy()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray | int]) -> BehaviourStore:
        n = len(state["user"])  # type: ignore[arg-type]
        store = cls(int(state["cap"]), int(state["ttl_ms"]), capacity=max(n, 1 << 16),
                    users=max(len(state["users"]), 1),  # type: ignore[arg-type]
                    pairs=max(len(state["pair_head"]), 1))  # type: ignore[arg-type]
        a = store.arrays
        for name in ("user", "item", "cat", "ts", "prev_user", "prev_uc", "seq"):
            getattr(a, name)[:n] = state[name]
        a.users[:] = state["users"]
        a.size[0] = n
        a.pair_head[:] = state["pair_head"]
        return store

