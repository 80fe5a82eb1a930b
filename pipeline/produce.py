"""``streamctr produce``: publish a replay folder to the topics in event-time order.

Impressions go to the impressions topic and clicks to the clicks topic, keyed by
``user_id`` (so a user's events share a partition number on both topics), with
the Kafka record timestamp set to the event time. Records are sent in the order
of :func:`replay.inputs.iter_events`, optionally paced to ``rate`` events/s.
Invalid rows of the folder are not published; their count is reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from features.events import Impression, encode_event
from pipeline.kafka_clients import KafkaClientConfig, make_producer
from pipeline.service import Topics
from replay.inputs import iter_events, read_replay_input
from replay.progress import progress

__all__ = ["ProduceSummary", "produce_folder"]

_FLUSH_TIMEOUT_S = 300.0  # the whole folder's last records, acknowledged


@dataclass(frozen=True)
class ProduceSummary:
    impressions: int
    clicks: int
    skipped_invalid: int
    seconds: float


def produce_folder(
    folder: str | Path,
    kafka: KafkaClientConfig | str,
    *,
    topics: Topics | None = None,
    rate: float | None = None,
    show_progress: bool = True,
) -> ProduceSummary:
    """Publish every valid event of ``folder``; return counts once all are acknowledged.

    ``kafka`` is a bootstrap address (kafka-python, no security) or a full client config.
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate}")
    topics = topics or Topics()
    inp = read_replay_input(folder)
    if isinstance(kafka, str):
        kafka = KafkaClientConfig(kafka)
    producer = make_producer(kafka)
    started = time.monotonic()
    sent = {topics.impressions: 0, topics.clicks: 0}
    try:
        with progress("produce", inp.n_events, enabled=show_progress) as ticker:
            for n, event in enumerate(iter_events(inp)):
                topic = topics.impressions if type(event) is Impression else topics.clicks
                producer.send(topic, encode_event(event), key=event.user_id.encode(),
                              timestamp_ms=event.ts)
                sent[topic] += 1
                ticker.tick()
                if rate is not None:
                    ahead = (n + 1) / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            producer.flush(_FLUSH_TIMEOUT_S)
    finally:
        producer.close(10)
    return ProduceSummary(
        impressions=sent[topics.impressions],
        clicks=sent[topics.clicks],
        skipped_invalid=inp.rejected.height,
        seconds=time.monotonic() - started,
    )
