"""Shared parts of the dataset importers: the error, line reading, bad-row accounting, output.

Every importer reads its source as a column of text lines (one polars ``String``
row per line, numbered from 1), splits and checks them with vectorised
expressions, and hands back an :class:`ImportResult` with frames in the replay
input schema (design.md, "Events"). A row that fails a check is skipped and
counted with its line number and reason; a file that cannot be read, has no rows,
or has no valid row at all raises :class:`DatasetError`.

>>> frame = pl.DataFrame({"line": [1, 2], "text": ["a\\tb", "c"]})
>>> skipped = Skipped()
>>> keep_valid(frame, first_reason((pl.col("text").str.count_matches("\\t") != 1,
...                                 "expected 2 tab-separated fields")),
...            Path("x.tsv"), skipped)["line"].to_list()
[1]
>>> skipped.count, skipped.examples
(1, ['x.tsv: line 2: expected 2 tab-separated fields'])
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

__all__ = [
    "CLICK_SCHEMA",
    "IMPRESSION_SCHEMA",
    "DatasetError",
    "ImportResult",
    "Skipped",
    "first_reason",
    "keep_valid",
    "read_lines",
    "read_text",
    "require_file",
    "write_replay_input",
]

log = logging.getLogger(__name__)

IMPRESSION_SCHEMA: dict[str, pl.DataType] = {
    "impression_id": pl.String(),
    "request_id": pl.String(),
    "user_id": pl.String(),
    "item_id": pl.String(),
    "category_id": pl.String(),
    "position": pl.Int64(),
    "ts": pl.Int64(),
}
CLICK_SCHEMA: dict[str, pl.DataType] = {
    "impression_id": pl.String(),
    "user_id": pl.String(),
    "ts": pl.Int64(),
}

_EXAMPLES = 5  # malformed rows quoted (file, line, reason) in the summary and log


class DatasetError(ValueError):
    """A source file that cannot be imported; the message names the file (and line/field)."""


@dataclass
class Skipped:
    """Malformed rows skipped so far: how many, and the first few as ``file: line N: reason``."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, path: Path, bad: pl.DataFrame) -> None:
        """Count the rows of ``bad`` (columns ``line`` and ``_reason``)."""
        self.count += bad.height
        room = _EXAMPLES - len(self.examples)
        for line, reason in bad.select("line", "_reason").head(max(room, 0)).iter_rows():
            self.examples.append(f"{path}: line {line}: {reason}")


@dataclass(frozen=True)
class ImportResult:
    """What an importer produced, in the replay input schema, and what it had to do."""

    dataset: str
    sources: tuple[Path, ...]
    impressions: pl.DataFrame
    clicks: pl.DataFrame
    skipped: Skipped
    notes: dict[str, int]  # documented, expected drops and defaults: what → how many rows
    lacks: str  # one line: what the source lacks and what the importer does about it
    seed: int | None = None

    def summary_lines(self, out: Path | None = None, seconds: float | None = None) -> list[str]:
        """The lines ``streamctr import`` prints; the last one is :attr:`lacks`."""
        where = f" to {out}" if out is not None else ""
        took = f" in {seconds:.2f} s" if seconds is not None else ""
        lines = [
            f"wrote {self.impressions.height:,} impressions and {self.clicks.height:,} clicks"
            f"{where}{took}; {self.skipped.count:,} malformed row(s) skipped"
        ]
        lines += [f"  skipped: {example}" for example in self.skipped.examples]
        lines += [f"  {what}: {n:,}" for what, n in self.notes.items()]
        lines.append(self.lacks)
        return lines


def require_file(path: Path, what: str) -> Path:
    """``path`` when it is a readable file, else :class:`DatasetError` naming it."""
    if not path.exists():
        raise DatasetError(f"{path}: no such file ({what})")
    if not path.is_file():
        raise DatasetError(f"{path}: not a file ({what})")
    return path


