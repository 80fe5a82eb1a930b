"""Small compiled helpers shared by the joiner's state: typed containers ↔ arrays.

Numba's typed ``Dict`` and ``List`` hold the joiner's hash indexes and heaps; these
functions move them to and from plain arrays for snapshots (no pickle).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import types
from numba.typed import Dict, List

__all__ = [
    "dict_arrays",
    "empty_heap",
    "fill_dict",
    "fill_heap",
    "get_or",
    "heap_array",
    "new_dict",
]


def new_dict() -> Dict:
    """An empty int64 → int64 typed dict."""
    return Dict.empty(types.int64, types.int64)


def empty_heap(width: int) -> List:
    """An empty typed list of ``width``-tuples of int64, used with ``heapq``."""
    return List.empty_list(types.UniTuple(types.int64, width))


@nb.njit(cache=True)
def get_or(d: Dict, key: int, default: int) -> int:
    """``d.get(key, default)`` without numba's Optional result type."""
    if key in d:
        return d[key]
    return default


@nb.njit(cache=True)
def dict_arrays(d: Dict) -> tuple[np.ndarray, np.ndarray]:
    keys = np.empty(len(d), np.int64)
    values = np.empty(len(d), np.int64)
    for i, (k, v) in enumerate(d.items()):
        keys[i] = k
        values[i] = v
    return keys, values


@nb.njit(cache=True)
def fill_dict(d: Dict, keys: np.ndarray, values: np.ndarray) -> None:
    for i in range(keys.size):
        d[keys[i]] = values[i]


def heap_array(heap: List, width: int) -> np.ndarray:
    """The heap's ``width``-tuples as rows of an int64 array, in heap order."""
    return np.array(list(heap), dtype=np.int64).reshape(len(heap), width)


def fill_heap(heap: List, rows: np.ndarray) -> None:
    """Append rows made by :func:`heap_array` (already in heap order)."""
    for row in rows.tolist():
        heap.append(tuple(row))
