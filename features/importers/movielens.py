"""MovieLens ratings (the 100K ``u.data`` files, or RecBole atomic files) → replay input.

Sources, ``SRC`` being a file or a folder holding one of these:

* MovieLens-100K: ``u.data`` (TAB-separated, no header: user id, item id, rating,
  Unix seconds) and, optional, ``u.item`` next to it (``|``-separated, Latin-1:
  movie id, title, release date, video release date, IMDb url, then 19 genre flags
  0/1 in the order of ``u.genre``: unknown, Action, Adventure, …, Western);
* RecBole atomic files: ``NAME.inter`` (TAB-separated, header of ``field:type``
  names, with ``user_id``, ``item_id``, ``rating`` and ``timestamp``) and, optional,
  ``NAME.item`` next to it (header with ``item_id`` and a genre field — the first
  of ``genre``, ``genres``, ``class``, ``category``, ``categories``; a
  ``token_seq`` field is space-separated).

Mapping:

* every rating is one impression at the rating's time (ms);
* a rating ≥ ``min_rating`` (default 4, ``--min-rating``) is also a click,
  :data:`CLICK_DELAY_MS` (1 s) after the impression;
* a request is one user's ratings in one UTC day: ``request_id`` =
  ``"{user_id}-{YYYYMMDD}"``; ``position`` = the rating's rank within the request
  by time (ties by item id), from 0; ``impression_id`` = ``"{request_id}-{position}"``;
* ``category_id`` = the item's first genre (``u.item``: the first flag set, named
  from ``u.genre`` when present; RecBole: the first token of the genre field),
  ``"unknown"`` when the item has none or there is no item file; no ``context``.

What MovieLens lacks, and what this does about it: **impressions, clicks and
ranked lists**. A rating is an item the user chose to watch and then rated, not
one shown in a list; its "click" is a high rating (satisfaction), and a day's
ratings stand in for a result page. Ratings come in bulk sessions (many in one
second), so positions are mostly a rating order, not a screen layout.

A row with the wrong number of fields, an empty id, or a rating or timestamp that
is not a number (or a negative timestamp) is skipped and counted.
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

__all__ = ["CLICK_DELAY_MS", "DEFAULT_MIN_RATING", "GENRES_100K", "LACKS", "load"]

CLICK_DELAY_MS = 1_000
DEFAULT_MIN_RATING = 4.0
UNKNOWN = "unknown"
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
GENRE_FIELDS = ("genre", "genres", "class", "category", "categories")
LACKS = (
    "movielens lacks impressions, clicks and ranked lists: every rating is an impression, "
    "a rating >= the --min-rating threshold is a click 1 s later, a request is one user's "
    "ratings in one UTC day ranked by time, the category is the item's first genre"
)


def find_sources(src: str | Path) -> tuple[str, Path, Path | None]:
    """``("100k" | "recbole", ratings file, item file or None)``."""
    src = Path(src)
    if src.is_dir():
        inter = sorted(src.glob("*.inter"))
        if (src / "u.data").is_file():
            src = src / "u.data"
        elif len(inter) == 1:
            src = inter[0]
        elif inter:
            raise DatasetError(f"{src}: several .inter files ({', '.join(p.name for p in inter)})"
                               f"; give one")
        else:
            raise DatasetError(f"{src}: no u.data or *.inter file in this folder")
    ratings = require_file(src, "MovieLens ratings: u.data or a RecBole .inter file")
    if ratings.suffix == ".inter":
        item = ratings.with_suffix(".item")
        return "recbole", ratings, item if item.is_file() else None
    item = ratings.with_name("u.item")
    return "100k", ratings, item if item.is_file() else None


def load(src: str | Path, *, min_rating: float = DEFAULT_MIN_RATING) -> ImportResult:
    """Read MovieLens ratings (and item genres) from ``src``; see the module docstring."""
    kind, ratings_path, item_path = find_sources(src)
    skipped = Skipped()
    if kind == "100k":
        ratings = _ratings_100k(ratings_path, skipped)
        items = _items_100k(item_path, skipped) if item_path is not None else None
    else:
        ratings = _ratings_recbole(ratings_path, skipped)
        items = _items_recbole(item_path, skipped) if item_path is not None else None

    if items is not None:
        ratings = ratings.join(items, on="item_id", how="left")
    else:
        ratings = ratings.with_columns(pl.lit(None, pl.String).alias("category_id"))
    notes = {
        "impressions with category \"unknown\" (no genre)"
        if items is not None else "impressions with category \"unknown\" (no item file)":
            ratings["category_id"].null_count(),
    }

    day = pl.from_epoch("ts", time_unit="s").dt.strftime("%Y%m%d")
    shown = (
        ratings.with_columns(
            pl.col("category_id").fill_null(UNKNOWN),
            pl.format("{}-{}", "user_id", day).alias("request_id"),
        )
        .sort("request_id", "ts", "item_id", "line")
        .with_columns(pl.int_range(pl.len()).over("request_id").cast(pl.Int64).alias("position"))
        .with_columns(
            pl.format("{}-{}", "request_id", "position").alias("impression_id"),
            (pl.col("ts") * 1_000).alias("ts"),
        )
    )
    impressions = shown.select(
        "impression_id", "request_id", "user_id", "item_id", "category_id", "position", "ts")
    clicks = shown.filter(pl.col("rating") >= min_rating).select(
        "impression_id", "user_id", (pl.col("ts") + CLICK_DELAY_MS).alias("ts"))
    notes[f"ratings below {min_rating:g} (impressions without a click)"] = (
        impressions.height - clicks.height)
    sources = (ratings_path,) if item_path is None else (ratings_path, item_path)
    lacks = LACKS.replace("the --min-rating threshold", f"{min_rating:g}")
    return ImportResult("movielens", sources, impressions, clicks, skipped, notes, lacks)


def _checked_ratings(frame: pl.DataFrame, path: Path, skipped: Skipped, n_fields: int,
                     names: tuple[str, str, str, str]) -> pl.DataFrame:
    """Rows with ``n_fields`` fields, non-empty ids, a numeric rating and a timestamp >= 0."""
    user, item, rating, ts = names
    frame = frame.with_columns(
        pl.col("rating_text").cast(pl.Float64, strict=False).alias("rating"),
        pl.col("ts_text").cast(pl.Float64, strict=False).alias("ts_float"),
    )
    reason = first_reason(
        (pl.col("_n") != n_fields,
         pl.format(f"expected {n_fields} tab-separated fields, got {{}}", "_n")),
        (pl.col("user_id") == "", f"{user} is empty"),
        (pl.col("item_id") == "", f"{item} is empty"),
        (pl.col("rating").is_null() | pl.col("rating").is_nan(), f"{rating} is not a number"),
        (pl.col("ts_float").is_null() | ~pl.col("ts_float").is_finite(),
         f"{ts} is not a number"),
        (pl.col("ts_float") < 0, f"{ts} is negative"),
    )
    frame = keep_valid(frame, reason, path, skipped)
    return frame.select("line", "user_id", "item_id", "rating",
                        pl.col("ts_float").floor().cast(pl.Int64).alias("ts"))


def _ratings_100k(path: Path, skipped: Skipped) -> pl.DataFrame:
    lines = read_lines(path, skipped=skipped)
    parts = pl.col("text").str.split("\t")
    frame = lines.with_columns(
        parts.list.len().alias("_n"),
        *(parts.list.get(i, null_on_oob=True).str.strip_chars().alias(name)
          for i, name in enumerate(("user_id", "item_id", "rating_text", "ts_text"))),
    )
    return _checked_ratings(frame, path, skipped, 4,
                            ("field 1 (user id)", "field 2 (item id)", "field 3 (rating)",
                             "field 4 (timestamp)"))


def _items_100k(path: Path, skipped: Skipped) -> pl.DataFrame:
    genres = list(GENRES_100K)
    genre_file = path.with_name("u.genre")
    if genre_file.is_file():
        named = (
            read_lines(genre_file, encoding="latin-1")
            .select(pl.col("text").str.split("|").list.get(0).alias("name"),
                    pl.col("text").str.split("|").list.get(1, null_on_oob=True)
                    .str.strip_chars().cast(pl.Int64, strict=False).alias("index"))
            .drop_nulls()
            .sort("index")
        )
        if named.height == len(genres) and named["index"].to_list() == list(range(len(genres))):
            genres = named["name"].to_list()
    lines = read_lines(path, encoding="latin-1", skipped=skipped)
    parts = pl.col("text").str.split("|")
    n = len(genres)
    frame = lines.with_columns(
        parts.list.len().alias("_n"),
        parts.list.first().str.strip_chars().alias("item_id"),
        parts.list.tail(n).alias("flags"),
    )
    frame = keep_valid(
        frame,
        first_reason(
            (pl.col("_n") < 5 + n,
             pl.format(f"expected at least {5 + n} |-separated fields, got {{}}", "_n")),
            (pl.col("item_id") == "", "field 1 (movie id) is empty"),
        ),
        path,
        skipped,
    )
    is_set = pl.col("flags").list.eval((pl.element().str.strip_chars() == "1").cast(pl.Int8))
    return (
        frame.with_columns(
            pl.when(is_set.list.max() == 1).then(is_set.list.arg_max()).alias("_g"))
        .with_columns(
            pl.col("_g").replace_strict(dict(enumerate(genres)), default=None,
                                        return_dtype=pl.String).alias("category_id"))
        .unique("item_id", keep="first", maintain_order=True)
        .select("item_id", "category_id")
    )


def _header(path: Path, lines: pl.DataFrame) -> dict[str, int]:
    """RecBole header ``name:type<TAB>…`` → {name: column index}."""
    header = lines.row(0, named=True)["text"]
    names = [token.split(":", 1)[0].strip() for token in header.split("\t")]
    return {name: i for i, name in reversed(list(enumerate(names)))}


def _ratings_recbole(path: Path, skipped: Skipped) -> pl.DataFrame:
    lines = read_lines(path, skipped=skipped)
    columns = _header(path, lines)
    wanted = ("user_id", "item_id", "rating", "timestamp")
    missing = [name for name in wanted if name not in columns]
    if missing:
        raise DatasetError(f"{path}: line 1: header lacks field(s) {', '.join(missing)} "
                           f"(has {', '.join(columns)})")
    parts = pl.col("text").str.split("\t")
    frame = lines.slice(1).with_columns(
        parts.list.len().alias("_n"),
        *(parts.list.get(columns[name], null_on_oob=True).str.strip_chars().alias(alias)
          for name, alias in zip(wanted, ("user_id", "item_id", "rating_text", "ts_text"),
                                 strict=True)),
    )
    if frame.height == 0:
        raise DatasetError(f"{path}: no rows after the header")
    return _checked_ratings(frame, path, skipped, len(columns), wanted)  # type: ignore[arg-type]


def _items_recbole(path: Path, skipped: Skipped) -> pl.DataFrame:
    lines = read_lines(path, skipped=skipped)
    columns = _header(path, lines)
    if "item_id" not in columns:
        raise DatasetError(f"{path}: line 1: header lacks field item_id "
                           f"(has {', '.join(columns)})")
    genre_field = next((name for name in GENRE_FIELDS if name in columns), None)
    parts = pl.col("text").str.split("\t")
    frame = lines.slice(1).with_columns(
        parts.list.len().alias("_n"),
        parts.list.get(columns["item_id"], null_on_oob=True).str.strip_chars().alias("item_id"),
        (parts.list.get(columns[genre_field], null_on_oob=True).str.extract(r"(\S+)")
         if genre_field is not None else pl.lit(None, pl.String)).alias("category_id"),
    )
    frame = keep_valid(
        frame,
        first_reason(
            (pl.col("_n") < len(columns),
             pl.format(f"expected {len(columns)} tab-separated fields, got {{}}", "_n")),
            (pl.col("item_id") == "", "item_id is empty"),
        ),
        path,
        skipped,
    )
    return frame.unique("item_id", keep="first", maintain_order=True).select(
        "item_id", "category_id")
