from __future__ import annotations

import json

import polars as pl
import pytest

from features.events import Click, Impression
from replay.inputs import ReplayInputError, iter_events, read_replay_input


def write(folder, impressions: dict, clicks: dict) -> None:
    folder.mkdir(exist_ok=True)
    pl.DataFrame(impressions).write_parquet(folder / "impressions.parquet")
    pl.DataFrame(clicks).write_parquet(folder / "clicks.parquet")


IMPRESSIONS = {
    "impression_id": ["i1", "i2", "i3"],
    "request_id": ["r1", "r1", "r2"],
    "user_id": ["u1", "u1", "u2"],
    "item_id": ["a", "b", "c"],
    "category_id": ["x", "y", "x"],
    "position": [0, 1, 0],
    "ts": [100, 100, 50],
}
CLICKS = {"impression_id": ["i1", "i3"], "user_id": ["u1", "u2"], "ts": [100, 70]}


def test_events_come_in_event_time_order_impressions_first_on_ties(tmp_path):
    write(tmp_path, IMPRESSIONS, CLICKS)
    events = list(iter_events(read_replay_input(tmp_path)))
    kinds = [(type(e).__name__, e.ts) for e in events]
    assert kinds == [("Impression", 50), ("Click", 70), ("Impression", 100),
                     ("Impression", 100), ("Click", 100)]
    # File order kept among equal times.
    assert [e.impression_id for e in events if isinstance(e, Impression)] == ["i3", "i1", "i2"]


def test_struct_context_becomes_a_string_dict(tmp_path):
    imps = dict(IMPRESSIONS, context=[{"device": "ios", "hour": 3},
                                      {"device": None, "hour": 4},
                                      None])
    write(tmp_path, imps, CLICKS)
    contexts = [e.context for e in iter_events(read_replay_input(tmp_path))
                if isinstance(e, Impression)]
    assert contexts == [{}, {"device": "ios", "hour": "3"}, {"hour": "4"}]


def test_map_context_as_key_value_list_is_accepted(tmp_path):
    imps = dict(IMPRESSIONS, context=[[{"key": "device", "value": "web"}], [], None])
    write(tmp_path, imps, CLICKS)
    first = next(e for e in iter_events(read_replay_input(tmp_path)) if e.ts == 100)
    assert first.context == {"device": "web"}


def test_bad_rows_are_rejected_with_row_and_reason_not_fatal(tmp_path):
    imps = dict(IMPRESSIONS, item_id=["a", None, "c"], position=[0, 1, -2])
    clicks = {"impression_id": ["i1", ""], "user_id": ["u1", "u2"], "ts": [100, 70]}
    write(tmp_path, imps, clicks)
    inp = read_replay_input(tmp_path)
    assert inp.impressions["impression_id"].to_list() == ["i1"]
    assert inp.clicks.height == 1
    rejected = {(r["source"], r["row"]): r["reason"] for r in inp.rejected.iter_rows(named=True)}
    assert rejected == {
        ("impressions", 1): "item_id: missing",
        ("impressions", 2): "position: negative",
        ("clicks", 1): "impression_id: empty",
    }
    record = json.loads(inp.rejected.filter(pl.col("row") == 2)["record"][0])
    assert record["position"] == -2


def test_integer_ids_are_read_as_strings(tmp_path):
    imps = dict(IMPRESSIONS, user_id=[1, 1, 2])
    write(tmp_path, imps, dict(CLICKS, user_id=[1, 2]))
    events = list(iter_events(read_replay_input(tmp_path)))
    assert events[0] == Impression("i3", "r2", "2", "c", "x", 0, 50)
    assert events[1] == Click("i3", "2", 70)


def test_non_integer_position_is_rejected(tmp_path):
    write(tmp_path, dict(IMPRESSIONS, position=["0", "top", "2"]), CLICKS)
    inp = read_replay_input(tmp_path)
    assert inp.rejected["reason"].to_list() == ["position: not an integer"]


def test_missing_file_is_fatal_with_its_path(tmp_path):
    write(tmp_path, IMPRESSIONS, CLICKS)
    (tmp_path / "clicks.parquet").unlink()
    with pytest.raises(ReplayInputError, match=r"clicks\.parquet is missing"):
        read_replay_input(tmp_path)


def test_missing_column_is_fatal_and_named(tmp_path):
    imps = {k: v for k, v in IMPRESSIONS.items() if k != "request_id"}
    write(tmp_path, imps, CLICKS)
    with pytest.raises(ReplayInputError, match=r"lacks column.*request_id"):
        read_replay_input(tmp_path)


def test_unusable_context_type_is_fatal(tmp_path):
    write(tmp_path, dict(IMPRESSIONS, context=[1, 2, 3]), CLICKS)
    with pytest.raises(ReplayInputError, match="context column"):
        read_replay_input(tmp_path)


def test_not_a_parquet_file_is_fatal(tmp_path):
    write(tmp_path, IMPRESSIONS, CLICKS)
    (tmp_path / "impressions.parquet").write_text("hello")
    with pytest.raises(ReplayInputError, match="not a readable Parquet"):
        read_replay_input(tmp_path)


def test_folder_that_does_not_exist_is_fatal(tmp_path):
    with pytest.raises(ReplayInputError, match="is not a folder"):
        read_replay_input(tmp_path / "nope")
