"""Public click datasets → replay input folders (``streamctr import``).

One module per source: :mod:`~features.importers.mind`,
:mod:`~features.importers.taobao`, :mod:`~features.importers.yandex`,
:mod:`~features.importers.movielens`. Each reads its files with vectorised polars
expressions and returns an :class:`ImportResult` in the schema of design.md
("Events"); :func:`import_dataset` writes it as ``OUT/impressions.parquet``,
``OUT/clicks.parquet`` and ``OUT/import.json`` (counts, notes, what the source
lacks). Every module's docstring and ``docs/importers.md`` say what its source
lacks and what the importer does about it.

Unreadable or unusable files raise :class:`DatasetError` (a ``ValueError``) with a
one-line reason naming the file and, when possible, the line or field; a
malformed row inside an otherwise good file is skipped and counted instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from features.importers import mind, movielens, taobao, yandex
from features.importers.common import DatasetError, ImportResult, write_replay_input

__all__ = ["DATASETS", "DatasetError", "ImportResult", "ImportSummary", "import_dataset", "load"]

DATASETS = ("mind", "taobao", "yandex", "movielens")


@dataclass(frozen=True)
class ImportSummary:
    """An import written to ``out``: the result and the seconds it took (read + build + write)."""

    result: ImportResult
    out: Path
    seconds: float

    def lines(self) -> list[str]:
        return self.result.summary_lines(self.out, self.seconds)


def load(dataset: str, src: str | Path, *, seed: int = 0,
         list_size: int = taobao.DEFAULT_LIST_SIZE,
         min_rating: float = movielens.DEFAULT_MIN_RATING) -> ImportResult:
    """Read ``src`` as ``dataset``; options a dataset does not use are ignored.

    ``seed`` drives the only random step (Taobao's negatives and positions);
    ``list_size`` is Taobao's shown-list length, ``min_rating`` MovieLens's click
    threshold.
    """
    if dataset == "mind":
        return mind.load(src)
    if dataset == "taobao":
        return taobao.load(src, seed=seed, list_size=list_size)
    if dataset == "yandex":
        return yandex.load(src)
    if dataset == "movielens":
        return movielens.load(src, min_rating=min_rating)
    raise ValueError(f"unknown dataset {dataset!r}; available: {', '.join(DATASETS)}")


def import_dataset(dataset: str, src: str | Path, out: str | Path, *, seed: int = 0,
                   list_size: int = taobao.DEFAULT_LIST_SIZE,
                   min_rating: float = movielens.DEFAULT_MIN_RATING) -> ImportSummary:
    """Read ``src`` as ``dataset`` and write the replay input folder ``out``."""
    started = time.perf_counter()
    result = load(dataset, src, seed=seed, list_size=list_size, min_rating=min_rating)
    out = write_replay_input(result, out)
    return ImportSummary(result, out, time.perf_counter() - started)
