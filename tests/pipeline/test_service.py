"""The service against a real Kafka-protocol broker (embedded tansu unless configured)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from features.joiner import JoinerConfig
from pipeline.checkpoint import has_checkpoint
from pipeline.produce import produce_folder
from pipeline.service import Service, ServiceConfig, Topics
from replay.report import OutcomeRecorder, after_warmup, learner_metrics
from replay.run import run_replay
from replay.synthetic import generate, write_stream

pytestmark = pytest.mark.integration

# The test stream spans about ten minutes of event time: a one-minute window lets the
# learner see labels well before the end.
JOIN = JoinerConfig(window_ms=60_000)
# Not JSON, a missing field, and a tombstone (a record without a value).
BAD_IMPRESSIONS = [b"not json at all", b'{"impression_id": "x", "ts": 5}', None]


@pytest.fixture(scope="module")
def stream_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stream")
    write_stream(generate(6_000, seed=3), folder)
    return folder


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request) -> str:
    """Each service test runs with both client libraries (pipeline.kafka_clients)."""
    if request.param == "confluent":
        pytest.importorskip("confluent_kafka", reason="the confluent extra is not installed")
    return request.param


def topics_of(kafka_topics: dict[str, str]) -> Topics:
    return Topics(kafka_topics["impressions"], kafka_topics["clicks"], kafka_topics["samples"],
                  kafka_topics["dlq"])


def scrape(port: int) -> dict[str, float]:
    """Parse the text exposition into {'name{labels}': value}."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def produce_bad(bootstrap: str, topic: str) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for raw in BAD_IMPRESSIONS:
        producer.send(topic, raw, key=b"bad")  # Kafka takes a tombstone only with a key
    producer.flush()
    producer.close()


def test_prometheus_endpoint_reports_the_counts_that_were_produced(
    kafka_bootstrap, kafka_topics, stream_dir, tmp_path, kafka_client
):
    topics = topics_of(kafka_topics)
    produced = produce_folder(stream_dir, kafka_bootstrap, topics=topics, show_progress=False)
    produce_bad(kafka_bootstrap, topics.impressions)
    expected_imp = produced.impressions + len(BAD_IMPRESSIONS)
    reference = run_replay(stream_dir, ["ftrl"], None, joiner_config=JOIN,
                           show_progress=False).events

    service = Service(ServiceConfig(bootstrap=kafka_bootstrap, metrics_port=0,
                                    metrics_host="127.0.0.1", topics=topics,
                                    kafka_client=kafka_client,
                                    group_id=f"g-{topics.impressions}", joiner=JOIN,
                                    checkpoint_dir=tmp_path / "ckpt"))
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        deadline = time.monotonic() + 90
        seen: dict[str, float] = {}
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if service.metrics_port is None:
                continue
            seen = scrape(service.metrics_port)
            done_imp = seen.get(f'streamctr_events_consumed_total{{topic="{topics.impressions}"}}')
            done_clk = seen.get(f'streamctr_events_consumed_total{{topic="{topics.clicks}"}}')
            # Consumed is not yet processed: the newest events wait at the watermark until
            # the input is idle, so every joiner count is awaited, not just the last one.
            clicks = {outcome: seen.get(f'streamctr_clicks_total{{outcome="{outcome}"}}', 0)
                      for outcome in ("joined", "late", "duplicate")}
            if (done_imp, done_clk) == (expected_imp, produced.clicks) and clicks == {
                    "joined": reference["clicks_joined"], "late": reference["late_clicks"],
                    "duplicate": reference["duplicate_clicks"]}:
                break
        else:
            pytest.fail(f"metrics never reached the produced and replayed counts: {seen}")
        assert seen[f'streamctr_events_rejected_total{{topic="{topics.impressions}"}}'] == 3
        assert 0.5 < seen['streamctr_rolling_auc{learner="ftrl"}'] <= 1.0
        assert seen['streamctr_rolling_logloss{learner="ftrl"}'] > 0
        assert seen["streamctr_processing_lag_seconds"] > 0
        assert service.metrics.address == "127.0.0.1"  # --metrics-host: loopback only
        assert seen["streamctr_batch_duration_seconds_count"] > 0
        assert seen["streamctr_ready"] == 1
        lags = [k for k in seen if k.startswith("streamctr_consumer_lag_records{")]
        assert lags and all('partition="0"' in k for k in lags), lags  # per partition
    finally:
        service.request_stop("test")
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert has_checkpoint(tmp_path / "ckpt")

    # The bad records reached the DLQ with their offsets and reasons.
    dlq = KafkaConsumer(bootstrap_servers=kafka_bootstrap, consumer_timeout_ms=5_000)
    dlq.assign([TopicPartition(topics.dlq, 0)])
    dlq.seek_to_beginning()
    letters = [json.loads(m.value) for m in dlq]
    dlq.close()
    bad = [d for d in letters if d["topic"] == topics.impressions]
    assert [d["offset"] for d in bad] == [produced.impressions + i for i in range(3)]
    assert "JSON" in bad[0]["reason"] and "missing required field" in bad[1]["reason"]
    assert (bad[2]["reason"], bad[2]["record"]) == ("no value", None)


