"""String ids → dense integers, the form the joiner's compiled state is indexed by.

An :class:`Interner` gives each distinct string an integer code: the most recently
released code if there is one, else the next unused one, so codes stay dense while
keys come and go. The joiner releases the codes of keys it evicts
(:attr:`features.joiner.JoinerConfig.key_ttl_ms`); a released string that comes back
is a new key with a new code. The mapping survives restarts via the joiner's
snapshot. Impression ids are not interned — there is one per impression and they are
only looked up while their window is open — but hashed to 63-bit ints with
:func:`impression_key` (xxh3, stable across processes and versions).

>>> users = Interner()
>>> users.intern("u7"), users.intern("u9"), users.intern("u7")
(0, 1, 0)
>>> users.intern_many(["u9", "u3"]).tolist()
[1, 2]
>>> users.value(2), len(users)
('u3', 3)
>>> users.release([0])
>>> users.code("u7"), len(users), users.bound
(None, 2, 3)
>>> users.intern("u5"), users.intern("u7")  # code 0 is reused; u7 is new again
(0, 3)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import polars as pl
import xxhash

__all__ = ["Interner", "impression_key", "impression_keys"]

_MASK63 = (1 << 63) - 1
_xxh3 = xxhash.xxh3_64_intdigest


def impression_key(impression_id: str) -> int:
    """63-bit key of an impression id (collisions: ~n²/2⁶⁴, 3e-8 at 1M open ids)."""
    return _xxh3(impression_id.encode()) & _MASK63


def impression_keys(ids: Iterable[str]) -> np.ndarray:
    """:func:`impression_key` of each id, as an int64 array."""
    return np.fromiter((_xxh3(i.encode()) & _MASK63 for i in ids), dtype=np.int64)


class Interner:
    """Dense integer codes for strings, with released codes reused (last released first)."""

    def __init__(self, values: Sequence[str] = ()) -> None:
        self._load(list(values), [])

    @classmethod
    def restore(cls, values: Sequence[str], free: Sequence[int]) -> Interner:
        """The interner of a snapshot: ``values`` by code (ignored at the ``free`` codes)
        and the released codes in stack order (:attr:`values`, :attr:`free`)."""
        interner = cls()
        interner._load(list(values), [int(c) for c in free])
        return interner

    def _load(self, values: list[str | None], free: list[int]) -> None:
        for code in free:
            values[code] = None
        self._values = values
        self._codes: dict[str, int] = {v: i for i, v in enumerate(values) if v is not None}
        if len(self._codes) + len(free) != len(values):
            raise ValueError("interner values must be distinct, free codes released once")
        self._free = free  # a stack of released codes
        # The assignment number of each code's current string: a cache indexed by code
        # (features.featurize) tells a reused code from the string it cached for it.
        self._stamps = np.arange(max(len(values), 16), dtype=np.int64)
        self._assigned = len(values)

    def __len__(self) -> int:
        """Strings interned now (released ones not counted)."""
        return len(self._codes)

    @property
    def bound(self) -> int:
        """Every code is below this (released codes included): the size of tables by code."""
        return len(self._values)

    def intern(self, value: str) -> int:
        code = self._codes.get(value)
        if code is None:
            code = self._assign(value)
        return code

    def _assign(self, value: str) -> int:
        if self._free:
            code = self._free.pop()
            self._values[code] = value
        else:
            code = len(self._values)
            self._values.append(value)
            if code == self._stamps.size:
                self._stamps = np.concatenate([self._stamps, np.zeros_like(self._stamps)])
        self._codes[value] = code
        self._stamps[code] = self._assigned
        self._assigned += 1
        return code

    def release(self, codes: Iterable[int]) -> None:
        """Forget the strings of ``codes``; the codes are handed out again by :meth:`intern`."""
        for code in codes:
            value = self._values[code]
            if value is None:
                raise KeyError(f"code {code} is not in use")
            del self._codes[value]
            self._values[code] = None
            self._free.append(int(code))

    def intern_many(self, values: Iterable[str]) -> np.ndarray:
        """:meth:`intern` of each value, in order (the same codes as one call each)."""
        values = values if isinstance(values, list) else list(values)
        get = self._codes.get
        codes = [get(value) for value in values]  # known strings: one dict lookup each
        if None in codes:  # new ones are assigned in order of first appearance
            intern = self.intern
            codes = [intern(value) if code is None else code
                     for value, code in zip(values, codes, strict=True)]
        return np.array(codes, dtype=np.int32)

    def intern_series(self, series: pl.Series) -> np.ndarray:
        """Codes of a string column: one dict operation per distinct value, not per row."""
        distinct = series.unique(maintain_order=True)
        codes = self.intern_many(distinct.to_list())
        lookup = pl.DataFrame({"v": distinct, "code": codes})
        return (
            series.to_frame("v").join(lookup, on="v", how="left", maintain_order="left")["code"]
            .to_numpy()
        )

    def code(self, value: str) -> int | None:
        """The code of ``value``, None if it is not interned."""
        return self._codes.get(value)

    def value(self, code: int) -> str:
        value = self._values[code]
        if value is None:
            raise KeyError(f"code {code} is not in use")
        return value

    def get(self, code: int) -> str | None:
        """The string of ``code``, None if the code is free."""
        return self._values[code]

    @property
    def values(self) -> list[str]:
        """The strings by code, "" at released codes (with :attr:`free`, the snapshot)."""
        return ["" if v is None else v for v in self._values]

    @property
    def free(self) -> list[int]:
        """Released codes not yet reused, in stack order (the last is reused first)."""
        return list(self._free)

    @property
    def stamps(self) -> np.ndarray:
        """int64 (bound,): for each code, the number of the assignment that gave it its
        current string; a code reused for another string gets a new stamp."""
        return self._stamps[: len(self._values)]

    @property
    def assigned(self) -> int:
        """Assignments made so far: a cache of per-code values that saw this count is current."""
        return self._assigned
