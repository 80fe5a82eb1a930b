"""The read-ahead consumer's own promises, against a real broker.

The interface's contract (seek in the listener, pause/resume, commit, partition count)
is tested for it alongside the in-process consumers in ``test_kafka_clients.py``; the
service's tests run through it, as ``serve`` does by default.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from pipeline.broker import create_topics
from pipeline.kafka_clients import (
    ConsumerSettings,
    KafkaClientConfig,
    KafkaClientError,
    TopicPartition,
    make_producer,
)
from pipeline.read_ahead import ReadAheadConsumer, _Call
from tests.pipeline.test_kafka_clients import SeekTo

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def poll_until_assigned(consumer, listener) -> None:
    deadline = time.monotonic() + 60
    while not listener.assigned:
        assert time.monotonic() < deadline, "no partition assigned in 60 s"
        consumer.poll(200, 100)


def produced_topic(bootstrap: str, n: int, partitions: int = 1) -> str:
    topic = f"ra-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [topic], partitions=partitions)
    producer = make_producer(KafkaClientConfig(bootstrap))
    for i in range(n):
        producer.send(topic, f"v{i}".encode(), key=f"k{i % 7}".encode())
    producer.flush(30)
    producer.close(10)
    return topic


def test_a_poll_returns_at_most_max_records_and_the_rest_follows_in_order(kafka_bootstrap):
    topic = produced_topic(kafka_bootstrap, 300)
    tp = TopicPartition(topic, 0)
    consumer = ReadAheadConsumer(KafkaClientConfig(kafka_bootstrap),
                                 ConsumerSettings(group_id=f"g-{topic}", max_poll_records=200))
    consumer.subscribe([topic], SeekTo(consumer, {}))
    offsets: list[int] = []
    sizes: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while len(offsets) < 300:
            assert time.monotonic() < deadline, f"gave up at {len(offsets)}"
            polled = consumer.poll(200, 7)
            if tp in polled:
                sizes.append(len(polled[tp]))
                offsets += [r.offset for r in polled[tp]]
                assert consumer.position(tp) == offsets[-1] + 1  # as of what it returned
        assert offsets == list(range(300))
        assert max(sizes) == 7
        assert [r.value for r in consumer.poll(300, 7).get(tp, [])] == []  # nothing twice
        assert consumer.highwater(tp) == 300
    finally:
        consumer.close(10)


def test_the_child_reads_several_batches_ahead_while_the_service_is_busy(kafka_bootstrap):
    """Batches of ~1 MB, more than a socket buffer holds: the child's writer thread keeps
    a few queued, so its client polls on while the parent does not read."""
    topic = f"ra-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, [topic], partitions=1)
    producer = make_producer(KafkaClientConfig(kafka_bootstrap))
    for i in range(1_000):
        producer.send(topic, bytes([i % 256]) * 10_000)
    producer.flush(30)
    producer.close(10)
    tp = TopicPartition(topic, 0)
    consumer = ReadAheadConsumer(KafkaClientConfig(kafka_bootstrap),
                                 ConsumerSettings(group_id=f"g-{topic}", max_poll_records=100))
    listener = SeekTo(consumer, {})
    consumer.subscribe([topic], listener)
    try:
        poll_until_assigned(consumer, listener)
        returned = 0
        deadline = time.monotonic() + 60
        while not returned:
            assert time.monotonic() < deadline, "no record in 60 s"
            returned = len(consumer.poll(200, 100).get(tp, []))
        time.sleep(3)  # the service busy with the batch
        # The child's own position, not the one the parent answers (as of what it returned).
        child_position = consumer._call(_Call("position", [(tp.topic, tp.partition)]))
        assert child_position - returned >= 300, (child_position, returned)
        assert consumer.position(tp) == returned
    finally:
        consumer.close(10)


def test_seeking_outside_the_listener_is_refused(kafka_bootstrap):
    """Records after the old position may be on their way already: such a seek would
    silently deliver them anyway, so it raises instead."""
    topic = produced_topic(kafka_bootstrap, 50)
    tp = TopicPartition(topic, 0)
    consumer = ReadAheadConsumer(KafkaClientConfig(kafka_bootstrap),
                                 ConsumerSettings(group_id=f"g-{topic}"))
    listener = SeekTo(consumer, {})
    consumer.subscribe([topic], listener)
    try:
        poll_until_assigned(consumer, listener)
        with pytest.raises(RuntimeError, match="seeks only in its rebalance listener"):
            consumer.seek(tp, 0)
    finally:
        consumer.close(10)


def test_a_killed_read_ahead_process_is_a_client_error_not_a_hang(kafka_bootstrap):
    topic = produced_topic(kafka_bootstrap, 10)
    consumer = ReadAheadConsumer(KafkaClientConfig(kafka_bootstrap),
                                 ConsumerSettings(group_id=f"g-{topic}"))
    consumer.subscribe([topic], SeekTo(consumer, {}))
    os.kill(consumer.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(KafkaClientError, match="read-ahead process is gone"):
        for _ in range(100):
            consumer.poll(200, 100)
    assert time.monotonic() - started < 10
    consumer.close(1)  # closing what is gone is quiet


def test_a_service_killed_by_sigkill_takes_its_read_ahead_process_out_of_the_group(
        kafka_bootstrap):
    """The child notices its parent is gone, leaves the group and exits: a new member gets
    the partition at once, not after the session timeout (30 s here)."""
    topic = produced_topic(kafka_bootstrap, 20)
    group = f"g-{topic}"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pipeline.kafka_clients import ConsumerSettings, KafkaClientConfig
        from pipeline.read_ahead import ReadAheadConsumer, _Call
        c = ReadAheadConsumer(KafkaClientConfig({kafka_bootstrap!r}),
                              ConsumerSettings(group_id={group!r}, session_timeout_ms=30_000))
        assigned = []
        class L:
            def on_partitions_revoked(self, p): pass
            def on_partitions_lost(self, p): pass
            def on_partitions_assigned(self, p):
                assigned.extend(p)
                c.seek_to_beginning(*p)
        c.subscribe([{topic!r}], L())
        while not assigned:
            c.poll(200, 100)
        print(c.pid, flush=True)
        time.sleep(600)
        """)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait(10)
        killed = time.monotonic()
        while _alive(child):  # it notices (its next write fails), leaves and exits
            assert time.monotonic() - killed < 10, "the read-ahead process outlived its parent"
            time.sleep(0.05)
        consumer = ReadAheadConsumer(KafkaClientConfig(kafka_bootstrap),
                                     ConsumerSettings(group_id=group, session_timeout_ms=30_000))
        listener = SeekTo(consumer, {})
        consumer.subscribe([topic], listener)
        try:
            while not listener.assigned:
                assert time.monotonic() - killed < 20, "the old member still holds the partition"
                consumer.poll(200, 100)
        finally:
            consumer.close(10)
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:") and "Z" in line for line in status)
    except FileNotFoundError:
        return False


