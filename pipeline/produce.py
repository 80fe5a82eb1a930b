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

from kafka import KafkaProducer

from features.events import Impression, encode_event
from pipeline.service import Topics
from replay.inputs import iter_events, read_replay_input
from replay.progress import progress

__all__ = ["ProduceSummary", "produce_folder"]


@dataclass(frozen=True)
class ProduceSummary:
    impressions: int
    clicks: int
    skipped_invalid: int
    seconds: float


def produce_folder(
    folder: str | Path,
    bootstrap: str,
    *,
    topics: Topics | None = None,
    rate: float | None = None,
    show_progress: bool = True,
) -> ProduceSummary:
    """Publish every valid event of ``folder``; return counts once all are acknowledged."""
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate}")
    topics = topics or Topics()
    inp = read_replay_input(folder)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        batch_size=256 * 1024,
        max_in_flight_requests_per_connection=1,  # keeps per-partition order under retries
        retries=5,
    )
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
            producer.flush()
    finally:
        producer.close(timeout=10)
    return ProduceSummary(
        impressions=sent[topics.impressions],
        clicks=sent[topics.clicks],
        skipped_invalid=inp.rejected.height,
        seconds=time.monotonic() - started,
    )
