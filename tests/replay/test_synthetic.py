from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from replay.synthetic import SyntheticConfig, SyntheticStream, generate, write_stream

N_EVENTS = 50_000
LATE_MS = 15 * 60 * 1000

IMPRESSION_SCHEMA = {
    "impression_id": pl.String,
    "request_id": pl.String,
    "user_id": pl.String,
    "item_id": pl.String,
    "category_id": pl.String,
    "position": pl.Int64,
    "ts": pl.Int64,
    "context": pl.Struct({"device": pl.String, "page": pl.String}),
}
CLICK_SCHEMA = {"impression_id": pl.String, "user_id": pl.String, "ts": pl.Int64}
TRUTH_SCHEMA = {"impression_id": pl.String, "p_click": pl.Float64, "clicked": pl.Boolean,
                "relevance": pl.Float64}


@pytest.fixture(scope="module")
def stream() -> SyntheticStream:
    return generate(N_EVENTS, seed=11)


@pytest.fixture(scope="module")
def labelled(stream: SyntheticStream) -> pl.DataFrame:
    """Distinct impressions with their true p and label."""
    first = stream.impressions.unique("impression_id", keep="first", maintain_order=True)
    return first.join(stream.truth, on="impression_id", how="inner")


@pytest.fixture(scope="module")
def click_delays(stream: SyntheticStream) -> pl.DataFrame:
    """Clicks with their impression's ts (null for orphans)."""
    imp_ts = stream.impressions.unique("impression_id").select(
        "impression_id", pl.col("ts").alias("imp_ts")
    )
    return stream.clicks.join(imp_ts, on="impression_id", how="left")


def rank_auc(y: np.ndarray, p: np.ndarray) -> float:
    ranks = pl.Series(p).rank("average").to_numpy()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def n_out_of_order(ts: pl.Series) -> int:
    values = ts.to_numpy()
    return int((values[1:] < np.maximum.accumulate(values)[:-1]).sum())


def test_same_seed_gives_identical_frames(stream):
    again = generate(N_EVENTS, seed=11)
    assert_frame_equal(stream.impressions, again.impressions)
    assert_frame_equal(stream.clicks, again.clicks)
    assert_frame_equal(stream.truth, again.truth)


def test_different_seed_gives_different_frames(stream):
    other = generate(N_EVENTS, seed=12)
    assert not other.impressions.equals(stream.impressions)
    assert not other.truth.equals(stream.truth)


def test_schema_is_the_design_contract(stream):
    assert dict(stream.impressions.schema) == IMPRESSION_SCHEMA
    assert dict(stream.clicks.schema) == CLICK_SCHEMA
    assert dict(stream.truth.schema) == TRUTH_SCHEMA
    assert stream.impressions.null_count().sum_horizontal().item() == 0
    assert stream.clicks.null_count().sum_horizontal().item() == 0


def test_event_count_is_close_to_request(stream):
    assert N_EVENTS - 100 < stream.n_events <= N_EVENTS
    assert generate(1, seed=0).impressions.height == SyntheticConfig().list_length


def test_truth_has_one_row_per_distinct_impression(stream):
    assert stream.truth["impression_id"].is_unique().all()
    assert set(stream.truth["impression_id"]) == set(stream.impressions["impression_id"])
    assert stream.truth["p_click"].is_between(0.0, 1.0, closed="none").all()


def test_lists_are_ranked_and_hold_distinct_items(labelled):
    length = SyntheticConfig().list_length
    per_request = labelled.group_by("request_id").agg(
        pl.len(), pl.col("item_id").n_unique().alias("items"), pl.col("position").sort(),
        pl.col("user_id").n_unique().alias("users"), pl.col("ts").n_unique().alias("times"),
    )
    assert (per_request["len"] == length).all()
    assert (per_request["items"] == length).all()
    assert (per_request["users"] == 1).all() and (per_request["times"] == 1).all()
    assert per_request["position"].to_list()[0] == list(range(length))


def test_ctr_is_in_target_band(labelled, stream):
    ctr = labelled["clicked"].mean()
    assert 0.03 <= ctr <= 0.08
    # The labels are draws from the true probabilities.
    assert abs(stream.truth["p_click"].mean() - ctr) < 0.005


def test_position_bias_is_visible(labelled):
    ctr = labelled.group_by("position").agg(pl.col("clicked").mean()).sort("position")
    by_pos = ctr["clicked"].to_list()
    assert by_pos[0] > 2 * by_pos[-1]
    assert by_pos[0] > by_pos[4] > by_pos[9]


