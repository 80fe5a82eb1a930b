"""``streamctr serve``: the long-running consumer service.

One loop, one thread: poll ``impressions`` and ``clicks`` → decode and validate
(bad records to the DLQ with topic, partition, offset and reason) → event-time
merge of the partitions → :class:`~replay.engine.OnlineEngine` (the same joiner
and learners as ``streamctr replay``) → Prometheus metrics, optional
``samples`` topic.

Lifecycle. :meth:`Service.request_stop` (wired to SIGTERM/SIGINT by the CLI) is
safe from a signal handler: it only sets a flag that the loop checks between
polls, so a stop takes at most one poll timeout plus the shutdown. A checkpoint
is taken every ``checkpoint_interval_s`` and on stop, in this order:

1. flush the producers, so every DLQ and samples record of processed input is
   acknowledged;
2. write the checkpoint — learners, the engine (joiner state: open windows, held
   clicks, behaviour store, counters; open impressions' scores) and the offsets of
   the records *processed* (never those only buffered in the merge) — in one
   atomic rename;
3. commit those offsets to the consumer group (for lag monitoring and for a
   restart without a checkpoint folder).

On start the service restores the checkpoint and, as partitions are assigned,
seeks them to the checkpoint's offsets, so its state and its input position
always belong together.

With ``max_events`` the service stops after that many records as if the input had
ended: the merge is drained and every open window closes, so its metrics cover
the same samples a replay of those records would.

One service instance owns all partitions of its topics: the joiner's state is
not split per partition, so several instances in one group would each see only
part of a user's behaviour.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from features.events import Click, Impression, InvalidEvent, decode_click, decode_impression
from features.joiner import JoinerConfig
from learners import Learner, make_learner
from pipeline.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from pipeline.merge import EventTimeMerger
from pipeline.telemetry import ServiceMetrics
from replay.engine import OnlineEngine, Outcome, OutcomeCallback

__all__ = ["Service", "ServiceConfig", "ServiceSummary", "Topics"]

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Topics:
    """Topic names (design.md defaults); override to run several pipelines on one cluster."""

    impressions: str = "impressions"
    clicks: str = "clicks"
    samples: str = "samples"
    dlq: str = "dlq"


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``streamctr serve`` is configured with."""

    bootstrap: str
    learners: tuple[str, ...] = ("ftrl",)
    # Hyper-parameters by learner name (the config file's [learner.<name>] tables).
    learner_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    checkpoint_dir: Path | None = None
    metrics_port: int | None = 9100  # None: no endpoint; 0: any free port
    max_events: int | None = None
    group_id: str = "streamctr"
    topics: Topics = field(default_factory=Topics)
    joiner: JoinerConfig = field(default_factory=JoinerConfig)
    publish_samples: bool = False
    poll_timeout_ms: int = 200
    max_poll_records: int = 5_000
    checkpoint_interval_s: float = 60.0
    max_buffered_per_partition: int = 50_000
    rolling_window: int = 10_000

    def __post_init__(self) -> None:
        if not self.learners:
            raise ValueError("at least one learner is needed")
        if self.max_events is not None and self.max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {self.max_events}")


@dataclass(frozen=True)
class ServiceSummary:
    """What a run of the service did, for the CLI and the demo."""

    consumed: dict[str, int]
    rejected: dict[str, int]
    join: dict[str, int]
    stopped_by: str
    wall_seconds: float
    seconds_to_first_record: float | None  # group join and first fetch
    learner_seconds: dict[str, float]


@dataclass(frozen=True, slots=True)
class _Record:
    event: Impression | Click | None  # None: rejected, only its offset moves on
    partition: TopicPartition
    offset: int


