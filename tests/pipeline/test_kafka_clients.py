"""Both client libraries behind pipeline.kafka_clients, against a real broker."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
from kafka import KafkaConsumer

from pipeline.broker import create_topics
from pipeline.kafka_clients import (
    CLIENT_LIBRARIES,
    ConsumerSettings,
    KafkaClientConfig,
    KafkaSecurity,
    TopicPartition,
    make_consumer,
    make_producer,
)
from pipeline.read_ahead import ReadAheadConsumer

pytestmark = pytest.mark.integration


@pytest.fixture(params=CLIENT_LIBRARIES)
def library(request) -> str:
    if request.param == "confluent":
        pytest.importorskip("confluent_kafka", reason="the confluent extra is not installed")
    return request.param


@pytest.fixture(params=["in-process", "read-ahead"])
def open_consumer(request):
    """The library's consumer on the test's thread, or the same in a read-ahead process:
    both must keep the interface's contract."""
    return make_consumer if request.param == "in-process" else ReadAheadConsumer


class SeekTo:
    """A listener that starts each assigned partition at a given offset."""

    def __init__(self, consumer, starts: dict[TopicPartition, int]) -> None:
        self.consumer, self.starts = consumer, starts
        self.assigned: set[TopicPartition] = set()

    def on_partitions_revoked(self, revoked):
        self.assigned -= revoked

    def on_partitions_lost(self, lost):
        self.assigned -= lost

    def on_partitions_assigned(self, assigned):
        self.assigned |= assigned
        for tp in assigned:
            if tp in self.starts:
                self.consumer.seek(tp, self.starts[tp])


def poll_until(consumer, done, timeout_s: float = 60) -> dict[TopicPartition, list]:
    got: dict[TopicPartition, list] = {}
    deadline = time.monotonic() + timeout_s
    while not done(got):
        assert time.monotonic() < deadline, f"gave up with {({k: len(v) for k, v in got.items()})}"
        for tp, records in consumer.poll(200, 500).items():
            got.setdefault(tp, []).extend(records)
    return got


def produce(bootstrap: str, library: str, topic: str, n: int, keys: int = 50) -> None:
    producer = make_producer(KafkaClientConfig(bootstrap, library))
    for i in range(n):
        producer.send(topic, f"v{i}".encode(), key=f"user-{i % keys}".encode())
    producer.flush(30)
    producer.close(10)


def read_all(bootstrap: str, topic: str) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=3_000)
    records = list(consumer)
    consumer.close()
    return records


def partitions_of_keys(bootstrap: str, topic: str) -> dict[bytes, set[int]]:
    out: dict[bytes, set[int]] = {}
    for record in read_all(bootstrap, topic):
        out.setdefault(record.key, set()).add(record.partition)
    return out


