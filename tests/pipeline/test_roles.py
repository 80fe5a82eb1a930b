"""``serve --role join|train``: join workers split the partitions, a train worker learns
the samples topic — against a real Kafka-protocol broker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from features.events import Impression, InvalidEvent, encode_event
from features.joiner import JoinerConfig
from learners import make_learner
from pipeline.broker import create_topics
from pipeline.produce import produce_folder
from pipeline.samples import Sample, SampleTrainer, decode_sample
from pipeline.service import (
    STOPPED_SHARED_TRAIN_GROUP,
    Service,
    ServiceConfig,
    ServiceSummary,
    Topics,
)
from replay.synthetic import generate, write_stream

pytestmark = pytest.mark.integration

# The workers read the topics while the producer writes them, so a partition read to its
# current end may still receive earlier records (the producer's batches for it are in
# flight): the merge would release later events past them and the join would depend on
# arrival order. A lateness longer than the whole stream (~29 minutes of event time) holds
# every event until the sentinels, produced last, arrive: then both runs join the same
# events in the same order.
JOIN = JoinerConfig(window_ms=60_000, allowed_lateness_ms=3_600_000)
PARTITIONS = 4
# Features that depend on the user's own events only: the same whichever worker owns the
# user. (An item's counters count its impressions in one shard only.)
USER_FEATURES = ("user=", "user×category=", "recent_category=", "recent_item_match",
                 "same_category_clicks=", "num.user_", "num.recent_clicks",
                 "num.same_category_clicks")


@pytest.fixture(scope="module")
def stream_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stream")
    write_stream(generate(5_000, seed=11), folder)
    return folder


def new_topics(bootstrap: str, *, partitions: int) -> Topics:
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(f"impressions-{suffix}", f"clicks-{suffix}", f"samples-{suffix}",
                    f"dlq-{suffix}")
    create_topics(bootstrap, [topics.impressions, topics.clicks, topics.samples],
                  partitions=partitions)
    create_topics(bootstrap, [topics.dlq])
    return topics


def produce_stream(stream_dir: Path, bootstrap: str, topics: Topics, partitions: int) -> int:
    """The stream, then one sentinel impression per partition far in the future, which
    moves the watermark past every window of the stream; returns how many distinct
    impressions it has."""
    produce_folder(stream_dir, bootstrap, topics=topics, show_progress=False)
    impressions = pl.read_parquet(stream_dir / "impressions.parquet")
    clicks = pl.read_parquet(stream_dir / "clicks.parquet")
    end = max(impressions["ts"].max(), clicks["ts"].max())
    end += JOIN.allowed_lateness_ms + 10 * JOIN.window_ms
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for p in range(partitions):
        sentinel = Impression(f"sentinel-{p}", "r", f"sentinel-user-{p}", "it", "c", 0, end)
        producer.send(topics.impressions, encode_event(sentinel), partition=p)
    producer.flush()
    producer.close()
    return impressions["impression_id"].n_unique()


class RecordCounter:
    """Records of a topic so far, read through (tansu's ListOffsets answers are not record
    offsets, so end offsets cannot be summed)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap)
        self.consumer.assign([TopicPartition(topic, p)
                              for p in self.consumer.partitions_for_topic(topic)])
        self.consumer.seek_to_beginning()
        self.records = 0

    def __call__(self) -> int:
        self.records += sum(map(len, self.consumer.poll(timeout_ms=200).values()))
        return self.records

    def close(self) -> None:
        self.consumer.close()


