"""Replay input from a topic range (replay/kafka_input.py), against a real broker."""

from __future__ import annotations

import json
import threading
import time

import polars as pl
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from features.events import Click, Impression, encode_event
from features.joiner import JoinerConfig
from pipeline.broker import free_port
from pipeline.cli import main
from pipeline.produce import produce_folder
from pipeline.service import Topics
from replay.inputs import ReplayInputError, read_replay_input
from replay.kafka_input import (
    BrokerUnreachableError,
    TopicRangeError,
    format_time_ms,
    parse_time_ms,
    read_topic_range,
)
from replay.run import run_replay

WINDOW_MS = 30_000  # short enough that labels become final inside the small stream
JOINER = JoinerConfig(window_ms=WINDOW_MS)


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    from replay.synthetic import generate, write_stream

    folder = tmp_path_factory.mktemp("stream")
    write_stream(generate(6000, seed=11), folder)
    return folder


@pytest.fixture
def produced(stream, kafka_bootstrap, kafka_topics):
    """The stream published to fresh topics, as ``streamctr produce`` does."""
    topics = Topics(kafka_topics["impressions"], kafka_topics["clicks"])
    produce_folder(stream, kafka_bootstrap, topics=topics, show_progress=False)
    return kafka_topics


def read(bootstrap, topics, from_ms=None, to_ms=None, **kw):
    return read_topic_range(bootstrap, from_ms, to_ms, impressions_topic=topics["impressions"],
                            clicks_topic=topics["clicks"], window_ms=WINDOW_MS,
                            show_progress=False, **kw)


def without_timing(learners: dict) -> dict:
    return {name: {k: v for k, v in m.items() if k != "throughput_eps"}
            for name, m in learners.items()}


def assert_same_replay(a, b) -> None:
    assert without_timing(a.learners) == without_timing(b.learners)  # NaN != NaN would fail too
    assert a.events == b.events
    assert a.outcomes.equals(b.outcomes)


# --- what is read ---------------------------------------------------------------------------


@pytest.mark.integration
def test_a_whole_topic_range_reads_back_the_folder_exactly(produced, stream, kafka_bootstrap):
    folder = read_replay_input(stream)
    inp = read(kafka_bootstrap, produced)
    assert inp.impressions.schema == folder.impressions.schema
    assert inp.clicks.schema == folder.clicks.schema
    assert inp.rejected.schema == folder.rejected.schema
    assert "context" in inp.impressions.columns  # the synthetic stream has context
    # Same rows in the same order (the folder's stable event-time sort).
    assert inp.impressions.equals(folder.impressions)
    assert inp.clicks.equals(folder.clicks)
    assert inp.rejected.is_empty()
    assert inp.name.startswith(f"{produced['impressions']}+{produced['clicks']}@{kafka_bootstrap} "
                               "[1970-01-01T00:00:00Z, ")


@pytest.mark.integration
def test_replay_of_the_topic_range_is_bit_identical_to_the_folder_replay(
        produced, stream, kafka_bootstrap):
    from_folder = run_replay(stream, ["ftrl", "gbdt_lr"], None, joiner_config=JOINER,
                             warmup_ms=0, show_progress=False)
    from_topics = run_replay(read(kafka_bootstrap, produced), ["ftrl", "gbdt_lr"], None,
                             joiner_config=JOINER, warmup_ms=0, show_progress=False)
    assert from_folder.learners["ftrl"]["samples"] > 1000
    assert_same_replay(from_folder, from_topics)


