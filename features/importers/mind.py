"""Microsoft MIND (news recommendation) → replay input.

Source: ``behaviors.tsv`` (TSV, no header: impression id, user id, time
``M/D/YYYY h:mm:ss AM|PM``, click history, impression list ``Nxxx-1 Nyyy-0 …``)
and, optionally, ``news.tsv`` next to it (news id, category, subcategory, …).
``SRC`` is the behaviors file or a folder holding ``behaviors.tsv``; the news
table is the file named like the behaviors file with ``behaviors`` replaced by
``news`` (``mind_small_news.tsv`` for ``mind_small_behaviors.tsv``), else
``news.tsv`` in the same folder.

Mapping:

* one behaviors row = one request: ``request_id`` = the impression log id,
  ``user_id`` as given, ``ts`` = the time read as UTC, in ms;
* the impression list gives the shown items at positions 0, 1, … in list order;
  ``impression_id`` = ``"{request_id}-{position}"``;
* label 1 = a click on that impression;
* ``category_id`` = the news category from the news table, ``"unknown"`` for news
  ids the table does not hold; no ``context``.

What MIND lacks, and what this does about it:

* **click times** — a click is placed :data:`CLICK_DELAY_MS` (1 s) after its request;
* **display order** — MIND does not document the impression list as the order on
  screen; positions follow it anyway, so position effects learnt here are
  effects of list order, whatever that was;
* **categories for most items** — the slice's news table covers ~3% of the shown
  items; the rest get ``"unknown"`` (counted in the summary);
* **times of the click history** — the history column holds earlier clicks
  without times; no events are invented for it (it is ignored).

Rows are not in time order in the file; the replay sorts by event time. A row
with the wrong number of fields, an empty id, a bad time, a malformed
impression list or a request id seen on an earlier line is skipped and counted.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from features.importers.common import (
    DatasetError,
    ImportResult,
    Skipped,
    first_reason,
    keep_valid,
    read_lines,
    require_file,
)

__all__ = ["CLICK_DELAY_MS", "LACKS", "load"]

CLICK_DELAY_MS = 1_000
UNKNOWN = "unknown"
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
LACKS = (
    "mind lacks click times, a documented display order, categories for most items and "
    "times of the click history: clicks are placed 1 s after their request, positions "
    "follow the impression-list order, items not in news.tsv get category \"unknown\", "
    "and the history column is ignored"
)

_IMPRESSION_LIST = r"^\S+-[01](\s+\S+-[01])*$"


def find_sources(src: str | Path) -> tuple[Path, Path | None]:
    """The behaviors file and the news file next to it (``None`` when there is none)."""
    src = Path(src)
    if src.is_dir():
        candidates = [src / "behaviors.tsv", *sorted(src.glob("*behaviors*.tsv"))]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DatasetError(f"{src}: no behaviors.tsv (or *behaviors*.tsv) in this folder")
        src = found
    behaviors = require_file(src, "MIND behaviors.tsv")
    named = behaviors.with_name(behaviors.name.replace("behaviors", "news"))
    for news in (named, behaviors.with_name("news.tsv")):
        if news != behaviors and news.is_file():
            return behaviors, news
    return behaviors, None


def load(src: str | Path) -> ImportResult:
    """Read MIND behaviors (and news) from ``src``; see the module docstring."""
    behaviors_path, news_path = find_sources(src)
    skipped = Skipped()
    requests = _requests(behaviors_path, skipped)

    shown = (
        requests.select(
            "request_id", "user_id", "ts",
            pl.col("impressions").str.extract_all(r"\S+").alias("token"),
        )
        .with_columns(pl.int_ranges(pl.col("token").list.len()).alias("position"))
        .explode("token", "position")
        .with_columns(
            pl.col("token").str.head(-2).alias("item_id"),
            (pl.col("token").str.tail(1) == "1").alias("clicked"),
            pl.col("position").cast(pl.Int64),
        )
        .with_columns(
            pl.format("{}-{}", "request_id", "position").alias("impression_id"),
        )
    )
    notes: dict[str, int] = {}
    if news_path is not None:
        news = _news(news_path, skipped)
        shown = shown.join(news, on="item_id", how="left")
    else:
        shown = shown.with_columns(pl.lit(None, pl.String).alias("category_id"))
    unknown = shown["category_id"].null_count()
    shown = shown.with_columns(pl.col("category_id").fill_null(UNKNOWN))
    if news_path is None:
        notes["impressions with category \"unknown\" (no news.tsv found)"] = unknown
    else:
        notes[f"impressions with category \"unknown\" (news id not in {news_path.name})"] = unknown

    impressions = shown.select(
        "impression_id", "request_id", "user_id", "item_id", "category_id", "position", "ts")
    clicks = shown.filter("clicked").select(
        "impression_id", "user_id", (pl.col("ts") + CLICK_DELAY_MS).alias("ts"))
    notes["history clicks ignored (they have no times)"] = int(requests["history"].sum())
    sources = (behaviors_path,) if news_path is None else (behaviors_path, news_path)
    return ImportResult("mind", sources, impressions, clicks, skipped, notes, LACKS)


def _requests(path: Path, skipped: Skipped) -> pl.DataFrame:
    lines = read_lines(path, skipped=skipped)
    parts = pl.col("text").str.split("\t")
    frame = lines.with_columns(
        parts.list.len().alias("_n"),
        parts.list.get(0, null_on_oob=True).str.strip_chars().alias("request_id"),
        parts.list.get(1, null_on_oob=True).str.strip_chars().alias("user_id"),
        parts.list.get(2, null_on_oob=True).str.strip_chars().alias("time"),
        parts.list.get(3, null_on_oob=True).str.count_matches(r"\S+").alias("history"),
        parts.list.get(4, null_on_oob=True).str.strip_chars().alias("impressions"),
    ).with_columns(
        pl.col("time").str.strptime(pl.Datetime("ms", "UTC"), TIME_FORMAT, strict=False)
        .dt.epoch("ms").alias("ts"),
    )
    reason = first_reason(
        (pl.col("_n") != 5,
         pl.format("expected 5 tab-separated fields, got {}", "_n")),
        (pl.col("request_id") == "", "field 1 (impression id) is empty"),
        (pl.col("user_id") == "", "field 2 (user id) is empty"),
        (pl.col("ts").is_null(), "field 3 (time) is not M/D/YYYY h:mm:ss AM|PM"),
        (pl.col("impressions") == "", "field 5 (impressions) is empty"),
        (~pl.col("impressions").str.contains(_IMPRESSION_LIST),
         "field 5 (impressions) is not a list of NEWSID-0/NEWSID-1"),
    )
    frame = keep_valid(frame, reason, path, skipped)
    # A request id seen on an earlier line would give duplicate impression ids.
    frame = keep_valid(
        frame,
        first_reason((~pl.col("request_id").is_first_distinct(),
                      "field 1 (impression id) repeats an earlier line")),
        path,
        skipped,
    )
    return frame.select("request_id", "user_id", "ts", "impressions", "history")


def _news(path: Path, skipped: Skipped) -> pl.DataFrame:
    lines = read_lines(path, skipped=skipped)
    parts = pl.col("text").str.split("\t")
    frame = lines.with_columns(
        parts.list.get(0, null_on_oob=True).str.strip_chars().alias("item_id"),
        parts.list.get(1, null_on_oob=True).str.strip_chars().alias("category_id"),
    )
    frame = keep_valid(
        frame,
        first_reason(
            (pl.col("category_id").is_null(), "expected at least 2 tab-separated fields"),
            (pl.col("item_id") == "", "field 1 (news id) is empty"),
            (pl.col("category_id") == "", "field 2 (category) is empty"),
        ),
        path,
        skipped,
    )
    return frame.unique("item_id", keep="first", maintain_order=True).select(
        "item_id", "category_id")
