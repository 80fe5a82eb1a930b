"""Alibaba Taobao UserBehavior → replay input, with constructed requests and negatives.

Source: ``UserBehavior.csv`` (CSV, no header: ``user_id,item_id,category_id,
behavior,timestamp``; behavior is ``pv``, ``cart``, ``fav`` or ``buy``;
timestamp in Unix seconds). ``SRC`` is the file or a folder holding
``UserBehavior.csv`` (or one ``*userbehavior*.csv``).

Taobao logs only what users did: every ``pv`` (page view) is a click on an item
the user was shown, and there are **no non-clicked impressions, no requests and
no positions**. This importer builds them, deterministically for a seed:

1. **Clicks.** Only ``pv`` events are used (``cart``, ``fav``, ``buy`` are ignored
   and counted). Events outside the dataset's documented period, 25 Nov–3 Dec
   2017 in China time (UTC+8), are dropped and counted. Repeat views of one item
   by one user inside one request are merged into one click at the first view.
2. **Requests.** A user's views in one fixed 5-minute bucket of Unix time
   (``ts // 300``) form one request. ``request_id`` = ``"{user_id}-{start}"``,
   ``start`` = the first view's timestamp in seconds. Every request has ≥ 1 click.
3. **Negatives** (shown, not clicked). The request is filled up to ``list_size``
   items (default 10: one click + 9 negatives; none when it already has that many
   clicks) with items drawn from the request's **time window** — the clock hour
   (``ts // 3600``) holding its bucket — among items viewed in that hour by
   **another user** (an item only this user viewed there is never a negative),
   never one of the request's own clicked items, no item twice:

   a. first from the items of the request's clicked categories,
   b. then, if still short, from the hour's :data:`POPULAR_POOL` (50) most viewed
      items (ties by item id) outside those categories (already offered in a).

   Inside each stage items are drawn without replacement with probability
   proportional to their views in the hour (Efraimidis–Spirakis keys
   ``-ln(U) / views``, ``U`` from ``numpy.random.default_rng(seed)``). A request
   whose hour lacks candidates stays shorter (counted).
4. **Positions.** The request's items (clicked and sampled) are put in a uniformly
   random order (a second random stream from the same seed): a click is equally
   likely at any position.
5. **Times.** Every impression of a request has ``ts`` = the request's start (its
   first view); a click has the ``ts`` of its view (the first, if repeated), so
   clicks follow their impressions by 0–5 minutes, inside the default 15-minute
   attribution window. ``category_id`` is the item's category (for a sampled item,
   the category of its earliest view in the hour); no ``context``.

Caveats: the negatives are a model of what was shown, not a log of it; their
popularity weighting uses the whole hour's views (the construction looks up to
an hour ahead, the features computed by the replay do not).

A row with the wrong number of fields, an empty id, an unknown behaviour or a
timestamp that is not a non-negative integer is skipped and counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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

__all__ = [
    "BUCKET_S",
    "DEFAULT_LIST_SIZE",
    "LACKS",
    "PERIOD_END_S",
    "PERIOD_START_S",
    "POPULAR_POOL",
    "WINDOW_S",
    "load",
]

BUCKET_S = 300  # one request = one user's views in one 5-minute bucket
WINDOW_S = 3_600  # negatives come from the same clock hour (a multiple of BUCKET_S)
POPULAR_POOL = 50  # fallback candidates: the hour's most viewed items
DEFAULT_LIST_SIZE = 10
PERIOD_START_S = 1_511_539_200  # 2017-11-25 00:00 UTC+8
PERIOD_END_S = 1_512_316_800  # 2017-12-04 00:00 UTC+8 (exclusive)
BEHAVIORS = ("pv", "cart", "fav", "buy")
LACKS = (
    "taobao lacks non-clicked impressions, requests and positions: each user's page views "
    "in a 5-minute bucket form a request, filled up to the list size with negatives "
    "sampled from items other users viewed in the same hour (same categories first, then "
    "the hour's most viewed), in a seeded random order; cart/fav/buy are ignored"
)


def find_source(src: str | Path) -> Path:
    src = Path(src)
    if src.is_dir():
        candidates = [src / "UserBehavior.csv",
                      *sorted(p for p in src.glob("*.csv") if "userbehavior" in p.name.lower())]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DatasetError(f"{src}: no UserBehavior.csv in this folder")
        src = found
    return require_file(src, "Taobao UserBehavior.csv")


def load(src: str | Path, *, seed: int = 0, list_size: int = DEFAULT_LIST_SIZE
         ) -> ImportResult:
    """Read Taobao UserBehavior from ``src`` and build requests; see the module docstring."""
    if list_size < 1:
        raise ValueError(f"list_size must be >= 1, got {list_size}")
    path = find_source(src)
    skipped = Skipped()
    events = _events(path, skipped)
    notes: dict[str, int] = {}

    pv = events.filter(pl.col("behavior") == "pv")
    notes["cart/fav/buy events ignored"] = events.height - pv.height
    in_period = pl.col("ts").is_between(PERIOD_START_S, PERIOD_END_S, closed="left")
    notes["pv events outside 25 Nov-3 Dec 2017 (UTC+8) dropped"] = pv.filter(~in_period).height
    if pv.filter(in_period).height == 0:
        raise DatasetError(f"{path}: no pv event in the dataset's period (25 Nov-3 Dec 2017)")
    codes = [pl.col(c).rank("dense").cast(pl.Int64).alias(a)
             for c, a in (("user_id", "uid"), ("item_id", "iid"), ("category_id", "cid"))]
    pv = (
        pv.filter(in_period)
        .with_columns(*codes, (pl.col("ts") // BUCKET_S).alias("bucket"),
                      (pl.col("ts") // WINDOW_S).alias("hour"))
        .sort("uid", "ts", "iid", "cid")
    )

    # One click per (user, bucket, item), at its first view; requests numbered in order.
    clicks = pv.group_by("uid", "bucket", "iid", maintain_order=True).agg(
        pl.col("user_id", "item_id", "category_id", "cid", "ts", "hour").first())
    notes["repeat views of an item within a request merged"] = pv.height - clicks.height
    requests = (
        clicks.group_by("uid", "bucket", maintain_order=True)
        .agg(pl.col("user_id").first(), pl.col("ts").min().alias("start"),
             pl.col("hour").first(), pl.len().cast(pl.Int64).alias("n_clicks"))
        .with_row_index("req")
        .with_columns(
            pl.col("req").cast(pl.Int64),
            (pl.lit(list_size) - pl.col("n_clicks")).clip(lower_bound=0).alias("n_neg"),
            pl.format("{}-{}", "user_id", "start").alias("request_id"),
        )
    )
    clicks = clicks.join(requests.select("uid", "bucket", "req"), on=["uid", "bucket"])

    negatives = _sample_negatives(pv, clicks, requests, np.random.default_rng(seed))
    short = (
        requests.join(negatives.group_by("req").len(), on="req", how="left")
        .filter(pl.col("n_clicks") + pl.col("len").fill_null(0) < list_size).height
    )
    notes[f"requests shorter than {list_size} items (too few candidates in the hour)"] = short

    shown = (
        pl.concat([
            clicks.select("req", "iid", "item_id", "category_id",
                          pl.col("ts").alias("click_ts")),
            negatives.select("req", "iid", "item_id", "category_id",
                             pl.lit(None, pl.Int64).alias("click_ts")),
        ])
        .join(requests.select("req", "request_id", "user_id", "start"), on="req")
        .sort("req", "iid")
    )
    order = np.random.default_rng([seed, 1]).random(shown.height)
    shown = shown.with_columns(pl.Series("_key", order)).with_columns(
        (pl.col("_key").rank("ordinal").over("req") - 1).cast(pl.Int64).alias("position"),
    ).with_columns(
        pl.format("{}-{}", "request_id", "position").alias("impression_id"),
        (pl.col("start") * 1_000).alias("ts"),
    )
    impressions = shown.select(
        "impression_id", "request_id", "user_id", "item_id", "category_id", "position", "ts")
    click_rows = shown.filter(pl.col("click_ts").is_not_null()).select(
        "impression_id", "user_id", (pl.col("click_ts") * 1_000).alias("ts"))
    return ImportResult("taobao", (path,), impressions, click_rows, skipped, notes, LACKS, seed)


def _events(path: Path, skipped: Skipped) -> pl.DataFrame:
    lines = read_lines(path, skipped=skipped)
    parts = pl.col("text").str.split(",")

    def field(i: int) -> pl.Expr:
        return parts.list.get(i, null_on_oob=True).str.strip_chars()

    frame = lines.with_columns(
        parts.list.len().alias("_n"),
        field(0).alias("user_id"),
        field(1).alias("item_id"),
        field(2).alias("category_id"),
        field(3).alias("behavior"),
        field(4).cast(pl.Int64, strict=False).alias("ts"),
    )
    reason = first_reason(
        (pl.col("_n") != 5, pl.format("expected 5 comma-separated fields, got {}", "_n")),
        (pl.col("user_id") == "", "field 1 (user_id) is empty"),
        (pl.col("item_id") == "", "field 2 (item_id) is empty"),
        (pl.col("category_id") == "", "field 3 (category_id) is empty"),
        (~pl.col("behavior").is_in(BEHAVIORS),
         "field 4 (behavior) is not pv, cart, fav or buy"),
        (pl.col("ts").is_null(), "field 5 (timestamp) is not an integer"),
        (pl.col("ts") < 0, "field 5 (timestamp) is negative"),
    )
    frame = keep_valid(frame, reason, path, skipped)
    return frame.select("line", "user_id", "item_id", "category_id", "behavior", "ts")


def _sample_negatives(pv: pl.DataFrame, clicks: pl.DataFrame, requests: pl.DataFrame,
                      rng: np.random.Generator) -> pl.DataFrame:
    """Per request, up to ``n_neg`` sampled items: columns req, iid, item_id, category_id.

    Works on integer codes (``req`` request, ``uid`` user, ``iid`` item, ``cid``
    category) so the joins and sorts stay cheap; every frame is sorted on unique
    keys before random numbers are drawn for its rows, so a seed fixes the result.
    """
    # The hour's items: views, distinct viewers, and one viewer (to tell "only this user").
    pool = (
        pv.group_by("hour", "iid").agg(
            pl.col("item_id").first(),
            pl.col("category_id", "cid").sort_by("ts", "uid").first(),
            pl.len().alias("views"),
            pl.col("uid").n_unique().alias("viewers"),
            pl.col("uid").first().alias("a_viewer"),
        )
        .sort("hour", "iid")
    )
    wanted = requests.filter(pl.col("n_neg") > 0).select("req", "uid", "hour", "n_neg")
    req_cats = clicks.select("req", "cid").unique()
    own = clicks.select("req", "iid")

    def draw(candidates: pl.DataFrame, need: str) -> pl.DataFrame:
        eligible = (
            candidates.filter((pl.col("viewers") > 1) | (pl.col("a_viewer") != pl.col("uid")))
            .join(own, on=["req", "iid"], how="anti")
            .sort("req", "iid")
        )
        # Weighted sampling without replacement: smallest -ln(U)/views first, U in (0, 1].
        u = 1.0 - rng.random(eligible.height)
        return (
            eligible.with_columns(pl.Series("_key", -np.log(u)))
            .with_columns(pl.col("_key") / pl.col("views"))
            .sort("req", "_key")
            .filter(pl.int_range(pl.len()).over("req") < pl.col(need))
            .select("req", "iid", "item_id", "category_id")
        )

    # a. items of the request's clicked categories
    first = draw(req_cats.join(wanted, on="req").join(pool, on=["hour", "cid"]), "n_neg")
    # b. the hour's most viewed items, for requests still short (no item twice: items
    #    of the clicked categories were already candidates in a.)
    still = (
        wanted.join(first.group_by("req").len(), on="req", how="left")
        .with_columns((pl.col("n_neg") - pl.col("len").fill_null(0)).alias("n_more"))
        .filter(pl.col("n_more") > 0)
    )
    popular = (
        pool.sort("hour", "views", "iid", descending=[False, True, False])
        .group_by("hour", maintain_order=True).head(POPULAR_POOL)
    )
    fallback = (
        still.join(popular, on="hour")
        .join(req_cats, on=["req", "cid"], how="anti")
    )
    second = draw(fallback, "n_more")
    return pl.concat([first, second])