@pytest.mark.integration
def test_a_sub_range_keeps_its_impressions_and_every_click_of_their_windows(
        produced, stream, kafka_bootstrap):
    folder = read_replay_input(stream)
    ts = folder.impressions["ts"]
    from_ms, to_ms = int(ts.quantile(0.3)), int(ts.quantile(0.7))  # times of real impressions
    inp = read(kafka_bootstrap, produced, from_ms, to_ms)

    expected_imp = folder.impressions.filter((pl.col("ts") >= from_ms) & (pl.col("ts") < to_ms))
    expected_clk = folder.clicks.filter(
        (pl.col("ts") >= from_ms) & (pl.col("ts") < to_ms + WINDOW_MS))
    assert inp.impressions.equals(expected_imp)
    assert inp.clicks.equals(expected_clk)
    assert inp.impressions["ts"].min() == from_ms  # from is inclusive
    assert to_ms in ts and inp.impressions["ts"].max() < to_ms  # to is exclusive

    # Labels are complete: each impression of the range gets the label it has in the
    # replay of the whole stream, also those whose click comes after to_ms.
    late_clicked = expected_clk.filter(pl.col("ts") >= to_ms).join(
        expected_imp, on="impression_id").height
    assert late_clicked > 0  # else this test could not tell a cut at to_ms from the right one
    whole = run_replay(stream, ["ftrl"], None, joiner_config=JOINER, show_progress=False)
    part = run_replay(inp, ["ftrl"], None, joiner_config=JOINER, warmup_ms=0,
                      show_progress=False)
    labels = part.outcomes.select("impression_id", "label").join(
        whole.outcomes.select("impression_id", "label"), on="impression_id", how="left")
    assert labels.height == expected_imp.n_unique("impression_id")
    assert labels["label"].equals(labels["label_right"], check_names=False)


