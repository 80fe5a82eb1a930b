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

Batches travel as a :class:`SparseBatch` (CSR rows of full 64-bit name hashes; a learner
masks them to its own size). :func:`batch_from_dicts` and :func:`batch_from_frame` build
one and add the declared feature crosses, naming every feature exactly as the other does:

>>> import polars as pl
>>> frame = pl.DataFrame({"user": ["u7", "u8"], "category": ["c2", "c2"], "price": [1.5, None]})
>>> a = batch_from_frame(frame, crosses=[("user", "category")])
>>> b = batch_from_dicts([{"user=u7": 1.0, "category=c2": 1.0, "price": 1.5},
...                       {"user=u8": 1.0, "category=c2": 1.0}], crosses=[("user", "category")])
>>> a.indptr.tolist(), a.values.tolist()
([0, 4, 7], [1.0, 1.0, 1.5, 1.0, 1.0, 1.0, 1.0])
>>> sorted(a.hashes[:4].tolist()) == sorted(b.hashes[:4].tolist())
True
>>> cross_names({"user=u7": 1.0, "category=c2": 1.0}, [("user", "category")])
{'user×category=u7|c2': 1.0}
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import polars as pl
import xxhash

__all__ = [
    "MAX_BITS",
    "SparseBatch",
    "batch_from_dicts",
    "batch_from_frame",
    "cross_names",
    "hash_feature",
    "hash_features",
    "hash_names",
]

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


def hash_names(names: Iterable[str]) -> np.ndarray:
    """Full 64-bit XXH3 hashes of ``names``, as the bits of an ``int64`` array.

    ``hash_names(names) & (2**n_bits - 1)`` equals :func:`hash_features` ``(names, n_bits)``.
    """
    return np.fromiter((_xxh3(name.encode("utf-8")) for name in names), dtype=np.uint64).view(
        np.int64
    )


class SparseBatch(NamedTuple):
    """A batch of sparse rows in CSR form: row ``r`` is ``hashes/values[indptr[r]:indptr[r+1]]``.

    ``hashes`` are the full 64-bit XXH3 hashes of the feature names (``int64`` bits), so
    one batch serves learners of any hashed size.
    """

    indptr: np.ndarray  # int64 (n + 1,)
    hashes: np.ndarray  # int64 (nnz,)
    values: np.ndarray  # float64 (nnz,)

    def __len__(self) -> int:
        return len(self.indptr) - 1


Cross = Sequence[str]


def _cross_field(fields: Cross) -> str:
    return "×".join(fields)


def cross_names(x: Mapping[str, float], crosses: Iterable[Cross]) -> dict[str, float]:
    """The cross features of dict ``x``: for each declared cross of fields, one feature per
    combination of the fields' one-hot values (``field=value``) in ``x``, valued by their product.

    A field with several values (``recent_category=c1``, ``recent_category=c2``) crosses with
    each; a cross whose field is absent from ``x`` adds nothing.
    """
    by_field: dict[str, list[tuple[str, float]]] = {}
    for name, value in x.items():
        field, sep, level = name.partition("=")
        if sep:
            by_field.setdefault(field, []).append((level, value))
    out: dict[str, float] = {}
    for fields in crosses:
        prefix = _cross_field(fields) + "="
        for combo in itertools.product(*(by_field.get(f, ()) for f in fields)):
            value = 1.0
            for _, v in combo:
                value *= v
            out[prefix + "|".join(level for level, _ in combo)] = value
    return out


def batch_from_dicts(
    batch: Sequence[Mapping[str, float]], crosses: Iterable[Cross] = ()
) -> SparseBatch:
    """A :class:`SparseBatch` of river-style feature dicts, declared crosses added.

    Raises ``TypeError`` for a name that is not a ``str`` and ``ValueError`` for a value that
    is not a real number (callers turn them into their own error).
    """
    crosses = tuple(crosses)
    lengths = np.empty(len(batch), np.int64)
    names: list[str] = []
    values: list[float] = []
    for r, x in enumerate(batch):
        row = {**x, **cross_names(x, crosses)} if crosses else x
        lengths[r] = len(row)
        names.extend(row)
        values.extend(row.values())
    indptr = np.zeros(len(batch) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    try:
        hashes = hash_names(names)
    except AttributeError:
        bad = next(k for k in names if not isinstance(k, str))
        raise TypeError(f"feature names must be str, got {bad!r}") from None
    array = np.array(values)
    if array.dtype.kind not in "fiu":  # np.array(..., float64) would parse the string "1"
        raise ValueError("feature values must be real numbers")
    return SparseBatch(indptr, hashes, array.astype(np.float64))


def _hash_levels(field: str, column: pl.Series) -> np.ndarray:
    """Hash of ``field=value`` for each row of a string column (nulls → 0, masked out later).

    Each distinct value is hashed once in Python; rows get theirs by a vectorised lookup.
    """
    levels = column.unique(maintain_order=False).drop_nulls()
    codes = hash_names(f"{field}={v}" for v in levels.to_list())
    lookup = pl.Series("h", codes, dtype=pl.Int64)
    return column.replace_strict(levels, lookup, default=0, return_dtype=pl.Int64).to_numpy()


def batch_from_frame(frame: pl.DataFrame, crosses: Iterable[Cross] = ()) -> SparseBatch:
    """A :class:`SparseBatch` of a polars frame: every column is a feature field.

    Float columns are numeric features named by the column; any other column is one-hot,
    ``column=value`` (integers and booleans as an f-string writes them: ``position=3``,
    ``promoted=True``). Nulls are missing features. Each declared cross of one-hot
    columns adds ``a×b=va|vb``. Row ``r`` holds the same features as the dict ``x`` with
    which :func:`batch_from_dicts` would give the same names (order within a row aside).
    """
    crosses = tuple(tuple(c) for c in crosses)
    numeric = {c for c, t in frame.schema.items() if t.is_float()}
    for fields in crosses:
        bad = [f for f in fields if f not in frame.columns or f in numeric]
        if bad:
            raise ValueError(f"cross {_cross_field(fields)}: {', '.join(bad)} is not a "
                             "one-hot column of the frame")
    text = frame.select(
        pl.col(c).replace_strict({True: "True", False: "False"}, return_dtype=pl.String)
        if frame.schema[c] == pl.Boolean else pl.col(c).cast(pl.String)
        for c in frame.columns if c not in numeric
    )
    columns_h: list[np.ndarray] = []
    columns_v: list[np.ndarray] = []
    for c in frame.columns:
        if c in numeric:
            columns_h.append(np.full(len(frame), hash_names([c])[0], np.int64))
            columns_v.append(frame[c].cast(pl.Float64).to_numpy())
        else:
            columns_h.append(_hash_levels(c, text[c]))
            columns_v.append(np.where(text[c].is_null().to_numpy(), np.nan, 1.0))
    for fields in crosses:
        joined = text.select(pl.concat_str([pl.col(f) for f in fields], separator="|"))
        columns_h.append(_hash_levels(_cross_field(fields), joined.to_series()))
        columns_v.append(np.where(joined.to_series().is_null().to_numpy(), np.nan, 1.0))
    if not columns_h:
        return SparseBatch(np.zeros(len(frame) + 1, np.int64), np.zeros(0, np.int64),
                           np.zeros(0, np.float64))
    h = np.column_stack(columns_h)
    v = np.column_stack(columns_v)
    present = ~np.isnan(v)  # a null (or a NaN in a float column) is a missing feature
    indptr = np.zeros(len(frame) + 1, np.int64)
    np.cumsum(present.sum(axis=1), out=indptr[1:])
    return SparseBatch(indptr, h[present], v[present])