def test_service_with_max_events_measures_exactly_what_replay_measures(
    kafka_bootstrap, kafka_topics, stream_dir, kafka_client
):
    topics = topics_of(kafka_topics)
    produced = produce_folder(stream_dir, kafka_bootstrap, topics=topics, show_progress=False)
    recorder = OutcomeRecorder(("ftrl",))
    service = Service(
        ServiceConfig(bootstrap=kafka_bootstrap, metrics_port=None, topics=topics,
                      kafka_client=kafka_client,
                      max_events=produced.impressions + produced.clicks,
                      group_id=f"g-{topics.impressions}", joiner=JOIN),
        extra_outcome_callbacks=[recorder],
    )
    summary = service.run()
    replayed = run_replay(stream_dir, ["ftrl"], None, joiner_config=JOIN, show_progress=False)
    outcomes = recorder.to_frame()
    served = learner_metrics(after_warmup(outcomes, JOIN.window_ms), "ftrl",
                             samples_seen=outcomes.height, seconds=1.0)
    assert summary.stopped_by == "max-events"
    assert summary.join == {k: replayed.events[k] for k in summary.join}
    for key in ("auc", "logloss", "gauc", "calibration", "samples"):
        assert served[key] == pytest.approx(replayed.learners["ftrl"][key], abs=1e-12)
    assert served["auc"] > 0.55


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_stops_the_serve_command_within_seconds(kafka_bootstrap, kafka_topics,
                                                       kafka_client):
    topics = topics_of(kafka_topics)
    port = free_port()
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--bootstrap", kafka_bootstrap,
           "--metrics-port", str(port), "--impressions-topic", topics.impressions,
           "--clicks-topic", topics.clicks, "--dlq-topic", topics.dlq,
           "--group-id", f"g-{topics.impressions}", "--kafka-client", kafka_client]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                scrape(port)
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1]
                time.sleep(0.2)
        time.sleep(1.0)  # let it get into its poll loop
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped (SIGTERM)" in out
    assert took < 10


def test_restart_from_checkpoint_continues_exactly_where_it_stopped(
    kafka_bootstrap, kafka_topics, stream_dir, tmp_path, kafka_client
):
    topics = topics_of(kafka_topics)
    produced = produce_folder(stream_dir, kafka_bootstrap, topics=topics, show_progress=False)
    total = produced.impressions + produced.clicks
    ckpt = tmp_path / "ckpt"
    group = f"g-{topics.impressions}"
    first = OutcomeRecorder(("ftrl",))

    def stop_midway(outcome) -> None:
        first(outcome)
        if len(first) == 1_000:
            service.request_stop("test")

    service = Service(ServiceConfig(bootstrap=kafka_bootstrap, metrics_port=None, topics=topics,
                                    kafka_client=kafka_client,
                                    group_id=group, joiner=JOIN, checkpoint_dir=ckpt,
                                    max_poll_records=200),
                      extra_outcome_callbacks=[stop_midway])
    summary = service.run()
    assert summary.stopped_by == "test"
    assert len(first) > 0 and service.engine.joiner.open_windows > 0

    # max_events counts the records the state has taken in, over restarts.
    second = OutcomeRecorder(("ftrl",))
    resumed = Service(ServiceConfig(bootstrap=kafka_bootstrap, metrics_port=None, topics=topics,
                                    kafka_client=kafka_client,
                                    group_id=group, joiner=JOIN, checkpoint_dir=ckpt,
                                    max_events=total),
                      extra_outcome_callbacks=[second])
    assert 0 < resumed.run().records_total == total

    replayed = run_replay(stream_dir, ["ftrl"], None, joiner_config=JOIN, show_progress=False)
    both = pl.concat([first.to_frame(), second.to_frame()])
    assert both["impression_id"].to_list() == replayed.outcomes["impression_id"].to_list()
    assert both["score_ftrl"].to_list() == replayed.outcomes["score_ftrl"].to_list()