def publish(bootstrap: str, topic: str, records: list[tuple[bytes | None, int]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for value, timestamp_ms in records:
            producer.send(topic, value, key=b"u1", timestamp_ms=timestamp_ms)
        producer.flush()
    finally:
        producer.close(timeout=10)


def imp(impression_id: str, ts: int) -> tuple[bytes, int]:
    return encode_event(Impression(impression_id, "r", "u1", "it", "c", 0, ts)), ts


def clk(impression_id: str, ts: int) -> tuple[bytes, int]:
    return encode_event(Click(impression_id, "u1", ts)), ts


@pytest.mark.integration
def test_range_bounds_on_event_time(kafka_bootstrap, kafka_topics):
    publish(kafka_bootstrap, kafka_topics["impressions"],
            [imp("before", 1_999), imp("first", 2_000), imp("last", 2_999), imp("after", 3_000)])
    publish(kafka_bootstrap, kafka_topics["clicks"],
            [clk("before", 1_999),          # before from: left out
             clk("first", 2_000),
             clk("last", 2_999 + WINDOW_MS),  # the last instant of the last window: kept
             clk("last", 3_000 + WINDOW_MS),  # to + window: left out
             clk("after", 3_500)])            # kept; its impression is not (an orphan)
    inp = read(kafka_bootstrap, kafka_topics, 2_000, 3_000)
    assert inp.impressions["impression_id"].to_list() == ["first", "last"]
    assert inp.clicks.select("impression_id", "ts").rows() == [
        ("first", 2_000), ("after", 3_500), ("last", 2_999 + WINDOW_MS)]
    assert "context" not in inp.impressions.columns  # no impression has any
    assert inp.name.endswith("[1970-01-01T00:00:02Z, 1970-01-01T00:00:03Z)")

    result = run_replay(inp, ["ftrl"], None, joiner_config=JOINER, warmup_ms=0,
                        show_progress=False)
    assert dict(zip(result.outcomes["impression_id"], result.outcomes["label"],
                    strict=True)) == {"first": 1, "last": 1}


@pytest.mark.integration
def test_poison_records_are_rejected_with_offset_and_the_services_reason(
        kafka_bootstrap, kafka_topics):
    topic_i, topic_c = kafka_topics["impressions"], kafka_topics["clicks"]
    publish(kafka_bootstrap, topic_i, [
        imp("ok1", 1_000),
        (b"not json", 1_100),
        (json.dumps({"impression_id": "x", "request_id": "r", "user_id": "u1", "item_id": "i",
                     "category_id": "c", "position": 0, "ts": "soon"}).encode(), 1_200),
        (None, 1_300),  # a tombstone
        (b"\xff\xfe", 1_400),
        (b"not json either, but outside the range", 9_000),
        imp("ok2", 1_500),
    ])
    publish(kafka_bootstrap, topic_c, [(b'{"impression_id": "ok1", "user_id": "u1"}', 1_050),
                                       clk("ok1", 1_060)])
    inp = read(kafka_bootstrap, kafka_topics, 0, 5_000)
    assert inp.impressions["impression_id"].to_list() == ["ok1", "ok2"]
    assert inp.clicks["impression_id"].to_list() == ["ok1"]
    assert inp.rejected.rows() == [
        (f"{topic_i}/0", 1, "JSON is malformed: invalid character (byte 4)", "not json"),
        (f"{topic_i}/0", 2, "Expected `int`, got `str` - at `$.ts`",
         '{"impression_id": "x", "request_id": "r", "user_id": "u1", "item_id": "i", '
         '"category_id": "c", "position": 0, "ts": "soon"}'),
        (f"{topic_i}/0", 3, "no value", None),
        (f"{topic_i}/0", 4, "JSON is malformed: invalid character (byte 0)", "\ufffd\ufffd"),
        (f"{topic_c}/0", 0, "Object missing required field `ts`",
         '{"impression_id": "ok1", "user_id": "u1"}'),
    ]
    # And the replay goes on, listing them in its rejected rows.
    result = run_replay(inp, ["ftrl"], None, joiner_config=JOINER, warmup_ms=0,
                        show_progress=False)
    assert result.events["rejected"] == 5
    assert result.outcomes["label"].to_list() == [1, 0]


@pytest.mark.integration
def test_the_read_ends_while_a_producer_keeps_writing(kafka_bootstrap, kafka_topics):
    publish(kafka_bootstrap, kafka_topics["impressions"], [imp(f"i{n}", n) for n in range(500)])
    publish(kafka_bootstrap, kafka_topics["clicks"], [clk("i0", 1)])
    stop = threading.Event()

    def keep_writing() -> None:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
        n = 500
        while not stop.is_set():
            producer.send(kafka_topics["impressions"], imp(f"i{n}", n)[0], key=b"u1")
            n += 1
            time.sleep(0.001)
        producer.close(timeout=10)

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        started = time.monotonic()
        inp = read(kafka_bootstrap, kafka_topics, 0, 10**9)
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        writer.join(timeout=15)
    ids = inp.impressions["impression_id"].to_list()
    assert ids[:500] == [f"i{n}" for n in range(500)]
    assert ids == [f"i{n}" for n in range(len(ids))]  # a gapless prefix of what was written


@pytest.mark.integration
def test_a_replay_joins_no_group_and_leaves_the_services_offsets(produced, kafka_bootstrap):
    group = "service-" + produced["impressions"]
    tps = [TopicPartition(produced[role], 0) for role in ("impressions", "clicks")]
    service = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group,
                            enable_auto_commit=False)
    service.assign(tps)  # committing needs no group join
    service.commit({tp: OffsetAndMetadata(7, "", -1) for tp in tps})
    service.close(autocommit=False)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        groups = {g["group_id"] for g in admin.list_groups()}
        assert group in groups
        read(kafka_bootstrap, produced)
        assert {g["group_id"] for g in admin.list_groups()} == groups
        committed = admin.list_group_offsets(group)[group]
        assert {tp: o.offset for tp, o in committed.items()} == dict.fromkeys(tps, 7)
    finally:
        admin.close()


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_missing_topic_is_an_error_and_is_not_created(kafka_bootstrap, kafka_topics):
    topics = {**kafka_topics, "clicks": kafka_topics["clicks"] + "-misspelt"}
    for _ in range(2):  # the first read must not have auto-created it
        with pytest.raises(TopicRangeError, match=f"no topic '{topics['clicks']}' on "):
            read(kafka_bootstrap, topics)


def test_an_unreachable_broker_fails_within_the_timeout():
    bootstrap = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BrokerUnreachableError) as exc:
        read_topic_range(bootstrap, 0, 1_000, timeout_s=1.0, show_progress=False)
    assert time.monotonic() - started < 5
    assert str(exc.value) == \
        f"no Kafka broker answers at {bootstrap} within 1 s (KafkaTimeoutError)"
    assert isinstance(exc.value, ReplayInputError)


@pytest.mark.parametrize(("from_ms", "to_ms"), [(2_000, 2_000), (3_000, 2_000)])
def test_an_empty_range_fails_before_connecting(from_ms, to_ms):
    # An address nothing listens on: the check must come first, and at once.
    with pytest.raises(TopicRangeError, match="empty range: from 1970-01-01T00:00:0"):
        read_topic_range("127.0.0.1:1", from_ms, to_ms, timeout_s=30, show_progress=False)


