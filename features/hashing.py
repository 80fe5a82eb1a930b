"""Stable hashing of feature names into a fixed-size index space (the "hashing trick").

Python's built-in ``hash()`` of a ``str`` is salted per process (``PYTHONHASHSEED``), so a
model checkpointed by one process would be read with different indices by the next. We use
XXH3-64 of the UTF-8 bytes instead: deterministic across processes, runs, machines and
library versions (XXH3's output is frozen by its specification), and fast (~100 ns a name).

>>> hash_feature("user=u7", 20)
292093
>>> hash_feature("user×category=u7|c2", 20)
74755
>>> hash_features(["user=u7", "item=it3"], 20).tolist()
[292093, 1030055]
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xxhash

__all__ = ["MAX_BITS", "hash_feature", "hash_features"]

# 2**30 float64 slots is 8 GiB per state array: more than any learner here should allocate,
# and it keeps every index a non-negative int that fits comfortably in int64 / C int.
MAX_BITS = 30

_xxh3 = xxhash.xxh3_64_intdigest


def _check_bits(n_bits: int) -> int:
    if isinstance(n_bits, bool) or not isinstance(n_bits, int | np.integer):
        raise TypeError(f"n_bits must be an int, got {type(n_bits).__name__}")
    if not 1 <= n_bits <= MAX_BITS:
        raise ValueError(f"n_bits must be in [1, {MAX_BITS}], got {n_bits}")
    return int(n_bits)


def hash_feature(name: str, n_bits: int) -> int:
    """Index in ``[0, 2**n_bits)`` of feature ``name``, identical in every process.

    The low ``n_bits`` bits of XXH3-64 are as well mixed as the high ones, so masking is a
    uniform bucketing (no modulo bias since the bucket count is a power of two).
    """
    return _xxh3(name.encode("utf-8")) & ((1 << _check_bits(n_bits)) - 1)


def hash_features(names: Iterable[str], n_bits: int) -> np.ndarray:
    """Vectorised :func:`hash_feature`: an ``int64`` array of the indices of ``names``."""
    mask = (1 << _check_bits(n_bits)) - 1
    return np.fromiter((_xxh3(name.encode("utf-8")) & mask for name in names), dtype=np.int64)
