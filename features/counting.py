"""Point-in-time counting features: exponentially decayed impression and click counts.

For three keys — the user, the item, and the user × category pair (numbered by
the joiner) — and each
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
decay; a late impression (older than its key's newest update) reads the key at its
newest time. The joiner processes events in event-time order within the allowed
lateness, so this only concerns events that arrived later than that.

A key whose newest update is older than ``fresh_before`` (the joiner passes its
watermark minus its key TTL) reads and counts as a key never seen: its row is
cleared on first touch. The joiner's sweep clears and frees the same rows later, to
reclaim memory; because the idle rule is applied here, at the event, what a key reads
does not depend on when a sweep ran (so a replay and a service batching differently
agree).
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

__all__ = [
    "CounterArrays",
    "Counters",
    "counter_names",
    "counters_add",
    "counters_observe",
    "smoothed_ctr",
]

KEYS = ("user", "item", "user_category")
_LN2 = np.log(2.0)


# Columns of a counter row: its time, what was added at that time, then the counts.
LAST, SAME_IMPS, SAME_CLICKS, FIRST = 0, 1, 2, 3


class CounterArrays(NamedTuple):
    """One table per key kind; a row is ``[last time, same-time imps, same-time clicks,
    imps_h0, clicks_h0, imps_h1, …]`` (float64; times in ms are exact below 2**53), so
    reading and updating a key touches one or two cache lines."""

    decay_per_ms: np.ndarray  # float64 (H,): ln 2 / half-life, so decay = exp(-rate * age)
    tables: tuple[np.ndarray, np.ndarray, np.ndarray]  # float64 (R_k, 3 + 2H): by user,
    # by item, by (user, category) pair id (the joiner numbers the pairs)


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


@nb.njit(cache=True, inline="always")
def _fresh_if_idle(tab, row, fresh_before) -> None:
    """Clear the row of a key idle since before ``fresh_before``: it starts as new."""
    last = tab[row, LAST]
    if last >= 0 and last < fresh_before:
        for column in range(SAME_IMPS, tab.shape[1]):  # a loop: a slice would be a view
            tab[row, column] = 0.0
        tab[row, LAST] = -1.0


@nb.njit(cache=True, inline="always")
def _at(tab, row, rates, t) -> bool:
    """Decay row ``row`` of ``tab`` forward to ``t`` when ``t`` is newer; return whether
    the row is at ``t``
    (False: the row already holds a newer event, ``t`` is a late arrival)."""
    last = tab[row, LAST]
    if last > t:
        return False
    if last < t:
        if last >= 0:
            for h in range(rates.size):
                f = np.exp(-rates[h] * (t - last))
                tab[row, FIRST + 2 * h] *= f
                tab[row, FIRST + 2 * h + 1] *= f
        tab[row, SAME_IMPS] = 0.0
        tab[row, SAME_CLICKS] = 0.0
        tab[row, LAST] = t
    return True


@nb.njit(cache=True, inline="always")
def _count(tab, row, rates, t, column, at_t):
    if at_t:
        for h in range(rates.size):
            tab[row, FIRST + 2 * h + column] += 1.0
        tab[row, SAME_IMPS + column] += 1.0
    else:  # a late event: added with its own decay to the row's time
        age = tab[row, LAST] - t
        for h in range(rates.size):
            tab[row, FIRST + 2 * h + column] += np.exp(-rates[h] * age)


@nb.njit(cache=True, inline="always")
def _observe(tab, row, rates, t, fresh_before, out, out_row, offset):
    """Write the row's counts as of ``t`` (events strictly before it) from ``offset``,
    then count an impression at ``t``. A late impression reads the row at its newest time."""
    _fresh_if_idle(tab, row, fresh_before)
    at_t = _at(tab, row, rates, t)
    for h in range(rates.size):
        imps = tab[row, FIRST + 2 * h]
        clicks = tab[row, FIRST + 2 * h + 1]
        if at_t:  # leave out what happened at t itself
            imps -= tab[row, SAME_IMPS]
            clicks -= tab[row, SAME_CLICKS]
        out[out_row, offset + 2 * h] = max(imps, 0.0)
        out[out_row, offset + 2 * h + 1] = max(clicks, 0.0)
    _count(tab, row, rates, t, 0, at_t)


@nb.njit(cache=True, inline="always")
def _add(tab, row, rates, t, column, fresh_before):
    _fresh_if_idle(tab, row, fresh_before)
    _count(tab, row, rates, t, column, _at(tab, row, rates, t))


@nb.njit(cache=True, inline="always")
def counters_observe(c: CounterArrays, user: int, item: int, pair: int, t: int,
                     fresh_before: int, out, out_row: int, offset: int) -> None:
    """An impression at ``t``: write its ``3 * H * 2`` features into row ``out_row`` of
    ``out`` from column ``offset``, then count it. Keys idle since before
    ``fresh_before`` start fresh (see the module doc)."""
    width = 2 * c.decay_per_ms.size
    hl = c.decay_per_ms
    # The three keys unrolled: a tuple indexed by a constant costs nothing.
    _observe(c.tables[0], user, hl, t, fresh_before, out, out_row, offset)
    _observe(c.tables[1], item, hl, t, fresh_before, out, out_row, offset + width)
    _observe(c.tables[2], pair, hl, t, fresh_before, out, out_row, offset + 2 * width)


@nb.njit(cache=True, inline="always")
def counters_add(c: CounterArrays, user: int, item: int, pair: int, t: int, column: int,
                 fresh_before: int) -> None:
    """Count an impression (``column`` 0) or a click (1) at time ``t`` for all three keys
    (keys idle since before ``fresh_before`` start fresh)."""
    hl = c.decay_per_ms
    _add(c.tables[0], user, hl, t, column, fresh_before)
    _add(c.tables[1], item, hl, t, column, fresh_before)
    _add(c.tables[2], pair, hl, t, column, fresh_before)


class Counters:
    """Python owner of the counter tables: growth and snapshots."""

    def __init__(self, half_lives_ms: tuple[int, ...], users: int = 1 << 12,
                 items: int = 1 << 12, pairs: int = 1 << 14) -> None:
        if not half_lives_ms or min(half_lives_ms) <= 0:
            raise ValueError(f"half-lives must be positive, got {half_lives_ms}")
        self.half_lives_ms = tuple(int(h) for h in half_lives_ms)
        self.arrays = CounterArrays(
            decay_per_ms=_LN2 / np.asarray(self.half_lives_ms, np.float64),
            tables=tuple(self._new_rows(n) for n in (users, items, pairs)),  # type: ignore[arg-type]
        )

    @property
    def width(self) -> int:
        return 3 * 2 * len(self.half_lives_ms)

    def _new_rows(self, n: int) -> np.ndarray:
        rows = np.zeros((n, FIRST + 2 * len(self.half_lives_ms)), np.float64)
        rows[:, LAST] = -1.0
        return rows

    def reserve(self, users: int, items: int, pairs: int) -> None:
        """Room for user codes < ``users``, item codes < ``items`` and pair ids < ``pairs``."""
        a = self.arrays
        needed = (users, items, pairs)
        if all(n <= len(a.tables[k]) for k, n in enumerate(needed)):
            return
        self.arrays = a._replace(tables=tuple(
            table if n <= len(table) else np.concatenate(
                [table, self._new_rows(max(n, len(table) * 2) - len(table))])
            for table, n in zip(a.tables, needed, strict=True)))

    def idle(self, key: int, before: int) -> np.ndarray:
        """Codes of kind ``key`` (0 user, 1 item, 2 pair) updated, but not since ``before``."""
        last = self.arrays.tables[key][:, LAST]
        return np.flatnonzero((last >= 0) & (last < before))

    def clear(self, key: int, codes: np.ndarray) -> None:
        """Make the rows of ``codes`` (of kind ``key``) rows of keys never seen."""
        table = self.arrays.tables[key]
        table[codes] = 0.0
        table[codes, LAST] = -1.0

    def state_dict(self) -> dict[str, np.ndarray | tuple[int, ...]]:
        a = self.arrays
        state: dict[str, np.ndarray | tuple[int, ...]] = {
            "half_lives_ms": np.asarray(self.half_lives_ms, np.int64)}
        for k, key in enumerate(KEYS):
            state[key] = a.tables[k].copy()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> Counters:
        sizes = [len(state[key]) for key in KEYS]
        counters = cls(tuple(int(h) for h in state["half_lives_ms"]),
                       *(max(n, 1) for n in sizes))
        for k, key in enumerate(KEYS):
            counters.arrays.tables[k][: sizes[k]] = state[key]
        return counters