@pytest.mark.parametrize(("text", "ms"), [
    ("2026-11-30T12:00:00Z", 1_796_040_000_000),
    ("2026-11-30T13:00:00+01:00", 1_796_040_000_000),
    ("2026-11-30T12:00:00.123Z", 1_796_040_000_123),
    ("1796040000000", 1_796_040_000_000),
    (" 0 ", 0),
    (1_796_040_000_000, 1_796_040_000_000),
])
def test_times_parse_from_iso_8601_or_epoch_milliseconds(text, ms):
    assert parse_time_ms(text) == ms


@pytest.mark.parametrize(("text", "message"), [
    ("yesterday", "not a time: 'yesterday'"),
    ("2026-11-30T12:00:00", "has no time zone"),
    ("2026-13-01T00:00:00Z", "not a time"),
    (-5, "before 1970"),
    ("", "not a time"),
])
def test_bad_times_are_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_time_ms(text)


def test_times_format_back_as_utc():
    assert format_time_ms(parse_time_ms("2026-11-30T12:00:00.5+00:00")) == \
        "2026-11-30T12:00:00.500Z"


# --- command line ---------------------------------------------------------------------------


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    return err


@pytest.mark.parametrize(("args", "message"), [
    (["DIR", "--bootstrap", "127.0.0.1:1"],
     "give a replay folder DIR or --bootstrap HOST:PORT, not both"),
    ([], "give a replay folder DIR or --bootstrap HOST:PORT, not neither"),
    (["DIR", "--from-time", "0"], "--from-time/--to-time select a topic range: they need "
                                  "--bootstrap"),
    (["DIR", "--to-time", "2026-11-30T12:00:00Z"], "--from-time/--to-time select a topic range"),
    (["--bootstrap", "127.0.0.1:1", "--from-time", "2026-11-30T12:00:00Z",
      "--to-time", "2026-11-30T12:00:00Z"],
     "empty range: from 2026-11-30T12:00:00Z is not before to 2026-11-30T12:00:00Z"),
    (["--bootstrap", "127.0.0.1:1", "--from-time", "1000", "--to-time", "999"],
     "empty range"),
    (["--bootstrap", "127.0.0.1:1", "--from-time", "noon"],
     "--from-time (from the command line): not a time: 'noon'"),
    (["--bootstrap", "127.0.0.1:1", "--to-time", "2026-11-30 12:00"],
     "--to-time (from the command line): '2026-11-30 12:00' has no time zone"),
])
def test_replay_source_errors_are_one_line_with_status_2(args, message, tmp_path, capsys):
    argv = [str(tmp_path) if a == "DIR" else a for a in args]
    assert main(["replay", *argv, "--report", str(tmp_path / "r")]) == 2
    assert f"streamctr replay: error: {message}" in one_line_error(capsys)


def test_replay_from_an_unreachable_broker_is_one_line_with_status_1(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(read_topic_range.__kwdefaults__, "timeout_s", 1.0)
    bootstrap = f"127.0.0.1:{free_port()}"
    assert main(["replay", "--bootstrap", bootstrap, "--report", str(tmp_path / "r")]) == 1
    assert f"no Kafka broker answers at {bootstrap} within 1 s" in one_line_error(capsys)


@pytest.mark.integration
def test_cli_replay_of_a_topic_range_writes_the_folder_replays_report(
        produced, stream, kafka_bootstrap, tmp_path):
    common = ["--learners", "ftrl", "--window", "30s", "--warmup", "0",
              "--delayed-feedback", "wait"]
    assert main(["replay", str(stream), "--report", str(tmp_path / "folder"), *common]) == 0
    assert main(["replay", "--bootstrap", kafka_bootstrap, "--from-time", "0",
                 "--to-time", "2100-01-01T00:00:00Z",
                 "--impressions-topic", produced["impressions"],
                 "--clicks-topic", produced["clicks"],
                 "--report", str(tmp_path / "topics"), *common]) == 0
    docs = {name: json.loads((tmp_path / name / "report.json").read_text())
            for name in ("folder", "topics")}
    assert without_timing(docs["topics"]["learners"]) == without_timing(docs["folder"]["learners"])
    assert docs["topics"]["events"] == docs["folder"]["events"]
    assert docs["topics"]["details"]["input"] == (
        f"{produced['impressions']}+{produced['clicks']}@{kafka_bootstrap} "
        "[1970-01-01T00:00:00Z, 2100-01-01T00:00:00Z)")