def read_text(path: Path, encoding: str = "utf-8") -> tuple[str, bool]:
    """The whole file as text, and whether it decoded cleanly.

    Bytes that are not valid ``encoding`` become U+FFFD; the caller skips the rows
    holding them (see :func:`read_lines`), so one bad byte costs one row, not the file.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not data.strip():
        raise DatasetError(f"{path}: the file is empty")
    try:
        return data.decode(encoding), True
    except UnicodeDecodeError:
        return data.decode(encoding, errors="replace"), False


def read_lines(path: Path, encoding: str = "utf-8", skipped: Skipped | None = None
               ) -> pl.DataFrame:
    """Non-blank lines of ``path`` as columns ``line`` (1-based Int64) and ``text``.

    Line ends ``\\n`` and ``\\r\\n`` are both accepted. With ``skipped``, lines that
    are not valid ``encoding`` are counted there and left out.
    """
    text, clean = read_text(path, encoding)
    lines = (
        pl.DataFrame({"text": [text]})
        .select(pl.col("text").str.split("\n"))
        .explode("text")
        .with_row_index("line", offset=1)
        .with_columns(pl.col("line").cast(pl.Int64), pl.col("text").str.strip_suffix("\r"))
        .filter(pl.col("text").str.strip_chars().str.len_bytes() > 0)
    )
    if not clean and skipped is not None:
        lines = keep_valid(
            lines,
            first_reason((pl.col("text").str.contains("\ufffd", literal=True),
                          f"not valid {encoding} text")),
            path,
            skipped,
        )
    return lines


def first_reason(*checks: tuple[pl.Expr, str | pl.Expr]) -> pl.Expr:
    """The message (a string, or a String expression) of the first check that holds, else null."""
    return pl.coalesce([
        pl.when(cond).then(pl.lit(msg) if isinstance(msg, str) else msg) for cond, msg in checks
    ])


def keep_valid(frame: pl.DataFrame, reason: pl.Expr, path: Path,
               skipped: Skipped) -> pl.DataFrame:
    """Rows of ``frame`` whose ``reason`` is null; the others are counted in ``skipped``.

    ``frame`` needs a ``line`` column. When no row is valid the file is not the
    expected format: :class:`DatasetError` with the first bad line and its reason.
    """
    checked = frame.with_columns(reason.alias("_reason"))
    bad = checked.filter(pl.col("_reason").is_not_null())
    if bad.height == 0:
        return frame
    good = checked.filter(pl.col("_reason").is_null()).drop("_reason")
    if good.height == 0:
        line, why = bad.select("line", "_reason").row(0)
        raise DatasetError(f"{path}: line {line}: {why} (and no valid row in the file)")
    before = len(skipped.examples)
    skipped.add(path, bad)
    for example in skipped.examples[before:]:
        log.warning("skipped malformed row: %s", example)
    return good


def write_replay_input(result: ImportResult, out: str | Path,
                       extra: dict[str, object] | None = None) -> Path:
    """Write ``out/impressions.parquet``, ``out/clicks.parquet`` and ``out/import.json``.

    Columns are exactly design.md's, in its order, with its types; ``context`` is
    written only when the result has one (a Struct of strings). Rows are sorted by
    event time (then request and position), so the files are byte-stable for a seed.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    impressions = _conform(result.impressions, IMPRESSION_SCHEMA, context=True).sort(
        "ts", "request_id", "position")
    clicks = _conform(result.clicks, CLICK_SCHEMA, context=False).sort("ts", "impression_id")
    impressions.write_parquet(out / "impressions.parquet")
    clicks.write_parquet(out / "clicks.parquet")
    meta = {
        "dataset": result.dataset,
        "sources": [str(p) for p in result.sources],
        "seed": result.seed,
        "impressions": impressions.height,
        "clicks": clicks.height,
        "malformed_rows_skipped": result.skipped.count,
        "malformed_examples": result.skipped.examples,
        "notes": result.notes,
        "lacks": result.lacks,
        **(extra or {}),
    }
    (out / "import.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _conform(frame: pl.DataFrame, schema: dict[str, pl.DataType], *, context: bool
             ) -> pl.DataFrame:
    columns: Sequence[pl.Expr] = [pl.col(name).cast(dtype) for name, dtype in schema.items()]
    if context and "context" in frame.columns:
        dtype = frame.schema["context"]
        if not isinstance(dtype, pl.Struct):
            raise TypeError(f"context must be a Struct, not {dtype}")
        columns = [*columns, pl.col("context").cast(
            pl.Struct({f.name: pl.String() for f in dtype.fields}))]
    return frame.select(columns)
