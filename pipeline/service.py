"""``streamctr serve``: the long-running consumer service.

One loop, one thread: poll ``impressions`` and ``clicks`` (the client reads a few batches
ahead in a child process, :mod:`pipeline.read_ahead`) → decode and validate
(bad records to the DLQ with topic, partition, offset and reason) → event-time
merge of the partitions → :class:`~replay.engine.OnlineEngine` (the same joiner
and learners as ``streamctr replay``) → Prometheus metrics, optional
``samples`` topic.

Exactly-once effect. The service's state — the learners and the engine (joiner:
open windows, held clicks, events waiting at the watermark, behaviour store,
counters; open impressions' scores) — and the offset of every partition it has
*processed* (never those only buffered in the merge) are saved together in one
checkpoint (:mod:`pipeline.checkpoint`: ``DIR/ckpt-<id>/``, one ``.npz`` per part
and a manifest with SHA-256 checksums, the offsets and the record count; written
to a staging folder, fsynced, renamed; the last ``checkpoint_keep`` kept). A
checkpoint is taken every ``checkpoint_interval_s``, when partitions are revoked,
and on stop, always between two batches and in this order:

1. flush the producers, so every DLQ and samples record of processed input is
   acknowledged (if they cannot be flushed in ``flush_timeout_s``, no checkpoint; if
   a record could not be delivered at all, the service stops with an error: its
   last checkpoint predates the loss, and a restart produces the record again);
2. write the checkpoint and make it durable;
3. commit the same offsets to the consumer group — only for lag monitoring: where
   to read is always taken from the checkpoint.

On start the service restores the newest valid checkpoint (a corrupt or partial
one is skipped with a warning, the one before it used) and, as partitions are
assigned, seeks each to the checkpoint's offset — to its beginning if the
checkpoint has none for it. So state and input position always belong together:
a restart after a crash, at any point, re-reads exactly the records the restored
state has not taken in, and ends in the same model as an uninterrupted run
(``tests/pipeline/test_recovery.py``). What is *produced* (DLQ, samples) is
at-least-once: records produced after the last checkpoint are produced again.

Revocation. ``on_partitions_revoked`` (a rebalance, or closing) writes a
checkpoint first, then drops the revoked partitions' records buffered in the merge;
they are read again from the processed offset wherever the partitions go next.

Lifecycle. :meth:`Service.request_stop` (wired to SIGTERM/SIGINT by the CLI) is
safe from a signal handler: it only sets a flag that the loop checks between
batches (at most ``max_poll_records`` records go to the engine at once, however
many the merge releases), so the batch in hand is finished, then the final
checkpoint is written and the service exits; a stop takes one poll timeout, one
batch, one checkpoint and the clients' close (bounded by ``flush_timeout_s`` and
``close_timeout_s``).
If the loop fails in the middle of a batch, no checkpoint of that half-applied
state is written: the previous one stands.

With ``max_events`` the service stops once its state has taken in that many
records — counted over restarts, since the checkpoint holds the count — as if the
input had ended: the merge is drained and every open window closes, so its metrics
cover the same samples a replay of those records would.

Roles (``ServiceConfig.role``, ``serve --role``). ``all`` (the default) joins and
trains in one process, which owns every partition of its topics. ``join`` runs the
joiner without learners and publishes every final sample, with the features of its
impression time (:mod:`pipeline.samples`), to the samples topic, keyed by user: join
workers in one group split the partitions, each a consistent shard of users —
impressions and clicks are keyed by user and the range assignor gives a member the
same partition numbers of both topics — so the union of their samples is the
one-process run's (``tests/pipeline/test_roles.py``; an item's counters are per
shard, so features differ). ``train`` reads the samples
topic, event-time merged on the time labels became final, and learns each sample
after scoring it (progressive validation at label time, see
:class:`pipeline.samples.SampleTrainer`); it is a single writer: one train worker
owns all partitions of the samples topic. Each role checkpoints its own state with
its own input offsets, as above; samples reach the train role at least once (a join
worker restarted from a checkpoint produces again what it produced after it, and one
given partitions its checkpoint has no offset for reads them from their beginning and
produces all of their samples again).
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from features.events import (
    MAX_EVENT_BYTES,
    Click,
    Impression,
    InvalidEvent,
    decode_click,
    decode_impression,
)
from features.featurize import impression_features
from features.joiner import JoinerConfig, JoinStats
from learners import Learner, make_learner
from learners.base import close_learner
from pipeline.checkpoint import CheckpointError, CheckpointStore, CheckpointWritten, Restored
from pipeline.kafka_clients import (
    BrokerUnreachable,
    CommitFailed,
    Consumer,
    ConsumerSettings,
    FlushTimeout,
    KafkaClientConfig,
    KafkaClientError,
    KafkaSecurity,
    OffsetOutOfRange,
    ProduceFailed,
    Producer,
    TopicPartition,
    make_consumer,
    make_producer,
)
from pipeline.merge import EventTimeMerger, Released
from pipeline.read_ahead import ReadAheadConsumer
from pipeline.samples import Sample, SampleTrainer, encode_sample
from pipeline.telemetry import ServiceMetrics
from replay.engine import OnlineEngine, Outcome, OutcomeCallback

__all__ = ["ROLES", "STOPPED_SHARED_TRAIN_GROUP", "Service", "ServiceConfig", "ServiceSummary",
           "Topics"]

# all: join and train in one process; join: join and publish samples; train: learn samples.
ROLES = ("all", "join", "train")

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()


_GC_GEN0_THRESHOLD = 50_000
# ServiceSummary.stopped_by of a train worker that found another in its group.
STOPPED_SHARED_TRAIN_GROUP = "second-train-worker"


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
    learners: tuple[str, ...] = ("ftrl",)  # none in the join role
    role: str = "all"  # "all", "join" or "train" (see the module doc)
    kafka_client: str = "kafka-python"  # or "confluent" (pipeline.kafka_clients)
    # The client polls in a child process, batches ahead (pipeline.read_ahead), so
    # reading overlaps processing; False: on the service's own thread. Faster with both
    # libraries in bench/service.py (with confluent since the child queues several batches).
    read_ahead: bool = True
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    # Hyper-parameters by learner name (the config file's [learner.<name>] tables).
    learner_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    checkpoint_dir: Path | None = None
    metrics_port: int | None = 9100  # None: no endpoint; 0: any free port
    metrics_host: str = "0.0.0.0"  # the endpoint's bind address
    max_events: int | None = None
    group_id: str = "streamctr"
    group_instance_id: str | None = None  # static membership: a restart keeps its partitions
    session_timeout_ms: int = 10_000
    topics: Topics = field(default_factory=Topics)
    joiner: JoinerConfig = field(default_factory=JoinerConfig)
    publish_samples: bool = False
    poll_timeout_ms: int = 200
    max_poll_records: int = 5_000
    checkpoint_interval_s: float = 60.0
    checkpoint_keep: int = 3  # checkpoints kept in checkpoint_dir
    flush_timeout_s: float = 30.0  # producers' flush before a checkpoint
    close_timeout_s: float = 10.0  # consumer's and producer's close at the end
    max_buffered_per_partition: int = 50_000
    rolling_window: int = 10_000

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.role == "join":
            if self.learners:
                raise ValueError("the join role trains no learners (it publishes samples "
                                 f"for --role train); got learners {','.join(self.learners)}")
            if self.joiner.mode == "fnw":
                raise ValueError("the join role needs joiner mode 'wait': FNW training "
                                 "weights each sample by the learner's score at impression "
                                 "time, which only --role all has")
        elif not self.learners:
            raise ValueError("at least one learner is needed")
        if self.role == "train" and self.publish_samples:
            raise ValueError("the train role reads samples; it does not publish them")
        if self.max_events is not None and self.max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {self.max_events}")
        if not self.checkpoint_interval_s > 0:
            raise ValueError(f"checkpoint_interval_s must be > 0, got "
                             f"{self.checkpoint_interval_s}")
        if self.checkpoint_keep < 1:
            raise ValueError(f"checkpoint_keep must be >= 1, got {self.checkpoint_keep}")
        self.kafka  # noqa: B018 (validates the client library and bootstrap)

    @property
    def kafka(self) -> KafkaClientConfig:
        return KafkaClientConfig(self.bootstrap, self.kafka_client,  # type: ignore[arg-type]
                                 self.security)


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
    records_total: int = 0  # records the state has taken in, over restarts
    restored: int | None = None  # id of the checkpoint restored at start
    checkpoint: CheckpointWritten | None = None  # the last one written
    shutdown_seconds: float = 0.0  # final checkpoint, commit and closing the clients


class _SeekToCheckpoint:
    """Checkpoint before partitions go; seek each assigned one to where the state ends.

    The clients call these inside ``poll`` (or ``close``), so the engine is between two
    batches.
    """

    def __init__(self, service: Service) -> None:
        self._service = service

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._service._on_revoked(set(revoked))

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        # The group moved on without us: our state and offsets still belong together.
        self._service._on_revoked(set(lost))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._service._on_assigned(set(assigned))


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
        callbacks = list(extra_outcome_callbacks)
        publishing = config.publish_samples or config.role == "join"
        if publishing:
            callbacks.append(self._publish_sample)
        topics = config.topics
        # What turns input records into state: a joiner with the learners (all), without
        # (join), or the learners alone (train). Input topics in merge rank order.
        self.engine: OnlineEngine | None = None
        self._stage: OnlineEngine | SampleTrainer
        self._decoders: dict[str, Callable[[bytes | None], Impression | Click | Sample]]
        if config.role == "train":
            self._stage = SampleTrainer(self.learners,
                                        on_outcome=[self.metrics.on_outcome, *callbacks])
            self._decoders = {topics.samples: self._stage.decode}
        else:
            # Published samples carry the behaviour sequences whatever learns here, so a
            # sequence learner in a train worker can learn them.
            featurize = (functools.partial(impression_features, with_behaviours=True)
                         if publishing else impression_features)
            self._stage = self.engine = OnlineEngine(
                self.learners, config.joiner, featurize=featurize, on_outcome=callbacks,
                on_outcomes=[self.metrics.on_outcomes],
                on_orphan=[self._reject_orphan])
            # Impressions before clicks on equal event times, as in replay.
            self._decoders = {topics.impressions: decode_impression, topics.clicks: decode_click}
        self._resume: dict[str, int] = {}  # "topic/partition" -> next offset to read
        self._records = 0  # records (valid or rejected) the state has taken in, ever
        self._store: CheckpointStore | None = None
        self._restored: Restored | None = None
        if config.checkpoint_dir is not None:
            self._store = CheckpointStore(config.checkpoint_dir, keep=config.checkpoint_keep)
            self._restored = self._store.restore(self._stateful_parts())
            if self._restored is not None:
                ckpt = self._restored.checkpoint
                self._resume = self._restored.offsets
                self._records = self._restored.records
                log.info("restored checkpoint %s: %s records, offsets %s", ckpt.path,
                         f"{self._records:,}", self._resume)
                self.metrics.on_checkpoint_restored(ckpt.written_at_ms / 1000, ckpt.size_bytes)
            else:
                log.info("no checkpoint in %s: fresh state, every partition read from its "
                         "beginning", config.checkpoint_dir)
        self.last_checkpoint: CheckpointWritten | None = None  # the last one written
        # Records by event time; None: rejected (it passes through the merge at its
        # predecessor's time, so only its offset moves on, after every earlier record's).
        self._merger: EventTimeMerger[Impression | Click | Sample | None] = EventTimeMerger()
        self._dirty = False  # state changed since the last checkpoint (or the restore)
        self._consistent = True  # False while a batch is half-applied
        self._commit_due = False  # a checkpoint whose offsets are not committed yet
        self._closing = False
        self._on_progress = on_progress
        self._stop = threading.Event()
        self._stopped_by = "max-events"
        self._consumed: dict[str, int] = dict.fromkeys(self._decoders, 0)
        self._rejected: dict[str, int] = dict.fromkeys(self._consumed, 0)
        self._processed: dict[TopicPartition, int] = {}  # next offset to commit
        self._last_ts: dict[TopicPartition, int] = {}  # event time of the last decoded record
        # Where each click the joiner still holds was read (by object identity, which is
        # stable while the joiner keeps it), so an orphan's letter can name its offset.
        # Clicks restored from a checkpoint's joiner state have no entry: offset null.
        self._click_sources: dict[int, tuple[int, int]] = {}
        self._newest_ts: int | None = None
        self._first_record_at: float | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._behind: dict[TopicPartition, str] = {}  # partitions waiting for their log
        self._backoff_s = 0.0

    @property
    def metrics_port(self) -> int | None:
        return self.metrics.port

    def assignment(self) -> set[TopicPartition]:
        """The partitions this instance holds now (none before it joined its group)."""
        return set() if self._consumer is None else self._consumer.assignment()

    def request_stop(self, reason: str = "signal") -> None:
        """Ask the loop to stop after the current poll (safe from signal handlers)."""
        self._stopped_by = reason
        self._stop.set()

    def run(self) -> ServiceSummary:
        """Consume until stopped or ``max_events`` records were read; then shut down cleanly."""
        cfg = self.config
        started = time.monotonic()
        if self._store is not None:
            self._store.lock()  # one writer per checkpoint folder
        if cfg.metrics_port is not None:
            self.metrics.serve(cfg.metrics_port, cfg.metrics_host)
        # Every record makes a few short-lived objects (the client's record, the merge's
        # entry): at the default gen-0 threshold (700) the collector ran every few hundred
        # records and took a third of the service's time (bench/service.py, 32K -> 44K
        # records/s). Cycles are still collected, just in larger batches.
        thresholds = gc.get_threshold()
        gc.set_threshold(_GC_GEN0_THRESHOLD, *thresholds[1:])
        try:
            if self._connect():
                self._loop()
        except BaseException:
            self._shutdown(failed=True)
            raise
        finally:
            gc.set_threshold(*thresholds)
        stopping = time.monotonic()
        self._shutdown(failed=False)
        stopped = time.monotonic()
        return ServiceSummary(
            consumed=dict(self._consumed),
            rejected=dict(self._rejected),
            join={} if self.engine is None else self.engine.joiner.stats.as_dict(),
            stopped_by=self._stopped_by,
            wall_seconds=stopped - started,
            seconds_to_first_record=(None if self._first_record_at is None
                                     else self._first_record_at - started),
            learner_seconds=dict(self._stage.learner_seconds),
            records_total=self._records,
            restored=None if self._restored is None else self._restored.checkpoint.id,
            checkpoint=self.last_checkpoint,
            shutdown_seconds=stopped - stopping,
        )

    def _connect(self) -> bool:
        """Create the clients, retrying with backoff while no broker answers; False if
        stopped before one did."""
        cfg = self.config
        backoff = 1.0
        while not self._stop.is_set():
            try:
                if self._producer is None:
                    self._producer = make_producer(cfg.kafka)
                consumer = ReadAheadConsumer if cfg.read_ahead else make_consumer
                self._consumer = consumer(cfg.kafka, ConsumerSettings(
                    group_id=cfg.group_id, max_poll_records=cfg.max_poll_records,
                    session_timeout_ms=cfg.session_timeout_ms,
                    group_instance_id=cfg.group_instance_id))
            except BrokerUnreachable as exc:
                self.metrics.set_ready(False, f"broker unreachable: {exc}")
                log.warning("%s; trying again in %.0f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(30.0, backoff * 2)
                continue
            self._consumer.subscribe(list(self._decoders), _SeekToCheckpoint(self))
            return True
        return False

    def _loop(self) -> None:
        cfg = self.config
        consumer = self._consumer
        assert consumer is not None
        if cfg.max_events is not None and self._records >= cfg.max_events:
            log.info("the restored state has taken in %s records already (max_events %s)",
                     f"{self._records:,}", f"{cfg.max_events:,}")
        next_publish = next_checkpoint = time.monotonic()
        next_checkpoint += cfg.checkpoint_interval_s
        while not self._stop.is_set():
            # Records still wanted: those not taken in by the state nor buffered in the merge
            # (buffered ones of revoked partitions are dropped and read again).
            wanted = (None if cfg.max_events is None
                      else cfg.max_events - self._records - len(self._merger))
            polled: dict[TopicPartition, list[Any]] = {}
            if wanted is None or wanted > 0:
                limit = cfg.max_poll_records if wanted is None else min(cfg.max_poll_records,
                                                                         wanted)
                try:
                    polled = consumer.poll(timeout_ms=cfg.poll_timeout_ms, max_records=limit)
                except OffsetOutOfRange as exc:
                    self._on_out_of_range(consumer, exc)
                else:
                    self._behind.clear()
                    self._backoff_s = 0.0
            if polled and self._first_record_at is None:
                self._first_record_at = time.monotonic()
            merger = self._merger
            for tp, messages in polled.items():
                self._decode(tp, messages)
            if self._commit_due:
                self._commit()
            self._throttle(consumer, merger)
            done = (cfg.max_events is not None
                    and self._records + len(merger) >= cfg.max_events)
            assigned = consumer.assignment()
            self._update_readiness(consumer, assigned)
            caught_up = {tp for tp in assigned if self._caught_up(consumer, tp)}
            released = merger.drain(caught_up, assigned, force=done)
            # Over a backlog the merge may release a great many records at once: they go to
            # the engine in batches of at most max_poll_records, with the stop flag and the
            # checkpoint clock looked at between two, so a stop waits for one batch only.
            # Released records not processed when stopping are simply read again.
            for start in range(0, len(released), cfg.max_poll_records):
                self._process(released.slice(start, start + cfg.max_poll_records))
                next_checkpoint = self._checkpoint_if_due(next_checkpoint)
                if self._stop.is_set():
                    break
            if self._stop.is_set():
                break
            if (assigned and caught_up == assigned and not polled and not len(merger)
                    and self.engine is not None and self.engine.joiner.waiting):
                # Read to the end of every partition (not merely not assigned yet).
                self._apply(self.engine.idle)
            next_checkpoint = self._checkpoint_if_due(next_checkpoint)
            now = time.monotonic()
            if now >= next_publish:
                self._publish_metrics(consumer, assigned)
                next_publish = now + 1.0
            if done:
                self._apply(self._stage.finish)
                break

    def _checkpoint_if_due(self, due: float) -> float:
        """The periodic checkpoint, if its time has come; returns when the next one is due."""
        if self._store is None or time.monotonic() < due:
            return due
        self._checkpoint("interval", required=False)
        if self._commit_due:
            self._commit()
        return time.monotonic() + self.config.checkpoint_interval_s

    def _rank(self, tp: TopicPartition) -> int:
        return list(self._decoders).index(tp.topic)

    def _decode(self, tp: TopicPartition, messages: list[Any]) -> None:
        """Decode one partition's polled records into the merge (rejected ones as None)."""
        decode = self._decoders[tp.topic]
        self._consumed[tp.topic] += len(messages)
        self.metrics.consumed.labels(tp.topic).inc(len(messages))
        try:  # the common case, a batch without a bad record, in one pass
            events: list[Any] = [decode(message.value) for message in messages]
            times = [event.ts for event in events]
        except InvalidEvent:
            events, times = self._decode_rejecting(tp, messages, decode)
        if times:
            self._last_ts[tp] = times[-1]
        self._merger.add(tp, self._rank(tp), times, events,
                         [message.offset for message in messages])
        if self._on_progress is not None:
            self._on_progress(len(messages))

    def _decode_rejecting(self, tp: TopicPartition, messages: list[Any],
                          decode: Callable[[bytes | None], Any]) -> tuple[list[Any], list[int]]:
        """:meth:`_decode` record by record: a bad one goes to the DLQ and is merged as None
        at its predecessor's time."""
        events: list[Any] = []
        times: list[int] = []
        ts = self._last_ts.get(tp, 0)
        for message in messages:
            try:
                event = decode(message.value)
            except InvalidEvent as exc:
                self._reject(tp.topic, tp.partition, message.offset, str(exc), message.value)
                event = None
            else:
                ts = event.ts
            events.append(event)
            times.append(ts)
        return events, times

    def _process(self, released: Released[Impression | Click | Sample | None]) -> None:
        """Hand the released records to the engine as one batch; then they count as processed."""
        if not len(released):
            return
        events = released.items
        if None in events:
            events = [e for e in events if e is not None]
        self._consistent = False
        if events:
            sources = self._click_sources
            clicks_topic = self.config.topics.clicks
            from_clicks = np.array([tp.topic == clicks_topic for tp in released.partitions])
            for i in np.flatnonzero(from_clicks[released.sources]).tolist():
                click = released.items[i]
                if click is not None:
                    sources[id(click)] = (released.partitions[released.sources[i]].partition,
                                          int(released.offsets[i]))
            started = time.perf_counter()
            self._stage.process(events)  # type: ignore[arg-type]
            self.metrics.on_batch(time.perf_counter() - started)
            if self.engine is not None:
                self._click_sources = {
                    id(click): sources[id(click)]
                    for click in self.engine.joiner.pending_clicks() if id(click) in sources}
            # A rejected record's time is its predecessor's: the newest is an event's.
            newest = int(released.times.max())
            if self._newest_ts is None or newest > self._newest_ts:
                self._newest_ts = newest
        for tp, offset in released.last_offsets().items():
            self._processed[tp] = offset + 1  # type: ignore[index]
        self._records += len(released)
        self._dirty = True
        self._consistent = True

    def _apply(self, step: Callable[[], None]) -> None:
        """Run an engine step that changes the state outside a batch (idle, finish)."""
        self._consistent = False
        step()
        self._dirty = True
        self._consistent = True

    def _on_out_of_range(self, consumer: Consumer, exc: OffsetOutOfRange) -> None:
        """Positions the broker has no record at: skip what retention deleted, else wait.

        Below the log start, records were deleted before the service read them (it was
        down longer than the topic's retention): nothing brings them back, so reading
        goes on from the log start, with an error naming how many were skipped. Past the
        log end, the broker lost records the state has taken in already (an unclean
        leader election, a restarted broker with memory storage): reading from anywhere
        else would learn records twice or skip them, so the service reports unready and
        retries with backoff until the log reaches the position again.
        """
        for tp, position in exc.positions.items():
            try:
                low, high = consumer.offsets_range(tp)
            except KafkaClientError as err:
                low = high = None
                log.warning("%s/%s: offset %s out of range; log bounds unknown (%s)", tp.topic,
                            tp.partition, position, err)
            if low is not None and position < low:
                log.error("%s/%s: records %s to %s were deleted (retention) before they were "
                          "read: %s record(s) skipped", tp.topic, tp.partition, position,
                          low - 1, f"{low - position:,}")
                self.metrics.records_skipped.labels(tp.topic).inc(low - position)
                consumer.seek(tp, low)
                continue
            why = (f"{tp.topic}/{tp.partition} ends at offset {high}, before the state's "
                   f"position {position}")
            if tp not in self._behind:
                log.warning("%s: waiting for the broker to have those records again", why)
            self._behind[tp] = why
            consumer.seek(tp, position)
        if self._behind:
            self._update_readiness(consumer, consumer.assignment())
            self._backoff_s = min(5.0, max(0.1, self._backoff_s * 2))
            self._stop.wait(self._backoff_s)

    def _update_readiness(self, consumer: Consumer, assigned: set[TopicPartition]) -> None:
        """Ready: partitions assigned, the broker reachable, every partition readable."""
        if not consumer.connected():
            self.metrics.set_ready(False, "broker unreachable")
        elif self._behind:
            self.metrics.set_ready(False, "; ".join(sorted(self._behind.values())))
        elif not assigned:
            self.metrics.set_ready(False, "no partitions assigned")
        else:
            self.metrics.set_ready(True)

    def _throttle(self, consumer: Consumer, merger: EventTimeMerger[Any]) -> None:
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
    def _caught_up(consumer: Consumer, tp: TopicPartition) -> bool:
        highwater = consumer.highwater(tp)
        return highwater is not None and consumer.position(tp) >= highwater

    def _reject(self, topic: str, partition: int | None, offset: int | None, reason: str,
                raw: bytes | None, *, invalid: bool = True) -> None:
        self._rejected[topic] = self._rejected.get(topic, 0) + 1
        self.metrics.rejected.labels(topic).inc()
        count = self._rejected[topic]
        # Orphans are a normal condition of click streams (counted, exported); invalid
        # records are a producer's bug and deserve a warning, rate-limited.
        level = logging.WARNING if invalid else logging.DEBUG
        if count <= 10 or count % 1_000 == 0:
            log.log(level, "rejected %s[%s]@%s (%d so far): %s", topic, partition, offset, count,
                    reason)
        # At most MAX_EVENT_BYTES of the record: a record near the broker's message limit,
        # escaped into JSON, would not fit in a DLQ message (and would stop the loop).
        record = (None if raw is None
                  else raw[:MAX_EVENT_BYTES].decode("utf-8", errors="replace"))
        payload = {"topic": topic, "partition": partition, "offset": offset, "reason": reason,
                   "record": record}
        if raw is not None and len(raw) > MAX_EVENT_BYTES:
            payload["record_bytes"] = len(raw)  # `record` is a prefix of this many bytes
        assert self._producer is not None
        self._producer.send(self.config.topics.dlq, _json.encode(payload))

    def _reject_orphan(self, click: Click) -> None:
        partition, offset = self._click_sources.pop(id(click), (None, None))
        self._reject(self.config.topics.clicks, partition, offset, "unknown impression",
                     _json.encode(click), invalid=False)

    def _publish_sample(self, outcome: Outcome) -> None:
        """Engine callback: the labelled sample to the samples topic (train workers)."""
        assert self._producer is not None
        self._producer.send(self.config.topics.samples, encode_sample(outcome),
                            key=outcome.release.impression.user_id.encode())

    def _publish_metrics(self, consumer: Consumer, assigned: set[TopicPartition]) -> None:
        if self.engine is None:
            self.metrics.publish(JoinStats(), 0, self._newest_ts)
        else:
            joiner = self.engine.joiner
            self.metrics.publish(joiner.stats, joiner.open_windows, self._newest_ts)
        self.metrics.publish_learners({name: learner.stats()
                                       for name, learner in self.learners.items()
                                       if callable(getattr(learner, "stats", None))})
        self.metrics.set_consumer_lag({
            (tp.topic, tp.partition): highwater - consumer.position(tp)
            for tp in assigned if (highwater := consumer.highwater(tp)) is not None})

    def _stateful_parts(self) -> dict[str, Any]:
        engine = {} if self.engine is None else {"engine": self.engine}
        return {**engine,
                **{f"learner.{name}": learner for name, learner in self.learners.items()}}

    def _offsets(self) -> dict[str, int]:
        """Next offset to read of every partition the state knows, "topic/partition" keyed."""
        return {**self._resume,
                **{f"{tp.topic}/{tp.partition}": o for tp, o in self._processed.items()}}

    def _offset_of(self, tp: TopicPartition) -> int | None:
        offset = self._processed.get(tp)
        return offset if offset is not None else self._resume.get(f"{tp.topic}/{tp.partition}")

    def _checkpoint(self, reason: str, *, required: bool) -> bool:
        """Producers flushed, then state + processed offsets made durable; commit is due.

        Returns whether a checkpoint now holds the current state. Between batches only.
        A flush that times out or a write that fails (disk full …) means no checkpoint:
        raised if ``required`` (at stop), else logged, counted and tried again at the next
        interval (the state is still in memory). Without a checkpoint folder only the flush
        and the commit happen (a restart then reads on from the group's offsets, with fresh
        state).
        """
        if not self._dirty:
            if reason == "stop" and self._store is not None:
                log.info("state unchanged since checkpoint %s: none written on stop",
                         self._newest_checkpoint_id())
            return True
        if not self._consistent:
            log.error("no checkpoint (%s): the engine stopped in the middle of a batch; "
                      "checkpoint %s stands", reason, self._newest_checkpoint_id())
            return False
        assert self._producer is not None
        started = time.perf_counter()
        try:
            self._producer.flush(self.config.flush_timeout_s)
        except ProduceFailed:
            # Records of processed input are lost: no checkpoint may follow. Stop, so a
            # restart resumes from the last good checkpoint and produces them again.
            self.metrics.on_checkpoint_failed()
            raise
        except FlushTimeout as exc:
            self.metrics.on_checkpoint_failed()
            if required:
                raise
            log.warning("no checkpoint (%s): producers not flushed: %s; trying again in "
                        "%.0f s", reason, exc, self.config.checkpoint_interval_s)
            return False
        if self._store is None:
            self._dirty = False
            self._commit_due = True
            return False
        try:
            written = self._store.write(self._stateful_parts(), self._offsets(), self._records)
        except (OSError, CheckpointError) as exc:
            self.metrics.on_checkpoint_failed()
            if required:
                raise
            log.error("no checkpoint (%s): %s; checkpoint %s stands, trying again in %.0f s",
                      reason, exc, self._newest_checkpoint_id(),
                      self.config.checkpoint_interval_s)
            return False
        self.last_checkpoint = written
        self._dirty = False
        self._commit_due = True
        took = time.perf_counter() - started
        self.metrics.on_checkpoint(took, written.size_bytes, written.written_at_ms / 1000)
        log.info("checkpoint %s written (%s): %s records, %.1f MB in %.2f s", written.path.name,
                 reason, f"{self._records:,}", written.size_bytes / 1e6, took)
        return True

    def _newest_checkpoint_id(self) -> int | None:
        if self.last_checkpoint is not None:
            return self.last_checkpoint.id
        return None if self._restored is None else self._restored.checkpoint.id

    def _commit(self) -> None:
        """Commit the checkpointed offsets of the assigned partitions (lag monitoring only)."""
        self._commit_due = False
        consumer = self._consumer
        assert consumer is not None
        offsets = {tp: o for tp in consumer.assignment()
                   if (o := self._committable.get(tp)) is not None}
        if not offsets:
            return
        try:
            consumer.commit(offsets)
        except CommitFailed as exc:
            if exc.retriable:
                # Right after a revocation poll may return before the group is stable again.
                self._commit_due = True
            else:  # the checkpoint holds the truth; the group only shows lag
                log.warning("offset commit to group %s failed (%s); the checkpoint holds "
                            "them", self.config.group_id, exc)

    @property
    def _committable(self) -> dict[TopicPartition, int]:
        """The offsets of the last checkpoint (or restore), by partition."""
        out = {}
        for key, offset in self._offsets().items():
            topic, _, partition = key.rpartition("/")
            out[TopicPartition(topic, int(partition))] = offset
        return out

    def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Rebalance listener: checkpoint first, then forget what is buffered of ``revoked``."""
        if not revoked:
            return
        if not self._closing:
            self.metrics.set_ready(False, "partitions revoked")
        # On kafka-python's IO thread: no blocking consumer call here, so the commit waits
        # for the loop (right after this poll returns). On close, the stop checkpoint was
        # written (or deliberately not) just before.
        if not self._closing:
            self._checkpoint(f"{len(revoked)} partition(s) revoked", required=False)
        self._merger.discard(revoked)

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Rebalance listener: read each new partition from where the state ends."""
        consumer = self._consumer
        assert consumer is not None
        fresh = []
        for tp in assigned:
            if self._merger.buffered(tp):
                continue  # still ours, read on from after what is buffered
            offset = self._offset_of(tp)
            if offset is not None:
                consumer.seek(tp, offset)
            elif self._store is not None:
                fresh.append(tp)  # the state has seen none of it: all of it
        if fresh:
            consumer.seek_to_beginning(*fresh)
        self._update_readiness(consumer, assigned)
        if self.config.role == "train" and assigned:
            self._check_single_writer(consumer, assigned)

    def _check_single_writer(self, consumer: Consumer, assigned: set[TopicPartition]) -> None:
        """A train worker must own every samples partition: a second one in the group would
        split them, and two models would each learn part of the stream. Stop, loudly."""
        topic = self.config.topics.samples
        total = consumer.partition_count(topic)
        held = sum(1 for tp in assigned if tp.topic == topic)
        if total is not None and held < total:
            log.error("this train worker holds %d of the %d partitions of %s: another train "
                      "worker is in group %s, and the learners need a single writer; stopping",
                      held, total, topic, self.config.group_id)
            self.metrics.set_ready(False, "another train worker shares the group")
            self.request_stop(STOPPED_SHARED_TRAIN_GROUP)

    def _shutdown(self, failed: bool) -> None:
        """Final checkpoint (unless the state is half-applied), then close the clients."""
        cfg = self.config
        self.metrics.set_ready(False, "stopping")
        try:
            if self._consumer is not None and self._producer is not None:
                try:
                    self._checkpoint("stop", required=True)
                    if self._commit_due:
                        self._commit()
                    self._publish_metrics(self._consumer, self._consumer.assignment())
                except Exception:
                    if not failed:
                        raise
                    log.exception("no final checkpoint")
        finally:
            self._closing = True
            try:
                if self._consumer is not None:
                    self._consumer.close(cfg.close_timeout_s)
                if self._producer is not None:
                    self._producer.close(cfg.close_timeout_s)
            finally:
                for learner in self.learners.values():
                    close_learner(learner)
                self.metrics.close()
                if self._store is not None:
                    self._store.unlock()
