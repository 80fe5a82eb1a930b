"""Yandex WSCD click log (relevance-prediction sample) → replay input.

Source: one text file of records separated by ``;`` (line breaks between records
are ignored), each ``queryid_region<TAB>url1,url2,…,url10 : clicked_url , clicked_url``:
the query (id and region), the ten ranked result urls, and the clicked urls in
click order (nothing after ``:`` when nothing was clicked). ``SRC`` is that file.

Mapping:

* one record = one request, ``request_id`` = ``"r{n}"``, ``n`` the 0-based record
  number in the file; the urls are the items at positions 0, 1, … in the given
  (ranked, displayed) order; ``impression_id`` = ``"r{n}-{position}"``;
* ``category_id`` = the query id (``"98435"`` for ``98435_1``);
* ``context`` = ``{"region": region}`` (``"1"`` for ``98435_1``).

What WSCD lacks, and what this does about it:

* **user ids** — there are none: ``user_id`` = ``"q{query id}"``, so every result
  page of a query belongs to one pseudo-user and per-user metrics (GAUC) become
  per-query metrics; user-sequence features become "what was clicked for this query";
* **categories** — the query id is the closest thing to a topic, hence the category;
* **timestamps** — none: record ``n`` is shown at ``EPOCH_MS + n × 1 s``
  (``EPOCH_MS`` = 2011-01-01T00:00:00Z), the ``k``-th click of the record
  (``k`` = 1, 2, …, in the listed click order) at the record's time + ``k`` s. Record
  order is thus the stream's order; as records are 1 s apart, a record's later
  clicks fall after the next records' impressions (the same query's next page may
  be shown before this one's clicks are known, as with a real lag);
* **one label per shown item** — a url clicked again in the same record keeps its
  first click only (the repeats are counted, not written), and a click on a url
  that is not among the record's results is dropped (counted).

A record without a tab or ``:``, with an empty or malformed query field, or with
an empty url in either list is skipped and counted (reported with its record
number and line).
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
    read_text,
    require_file,
)

__all__ = ["EPOCH_MS", "LACKS", "RECORD_GAP_MS", "load"]

EPOCH_MS = 1_293_840_000_000  # 2011-01-01T00:00:00Z
RECORD_GAP_MS = 1_000  # record n at EPOCH_MS + n s; its k-th click k s later
LACKS = (
    "yandex lacks timestamps, user ids and categories: records are placed 1 s apart from "
    "2011-01-01 UTC with the k-th click k s after its record, user_id = \"q<query id>\" "
    "(per-user metrics become per-query), category = the query id, the region is context; "
    "repeat clicks and clicks on urls not shown are dropped"
)

_RECORD = r"(?s)^(\S*)\t([^:]*):(.*)$"
_LIST = r"^\s*[^,\s]+(\s*,\s*[^,\s]+)*\s*$"
_QUERY = r"^([^\s_]+)_([^\s_]+)$"


def load(src: str | Path) -> ImportResult:
    """Read a WSCD click-log file; see the module docstring."""
    src = Path(src)
    if src.is_dir():
        raise DatasetError(f"{src}: is a folder; give the click-log file (e.g. *_train.txt)")
    path = require_file(src, "Yandex WSCD click log")
    skipped = Skipped()
    text, clean = read_text(path)

    raw = (
        pl.DataFrame({"text": [text]})
        .select(pl.col("text").str.split(";"))
        .explode("text")
        # the line a record starts on: 1 + line breaks before it (its own leading ones too)
        .with_columns(
            (1 + pl.col("text").str.count_matches("\n").cum_sum().shift(1, fill_value=0)
             + pl.col("text").str.extract(r"^(\s*)").str.count_matches("\n"))
            .cast(pl.Int64).alias("line"),
            pl.col("text").str.strip_chars(),
        )
        .filter(pl.col("text").str.len_bytes() > 0)
        .with_row_index("record")
        .with_columns(pl.col("record").cast(pl.Int64))
    )
    parts = pl.col("text").str.extract_groups(_RECORD)
    frame = raw.with_columns(
        parts.struct.field("1").alias("query_field"),
        parts.struct.field("2").alias("urls"),
        parts.struct.field("3").alias("clicked"),
    ).with_columns(
        pl.col("query_field").str.extract(_QUERY, 1).alias("query"),
        pl.col("query_field").str.extract(_QUERY, 2).alias("region"),
    )
    where = pl.format("record {}: ", "record")
    checks = [
        (pl.col("urls").is_null(), "expected QUERY_REGION<TAB>URL,... : CLICKED,..."),
        (pl.col("query").is_null(), "query field is not QUERYID_REGION"),
        (~pl.col("urls").str.contains(_LIST), "result list has an empty url"),
        (~pl.col("clicked").str.contains(_LIST)
         & (pl.col("clicked").str.strip_chars() != ""), "click list has an empty url"),
    ]
    if not clean:
        checks.insert(0, (pl.col("text").str.contains("\ufffd", literal=True),
                          "not valid utf-8 text"))
    reason = first_reason(*((cond, pl.concat_str(where, pl.lit(msg))) for cond, msg in checks))
    frame = keep_valid(frame, reason, path, skipped)

    requests = frame.select(
        pl.format("r{}", "record").alias("request_id"),
        pl.format("q{}", "query").alias("user_id"),
        pl.col("query").alias("category_id"),
        "region",
        (EPOCH_MS + pl.col("record") * RECORD_GAP_MS).alias("ts"),
        pl.col("urls").str.extract_all(r"[^,\s]+").alias("urls"),
        pl.col("clicked").str.extract_all(r"[^,\s]+").alias("clicked"),
    )
    shown = (
        requests.select(
            "request_id", "user_id", "category_id", "region", "ts",
            pl.col("urls").alias("item_id"),
            pl.int_ranges(pl.col("urls").list.len()).alias("position"),
        )
        .explode("item_id", "position")
        .with_columns(
            pl.col("position").cast(pl.Int64),
            pl.format("{}-{}", "request_id", "position").alias("impression_id"),
            pl.struct(pl.col("region")).alias("context"),
        )
    )
    impressions = shown.select(
        "impression_id", "request_id", "user_id", "item_id", "category_id", "position", "ts",
        "context")

    clicked = (
        requests.select(
            "request_id", "user_id", "ts",
            pl.col("clicked").alias("item_id"),
            pl.int_ranges(1, pl.col("clicked").list.len() + 1).alias("order"),
        )
        .explode("item_id", "order")
        .filter(pl.col("item_id").is_not_null())
    )
    # A url listed twice in one result list takes its clicks at its first position.
    first_position = (
        shown.group_by("request_id", "item_id")
        .agg(pl.col("position").min(), pl.col("impression_id").sort_by("position").first())
    )
    attributed = clicked.join(first_position, on=["request_id", "item_id"], how="left")
    not_shown = attributed["impression_id"].null_count()
    attributed = attributed.filter(pl.col("impression_id").is_not_null())
    first_clicks = attributed.sort("request_id", "order").unique(
        "impression_id", keep="first", maintain_order=True)
    clicks = first_clicks.select(
        "impression_id", "user_id",
        (pl.col("ts") + pl.col("order") * RECORD_GAP_MS).alias("ts"))
    notes = {
        "clicks on a url not among the record's results dropped": not_shown,
        "repeat clicks on the same url in a record dropped": attributed.height - clicks.height,
    }
    return ImportResult("yandex", (path,), impressions, clicks, skipped, notes, LACKS)
