from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.broker import BrokerError, EmbeddedBroker

pytestmark = pytest.mark.integration


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone as a broker.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_broker_answers_kafka_and_round_trips_a_message():
    with EmbeddedBroker() as broker:
        broker.create_topics(["ping"])
        broker.create_topics(["ping"])  # idempotent
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        producer.send("ping", b"hello", key=b"k").get(timeout=10)
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, consumer_timeout_ms=5_000)
        consumer.assign([TopicPartition("ping", 0)])
        consumer.seek_to_beginning()
        assert [m.value for m in consumer] == [b"hello"]
        consumer.close()


def test_stop_leaves_no_broker_process():
    broker = EmbeddedBroker()
    broker.start()
    pid = broker.pid
    assert pid is not None and pid_alive(pid)
    broker.stop()
    assert not pid_alive(pid)
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.bootstrap


def test_broker_dies_when_its_parent_is_killed():
    script = textwrap.dedent("""
        import time
        from pipeline.broker import EmbeddedBroker
        broker = EmbeddedBroker()
        broker.start()
        print(broker.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    broker_pid = int(parent.stdout.readline())
    assert pid_alive(broker_pid)
    parent.kill()
    parent.wait()
    assert wait_gone(broker_pid, 5), "orphan broker left behind"


def test_broker_command_prints_bootstrap_and_stops_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "broker"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("bootstrap: 127.0.0.1:"), first + proc.stderr.read()
        bootstrap = first.split()[1]
        consumer = KafkaConsumer(bootstrap_servers=bootstrap)
        assert {"impressions", "clicks", "samples", "dlq"} <= consumer.topics()
        consumer.close()
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert len(children) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert wait_gone(int(children[0]), 5)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_binary_that_cannot_run_is_a_clear_error(tmp_path, monkeypatch):
    fake = tmp_path / "tansu"
    fake.write_text("not a program")
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    with pytest.raises(BrokerError, match="CALF_TANSU_BIN"):
        EmbeddedBroker().start()


def test_broker_that_exits_at_once_reports_its_output(tmp_path, monkeypatch):
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'address already in use' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    with pytest.raises(BrokerError, match="exited with status 3: address already in use"):
        EmbeddedBroker(port=1).start()
