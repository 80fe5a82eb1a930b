"""Small compiled helpers shared by kernels: hash tables, heaps, a cache prefetch,
counter-based random draws.

Both live in plain arrays, so compiled code reaches them without calls into a
runtime (numba's typed ``Dict`` costs 150-250 ns per lookup on large tables, these
tables 20-50 ns) and a snapshot is the arrays themselves. Capacity is managed
from Python between batches (:func:`table_reserve`): compiled code never
reallocates.
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "HashTable",
    "heap_pop",
    "heap_push",
    "new_table",
    "prefetch_row",
    "ring_pop",
    "ring_push",
    "ring_unrolled",
    "splitmix_uniform",
    "splitmix_uniforms",
    "table_from_items",
    "table_get",
    "table_items",
    "table_pop",
    "table_prefetch",
    "table_reserve",
    "table_set",
]

EMPTY = -1  # keys are non-negative: 63-bit impression keys, user << 32 | category


class HashTable(NamedTuple):
    """Open addressing with linear probing, int64 → int64; ``size[0]`` entries in use.

    Keys and values are interleaved (one row per place), so a lookup that finds its
    key reads its value from the same cache line.
    """

    entries: np.ndarray  # int64 (C, 2): key (EMPTY marks a free place), value; C a power of 2
    size: np.ndarray  # int64 (1,)


def new_table(capacity: int = 1024) -> HashTable:
    capacity = 1 << max(4, (capacity - 1).bit_length())
    entries = np.zeros((capacity, 2), np.int64)
    entries[:, 0] = EMPTY
    return HashTable(entries, np.zeros(1, np.int64))


@nb.njit(cache=True, inline="always")
def _home(key: int, mask: int) -> int:
    # splitmix64's finaliser: keys that share low bits (user << 32 | cat) still spread.
    x = np.uint64(key)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return np.int64(x & np.uint64(mask))


@nb.njit(cache=True, inline="always")
def _find(e: np.ndarray, key: int) -> int:
    """The place holding ``key``, or the empty place that ends its probe run."""
    mask = e.shape[0] - 1
    i = _home(key, mask)
    while e[i, 0] != key and e[i, 0] != EMPTY:
        i = (i + 1) & mask
    return i


@nb.njit(cache=True, inline="always")
def table_prefetch(t: HashTable, key: int) -> None:
    """Hint the CPU to load the place where a probe for ``key`` starts (see
    :func:`prefetch_row`), for a lookup a little later."""
    e = t.entries
    prefetch_row(e, _home(key, e.shape[0] - 1))


@nb.njit(cache=True, inline="always")
def table_get(t: HashTable, key: int, default: int) -> int:
    # One read of t.entries: each read of a tuple's array field costs a reference count
    # in compiled code (3 reads made this probe ~4x slower).
    e = t.entries
    i = _find(e, key)
    return e[i, 1] if e[i, 0] == key else default


@nb.njit(cache=True, inline="always")
def table_set(t: HashTable, key: int, value: int) -> None:
    """Insert or overwrite (capacity must have been reserved)."""
    e = t.entries
    i = _find(e, key)
    if e[i, 0] == EMPTY:
        e[i, 0] = key
        t.size[0] += 1
    e[i, 1] = value


@nb.njit(cache=True, inline="always")
def table_pop(t: HashTable, key: int, default: int) -> int:
    """Remove ``key`` and return its value (``default`` if absent); no tombstones."""
    e = t.entries
    mask = e.shape[0] - 1
    i = _find(e, key)
    if e[i, 0] != key:
        return default
    value = e[i, 1]
    # Backward-shift deletion: move later entries of the probe run into the hole
    # unless their home lies cyclically in (hole, position].
    j = i
    while True:
        j = (j + 1) & mask
        k = e[j, 0]
        if k == EMPTY:
            break
        home = _home(k, mask)
        if (j > i and (home <= i or home > j)) or (j < i and home <= i and home > j):
            e[i, 0] = k
            e[i, 1] = e[j, 1]
            i = j
    e[i, 0] = EMPTY
    t.size[0] -= 1
    return value


@nb.njit(cache=True)
def table_items(t: HashTable) -> tuple[np.ndarray, np.ndarray]:
    """Keys and values in use (for snapshots)."""
    used = np.flatnonzero(t.entries[:, 0] != EMPTY)
    keys = np.empty(used.size, np.int64)
    values = np.empty(used.size, np.int64)
    for n in range(used.size):
        keys[n] = t.entries[used[n], 0]
        values[n] = t.entries[used[n], 1]
    return keys, values


@nb.njit(cache=True)
def _fill(t: HashTable, keys: np.ndarray, values: np.ndarray) -> None:
    for i in range(keys.size):
        table_set(t, keys[i], values[i])


def table_from_items(keys: np.ndarray, values: np.ndarray, capacity: int = 0) -> HashTable:
    table = new_table(max(capacity, 2 * len(keys) + 16))
    _fill(table, np.asarray(keys, np.int64), np.asarray(values, np.int64))
    return table


def table_reserve(t: HashTable, extra: int) -> HashTable:
    """``t`` itself when ``extra`` more entries keep it at most half full, else a rehashed copy."""
    needed = 2 * (int(t.size[0]) + extra)
    if needed <= len(t.entries):
        return t
    keys, values = table_items(t)
    return table_from_items(keys, values, max(needed, 2 * len(t.entries)))


@nb.njit(cache=True)
def _before(h: np.ndarray, i: int, j: int) -> bool:
    for c in range(3):
        if h[i, c] != h[j, c]:
            return h[i, c] < h[j, c]
    return False


@nb.njit(cache=True)
def _swap(h: np.ndarray, i: int, j: int) -> None:
    for c in range(3):
        h[i, c], h[j, c] = h[j, c], h[i, c]


@nb.njit(cache=True)
def heap_push(h: np.ndarray, sizes: np.ndarray, which: int, a: int, b: int, c: int) -> None:
    """Push (a, b, c) onto the min-heap in the rows of ``h``; ``sizes[which]`` is its size.

    An array-backed binary heap ordered by the rows' three int64 columns: several
    times faster than ``heapq`` on a typed list, and a snapshot is the array itself.
    Capacity must have been reserved.
    """
    i = sizes[which]
    sizes[which] = i + 1
    h[i, 0], h[i, 1], h[i, 2] = a, b, c
    while i > 0:
        parent = (i - 1) >> 1
        if not _before(h, i, parent):
            break
        _swap(h, i, parent)
        i = parent


@nb.njit(cache=True)
def heap_pop(h: np.ndarray, sizes: np.ndarray, which: int) -> tuple[int, int, int]:
    """Remove and return the smallest row of the heap (see :func:`heap_push`)."""
    top = (h[0, 0], h[0, 1], h[0, 2])
    n = sizes[which] - 1
    sizes[which] = n
    h[0, 0], h[0, 1], h[0, 2] = h[n, 0], h[n, 1], h[n, 2]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= n:
            break
        child = left + 1 if left + 1 < n and _before(h, left + 1, left) else left
        if not _before(h, child, i):
            break
        _swap(h, i, child)
        i = child
    return top


@nb.njit(cache=True, inline="always")
def ring_push(r: np.ndarray, clock: np.ndarray, head: int, count: int, a: int, b: int,
              c: int) -> None:
    """Append (a, b, c) to the FIFO ring in the rows of ``r``; ``clock[head]`` is the index
    of its first row, ``clock[count]`` its length. For pushes that come in order, a ring
    does in O(1) what a heap does in O(log n)."""
    i = (clock[head] + clock[count]) % r.shape[0]
    r[i, 0], r[i, 1], r[i, 2] = a, b, c
    clock[count] += 1


@nb.njit(cache=True, inline="always")
def ring_pop(r: np.ndarray, clock: np.ndarray, head: int, count: int) -> tuple[int, int, int]:
    """Remove and return the first row of the ring (see :func:`ring_push`)."""
    i = clock[head]
    clock[head] = (i + 1) % r.shape[0]
    clock[count] -= 1
    return r[i, 0], r[i, 1], r[i, 2]


def ring_unrolled(r: np.ndarray, start: int, length: int, capacity: int) -> np.ndarray:
    """The ring's rows moved to the front of a new array of ``capacity`` rows."""
    out = np.zeros((capacity, r.shape[1]), r.dtype)
    out[:length] = r[(start + np.arange(length)) % len(r)]
    return out