def test_page_effects_are_visible(labelled):
    by_page = labelled.group_by(pl.col("context").struct.field("page")).agg(
        pl.col("clicked").mean().alias("ctr"), pl.col("p_click").mean().alias("p"))
    ctr = {page: c for page, c, _ in by_page.iter_rows()}
    p = {page: m for page, _, m in by_page.iter_rows()}
    assert set(ctr) == set(SyntheticConfig().pages)
    assert ctr["search"] > ctr["detail"]
    assert p["search"] > p["feed"] > p["detail"]


def test_hour_is_not_a_context_field(stream):
    assert stream.impressions["context"].struct.fields == ["device", "page"]


def test_true_probability_is_predictive(stream):
    y = stream.truth["clicked"].to_numpy()
    p = stream.truth["p_click"].to_numpy()
    assert rank_auc(y, p) > 0.6


def test_click_follows_its_impression(click_delays):
    joined = click_delays.filter(pl.col("imp_ts").is_not_null())
    assert (joined["ts"] > joined["imp_ts"]).all()


def test_clicks_match_truth_labels(stream, click_delays):
    clicked = set(stream.truth.filter("clicked")["impression_id"])
    joined = set(click_delays.filter(pl.col("imp_ts").is_not_null())["impression_id"])
    assert joined == clicked


def test_some_clicks_are_later_than_fifteen_minutes(click_delays):
    delay = (click_delays["ts"] - click_delays["imp_ts"]).drop_nulls()
    late = (delay > LATE_MS).mean()
    assert 0.005 < late < 0.1
    assert 10_000 < delay.median() < 120_000


def test_a_few_clicks_are_orphans(click_delays, stream):
    orphans = click_delays["imp_ts"].null_count()
    assert 1 <= orphans <= 0.01 * stream.clicks.height


def test_some_rows_are_exact_duplicates(stream):
    imp, clk = stream.impressions, stream.clicks
    dup_imp = imp.height - imp["impression_id"].n_unique()
    dup_clk = clk.height - clk["impression_id"].n_unique()
    assert 0.001 * imp.height < dup_imp < 0.02 * imp.height
    assert 0.005 * clk.height < dup_clk < 0.05 * clk.height
    # Copies are exact: deduplicating whole rows leaves one row per id.
    assert imp.unique().height == imp["impression_id"].n_unique()
    assert clk.unique().height == clk["impression_id"].n_unique()


def test_some_rows_are_out_of_order(stream):
    imp_late = n_out_of_order(stream.impressions["ts"])
    clk_late = n_out_of_order(stream.clicks["ts"])
    assert 0.002 * stream.impressions.height < imp_late < 0.05 * stream.impressions.height
    assert 0 < clk_late < 0.05 * stream.clicks.height


def test_request_times_do_not_decrease(labelled):
    ts = labelled.group_by("request_id").agg(pl.col("ts").first()).sort("request_id")["ts"]
    assert (ts.diff().drop_nulls() >= 0).all()


def test_write_stream_round_trips(stream, tmp_path):
    out = tmp_path / "nested" / "data"
    write_stream(stream, out)
    assert_frame_equal(pl.read_parquet(out / "impressions.parquet"), stream.impressions)
    assert_frame_equal(pl.read_parquet(out / "clicks.parquet"), stream.clicks)
    assert_frame_equal(pl.read_parquet(out / "truth.parquet"), stream.truth)


def test_tiny_catalogue_still_gives_distinct_lists():
    cfg = SyntheticConfig(n_users=3, n_items=10, n_categories=2, list_length=10)
    s = generate(2_000, seed=5, config=cfg)
    per_request = s.impressions.group_by("request_id").agg(pl.col("item_id").n_unique())
    assert (per_request["item_id"] == 10).all()


@pytest.mark.parametrize("n_events", [0, -5, 2.5, True, "100"])
def test_bad_event_count_raises(n_events):
    with pytest.raises(ValueError, match="n_events"):
        generate(n_events)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_users", 0),
        ("n_items", 5),  # fewer than n_categories
        ("list_length", 0),
        ("mean_gap_ms", -1.0),
        ("duplicate_click_rate", 1.5),
        ("out_of_order_rate", float("nan")),
        ("position_decay", -0.1),
        ("device_weights", (1.0, 1.0)),
        ("devices", ()),
        ("page_weights", (1.0,)),
        ("page_effects", (0.0, float("inf"), 0.0)),
        ("pages", ("feed", "feed", "detail")),
        ("page_weights", (0.5, -0.1, 0.6)),
        ("n_categories", 2.5),
        ("peak_hour", 24),
    ],
)
def test_bad_config_raises(field, value):
    with pytest.raises(ValueError, match=r"\S"):
        SyntheticConfig(**{field: value})


def test_bad_seed_and_config_raise():
    with pytest.raises(ValueError, match="seed"):
        generate(100, seed=-1)
    with pytest.raises(ValueError, match="config"):
        generate(100, config={"n_users": 10})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stream"):
        write_stream("not a stream", "/tmp")  # type: ignore[arg-type]
