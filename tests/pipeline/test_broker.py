"""The embedded tansu broker: starts, answers Kafka, and never outlives its parent."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.broker import BrokerError, EmbeddedBroker

ROOT = Path(__file__).resolve().parents[2]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def kill_if_alive(pid: int) -> None:
    """Clean up after a failed test: never leave a broker behind."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def child_pids(pid: int) -> list[str]:
    """Children of every thread of ``pid`` (the broker is forked by a helper thread)."""
    return [child for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def python(script: str) -> subprocess.Popen[str]:
    """A child Python process running ``script`` from the repository root."""
    return subprocess.Popen([sys.executable, "-W", "ignore", "-c", textwrap.dedent(script)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.integration
def test_started_broker_answers_kafka_and_round_trips_a_message():
    with EmbeddedBroker() as broker:
        assert broker.bootstrap.startswith("127.0.0.1:")
        assert broker.create_topics(["ping"]) == ["ping"]
        assert broker.create_topics(["ping", "pong"]) == ["pong"]  # idempotent
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        producer.send("ping", b"hello", key=b"k", timestamp_ms=1_700_000_000_000).get(timeout=10)
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
        consumer.assign([TopicPartition("ping", 0)])
        consumer.seek_to_beginning()
        records = []
        deadline = time.monotonic() + 10
        while not records and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        consumer.close()
        assert [(r.key, r.value, r.timestamp) for r in records] == [
            (b"k", b"hello", 1_700_000_000_000)]


@pytest.mark.integration
def test_stop_leaves_no_broker_process_and_no_log():
    broker = EmbeddedBroker().start()
    pid, log_path = broker.pid, broker.log_path
    assert pid is not None and pid_alive(pid)
    assert log_path is not None and log_path.exists()
    broker.stop()
    assert not pid_alive(pid)
    assert not log_path.exists()
    broker.stop()  # a second stop is harmless
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.bootstrap


@pytest.mark.integration
def test_broker_dies_when_its_parent_is_killed():
    parent = python("""
        import time
        from pipeline.broker import EmbeddedBroker
        broker = EmbeddedBroker().start()
        print(broker.pid, broker.log_path, flush=True)
        time.sleep(600)
    """)
    line = parent.stdout.readline().split()
    assert len(line) == 2, f"parent printed {line!r}; stderr: {parent.stderr.read()}"
    broker_pid, log_path = int(line[0]), Path(line[1])
    try:
        assert pid_alive(broker_pid)
        parent.kill()  # SIGKILL: no Python cleanup runs, only the kernel's death signal
        parent.wait()
        assert wait_gone(broker_pid, 5), "orphan broker left behind"
    finally:
        kill_if_alive(broker_pid)
        log_path.unlink(missing_ok=True)  # a SIGKILLed parent cannot delete it
        parent.stdout.close()
        parent.stderr.close()


@pytest.mark.integration
def test_broker_started_from_a_short_lived_thread_survives_the_thread():
    # PR_SET_PDEATHSIG follows the forking *thread*; the broker must not die with it.
    broker = EmbeddedBroker()
    worker = threading.Thread(target=broker.start)
    worker.start()
    worker.join()
    try:
        time.sleep(0.5)
        assert broker.running
        assert broker.create_topics(["still-here"]) == ["still-here"]
    finally:
        broker.stop()


@pytest.mark.integration
def test_run_foreground_prints_bootstrap_and_exits_0_on_sigterm():
    proc = python("""
        import sys
        from pipeline.broker import run_foreground
        sys.exit(run_foreground())
    """)
    broker_pid = None
    try:
        first = proc.stdout.readline()
        assert first.startswith("bootstrap: 127.0.0.1:"), first + proc.stderr.read()
        assert proc.stdout.readline().startswith("hint: ")
        bootstrap = first.split()[1]
        consumer = KafkaConsumer(bootstrap_servers=bootstrap)
        assert {"impressions", "clicks", "samples", "dlq"} <= consumer.topics()
        consumer.close()
        children = child_pids(proc.pid)
        assert len(children) == 1  # the broker
        broker_pid = int(children[0])
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
        assert time.monotonic() - started < 5
        assert wait_gone(broker_pid, 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if broker_pid is not None:
            kill_if_alive(broker_pid)
        proc.stdout.close()
        proc.stderr.close()


def test_binary_that_is_not_executable_is_a_clear_error(tmp_path, monkeypatch):
    fake = tmp_path / "tansu"
    fake.write_text("not a program")
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    with pytest.raises(BrokerError, match="CALF_TANSU_BIN"):
        EmbeddedBroker().start()


def test_binary_that_cannot_be_executed_is_a_clear_error(tmp_path, monkeypatch):
    fake = tmp_path / "tansu"
    fake.write_bytes(b"\x00\x01 not an ELF file")
    fake.chmod(0o755)
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    with pytest.raises(BrokerError, match="cannot run the tansu binary"):
        EmbeddedBroker().start()


def test_broker_that_exits_at_once_reports_its_output(tmp_path):
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'ERROR: no storage for you' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerError, match="exited with status 3: ERROR: no storage for you"):
        EmbeddedBroker(binary=str(fake)).start()


def test_broker_that_never_answers_times_out_and_is_killed(tmp_path):
    pid_file = tmp_path / "pid"
    fake = tmp_path / "tansu"
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerError, match=r"did not answer the Kafka protocol .* within 0\.5 s"):
        EmbeddedBroker(binary=str(fake), start_timeout_s=0.5).start()
    assert not pid_alive(int(pid_file.read_text()))


@pytest.mark.integration
def test_requested_port_in_use_is_a_clear_error():
    with EmbeddedBroker() as first, pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(port=first.port or 0).start()


@pytest.mark.integration
def test_start_retries_on_a_fresh_port_when_the_chosen_one_was_taken(monkeypatch):
    import pipeline.broker as broker_module

    with EmbeddedBroker() as first:
        taken, real_free_port = first.port, broker_module.free_port
        offered = iter([taken])
        monkeypatch.setattr(broker_module, "free_port",
                            lambda host: next(offered, None) or real_free_port(host))
        with EmbeddedBroker() as second:
            assert second.port != taken
            assert second.cluster_id != first.cluster_id
            assert second.create_topics(["mine"]) == ["mine"]
        assert first.running


def test_docker_check_of_the_kafka_fixture_never_hangs(monkeypatch):
    from tests.conftest import docker_answers

    monkeypatch.setenv("DOCKER_HOST", "tcp://10.255.255.1:2375")  # unroutable: no engine
    started = time.monotonic()
    assert docker_answers(timeout_s=0.5) is False
    assert time.monotonic() - started < 3