class _SeekToCheckpoint(ConsumerRebalanceListener):
    """On assignment, move each partition to where the restored state ends."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        service = self._service
        assert service._consumer is not None
        for tp in assigned:
            offset = service._resume.get(f"{tp.topic}/{tp.partition}")
            if offset is not None and tp not in service._processed:
                service._consumer.seek(tp, offset)


class Service:
    """The consumer service; construct, then :meth:`run` (blocks) and :meth:`request_stop`."""

    def __init__(
        self,
        config: ServiceConfig,
        *,
        extra_outcome_callbacks: Sequence[OutcomeCallback] = (),
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.learners: dict[str, Learner] = {
            name: make_learner(name, **config.learner_params.get(name, {}))
            for name in config.learners
        }
        self.metrics = ServiceMetrics(self.learners, window=config.rolling_window)
        callbacks = [self.metrics.on_outcome, *extra_outcome_callbacks]
        if config.publish_samples:
            callbacks.append(self._publish_sample)
        self.engine = OnlineEngine(
            self.learners, config.joiner, on_outcome=callbacks, on_orphan=[self._reject_orphan]
        )
        self._resume: dict[str, int] = {}  # "topic/partition" -> next offset to read
        if config.checkpoint_dir is not None and has_checkpoint(config.checkpoint_dir):
            self._resume = load_checkpoint(config.checkpoint_dir, self._stateful_parts())
            log.info("restored state from %s", config.checkpoint_dir)
        self._on_progress = on_progress
        self._stop = threading.Event()
        self._stopped_by = "max-events"
        self._consumed: dict[str, int] = {config.topics.impressions: 0, config.topics.clicks: 0}
        self._rejected: dict[str, int] = dict.fromkeys(self._consumed, 0)
        self._processed: dict[TopicPartition, int] = {}  # next offset to commit
        self._last_ts: dict[TopicPartition, int] = {}  # event time of the last decoded record
        self._newest_ts: int | None = None
        self._first_record_at: float | None = None
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None

    @property
    def metrics_port(self) -> int | None:
        return self.metrics.port

    def request_stop(self, reason: str = "signal") -> None:
        """Ask the loop to stop after the current poll (safe from signal handlers)."""
        self._stopped_by = reason
        self._stop.set()

    def run(self) -> ServiceSummary:
        """Consume until stopped or ``max_events`` records were read; then shut down cleanly."""
        cfg = self.config
        started = time.monotonic()
        if cfg.metrics_port is not None:
            self.metrics.serve(cfg.metrics_port)
        self._producer = KafkaProducer(
            bootstrap_servers=cfg.bootstrap, acks="all", linger_ms=20, retries=5
        )
        self._consumer = KafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=cfg.max_poll_records,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )
        self._consumer.subscribe([cfg.topics.impressions, cfg.topics.clicks],
                                 listener=_SeekToCheckpoint(self))
        try:
            self._loop()
        finally:
            self._shutdown()
        return ServiceSummary(
            consumed=dict(self._consumed),
            rejected=dict(self._rejected),
            join=self.engine.joiner.stats.as_dict(),
            stopped_by=self._stopped_by,
            wall_seconds=time.monotonic() - started,
            seconds_to_first_record=(None if self._first_record_at is None
                                     else self._first_record_at - started),
            learner_seconds=dict(self.engine.learner_seconds),
        )

    def _loop(self) -> None:
        cfg = self.config
        consumer = self._consumer
        assert consumer is not None
        merger: EventTimeMerger[_Record] = EventTimeMerger()
        remaining = cfg.max_events
        next_publish = next_checkpoint = time.monotonic()
        next_checkpoint += cfg.checkpoint_interval_s
        while not self._stop.is_set():
            batch_limit = (cfg.max_poll_records if remaining is None
                           else min(cfg.max_poll_records, remaining))
            polled = consumer.poll(timeout_ms=cfg.poll_timeout_ms, max_records=batch_limit)
            if polled and self._first_record_at is None:
                self._first_record_at = time.monotonic()
            for tp, messages in polled.items():
                merger.add(tp, self._rank(tp), self._decode(tp, messages))
                if remaining is not None:
                    remaining -= len(messages)
            self._throttle(consumer, merger)
            done = remaining is not None and remaining <= 0
            assigned = consumer.assignment()
            caught_up = {tp for tp in assigned if self._caught_up(consumer, tp)}
            self._process(list(merger.drain(caught_up, assigned, force=done)))
            if assigned and caught_up == assigned and not polled and not len(merger):
                # Read to the end of every partition (not merely not assigned yet).
                self.engine.idle()
            now = time.monotonic()
            if now >= next_publish:
                self._publish_metrics(consumer, assigned)
                next_publish = now + 1.0
            if cfg.checkpoint_dir is not None and now >= next_checkpoint:
                self._checkpoint()
                next_checkpoint = now + cfg.checkpoint_interval_s
            if done:
                self.engine.finish()
                break

    def _rank(self, tp: TopicPartition) -> int:
        # Impressions before clicks on equal event times, as in replay.
        return 0 if tp.topic == self.config.topics.impressions else 1

    def _decode(self, tp: TopicPartition, messages: list[Any]) -> list[tuple[int, _Record]]:
        decode = decode_impression if tp.topic == self.config.topics.impressions else decode_click
        self._consumed[tp.topic] += len(messages)
        self.metrics.consumed.labels(tp.topic).inc(len(messages))
        out = []
        ts = self._last_ts.get(tp, 0)
        for message in messages:
            try:
                event = decode(message.value)
            except InvalidEvent as exc:
                self._reject(tp.topic, tp.partition, message.offset, str(exc), message.value)
                # It still passes through the merge (at its predecessor's time), so its
                # offset is committed only after every earlier record was processed.
                out.append((ts, _Record(None, tp, message.offset)))
                continue
            ts = event.ts
            out.append((ts, _Record(event, tp, message.offset)))
        self._last_ts[tp] = ts
        if self._on_progress is not None:
            self._on_progress(len(messages))
        return out

    def _process(self, records: list[_Record]) -> None:
        """Hand the released records to the engine as one batch; then they count as processed."""
        events = [r.event for r in records if r.event is not None]
        if events:
            self.engine.process(events)  # type: ignore[arg-type]
            newest = max(e.ts for e in events)
            if self._newest_ts is None or newest > self._newest_ts:
                self._newest_ts = newest
        for record in records:
            self._processed[record.partition] = record.offset + 1

    def _throttle(self, consumer: KafkaConsumer, merger: EventTimeMerger[_Record]) -> None:
        """Pause partitions far ahead of the others so the merge's buffers stay bounded."""
        limit = self.config.max_buffered_per_partition
        paused = consumer.paused()
        for tp in consumer.assignment():
            size = merger.buffered(tp)
            if size >= limit and tp not in paused:
                consumer.pause(tp)
            elif size < limit // 2 and tp in paused:
                consumer.resume(tp)

    @staticmethod
    def _caught_up(consumer: KafkaConsumer, tp: TopicPartition) -> bool:
        highwater = consumer.highwater(tp)
        return highwater is not None and consumer.position(tp) >= highwater

    def _reject(self, topic: str, partition: int, offset: int | None, reason: str,
                raw: bytes | None) -> None:
        self._rejected[topic] = self._rejected.get(topic, 0) + 1
        self.metrics.rejected.labels(topic).inc()
        count = self._rejected[topic]
        # Orphans are a normal condition of click streams (counted, exported); invalid
        # records are a producer's bug and deserve a warning, rate-limited.
        level = logging.DEBUG if offset is None else logging.WARNING
        if count <= 10 or count % 1_000 == 0:
            log.log(level, "rejected %s[%s]@%s (%d so far): %s", topic, partition, offset, count,
                    reason)
        record = None if raw is None else raw.decode("utf-8", errors="replace")
        payload = {"topic": topic, "partition": partition, "offset": offset, "reason": reason,
                   "record": record}
        assert self._producer is not None
        self._producer.send(self.config.topics.dlq, _json.encode(payload))

    def _reject_orphan(self, click: Click) -> None:
        self._reject(self.config.topics.clicks, None, None, "unknown impression",
                     _json.encode(click))

    def _publish_sample(self, outcome: Outcome) -> None:
        """Engine callback: the labelled sample to the samples topic (scale-out trainers)."""
        release = outcome.release
        payload = {"impression": release.impression, "label": release.label,
                   "click_ts": release.click_ts, "final_ts": release.final_ts}
        assert self._producer is not None
        self._producer.send(self.config.topics.samples, _json.encode(payload),
                            key=release.impression.user_id.encode())

    def _publish_metrics(self, consumer: KafkaConsumer, assigned: set[TopicPartition]) -> None:
        joiner = self.engine.joiner
        self.metrics.publish(joiner.stats, joiner.open_windows, self._newest_ts)
        self.metrics.publish_learners({name: learner.stats()
                                       for name, learner in self.learners.items()
                                       if callable(getattr(learner, "stats", None))})
        lag: dict[str, int] = {}
        for tp in assigned:
            highwater = consumer.highwater(tp)
            if highwater is not None:
                lag[tp.topic] = lag.get(tp.topic, 0) + max(0, highwater - consumer.position(tp))
        for topic, records in lag.items():
            self.metrics.consumer_lag.labels(topic).set(records)

    def _stateful_parts(self) -> dict[str, Any]:
        return {"engine": self.engine,
                **{f"learner.{name}": learner for name, learner in self.learners.items()}}

    def _checkpoint(self) -> None:
        """Producers flushed, then state + processed offsets saved, then offsets committed."""
        assert self._producer is not None and self._consumer is not None
        self._producer.flush()
        if self.config.checkpoint_dir is not None:
            offsets = {**self._resume,
                       **{f"{tp.topic}/{tp.partition}": o for tp, o in self._processed.items()}}
            save_checkpoint(self.config.checkpoint_dir, self._stateful_parts(), offsets)
        if self._processed:
            self._consumer.commit(
                {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._processed.items()}
            )

    def _shutdown(self) -> None:
        try:
            if self._consumer is not None and self._producer is not None:
                self._checkpoint()
                self._publish_metrics(self._consumer, self._consumer.assignment())
        finally:
            if self._consumer is not None:
                self._consumer.close(autocommit=False)
            if self._producer is not None:
                self._producer.close(timeout=10)
            self.metrics.close()

