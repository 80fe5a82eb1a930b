"""Poison records against the running service (a real broker): to the DLQ, never fatal.

Hypothesis draws a corpus of invalid records (:mod:`tests.features.events_strategies`:
not JSON, the wrong shape, wrong, missing or unknown fields, not UTF-8, tombstones,
oversized) and clicks for impressions that never come, and interleaves them with a
synthetic stream. The service runs over all of it with ``max_events`` = every record.
It must not stop early; every invalid record must be in the DLQ exactly once, with its
source topic, partition, offset, the decoder's reason and its text; its counters must
count them; and the learner must end exactly as a replay of the valid events alone.

Each example costs a consumer-group join (~3 s on the embedded broker) and a service
run, so there are three examples, each with a large corpus (the first is hypothesis's
simplest: tombstones at the head of both topics), and no shrinking: a failure prints
its corpus, and shrinking it would mean hundreds of runs. ~30 s in all.

Orphans carry their source offset too: the joiner declares a click an orphan when its
window closes, long after reading it, and the service remembers where it read each
click the joiner still holds.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from features.events import MAX_EVENT_BYTES, Click, Impression, InvalidEvent, encode_event
from features.joiner import Joiner, JoinerConfig
from pipeline.broker import create_topics
from pipeline.service import Service, ServiceConfig, Topics
from replay.inputs import ReplayInput, iter_events, read_replay_input
from replay.report import OutcomeRecorder
from replay.run import run_replay
from replay.synthetic import generate, write_stream
from tests.features.events_strategies import CLICK, IMPRESSION, Schema, oversized, poison_records

pytestmark = pytest.mark.integration

JOIN = JoinerConfig(window_ms=60_000)  # the stream spans a few minutes of event time


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> ReplayInput:
    folder = tmp_path_factory.mktemp("poison")
    write_stream(generate(3_000, seed=7), folder)
    return read_replay_input(folder)


def corpus(schema: Schema) -> st.SearchStrategy[list[bytes | None]]:
    return st.lists(poison_records(schema), min_size=10, max_size=40).flatmap(
        lambda small: st.lists(oversized(schema), max_size=2).map(lambda big: small + big))


def with_orphans(stream: ReplayInput, orphans: list[Click]) -> ReplayInput:
    """The stream plus clicks on impressions that never come."""
    extra = pl.DataFrame([(c.impression_id, c.user_id, c.ts) for c in orphans],
                         schema=stream.clicks.schema, orient="row")
    clicks = pl.concat([stream.clicks, extra]).sort("ts", maintain_order=True)
    return ReplayInput(stream.impressions, clicks, stream.rejected)


def reason(schema: Schema, raw: bytes | None) -> str:
    with pytest.raises(InvalidEvent) as exc:
        schema.decode(raw)
    return str(exc.value)


def comparable(letter: dict[str, Any]) -> str:
    """A DLQ letter's contract as text: an oversized record's copy only by its head, since
    cutting that copy at the size limit is allowed (and proposed for the service)."""
    kept = {k: letter[k] for k in ("topic", "partition", "offset", "reason", "record")}
    if kept["reason"].startswith("oversized:"):
        kept["record"] = kept["record"][:1024]
    return json.dumps(kept, sort_keys=True)


def read_all(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record of the topic's partition 0, until nothing comes for a second."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=1_000)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        return [json.loads(m.value) for m in consumer]
    finally:
        consumer.close()


@settings(max_examples=3, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_poison_goes_to_the_dlq_once_each_and_the_valid_events_learn_as_in_replay(
    kafka_bootstrap, stream, data
):
    poison = {"impressions": data.draw(corpus(IMPRESSION), label="impression poison"),
              "clicks": data.draw(corpus(CLICK), label="click poison")}
    # Orphans at the time and user of real clicks: inside the stream's event time.
    rows = data.draw(st.lists(st.integers(0, stream.clicks.height - 1), min_size=1,
                              max_size=5), label="orphan clicks at rows")
    orphans = [Click(f"orphan-{i}", *stream.clicks.select("user_id", "ts").row(row))
               for i, row in enumerate(rows)]
    valid = with_orphans(stream, orphans)
    events = list(iter_events(valid))
    # Where each poison record goes: before the valid event of that index.
    slots = [(data.draw(st.integers(0, len(events)), label="slot"), role, raw)
             for role, records in poison.items() for raw in records]
    slots.sort(key=lambda slot: slot[0])

    suffix = uuid.uuid4().hex[:8]
    topics = Topics(*(f"{role}-{suffix}" for role in ("impressions", "clicks", "samples", "dlq")))
    create_topics(kafka_bootstrap, [topics.impressions, topics.clicks, topics.samples,
                                    topics.dlq], partitions=1)
    topic_of = {"impressions": topics.impressions, "clicks": topics.clicks}
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    sent_poison = []  # (role, raw, future of its offset)
    sent_clicks: dict[Click, list[Any]] = {}  # futures of each click's offsets, in order
    pending = iter(slots)
    slot = next(pending, None)
    for index, event in enumerate([*events, None]):
        while slot is not None and slot[0] == index:
            _, role, raw = slot
            # A key, because Kafka takes a tombstone (no value) only with one.
            sent_poison.append((role, raw, producer.send(topic_of[role], raw, key=b"poison")))
            slot = next(pending, None)
        if event is not None:
            topic = topics.impressions if type(event) is Impression else topics.clicks
            future = producer.send(topic, encode_event(event), key=event.user_id.encode(),
                                   timestamp_ms=event.ts)
            if type(event) is Click:
                sent_clicks.setdefault(event, []).append(future)
    producer.flush()
    offsets = [future.get(timeout=30).offset for _, _, future in sent_poison]
    producer.close()

    recorder = OutcomeRecorder(("ftrl",))
    service = Service(ServiceConfig(bootstrap=kafka_bootstrap, metrics_port=None, topics=topics,
                                    group_id=f"g-{suffix}", joiner=JOIN,
                                    max_events=len(events) + len(slots)),
                      extra_outcome_callbacks=[recorder])
    summary = service.run()

    # It read every record: nothing stopped it early.
    n_poison = {role: len(records) for role, records in poison.items()}
    n_valid = Counter("impressions" if type(e) is Impression else "clicks" for e in events)
    assert summary.stopped_by == "max-events"
    assert summary.records_total == len(events) + len(slots)
    assert summary.consumed == {topic_of[r]: n_valid[r] + n_poison[r] for r in topic_of}

    # Every invalid record in the DLQ once, with where it came from and why; orphans too.
    schema_of = {"impressions": IMPRESSION, "clicks": CLICK}
    expected = Counter(
        comparable({"topic": topic_of[role], "partition": 0, "offset": offset,
                    "reason": reason(schema_of[role], raw),
                    "record": None if raw is None else raw.decode("utf-8", errors="replace")})
        for (role, raw, _), offset in zip(sent_poison, offsets, strict=True))
    # Orphans: ours and the stream's own (clicks whose impression came too late), each
    # with the offset it was read at (of a repeated click, the first copy: a later one
    # is a duplicate of it).
    joiner = Joiner(JOIN)
    all_orphans = [*joiner.push(events).orphans, *joiner.flush().orphans]
    assert set(orphans) <= set(all_orphans)
    expected.update(
        comparable({"topic": topics.clicks, "partition": 0,
                    "offset": sent_clicks[click].pop(0).get(timeout=30).offset,
                    "reason": "unknown impression", "record": encode_event(click).decode()})
        for click in all_orphans)
    assert Counter(map(comparable, read_all(kafka_bootstrap, topics.dlq))) == expected

    # Counted, in the summary and in the exported metric.
    rejected = {topics.impressions: n_poison["impressions"],
                topics.clicks: n_poison["clicks"] + len(all_orphans)}
    assert summary.rejected == rejected
    for topic, count in rejected.items():
        assert service.metrics.registry.get_sample_value(
            "streamctr_events_rejected_total", {"topic": topic}) == count

    # The valid events trained the learner exactly as a replay of them alone does.
    replayed = run_replay(valid, ["ftrl"], None, joiner_config=JOIN, show_progress=False)
    assert summary.join == {k: replayed.events[k] for k in summary.join}
    served = recorder.to_frame()
    assert served["impression_id"].to_list() == replayed.outcomes["impression_id"].to_list()
    assert served["score_ftrl"].to_list() == replayed.outcomes["score_ftrl"].to_list()


def test_a_poison_record_near_the_brokers_message_limit_does_not_stop_the_loop(
    kafka_bootstrap, kafka_topics
):
    topics = Topics(kafka_topics["impressions"], kafka_topics["clicks"], kafka_topics["samples"],
                    kafka_topics["dlq"])
    # Fits a Kafka message (1 MiB by default), but escaped as JSON text in the DLQ copy
    # each byte takes six: 5.4 MB.
    raw = b"\x01" * 900_000
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send(topics.impressions, raw, key=b"poison")
    producer.send(topics.impressions, encode_event(Impression("i", "r", "u", "it", "c", 0, 5)),
                  key=b"u")
    producer.flush()
    producer.close()
    summary = Service(ServiceConfig(bootstrap=kafka_bootstrap, metrics_port=None, topics=topics,
                                    group_id=f"g-{topics.impressions}", joiner=JOIN,
                                    max_events=2)).run()
    assert (summary.stopped_by, summary.rejected[topics.impressions]) == ("max-events", 1)
    assert summary.join["impressions"] == 1
    [letter] = read_all(kafka_bootstrap, topics.dlq)
    assert (letter["offset"], letter["reason"]) == (0, f"oversized: {len(raw)} bytes > 65536")
    assert len(letter["record"]) <= MAX_EVENT_BYTES
    assert letter["record_bytes"] == len(raw)  # the record is a prefix of this many bytes
