"""``streamctr import``: public datasets → replay input folders (features.importers).

Fixtures are tiny hand-written files in each source format under
``tests/features/fixtures/``, each with at least one malformed row. Tests on the
real slices in ``../shared/datasets/`` are skipped when those files are absent.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.importers import DatasetError, import_dataset, load
from features.importers import taobao as taobao_module
from features.importers import yandex as yandex_module
from pipeline.cli import main
from replay.inputs import read_replay_input

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"

IMPRESSION_SCHEMA = {
    "impression_id": pl.String, "request_id": pl.String, "user_id": pl.String,
    "item_id": pl.String, "category_id": pl.String, "position": pl.Int64, "ts": pl.Int64,
}
CLICK_SCHEMA = {"impression_id": pl.String, "user_id": pl.String, "ts": pl.Int64}

CASES = {  # dataset, source, expected (impressions, clicks, malformed rows)
    "mind": ("mind", FIXTURES / "mind", (7, 3, 2)),
    "taobao": ("taobao", FIXTURES / "taobao" / "UserBehavior.csv", (None, 11, 2)),
    "yandex": ("yandex", FIXTURES / "yandex" / "wscd.txt", (40, 4, 1)),
    "movielens-100k": ("movielens", FIXTURES / "movielens_100k", (5, 3, 1)),
    "movielens-recbole": ("movielens", FIXTURES / "movielens_recbole" / "ml.inter", (3, 2, 1)),
}


def _by_id(frame: pl.DataFrame, key: str = "impression_id") -> dict[str, dict]:
    return {row[key]: row for row in frame.iter_rows(named=True)}


def _check_replay_folder(out: Path, n_impressions: int, n_clicks: int) -> None:
    """Exactly design.md's columns and types; the replay reader rejects nothing."""
    imp = pl.read_parquet(out / "impressions.parquet")
    clk = pl.read_parquet(out / "clicks.parquet")
    base = {k: v for k, v in imp.schema.items() if k != "context"}
    assert base == IMPRESSION_SCHEMA
    assert list(imp.columns[:7]) == list(IMPRESSION_SCHEMA)
    if "context" in imp.columns:
        dtype = imp.schema["context"]
        assert isinstance(dtype, pl.Struct)
        assert all(f.dtype == pl.String for f in dtype.fields)
    assert dict(clk.schema) == CLICK_SCHEMA
    inp = read_replay_input(out)
    assert inp.rejected.height == 0
    assert (inp.impressions.height, inp.clicks.height) == (n_impressions, n_clicks)
    # Every click is on a written impression of the same user, at or after it.
    assert imp["impression_id"].is_unique().all()
    joined = clk.join(imp, on="impression_id", how="left", suffix="_imp")
    assert joined["user_id_imp"].null_count() == 0
    assert (joined["user_id"] == joined["user_id_imp"]).all()
    assert (joined["ts"] >= joined["ts_imp"]).all()
    # Positions are 0..n-1 within every request.
    per_request = imp.group_by("request_id").agg(
        pl.col("position").sort().alias("p"), pl.len().alias("n"))
    for positions, n in per_request.select("p", "n").iter_rows():
        assert positions == list(range(n))


# --- every importer -------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_import_writes_exact_replay_schema_with_no_rejected_rows(case, tmp_path):
    dataset, src, (n_imp, n_clk, _) = CASES[case]
    summary = import_dataset(dataset, src, tmp_path / "out")
    result = summary.result
    if n_imp is not None:
        assert result.impressions.height == n_imp
    assert result.clicks.height == n_clk
    _check_replay_folder(summary.out, result.impressions.height, n_clk)
    assert (summary.out / "import.json").is_file()


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_rows_are_skipped_and_counted(case):
    dataset, src, (_, _, n_bad) = CASES[case]
    result = load(dataset, src)
    assert result.skipped.count == n_bad
    assert result.skipped.examples and all(": line " in e for e in result.skipped.examples)


@pytest.mark.parametrize("dataset", ["mind", "taobao", "yandex", "movielens"])
def test_missing_source_raises_dataset_error_naming_the_path(dataset, tmp_path):
    missing = tmp_path / "nope" / "data.txt"
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        load(dataset, missing)


@pytest.mark.parametrize("dataset", ["mind", "taobao", "yandex", "movielens"])
def test_file_without_any_valid_row_raises_dataset_error_naming_line_1(dataset, tmp_path):
    bad = tmp_path / "data.inter" if dataset == "movielens" else tmp_path / "data.txt"
    if dataset == "movielens":
        bad.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\n")
        line = "line 2"
    else:
        bad.write_text("this is not the format\n")
        line = "line 1"
    with pytest.raises(DatasetError) as err:
        load(dataset, bad)
    assert str(bad) in str(err.value) and line in str(err.value)
    assert "\n" not in str(err.value)