@intrinsic
def prefetch_row(typingctx, array, row):
    """Hint the CPU to load row ``row`` of a C-contiguous 2-d array into cache, for writing.

    Kernels that visit random rows of a large table (FTRL's state) issue this for the rows
    of the *next* sample while working on the current one, so the memory latency of one
    sample overlaps the arithmetic of another (+40% FTRL throughput on a 128 MiB table).
    A hint only: it never faults and changes nothing.
    """
    sig = types.void(array, row)

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, [args[1], zero])
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        # llvm.prefetch(address, rw=1 write, locality=3 keep in all levels, cache=1 data)
        builder.call(function, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, 1),
                                ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(cache=True, inline="always")
def splitmix_uniform(seed: int, counter: int) -> float:
    """SplitMix64 of ``seed + (counter + 1) * golden ratio``, as a float in [0, 1).

    Stateless: draw ``k`` depends on the seed and ``k`` only, so a restored learner (or
    a ``_one`` call against a ``_many`` call) makes exactly the draws the original would.
    """
    z = np.uint64(seed) + np.uint64(counter + 1) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@nb.njit(cache=True)
def splitmix_uniforms(seed: int, first: int, n: int) -> np.ndarray:
    """float64 (n,): :func:`splitmix_uniform` of counters ``first .. first + n - 1``."""
    out = np.empty(n)
    for k in range(n):
        out[k] = splitmix_uniform(seed, first + k)
    return out
