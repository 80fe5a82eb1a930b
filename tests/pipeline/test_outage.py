"""Broker outage: the service waits, reports unready, and resumes without loss.

The embedded broker (tansu) keeps its storage in memory only — it has no persistent
mode here (its other storage engines are PostgreSQL and S3) — so a restarted broker
is empty. The test therefore stops the broker mid-stream, starts a new one on the same
port, creates the topics again and produces the same records again (same producer
order, so the same offsets): the service, still running, must end with exactly the
model of an uninterrupted replay — nothing learned twice, nothing lost.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from features.joiner import JoinerConfig
from pipeline.broker import EmbeddedBroker, create_topics, free_port
from pipeline.produce import produce_folder
from pipeline.service import Service, ServiceConfig, Topics
from replay.report import OutcomeRecorder
from replay.run import run_replay
from replay.synthetic import generate, write_stream

pytestmark = pytest.mark.integration

JOIN = JoinerConfig(window_ms=60_000)


@pytest.mark.parametrize("library", ["kafka-python", "confluent"])
def test_broker_outage_mid_stream_is_waited_out_without_loss(tmp_path, library):
    if library == "confluent":
        pytest.importorskip("confluent_kafka", reason="the confluent extra is not installed")
    data = tmp_path / "data"
    write_stream(generate(20_000, seed=5), data)
    port = free_port()
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(f"imp-{suffix}", f"clk-{suffix}", f"smp-{suffix}", f"dlq-{suffix}")
    names = [topics.impressions, topics.clicks, topics.samples, topics.dlq]

    def fill(broker: EmbeddedBroker) -> int:
        # Four partitions: what tansu would auto-create if the service subscribed first.
        create_topics(broker.bootstrap, names, partitions=4)
        produced = produce_folder(data, broker.bootstrap, topics=topics, show_progress=False)
        return produced.impressions + produced.clicks

    first = EmbeddedBroker(port=port).start()
    total = fill(first)
    recorder = OutcomeRecorder(("ftrl",))
    consumed = [0]
    outage: list[int] = []  # records read when the broker went

    def stop_broker_a_quarter_in(records: int) -> None:
        # On the service's thread, between decoding and processing: a quarter of the
        # input read, the rest still in the broker, whatever the service's speed.
        consumed[0] += records
        if consumed[0] >= total // 4 and not outage:
            first.stop()
            outage.append(consumed[0])

    service = Service(ServiceConfig(
        bootstrap=first.bootstrap, kafka_client=library, metrics_port=None, topics=topics,
        group_id=f"outage-{suffix}", joiner=JOIN, checkpoint_dir=tmp_path / "ck",
        checkpoint_interval_s=0.5, max_events=total, max_poll_records=200,
        max_buffered_per_partition=500, flush_timeout_s=2, session_timeout_ms=6_000),
        extra_outcome_callbacks=[recorder], on_progress=stop_broker_a_quarter_in)
    runner = threading.Thread(target=service.run)
    runner.start()
    second = None
    try:
        deadline = time.monotonic() + 120
        while not outage:
            assert runner.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        at_outage = outage[0]
        unready = None
        while time.monotonic() < deadline:  # it notices: unready, with the reason
            ready, text = service.metrics.readiness()
            if not ready and "broker unreachable" in text:
                unready = text
                break
            time.sleep(0.2)
        assert unready, "readiness never said the broker was unreachable"
        time.sleep(3)  # an outage of some seconds: retries, backoff
        # What was read when the broker went, and what the client had fetched beyond it
        # (partitions pause at 500 records buffered in the merge: 8 × 500), may still be
        # processed; no more.
        assert runner.is_alive() and service._records <= at_outage + 4_000 < total // 2
        second = EmbeddedBroker(port=port).start()
        assert fill(second) == total
        runner.join(timeout=180)
        assert not runner.is_alive(), "the service did not finish after the broker returned"
    finally:
        if runner.is_alive():
            service.request_stop("test")
            runner.join(30)
        for broker in (first, second):
            if broker is not None:
                broker.stop()
    assert service._records == total
    assert service.metrics.readiness()[1] == "not ready: stopping"
    replayed = run_replay(data, ["ftrl"], None, joiner_config=JOIN, show_progress=False)
    outcomes = recorder.to_frame()
    assert outcomes["impression_id"].to_list() == replayed.outcomes["impression_id"].to_list()
    assert outcomes["score_ftrl"].to_list() == replayed.outcomes["score_ftrl"].to_list()
