"""Point-in-time counting features: exponentially decayed impression and click counts.

For three keys — the user, the item, and the user × category pair — and each
half-life ``h`` the joiner keeps ``imps_h`` and ``clicks_h``, the number of
impressions and clicks weighted by ``2 ** (-age / h)``. Read at an impression's
time ``t`` they count only events *strictly before* ``t``: increments made at
exactly ``t`` (other impressions of the same request) are subtracted, so the
features do not depend on the order of simultaneous events.

The feature vector of an impression, for ``H`` half-lives, is laid out as
``[key][half-life][imps, clicks]`` with keys in the order user, item, user×category:
``3 * H * 2`` float32 values. :func:`counter_names` names them; smoothed CTRs
are left to the learner (:func:`smoothed_ctr`).

Events that arrive older than a key's newest update are added with their own
decay; reads for a time before a key's newest update are clamped to it
(exact when events arrive in event-time order, as the joiner processes them).
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np
from numba.typed import Dict

from features.compiled import dict_arrays, fill_dict, get_or, new_dict

__all__ = ["CounterArrays", "Counters", "counter_names", "smoothed_ctr"]

KEYS = ("user", "item", "user_category")
_LN2 = np.log(2.0)


class CounterArrays(NamedTuple):
    """Per-key rows of decayed counts; one table per key kind."""

    half_lives_ms: np.ndarray  # float64 (H,)
    values: tuple[np.ndarray, np.ndarray, np.ndarray]  # float64 (R_k, H, 2)
    last_ts: tuple[np.ndarray, np.ndarray, np.ndarray]  # int64 (R_k,), -1: never
    same_ts: tuple[np.ndarray, np.ndarray, np.ndarray]  # float64 (R_k, 2) added at last_ts
    uc_rows: Dict  # int64 (user << 32 | cat) -> row of the user × category table
    uc_size: np.ndarray  # int64 (1,) rows of the user × category table in use


def counter_names(half_lives_ms: tuple[int, ...]) -> list[str]:
    """Names of the counting features, in vector order.

    >>> counter_names((3_600_000,))
    ['user_imps_1h', 'user_clicks_1h', 'item_imps_1h', 'item_clicks_1h', \
'user_category_imps_1h', 'user_category_clicks_1h']
    """
    names = []
    for key in KEYS:
        for h in half_lives_ms:
            label = f"{h // 3_600_000}h" if h % 3_600_000 == 0 else f"{h // 1000}s"
            names += [f"{key}_imps_{label}", f"{key}_clicks_{label}"]
    return names


def smoothed_ctr(clicks: np.ndarray, imps: np.ndarray, prior_ctr: float, strength: float
                 ) -> np.ndarray:
    """(clicks + strength·prior) / (imps + strength): a CTR that is the prior when imps → 0."""
    return (clicks + strength * prior_ctr) / (imps + strength)


@nb.njit(cache=True)
def _touch(values, last_ts, same_ts, half_lives, row, t):
    """Bring a row forward to time ``t`` if ``t`` is newer; return the age of ``t`` (ms)
    relative to the row's time: 0 for the row's own time, > 0 for an older event."""
    last = last_ts[row]
    if last >= 0 and t <= last:
        return last - t
    if last >= 0:
        for h in range(half_lives.size):
            f = np.exp(-_LN2 * (t - last) / half_lives[h])
            values[row, h, 0] *= f
            values[row, h, 1] *= f
    same_ts[row, 0] = 0.0
    same_ts[row, 1] = 0.0
    last_ts[row] = t
    return 0


@nb.njit(cache=True)
def _add(values, last_ts, same_ts, half_lives, row, t, column):
    age = _touch(values, last_ts, same_ts, half_lives, row, t)
    for h in range(half_lives.size):
        values[row, h, column] += np.exp(-_LN2 * age / half_lives[h])
    if age == 0:
        same_ts[row, column] += 1.0


@nb.njit(cache=True)
def _read(values, last_ts, same_ts, half_lives, row, t, out, offset):
    last = last_ts[row]
    if last < 0:
        for h in range(half_lives.size):
            out[offset + 2 * h] = 0.0
            out[offset + 2 * h + 1] = 0.0
        return
    dt = max(t - last, 0)
    for h in range(half_lives.size):
        f = np.exp(-_LN2 * dt / half_lives[h])
        imps = values[row, h, 0]
        clicks = values[row, h, 1]
        if dt == 0:  # strictly before t: leave out what happened at t itself
            imps -= same_ts[row, 0]
            clicks -= same_ts[row, 1]
        out[offset + 2 * h] = max(imps * f, 0.0)
        out[offset + 2 * h + 1] = max(clicks * f, 0.0)


@nb.njit(cache=True)
def _uc_row(c: CounterArrays, user: int, cat: int, create: bool) -> int:
    key = (np.int64(user) << 32) | np.int64(cat)
    row = get_or(c.uc_rows, key, -1)
    if row < 0 and create:
        row = c.uc_size[0]
        c.uc_size[0] = row + 1
        c.uc_rows[key] = row
    return row


@nb.njit(cache=True)
def counters_read(c: CounterArrays, user: int, item: int, cat: int, t: int, out) -> None:
    """Write the ``3 * H * 2`` features of an impression at ``t`` into ``out``."""
    width = 2 * c.half_lives_ms.size
    rows = (np.int64(user), np.int64(item), np.int64(_uc_row(c, user, cat, False)))
    for k in range(3):
        if rows[k] < 0 or rows[k] >= c.last_ts[k].size:
            out[k * width:(k + 1) * width] = 0.0
        else:
            _read(c.values[k], c.last_ts[k], c.same_ts[k], c.half_lives_ms, rows[k], t, out,
                  k * width)


@nb.njit(cache=True)
def counters_add(c: CounterArrays, user: int, item: int, cat: int, t: int, column: int) -> None:
    """Count an impression (``column`` 0) or a click (1) at time ``t`` for all three keys."""
    rows = (np.int64(user), np.int64(item), np.int64(_uc_row(c, user, cat, True)))
    for k in range(3):
        _add(c.values[k], c.last_ts[k], c.same_ts[k], c.half_lives_ms, rows[k], t, column)


class Counters:
    """Python owner of the counter tables: growth and snapshots."""

    def __init__(self, half_lives_ms: tuple[int, ...], users: int = 1 << 12,
                 items: int = 1 << 12, pairs: int = 1 << 14) -> None:
        if not half_lives_ms or min(half_lives_ms) <= 0:
            raise ValueError(f"half-lives must be positive, got {half_lives_ms}")
        self.half_lives_ms = tuple(int(h) for h in half_lives_ms)
        h = len(self.half_lives_ms)
        sizes = (users, items, pairs)
        self.arrays = CounterArrays(
            half_lives_ms=np.asarray(self.half_lives_ms, np.float64),
            values=tuple(np.zeros((n, h, 2), np.float64) for n in sizes),  # type: ignore[arg-type]
            last_ts=tuple(np.full(n, -1, np.int64) for n in sizes),  # type: ignore[arg-type]
            same_ts=tuple(np.zeros((n, 2), np.float64) for n in sizes),  # type: ignore[arg-type]
            uc_rows=new_dict(),
            uc_size=np.zeros(1, np.int64),
        )

    @property
    def width(self) -> int:
        return 3 * 2 * len(self.half_lives_ms)

    def reserve(self, users: int, items: int, new_pairs: int) -> None:
        """Room for user codes < ``users``, item codes < ``items`` and ``new_pairs`` more pairs."""
        a = self.arrays
        needed = (users, items, int(a.uc_size[0]) + new_pairs)
        if all(n <= a.last_ts[k].size for k, n in enumerate(needed)):
            return
        grown = [max(n, a.last_ts[k].size * 3 // 2) if n > a.last_ts[k].size
                 else a.last_ts[k].size for k, n in enumerate(needed)]
        self.arrays = a._replace(
            values=tuple(_grow(a.values[k], grown[k], 0.0) for k in range(3)),
            last_ts=tuple(_grow(a.last_ts[k], grown[k], -1) for k in range(3)),
            same_ts=tuple(_grow(a.same_ts[k], grown[k], 0.0) for k in range(3)),
        )

    def state_dict(self) -> dict[str, np.ndarray | tuple[int, ...]]:
        a = self.arrays
        state: dict[str, np.ndarray | tuple[int, ...]] = {
            "half_lives_ms": np.asarray(self.half_lives_ms, np.int64)}
        sizes = (a.last_ts[0].size, a.last_ts[1].size, int(a.uc_size[0]))
        for k, key in enumerate(KEYS):
            state[f"{key}_values"] = a.values[k][: sizes[k]].copy()
            state[f"{key}_last_ts"] = a.last_ts[k][: sizes[k]].copy()
            state[f"{key}_same_ts"] = a.same_ts[k][: sizes[k]].copy()
        state["uc_keys"], state["uc_rows"] = dict_arrays(a.uc_rows)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> Counters:
        sizes = [len(state[f"{key}_last_ts"]) for key in KEYS]
        counters = cls(tuple(int(h) for h in state["half_lives_ms"]),
                       *(max(n, 1) for n in sizes))
        a = counters.arrays
        for k, key in enumerate(KEYS):
            a.values[k][: sizes[k]] = state[f"{key}_values"]
            a.last_ts[k][: sizes[k]] = state[f"{key}_last_ts"]
            a.same_ts[k][: sizes[k]] = state[f"{key}_same_ts"]
        a.uc_size[0] = sizes[2]
        fill_dict(a.uc_rows, state["uc_keys"], state["uc_rows"])
        return counters


def _grow(array: np.ndarray, rows: int, fill: float) -> np.ndarray:
    extra = np.full((rows - array.shape[0], *array.shape[1:]), fill, array.dtype)
    return np.concatenate([array, extra])