def test_empty_file_is_a_dataset_error(tmp_path):
    empty = tmp_path / "behaviors.tsv"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="empty"):
        load("mind", empty)


def test_cli_import_exits_2_with_one_line_on_a_missing_source(tmp_path, capsys):
    missing = tmp_path / "missing.csv"
    assert main(["import", "taobao", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(missing) in err


def test_cli_import_prints_counts_and_what_the_source_lacks(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["import", "yandex", str(FIXTURES / "yandex" / "wscd.txt"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("wrote 40 impressions and 4 clicks")
    assert "1 malformed row(s) skipped" in printed[0]
    assert printed[-1] == yandex_module.LACKS
    _check_replay_folder(out, 40, 4)


# --- MIND -----------------------------------------------------------------------------------


def test_mind_requests_positions_times_categories_and_clicks():
    result = load("mind", FIXTURES / "mind" / "behaviors.tsv")
    imp = _by_id(result.impressions)
    assert set(imp) == {"1-0", "1-1", "1-2", "2-0", "2-1", "2-2", "4-0"}
    first = imp["1-1"]
    assert (first["request_id"], first["user_id"], first["item_id"], first["position"]) == (
        "1", "U1", "N2", 1)
    assert first["ts"] == 1_573_293_475_000  # 11/9/2019 9:57:55 AM UTC
    assert imp["2-0"]["ts"] == 1_573_387_265_000  # 11/10/2019 12:01:05 PM
    assert imp["4-0"]["ts"] == 1_573_432_200_000  # 11/11/2019 12:30:00 AM is 00:30
    # categories from news.tsv, "unknown" for news ids it lacks
    assert [imp[i]["category_id"] for i in ("1-0", "1-1", "1-2", "2-1")] == [
        "sports", "news", "unknown", "unknown"]
    clicks = _by_id(result.clicks)
    assert set(clicks) == {"1-1", "2-1", "2-2"}
    assert clicks["1-1"]["ts"] == first["ts"] + 1_000
    assert clicks["2-2"]["user_id"] == "U2"
    reasons = " | ".join(result.skipped.examples)
    assert "line 3: field 5" in reasons and "line 5: field 3 (time)" in reasons


def test_mind_without_news_table_uses_unknown(tmp_path):
    shutil.copy(FIXTURES / "mind" / "behaviors.tsv", tmp_path / "behaviors.tsv")
    result = load("mind", tmp_path)
    assert set(result.impressions["category_id"]) == {"unknown"}
    assert len(result.sources) == 1


def test_mind_repeated_request_id_is_skipped(tmp_path):
    text = (FIXTURES / "mind" / "behaviors.tsv").read_text()
    first_line = text.splitlines()[0]
    (tmp_path / "behaviors.tsv").write_text(text + first_line + "\n")
    result = load("mind", tmp_path / "behaviors.tsv")
    assert result.skipped.count == 3
    assert any("repeats an earlier line" in e for e in result.skipped.examples)
    assert result.impressions["impression_id"].is_unique().all()


# --- Taobao ---------------------------------------------------------------------------------

H = 1_511_600_400  # 2017-11-25 09:00 UTC, the fixture's first hour


def _taobao_source_views(path: Path) -> pl.DataFrame:
    """The valid pv events of a Taobao file (user, item, hour), read independently."""
    frame = pl.read_csv(path, has_header=False, new_columns=["u", "i", "c", "b", "ts"],
                        schema_overrides={"u": pl.String, "i": pl.String, "c": pl.String},
                        truncate_ragged_lines=True, ignore_errors=True)
    return (
        frame.filter(pl.col("b") == "pv", pl.col("ts").is_not_null())
        .select(pl.col("u").alias("user_id"), pl.col("i").alias("item_id"),
                (pl.col("ts") // 3600).alias("hour"))
        .unique()
    )


def _check_taobao_construction(result, source: Path, list_size: int) -> None:
    imp = result.impressions
    clicked = imp.join(result.clicks.select("impression_id", pl.lit(True).alias("clicked")),
                       on="impression_id", how="left").with_columns(
        pl.col("clicked").fill_null(False))
    per_request = clicked.group_by("request_id").agg(
        pl.col("clicked").sum().alias("clicks"), pl.len().alias("n"),
        pl.col("ts").n_unique().alias("times"))
    # every request has a click, one start time, and at most max(list_size, clicks) items
    assert per_request["clicks"].min() >= 1
    assert per_request["times"].max() == 1
    assert (per_request["n"] <= np.maximum(list_size, per_request["clicks"].to_numpy())).all()
    # the request's items are distinct: a clicked item is never also a sampled negative
    assert clicked.select("request_id", "item_id").is_unique().all()
    # negatives were viewed in the request's hour by another user
    negatives = clicked.filter(~pl.col("clicked")).with_columns(
        (pl.col("ts") // 3_600_000).alias("hour"))
    views = _taobao_source_views(source)
    other = negatives.join(views.rename({"user_id": "viewer"}), on=["item_id", "hour"]).filter(
        pl.col("viewer") != pl.col("user_id"))
    assert other["impression_id"].n_unique() == negatives.height
    # clicks come 0-5 minutes after their impressions
    delay = result.clicks.join(imp, on="impression_id", suffix="_imp").select(
        pl.col("ts") - pl.col("ts_imp"))
    assert delay.to_series().min() >= 0 and delay.to_series().max() < 300_000


def test_taobao_requests_clicks_and_sampled_negatives():
    src = FIXTURES / "taobao" / "UserBehavior.csv"
    result = load("taobao", src, seed=7)
    _check_taobao_construction(result, src, list_size=10)
    imp = result.impressions
    # user 1's first request: views of 100 (at H+10, again at H+80) and 101 (H+70)
    first = imp.filter(pl.col("request_id") == f"1-{H + 10}")
    assert (first["ts"] == (H + 10) * 1_000).all()
    items = set(first["item_id"])
    # 103: other user, same category; 104-106: the hour's popular items. Not 120 (only
    # user 1 viewed it), not 102 (cart), not 107+ (next hour)
    assert items == {"100", "101", "103", "104", "105", "106"}
    clicks = result.clicks.join(first, on="impression_id")
    assert sorted(zip(clicks["item_id"], clicks["ts"], strict=True)) == [
        ("100", (H + 10) * 1_000), ("101", (H + 70) * 1_000)]
    # user 2's request may include 120 (only user 1 viewed it, but that is another user)
    second = set(imp.filter(pl.col("request_id") == f"2-{H + 20}")["item_id"])
    assert second == {"103", "104", "100", "101", "120", "105", "106"}
    assert result.notes["cart/fav/buy events ignored"] == 1
    assert result.notes["pv events outside 25 Nov-3 Dec 2017 (UTC+8) dropped"] == 1
    assert result.notes["repeat views of an item within a request merged"] == 1


def test_taobao_same_category_items_are_sampled_first():
    result = load("taobao", FIXTURES / "taobao", list_size=3)
    first = result.impressions.filter(pl.col("request_id") == f"1-{H + 10}")
    assert set(first["item_id"]) == {"100", "101", "103"}


def test_taobao_request_with_more_clicks_than_list_size_gets_no_negatives():
    result = load("taobao", FIXTURES / "taobao", list_size=1)
    assert result.impressions.height == result.clicks.height == 11
    _check_taobao_construction(result, FIXTURES / "taobao" / "UserBehavior.csv", list_size=1)


def _random_taobao(path: Path, seed: int = 0, n: int = 3_000) -> Path:
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 60, n)
    items = rng.zipf(1.5, n) % 400
    ts = H + np.sort(rng.integers(0, 6 * 3600, n))
    lines = [f"{u},{i},{i % 23},pv,{t}" for u, i, t in zip(users, items, ts, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_taobao_construction_holds_on_a_larger_random_log(tmp_path):
    src = _random_taobao(tmp_path / "UserBehavior.csv")
    result = load("taobao", src, seed=3, list_size=8)
    _check_taobao_construction(result, src, list_size=8)
    # positions are a random order: clicks are not all at position 0
    clicked_positions = result.clicks.join(result.impressions, on="impression_id")["position"]
    assert clicked_positions.n_unique() > 3


def test_taobao_is_deterministic_for_a_seed(tmp_path):
    src = _random_taobao(tmp_path / "UserBehavior.csv")
    a = import_dataset("taobao", src, tmp_path / "a", seed=11)
    b = import_dataset("taobao", src, tmp_path / "b", seed=11)
    c = import_dataset("taobao", src, tmp_path / "c", seed=12)
    for name in ("impressions.parquet", "clicks.parquet"):
        assert (a.out / name).read_bytes() == (b.out / name).read_bytes()
    assert not a.result.impressions.sort("impression_id").equals(
        c.result.impressions.sort("impression_id"))


def test_taobao_list_size_must_be_positive():
    with pytest.raises(ValueError, match="list_size"):
        taobao_module.load(FIXTURES / "taobao", list_size=0)


# --- Yandex ---------------------------------------------------------------------------------


def test_yandex_records_positions_synthetic_times_and_clicks():
    result = load("yandex", FIXTURES / "yandex" / "wscd.txt")
    imp = _by_id(result.impressions)
    epoch = yandex_module.EPOCH_MS
    r0 = imp["r0-1"]
    assert (r0["request_id"], r0["user_id"], r0["item_id"], r0["category_id"],
            r0["position"], r0["ts"], r0["context"]) == (
        "r0", "q100", "u2", "100", 1, epoch, {"region": "1"})
    assert imp["r2-9"]["item_id"] == "a10" and imp["r2-9"]["ts"] == epoch + 2_000
    assert imp["r4-0"]["ts"] == epoch + 4_000  # record 3 was malformed; numbering keeps it
    assert not any(i.startswith("r3-") for i in imp)
    clicks = {(r["impression_id"], r["ts"]) for r in result.clicks.iter_rows(named=True)}
    # r0: u2 (1st click), u5 (2nd); the repeat u2 is dropped. r2: a9; zz was not shown.
    assert clicks == {("r0-1", epoch + 1_000), ("r0-4", epoch + 2_000),
                      ("r2-8", epoch + 3_000), ("r4-0", epoch + 5_000)}
    assert result.notes["repeat clicks on the same url in a record dropped"] == 1
    assert result.notes["clicks on a url not among the record's results dropped"] == 1
    assert result.skipped.examples == [
        f"{FIXTURES / 'yandex' / 'wscd.txt'}: line 2: record 3: "
        "expected QUERY_REGION<TAB>URL,... : CLICKED,..."]


def test_yandex_folder_source_is_a_dataset_error():
    with pytest.raises(DatasetError, match="folder"):
        load("yandex", FIXTURES / "yandex")


# --- MovieLens ------------------------------------------------------------------------------


def test_movielens_100k_requests_by_user_day_and_rating_clicks():
    result = load("movielens", FIXTURES / "movielens_100k" / "u.data")
    imp = _by_id(result.impressions)
    assert set(imp) == {"1-19970922-0", "1-19970922-1", "1-19970924-0", "2-19970922-0",
                        "2-19971204-0"}
    assert imp["1-19970922-1"]["item_id"] == "11"
    assert imp["1-19970922-1"]["ts"] == 874_965_760_000
    # first genre flag set (Latin-1 u.item read); no flag or no row: "unknown"
    assert [imp[i]["category_id"] for i in ("1-19970922-0", "1-19970922-1", "1-19970924-0",
                                            "2-19971204-0")] == [
        "Action", "Comedy", "unknown", "unknown"]
    clicks = _by_id(result.clicks)
    assert set(clicks) == {"1-19970922-0", "1-19970924-0", "2-19970922-0"}  # ratings >= 4
    assert clicks["1-19970922-0"]["ts"] == 874_965_758_000 + 1_000


def test_movielens_min_rating_option():
    result = load("movielens", FIXTURES / "movielens_100k", min_rating=5)
    assert result.clicks["impression_id"].to_list() == ["1-19970922-0"]
    assert "5 is a click" in result.lacks


def test_movielens_recbole_atomic_files():
    result = load("movielens", FIXTURES / "movielens_recbole")
    imp = _by_id(result.impressions)
    assert set(imp) == {"1-19970922-0", "1-19970922-1", "2-19970922-0"}
    assert imp["1-19970922-0"]["category_id"] == "Action"
    assert imp["1-19970922-1"]["category_id"] == "Comedy"
    assert set(result.clicks["impression_id"]) == {"1-19970922-0", "2-19970922-0"}  # 5, 4.5
    assert any("line 4: rating is not a number" in e for e in result.skipped.examples)


def test_movielens_recbole_header_without_a_field_names_it(tmp_path):
    bad = tmp_path / "x.inter"
    bad.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n")
    with pytest.raises(DatasetError, match=r"header lacks field.*rating"):
        load("movielens", bad)


# --- the real slices (skipped on a fresh clone) ----------------------------------------------

REAL = {
    "mind": SHARED / "mind_small_behaviors.tsv",
    "taobao": SHARED / "taobao_userbehavior.csv",
    "yandex": SHARED / "yandex_wscd_train.txt",
}


@pytest.mark.parametrize("dataset", [
    pytest.param(name, marks=pytest.mark.skipif(not path.is_file(), reason=f"no {path}"))
    for name, path in REAL.items()
])
def test_real_slice_imports_and_reads_back_cleanly(dataset, tmp_path):
    src = REAL[dataset]
    summary = import_dataset(dataset, src, tmp_path / dataset)
    assert summary.seconds < 30
    result = summary.result
    _check_replay_folder(summary.out, result.impressions.height, result.clicks.height)
    if dataset == "mind":
        assert (result.impressions.height, result.clicks.height) == (189_359, 7_542)
    if dataset == "taobao":
        _check_taobao_construction(result, src, list_size=10)


@pytest.mark.skipif(not REAL["taobao"].is_file(), reason="no ../shared/datasets")
def test_real_taobao_is_deterministic_for_a_seed():
    a = load("taobao", REAL["taobao"], seed=5)
    b = load("taobao", REAL["taobao"], seed=5)
    assert a.impressions.equals(b.impressions) and a.clicks.equals(b.clicks)