def log_ends(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """Each partition's end, counted by reading: tansu 0.6's ListOffsets answers the
    number of record batches rather than the end offset, so end_offsets() is no use."""
    ends: dict[TopicPartition, int] = {}
    for record in read_all(bootstrap, topic):
        tp = TopicPartition(topic, record.partition)
        ends[tp] = max(ends.get(tp, 0), record.offset + 1)
    return ends


def test_both_producers_put_a_key_on_the_same_partition(kafka_bootstrap):
    """murmur2 in both: impressions and clicks stay co-partitioned whoever produced them."""
    pytest.importorskip("confluent_kafka", reason="the confluent extra is not installed")
    placed = {}
    for library in CLIENT_LIBRARIES:
        topic = f"keys-{library}-{uuid.uuid4().hex[:8]}"
        create_topics(kafka_bootstrap, [topic], partitions=4)
        produce(kafka_bootstrap, library, topic, 200)
        placed[library] = partitions_of_keys(kafka_bootstrap, topic)
    assert len(placed["kafka-python"]) == 50
    assert all(len(p) == 1 for p in placed["kafka-python"].values())
    assert placed["confluent"] == placed["kafka-python"]
    assert len(set().union(*placed["confluent"].values())) > 1  # keys really spread


def test_consumer_starts_where_the_listener_seeks_and_reads_each_record_once(
    kafka_bootstrap, library, open_consumer
):
    topic = f"seek-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    produce(kafka_bootstrap, "kafka-python", topic, 400)
    ends = log_ends(kafka_bootstrap, topic)
    assert len(ends) == 2 and min(ends.values()) > 7
    starts = {TopicPartition(topic, 0): 7}  # partition 1: neither sought nor committed
    consumer = open_consumer(KafkaClientConfig(kafka_bootstrap, library),
                             ConsumerSettings(group_id=f"g-{topic}"))
    listener = SeekTo(consumer, starts)
    consumer.subscribe([topic], listener)
    want = {tp: end - starts.get(tp, 0) for tp, end in ends.items()}
    got = poll_until(consumer, lambda g: {tp: len(r) for tp, r in g.items()} == want)
    try:
        assert listener.assigned == set(ends)
        p0 = TopicPartition(topic, 0)
        assert [r.offset for r in got[p0]] == list(range(7, ends[p0]))
        for tp, end in ends.items():
            assert consumer.position(tp) == end
            assert consumer.highwater(tp) == end  # caught up: position == high watermark
        assert consumer.poll(300, 500) == {}  # nothing read twice
    finally:
        consumer.close(10)


def test_partition_count_is_the_topics_and_none_for_a_topic_that_does_not_exist(
    kafka_bootstrap, library, open_consumer
):
    topic = f"count-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, [topic], partitions=3)
    consumer = open_consumer(KafkaClientConfig(kafka_bootstrap, library),
                             ConsumerSettings(group_id=f"g-{topic}"))
    try:
        assert consumer.partition_count(topic) == 3
        assert consumer.partition_count(f"absent-{topic}") is None
    finally:
        consumer.close(10)


def test_paused_partition_delivers_nothing_and_resumes_without_gap_or_repeat(
    kafka_bootstrap, library, open_consumer
):
    topic = f"pause-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, [topic], partitions=1)
    produce(kafka_bootstrap, "kafka-python", topic, 3_000)
    tp = TopicPartition(topic, 0)
    consumer = open_consumer(KafkaClientConfig(kafka_bootstrap, library),
                             ConsumerSettings(group_id=f"g-{topic}", max_poll_records=100))
    consumer.subscribe([topic], SeekTo(consumer, {}))
    offsets: list[int] = []
    try:
        for _ in range(3):  # pause and resume with records fetched ahead, three times
            first = poll_until(consumer, lambda g: len(g.get(tp, [])) >= 100)
            offsets += [r.offset for r in first[tp]]
            consumer.pause(tp)
            assert consumer.paused() == {tp}
            for _ in range(5):
                assert consumer.poll(100, 100) == {}
            consumer.resume(tp)
        rest = poll_until(consumer, lambda g: offsets[-1] + len(g.get(tp, [])) + 1 >= 3_000)
        offsets += [r.offset for r in rest[tp]]
        assert offsets == list(range(3_000))
    finally:
        consumer.close(10)


def test_commit_is_visible_to_the_group(kafka_bootstrap, library, open_consumer):
    topic = f"commit-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, [topic], partitions=1)
    produce(kafka_bootstrap, "kafka-python", topic, 20)
    tp = TopicPartition(topic, 0)
    group = f"g-{topic}"
    consumer = open_consumer(KafkaClientConfig(kafka_bootstrap, library),
                             ConsumerSettings(group_id=group))
    consumer.subscribe([topic], SeekTo(consumer, {}))
    try:
        poll_until(consumer, lambda g: len(g.get(tp, [])) == 20)
        consumer.commit({tp: 13})
    finally:
        consumer.close(10)
    reader = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    try:
        assert reader.committed(tp) == 13
    finally:
        reader.close()


# --- security settings ---------------------------------------------------------------------


def test_security_settings_are_checked_and_passwords_stay_out_of_repr():
    with pytest.raises(ValueError, match="unknown security protocol 'TLS'"):
        KafkaSecurity("TLS")
    with pytest.raises(ValueError, match="needs sasl_username and sasl_password"):
        KafkaSecurity("SASL_SSL", sasl_mechanism="PLAIN", sasl_username="svc")
    with pytest.raises(ValueError, match="SASL settings given but security protocol is SSL"):
        KafkaSecurity("SSL", sasl_username="svc")
    with pytest.raises(ValueError, match="TLS files given"):
        KafkaSecurity("SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
                      sasl_password="p", ssl_cafile="/ca.pem")
    with pytest.raises(ValueError, match="both ssl_certfile and ssl_keyfile"):
        KafkaSecurity("SSL", ssl_certfile="/c.pem")
    with pytest.raises(ValueError, match="unknown Kafka client 'librdkafka'"):
        KafkaClientConfig("h:1", "librdkafka")  # type: ignore[arg-type]
    security = KafkaSecurity("SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="svc",
                             sasl_password="hunter2-secret", ssl_key_password="key-secret")
    shown = repr(KafkaClientConfig("h:1", "kafka-python", security))
    assert "svc" in shown and "hunter2" not in shown and "key-secret" not in shown


def test_security_settings_are_valid_options_of_both_libraries():
    """Every key we pass is one the library knows (a typo would be rejected or ignored)."""
    from kafka import KafkaConsumer, KafkaProducer

    security = KafkaSecurity("SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="svc",
                             sasl_password="pw", ssl_cafile="/etc/ssl/ca.pem",
                             ssl_certfile="/c.pem", ssl_keyfile="/k.pem", ssl_key_password="kp")
    given = security.kafka_python()
    assert set(given) <= set(KafkaConsumer.DEFAULT_CONFIG) & set(KafkaProducer.DEFAULT_CONFIG)
    assert given["sasl_plain_password"] == "pw" and given["ssl_password"] == "kp"
    ck = pytest.importorskip("confluent_kafka")
    props = KafkaSecurity("SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="svc",
                          sasl_password="pw").librdkafka()
    # librdkafka rejects unknown properties when the client is created (no connection yet).
    ck.Producer({"bootstrap.servers": "127.0.0.1:1", **props}).flush(0)
    assert props["sasl.mechanism"] == "PLAIN" and props["security.protocol"] == "sasl_plaintext"


def test_a_sasl_password_is_never_logged(kafka_bootstrap, kafka_topics, caplog, capfd):
    """The broker here speaks no SASL: the service fails to authenticate, logs why, stays
    up, stops on request — and the password appears in none of it, in the service's log
    or in its read-ahead process's (which writes to the same stderr)."""
    pytest.importorskip("confluent_kafka", reason="the confluent extra is not installed")
    from pipeline.service import Service, ServiceConfig, Topics

    secret = "hunter2-" + uuid.uuid4().hex
    config = ServiceConfig(
        bootstrap=kafka_bootstrap, metrics_port=None, kafka_client="confluent",
        security=KafkaSecurity("SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                               sasl_username="svc", sasl_password=secret),
        topics=Topics(kafka_topics["impressions"], kafka_topics["clicks"],
                      kafka_topics["samples"], kafka_topics["dlq"]),
        group_id=f"g-{uuid.uuid4().hex[:8]}", flush_timeout_s=2, close_timeout_s=2,
        read_ahead=True)  # the secret travels to the child: it must not log it either
    service = Service(config)
    with caplog.at_level(logging.DEBUG):
        runner = threading.Thread(target=service.run)
        runner.start()
        time.sleep(4)
        assert runner.is_alive()
        assert not service.metrics.readiness()[0]
        service.request_stop("test")
        runner.join(30)
    assert not runner.is_alive()
    assert caplog.records, "nothing was logged: the check below would be empty"
    assert all(secret not in record.getMessage() for record in caplog.records)
    assert secret not in repr(config)
    child_log = capfd.readouterr().err
    assert " read-ahead " in child_log, "the read-ahead process logged nothing"
    assert secret not in child_log