def read_samples(bootstrap: str, topic: str) -> list[tuple[int, int, int, Sample]]:
    """(final_ts, partition, offset, sample) of every valid record of the samples topic."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=3_000)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(parts)
    consumer.seek_to_beginning()
    out = []
    for m in consumer:
        try:
            sample = decode_sample(m.value)
        except InvalidEvent:
            continue
        out.append((sample.final_ts, m.partition, m.offset, sample))
    consumer.close()
    return out


class Running:
    """Services run on threads until :meth:`stop`; their summaries kept."""

    def __init__(self, *services: Service) -> None:
        self.services = services
        self.summaries: dict[int, ServiceSummary] = {}
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(len(services))]
        for thread in self.threads:
            thread.start()

    def _run(self, i: int) -> None:
        self.summaries[i] = self.services[i].run()

    def stop(self) -> list[ServiceSummary]:
        for service in self.services:
            service.request_stop("test")
        for thread in self.threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads)
        return [self.summaries[i] for i in range(len(self.services))]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.25)


def join_worker(bootstrap: str, topics: Topics, group: str, folder: Path) -> Service:
    return Service(ServiceConfig(bootstrap=bootstrap, role="join", learners=(), topics=topics,
                                 group_id=group, joiner=JOIN, metrics_port=None,
                                 checkpoint_dir=folder))


def test_two_join_workers_split_the_partitions_and_publish_what_one_worker_does(
    kafka_bootstrap, stream_dir, tmp_path
):
    topics = new_topics(kafka_bootstrap, partitions=PARTITIONS)
    split = Topics(topics.impressions, topics.clicks, f"{topics.samples}-split", topics.dlq)
    create_topics(kafka_bootstrap, [split.samples], partitions=PARTITIONS)
    single = Running(join_worker(kafka_bootstrap, topics, "one", tmp_path / "one"))
    pair = Running(join_worker(kafka_bootstrap, split, "two", tmp_path / "a"),
                   join_worker(kafka_bootstrap, split, "two", tmp_path / "b"))
    try:
        # Every worker holds its final share before a record exists, so none sees a
        # partition that moves on later.
        a, b = pair.services
        wait_for(lambda: len(single.services[0].assignment()) == 2 * PARTITIONS
                 and len(a.assignment()) == len(b.assignment()) == PARTITIONS,
                 "the group's assignments")
        assert not a.assignment() & b.assignment()
        # Range assignment: a worker owns the same partition numbers of both topics.
        for worker in (a, b):
            by_topic = {t: {tp.partition for tp in worker.assignment() if tp.topic == t}
                        for t in (topics.impressions, topics.clicks)}
            assert by_topic[topics.impressions] == by_topic[topics.clicks]
        unique = produce_stream(stream_dir, kafka_bootstrap, topics, PARTITIONS)
        counters = [RecordCounter(kafka_bootstrap, t) for t in (topics.samples, split.samples)]
        wait_for(lambda: all(count() >= unique for count in counters),
                 f"{unique} samples from each run")
        for count in counters:
            count.close()
    finally:
        (one,) = single.stop()
        summary_a, summary_b = pair.stop()

    # Each split worker read a real share of the stream; together, all of it.
    shares = [sum(s.consumed.values()) for s in (summary_a, summary_b)]
    assert min(shares) > 0.2 * sum(shares)
    assert sum(shares) == sum(one.consumed.values())
    assert summary_a.join["samples_positive"] + summary_b.join["samples_positive"] \
        == one.join["samples_positive"] > 0

    def by_impression(topic: str) -> dict[str, Sample]:
        samples = [s for *_, s in read_samples(kafka_bootstrap, topic)]
        assert len(samples) == unique  # each impression once
        return {s.impression.impression_id: s for s in samples}

    reference, union = by_impression(topics.samples), by_impression(split.samples)
    assert union.keys() == reference.keys()
    for key, ref in reference.items():
        got = union[key]
        assert (got.impression, got.label, got.click_ts, got.final_ts) == (
            ref.impression, ref.label, ref.click_ts, ref.final_ts)
        assert got.behaviours == ref.behaviours  # the user's own sequences
        own = {k: v for k, v in ref.features.items() if k.startswith(USER_FEATURES)}
        assert {k: got.features[k] for k in own} == own


def test_train_worker_learns_each_sample_once_in_event_time_order_and_rejects_bad_ones(
    kafka_bootstrap, stream_dir, tmp_path
):
    topics = new_topics(kafka_bootstrap, partitions=2)
    joiner = Running(join_worker(kafka_bootstrap, topics, "join", tmp_path / "join"))
    try:
        unique = produce_stream(stream_dir, kafka_bootstrap, topics, 2)
        count = RecordCounter(kafka_bootstrap, topics.samples)
        wait_for(lambda: count() >= unique, f"{unique} samples")
        count.close()
    finally:
        joiner.stop()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for bad in (b"not json", b'{"label": 2}'):
        producer.send(topics.samples, bad, partition=1)
    producer.flush()
    producer.close()

    trainer = Service(ServiceConfig(
        bootstrap=kafka_bootstrap, role="train", learners=("ftrl",), topics=topics,
        group_id="train", metrics_port=None, checkpoint_dir=tmp_path / "train",
        max_events=unique + 2))
    summary = trainer.run()
    assert summary.consumed == {topics.samples: unique + 2}
    assert summary.rejected == {topics.samples: 2}
    assert trainer.learners["ftrl"].n_learned == unique

    # The same samples merged on the time their labels became final (ties: partition
    # order), learned by a trainer alone: the very same model.
    samples = [s for *_, s in sorted(read_samples(kafka_bootstrap, topics.samples),
                                     key=lambda r: r[:3])]
    alone = make_learner("ftrl")
    SampleTrainer({"ftrl": alone}).process(samples)
    for key, value in alone.state_dict().items():
        np.testing.assert_array_equal(trainer.learners["ftrl"].state_dict()[key], value,
                                      err_msg=key)


def test_a_second_train_worker_in_the_group_is_refused_rather_than_split_the_samples(
    kafka_bootstrap, tmp_path
):
    topics = new_topics(kafka_bootstrap, partitions=2)

    def trainer(name: str) -> Service:
        return Service(ServiceConfig(
            bootstrap=kafka_bootstrap, role="train", learners=("ftrl",), topics=topics,
            group_id=f"train-{topics.samples}", metrics_port=None,
            checkpoint_dir=tmp_path / name))

    first = Running(trainer("first"))
    wait_for(lambda: len(first.services[0].assignment()) == 2, "the first trainer's partitions")
    time.sleep(1)
    assert first.threads[0].is_alive()  # alone in its group, it serves on
    second = Running(trainer("second"))
    # The rebalance gives each one partition: the first stops instead of learning half.
    first.threads[0].join(timeout=90)
    assert not first.threads[0].is_alive()
    assert first.summaries[0].stopped_by == STOPPED_SHARED_TRAIN_GROUP
    # The second stops as well, or, once the first has left, owns both and serves on.
    wait_for(lambda: not second.threads[0].is_alive()
             or len(second.services[0].assignment()) == 2, "the second trainer to settle")
    if second.threads[0].is_alive():
        second.stop()
    else:
        assert second.summaries[0].stopped_by == STOPPED_SHARED_TRAIN_GROUP


@pytest.mark.parametrize(("role", "changes", "message"), [
    ("join", {"learners": ("ftrl",)}, "the join role trains no learners"),
    ("join", {"joiner": JoinerConfig(mode="fnw")}, "needs joiner mode 'wait'"),
    ("train", {"learners": ()}, "at least one learner"),
    ("train", {"publish_samples": True}, "does not publish them"),
    ("both", {}, "role must be one of all, join, train"),
])
def test_role_settings_that_cannot_work_are_refused(role, changes, message):
    with pytest.raises(ValueError, match=message):
        ServiceConfig(bootstrap="localhost:9092", role=role,
                      **{"learners": () if role == "join" else ("ftrl",), **changes})