class Recording(SeekTo):
    """Seeks each assigned partition to ``start``; logs every call with what the
    consumer had returned so far."""

    def __init__(self, consumer, start: int, returned: list) -> None:
        super().__init__(consumer, {})
        self.start, self.returned, self.calls = start, returned, []

    def on_partitions_revoked(self, revoked):
        super().on_partitions_revoked(revoked)
        if revoked:  # kafka-python also says "nothing revoked" before a first join
            self.calls.append(("revoked", set(revoked), len(self.returned)))

    def on_partitions_assigned(self, assigned):
        self.assigned |= assigned
        self.calls.append(("assigned", set(assigned), len(self.returned)))
        for tp in assigned:
            self.consumer.seek(tp, self.start)


def test_a_rebalance_runs_the_listener_between_batches_and_its_seeks_take_effect(
        kafka_bootstrap):
    """A second member joins: the first one's listener runs inside its poll, after every
    record read before the rebalance was returned; no record of a partition it lost comes
    after the revocation; reading resumes exactly where the listener sought."""
    topic = produced_topic(kafka_bootstrap, 2_000, partitions=2)
    group = f"g-{topic}"
    returned: list[tuple[TopicPartition, int]] = []
    first = ReadAheadConsumer(KafkaClientConfig(kafka_bootstrap),
                              ConsumerSettings(group_id=group, max_poll_records=50))
    listener = Recording(first, 10, returned)
    first.subscribe([topic], listener)
    second = None
    try:
        deadline = time.monotonic() + 60
        while len(returned) < 200:
            assert time.monotonic() < deadline
            for tp, records in first.poll(200, 50).items():
                returned += [(tp, r.offset) for r in records]
        second = ReadAheadConsumer(KafkaClientConfig(kafka_bootstrap),
                                   ConsumerSettings(group_id=group, max_poll_records=50))
        second.subscribe([topic], Recording(second, 0, []))
        while len(listener.calls) < 3:  # assigned, revoked, assigned (one of the two)
            assert time.monotonic() < deadline, listener.calls
            for tp, records in first.poll(100, 50).items():
                returned += [(tp, r.offset) for r in records]
            second.poll(100, 50)
        assigned_first, revoked, assigned_again = listener.calls[:3]
        assert assigned_first[0] == "assigned" and len(assigned_first[1]) == 2
        assert revoked[0] == "revoked" and revoked[1] == assigned_first[1]
        assert assigned_again[0] == "assigned" and len(assigned_again[1]) == 1
        kept, = assigned_again[1]
        lost = next(iter(revoked[1] - assigned_again[1]))
        while sum(tp == kept for tp, _ in returned[assigned_again[2]:]) < 5:
            assert time.monotonic() < deadline
            for tp, records in first.poll(100, 50).items():
                returned += [(tp, r.offset) for r in records]
            second.poll(100, 50)
        after = returned[assigned_again[2]:]
        # Read again from the sought offset, in order, and nothing of the lost partition.
        assert [o for tp, o in after if tp == kept][:5] == [10, 11, 12, 13, 14]
        assert all(tp != lost for tp, _ in after)
        assert first.assignment() == {kept}
        # Before the revocation, each partition's records came in order from offset 10.
        before = returned[:revoked[2]]
        for tp in revoked[1]:
            offsets = [o for t, o in before if t == tp]
            assert offsets == list(range(10, 10 + len(offsets)))
    finally:
        for consumer in (first, second):
            if consumer is not None:
                consumer.close(10)


