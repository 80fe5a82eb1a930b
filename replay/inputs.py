"""Replay input folders (impressions + clicks Parquet): validated, in event-time order.

Column types are checked per column, records per row. A folder that lacks a file
or a required column is not a replay input (:class:`ReplayInputError`); a bad
record (null or empty field, a value that is not an integer, a negative position
or time) is rejected with its row number and reason and the replay goes on.

Id columns stored as integers are accepted and read as their decimal strings,
because several public datasets ship them that way. ``context`` may be a Struct
or a Map (a List of ``{key, value}`` structs); values are read as strings and
null entries are left out.

Events come out ordered by event time; on equal times impressions come before
clicks, and otherwise file order is kept. ``streamctr produce`` publishes each
topic in the same order, so the service sees the same sequence per partition.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from features.events import CLICK_FIELDS, IMPRESSION_FIELDS, Click, Impression

__all__ = [
    "REJECTED_SCHEMA",
    "ReplayInput",
    "ReplayInputError",
    "iter_events",
    "read_replay_input",
]

_INT_FIELDS = frozenset({"position", "ts"})
REJECTED_SCHEMA = {"source": pl.Utf8, "row": pl.Int64, "reason": pl.Utf8, "record": pl.Utf8}


class ReplayInputError(ValueError):
    """The folder is not a replay input (missing file, unreadable file, missing column)."""


@dataclass(frozen=True)
class ReplayInput:
    """Validated rows of a replay folder, sorted by event time, and the rejected ones.

    ``name`` says where the rows came from when that is not a folder (a topic range).
    """

    impressions: pl.DataFrame
    clicks: pl.DataFrame
    rejected: pl.DataFrame
    name: str | None = None

    @property
    def n_events(self) -> int:
        return self.impressions.height + self.clicks.height


def read_replay_input(folder: str | Path) -> ReplayInput:
    """Read and validate ``folder/impressions.parquet`` and ``folder/clicks.parquet``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReplayInputError(f"{folder} is not a folder")
    impressions, rejected_imp = _validated(folder, "impressions", IMPRESSION_FIELDS)
    clicks, rejected_clk = _validated(folder, "clicks", CLICK_FIELDS)
    rejected = pl.concat([rejected_imp, rejected_clk])
    return ReplayInput(impressions, clicks, rejected)


def _validated(
    folder: Path, source: str, fields: tuple[str, ...]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    path = folder / f"{source}.parquet"
    if not path.is_file():
        raise ReplayInputError(f"{path} is missing")
    try:
        raw = pl.read_parquet(path)
    except Exception as exc:  # polars raises several unrelated classes for bad files
        raise ReplayInputError(f"{path} is not a readable Parquet file: {exc}") from None
    required = [f for f in fields if f != "context"]
    missing = [f for f in required if f not in raw.columns]
    if missing:
        raise ReplayInputError(f"{path} lacks column(s) {', '.join(missing)}")
    if "context" in fields and "context" in raw.columns:
        _context_reader(raw.schema["context"])  # fails early on an unusable context type
    raw = raw.with_row_index("_row")
    casts = []
    reasons = []
    for name in required:
        if name in _INT_FIELDS:
            value = pl.col(name).cast(pl.Int64, strict=False)
            bad = (
                pl.when(pl.col(name).is_null())
                .then(pl.lit(f"{name}: missing"))
                .when(value.is_null())
                .then(pl.lit(f"{name}: not an integer"))
                .when(value < 0)
                .then(pl.lit(f"{name}: negative"))
            )
        else:
            value = pl.col(name).cast(pl.Utf8, strict=False)
            bad = (
                pl.when(pl.col(name).is_null())
                .then(pl.lit(f"{name}: missing"))
                .when(value.is_null())
                .then(pl.lit(f"{name}: not a string"))
                .when(value.str.len_bytes() == 0)
                .then(pl.lit(f"{name}: empty"))
            )
        casts.append(value.alias(name))
        reasons.append(bad)
    # All reasons of a row joined; a row with none has an empty string, made null here.
    joined = pl.concat_str(reasons, separator="; ", ignore_nulls=True)
    checked = raw.with_columns(
        pl.when(joined == "").then(None).otherwise(joined).alias("_reason")
    )
    bad_rows = checked.filter(pl.col("_reason").is_not_null())
    rejected = bad_rows.select(
        pl.lit(source).alias("source"),
        pl.col("_row").cast(pl.Int64).alias("row"),
        pl.col("_reason").alias("reason"),
        pl.struct(pl.exclude("_row", "_reason")).struct.json_encode().alias("record"),
    )
    keep = ["_row", *casts]
    if "context" in fields and "context" in raw.columns:
        keep.append(pl.col("context"))
    good = (
        checked.filter(pl.col("_reason").is_null())
        .select(keep)
        .sort("ts", maintain_order=True)
        .drop("_row")
    )
    return good, rejected.cast(REJECTED_SCHEMA)  # type: ignore[arg-type]


def iter_events(inp: ReplayInput) -> Iterator[Impression | Click]:
    """All events in event-time order; impressions before clicks at equal times."""
    impressions = _iter_impressions(inp.impressions)
    clicks = (Click(*row) for row in inp.clicks.select(CLICK_FIELDS).iter_rows())
    keyed_imp = ((e.ts, 0, e) for e in impressions)
    keyed_clk = ((e.ts, 1, e) for e in clicks)
    # heapq.merge is stable across equal keys of one input, so file order is kept.
    for _, _, event in heapq.merge(keyed_imp, keyed_clk, key=lambda k: (k[0], k[1])):
        yield event


def _iter_impressions(frame: pl.DataFrame) -> Iterator[Impression]:
    base = [f for f in IMPRESSION_FIELDS if f != "context"]
    if "context" not in frame.columns:
        for row in frame.select(base).iter_rows():
            yield Impression(*row)
        return
    to_dict = _context_reader(frame.schema["context"])
    for row in frame.select([*base, "context"]).iter_rows():
        yield Impression(*row[:-1], to_dict(row[-1]))


def _context_reader(dtype: pl.DataType) -> Callable[[Any], dict[str, str]]:
    if isinstance(dtype, pl.Struct):
        return lambda v: {} if v is None else {k: str(x) for k, x in v.items() if x is not None}
    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
        names = {f.name for f in dtype.inner.fields}
        if {"key", "value"} <= names:
            return lambda v: (
                {}
                if v is None
                else {str(kv["key"]): str(kv["value"]) for kv in v if kv["value"] is not None}
            )
    raise ReplayInputError(
        f"context column must be a Struct or a List of {{key, value}} structs, not {dtype}"
    )