def test_the_service_reads_ahead_by_default_with_either_client():
    """Faster with both in bench/service.py (docs/BENCHMARKS.md, service section)."""
    from pipeline.service import ServiceConfig

    assert ServiceConfig("h:1").read_ahead
    assert ServiceConfig("h:1", kafka_client="confluent").read_ahead
    assert not ServiceConfig("h:1", read_ahead=False).read_ahead


def test_a_commit_inside_the_listener_is_refused_as_retriable_not_a_crash(kafka_bootstrap):
    """kafka-python's listener runs on its IO thread, where a commit cannot wait for the
    broker: the child answers 'retry after the rebalance' (the service does)."""
    from pipeline.kafka_clients import CommitFailed

    topic = produced_topic(kafka_bootstrap, 10)
    tp = TopicPartition(topic, 0)
    consumer = ReadAheadConsumer(KafkaClientConfig(kafka_bootstrap),
                                 ConsumerSettings(group_id=f"g-{topic}"))
    refused: list[CommitFailed] = []

    class CommitsOnAssignment(SeekTo):
        def on_partitions_assigned(self, assigned):
            super().on_partitions_assigned(assigned)
            try:
                consumer.commit({tp: 0})
            except CommitFailed as exc:
                refused.append(exc)

    listener = CommitsOnAssignment(consumer, {})
    consumer.subscribe([topic], listener)
    try:
        poll_until_assigned(consumer, listener)
        assert len(refused) == 1 and refused[0].retriable
        consumer.commit({tp: 5})  # outside the listener it goes through
    finally:
        consumer.close(10)


def test_position_before_any_record_returned_is_the_first_record_read_ahead(kafka_bootstrap):
    """The child may have read on already; the position is where the caller's next record
    comes from, not the child's."""
    topic = produced_topic(kafka_bootstrap, 300)
    tp = TopicPartition(topic, 0)
    consumer = ReadAheadConsumer(KafkaClientConfig(kafka_bootstrap),
                                 ConsumerSettings(group_id=f"g-{topic}", max_poll_records=200))
    listener = SeekTo(consumer, {})
    consumer.subscribe([topic], listener)
    try:
        poll_until_assigned(consumer, listener)
        time.sleep(1.0)  # the child reads ahead meanwhile
        assert consumer.position(tp) == 0
        first = {}
        deadline = time.monotonic() + 60
        while tp not in first:
            assert time.monotonic() < deadline
            first = consumer.poll(200, 100)
        assert first[tp][0].offset == 0
    finally:
        consumer.close(10)
