"""The service's Kafka clients behind one small interface: kafka-python or confluent-kafka.

kafka-python is the default (the project's choice, pure Python); confluent-kafka
(librdkafka; ``pip install 'streamctr[confluent]'``) reads and writes an order of
magnitude faster on the same broker. :func:`make_consumer` and
:func:`make_producer` build either from a :class:`KafkaClientConfig`; the service
uses only :class:`Consumer` and :class:`Producer`, so both run the same loop and are
covered by the same integration tests.

What the interface fixes, whichever library is below:

* offsets never move by themselves: there is no automatic reset (kafka-python
  ``auto_offset_reset="none"``, librdkafka ``auto.offset.reset=error``). A position
  the broker no longer has raises :class:`OffsetOutOfRange` and the service decides
  (a silent reset to the earliest offset would learn every record again). An assigned
  partition that was neither sought by the listener nor committed in the group starts
  at its beginning;
* rebalances are eager (every partition revoked, then assigned) and the listener's
  ``on_partitions_assigned`` may ``seek`` / ``seek_to_beginning`` the new partitions;
* the producer partitions by murmur2 of the key, as the Java client and kafka-python
  do (librdkafka's own default is CRC32), so the same ``user_id`` lands on the same
  partition whichever client produced it — impressions and clicks stay co-partitioned;
* ``Producer.flush`` raises :class:`FlushTimeout` if records are still queued and
  :class:`ProduceFailed` — from then on, at every flush — once any record could not
  be delivered (retried until the library's delivery timeout): a checkpoint is
  written only when everything produced before it is acknowledged.

Security settings (:class:`KafkaSecurity`) are passed to both libraries; passwords
are kept out of ``repr`` and never logged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from kafka import ConsumerRebalanceListener, TopicPartition

__all__ = [
    "CLIENT_LIBRARIES",
    "BrokerUnreachable",
    "CommitFailed",
    "ConsumedRecord",
    "Consumer",
    "FlushTimeout",
    "KafkaClientConfig",
    "KafkaClientError",
    "KafkaSecurity",
    "OffsetOutOfRange",
    "ProduceFailed",
    "Producer",
    "RebalanceListener",
    "TopicPartition",
    "make_consumer",
    "make_producer",
]

log = logging.getLogger(__name__)

ClientLibrary = Literal["kafka-python", "confluent"]
CLIENT_LIBRARIES: tuple[str, ...] = ("kafka-python", "confluent")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_COMMIT_TIMEOUT_MS = 5_000


class KafkaClientError(RuntimeError):
    """A Kafka client call failed in a way the service handles."""


class BrokerUnreachable(KafkaClientError):
    """No broker of the bootstrap list answered while a client was being created."""


class OffsetOutOfRange(KafkaClientError):
    """The broker has no record at these positions (deleted by retention, or the log lost)."""

    def __init__(self, positions: Mapping[TopicPartition, int]) -> None:
        self.positions = dict(positions)
        where = ", ".join(f"{tp.topic}/{tp.partition}@{o}" for tp, o in self.positions.items())
        super().__init__(f"offset out of range: {where}")


class CommitFailed(KafkaClientError):
    """An offset commit to the group failed; ``retriable`` when a rebalance was under way."""

    def __init__(self, reason: str, *, retriable: bool) -> None:
        self.retriable = retriable
        super().__init__(reason)


class FlushTimeout(KafkaClientError):
    """Records were still unacknowledged when the producer's flush timed out."""


class ProduceFailed(KafkaClientError):
    """Records produced since the last flush were not delivered (the broker refused them)."""


@dataclass(frozen=True)
class KafkaSecurity:
    """TLS and SASL settings, given to whichever client library is used.

    Secrets (``sasl_password``, ``ssl_key_password``) are not part of ``repr``; pass
    them through the environment (``STREAMCTR_SASL_PASSWORD``) or the config file, not
    on the command line, where every user of the host can read them.

    >>> KafkaSecurity("SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="svc",
    ...               sasl_password="s3cret")
    KafkaSecurity(protocol='SASL_SSL', sasl_mechanism='SCRAM-SHA-512', sasl_username='svc', \
ssl_cafile=None, ssl_certfile=None, ssl_keyfile=None)
    >>> KafkaSecurity("SASL_PLAINTEXT")
    Traceback (most recent call last):
    ...
    ValueError: security protocol SASL_PLAINTEXT needs sasl_mechanism (one of PLAIN, \
SCRAM-SHA-256, SCRAM-SHA-512)
    """

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"unknown security protocol {self.protocol!r}; use one of "
                             f"{', '.join(SECURITY_PROTOCOLS)}")
        sasl = self.protocol.startswith("SASL_")
        if sasl and self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"security protocol {self.protocol} needs sasl_mechanism (one of "
                             f"{', '.join(SASL_MECHANISMS)})")
        if sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"SASL {self.sasl_mechanism} needs sasl_username and sasl_password")
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError(f"SASL settings given but security protocol is {self.protocol}; "
                             "use SASL_PLAINTEXT or SASL_SSL")
        ssl = self.protocol in ("SSL", "SASL_SSL")
        if not ssl and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise ValueError(f"TLS files given but security protocol is {self.protocol}; "
                             "use SSL or SASL_SSL")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("a TLS client certificate needs both ssl_certfile and ssl_keyfile")

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments of kafka-python's clients."""
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl_mechanism:
            out.update(sasl_mechanism=self.sasl_mechanism,
                       sasl_plain_username=self.sasl_username,
                       sasl_plain_password=self.sasl_password)
        if self.ssl_cafile:
            out["ssl_cafile"] = self.ssl_cafile
        if self.ssl_certfile:
            out.update(ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile,
                       ssl_password=self.ssl_key_password)
        return out

    def librdkafka(self) -> dict[str, Any]:
        """Properties of librdkafka (confluent-kafka)."""
        out: dict[str, Any] = {"security.protocol": self.protocol.lower()}
        if self.sasl_mechanism:
            out.update({"sasl.mechanism": self.sasl_mechanism,
                        "sasl.username": self.sasl_username,
                        "sasl.password": self.sasl_password})
        if self.ssl_cafile:
            out["ssl.ca.location"] = self.ssl_cafile
        if self.ssl_certfile:
            out.update({"ssl.certificate.location": self.ssl_certfile,
                        "ssl.key.location": self.ssl_keyfile})
            if self.ssl_key_password:
                out["ssl.key.password"] = self.ssl_key_password
        return out


@dataclass(frozen=True)
class KafkaClientConfig:
    """Where the cluster is, which library talks to it, and how it authenticates."""

    bootstrap: str
    library: ClientLibrary = "kafka-python"
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def __post_init__(self) -> None:
        if self.library not in CLIENT_LIBRARIES:
            raise ValueError(f"unknown Kafka client {self.library!r}; use one of "
                             f"{', '.join(CLIENT_LIBRARIES)}")
        if not self.bootstrap:
            raise ValueError("a bootstrap address HOST:PORT is needed")


class ConsumedRecord(NamedTuple):
    offset: int
    value: bytes | None  # None: a tombstone


class RebalanceListener(Protocol):
    """Called inside :meth:`Consumer.poll` (or ``close``) on the polling thread."""

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None: ...
    def on_partitions_lost(self, lost: set[TopicPartition]) -> None: ...
    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None: ...


class Consumer(Protocol):
    """A group consumer over a few topics (one instance per thread)."""

    def subscribe(self, topics: list[str], listener: RebalanceListener) -> None: ...
    def poll(self, timeout_ms: int, max_records: int
             ) -> dict[TopicPartition, list[ConsumedRecord]]: ...
    def assignment(self) -> set[TopicPartition]: ...
    def paused(self) -> set[TopicPartition]: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    def position(self, tp: TopicPartition) -> int: ...
    def highwater(self, tp: TopicPartition) -> int | None: ...
    def offsets_range(self, tp: TopicPartition) -> tuple[int, int]:
        """(log start, log end) asked of the broker; KafkaClientError if it cannot say."""
    def partition_count(self, topic: str) -> int | None:
        """Partitions of ``topic`` in the cluster's metadata (None: not known)."""
    def seek(self, tp: TopicPartition, offset: int) -> None: ...
    def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...
    def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...
    def connected(self) -> bool: ...
    def close(self, timeout_s: float) -> None: ...


class Producer(Protocol):
    def send(self, topic: str, value: bytes, key: bytes | None = None,
             timestamp_ms: int | None = None) -> None: ...
    def flush(self, timeout_s: float) -> None: ...
    def close(self, timeout_s: float) -> None: ...


@dataclass(frozen=True)
class ConsumerSettings:
    """The group consumer's tuning, shared by both libraries."""

    group_id: str
    max_poll_records: int = 5_000
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    # Static membership (KIP-345): a restart with the same id within the session timeout
    # gets its partitions back without a rebalance.
    group_instance_id: str | None = None


def make_consumer(config: KafkaClientConfig, settings: ConsumerSettings) -> Consumer:
    if config.library == "confluent":
        return ConfluentConsumer(config, settings)
    return KafkaPythonConsumer(config, settings)


def make_producer(config: KafkaClientConfig, *, linger_ms: int = 20,
                  batch_bytes: int = 256 * 1024) -> Producer:
    if config.library == "confluent":
        return ConfluentProducer(config, linger_ms=linger_ms, batch_bytes=batch_bytes)
    return KafkaPythonProducer(config, linger_ms=linger_ms, batch_bytes=batch_bytes)


# --------------------------------------------------------------------------- kafka-python


class _KafkaPythonListener(ConsumerRebalanceListener):  # kafka-python checks the type
    def __init__(self, listener: RebalanceListener) -> None:
        self._listener = listener

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._listener.on_partitions_revoked(set(revoked))

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        self._listener.on_partitions_lost(set(lost))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._listener.on_partitions_assigned(set(assigned))


class KafkaPythonConsumer:
    """:class:`Consumer` on kafka-python's ``KafkaConsumer`` (``client``)."""

    def __init__(self, config: KafkaClientConfig, settings: ConsumerSettings) -> None:
        from kafka import KafkaConsumer
        from kafka.coordinator.assignors.range import RangePartitionAssignor
        from kafka.errors import KafkaConnectionError, KafkaTimeoutError

        extra = ({} if settings.group_instance_id is None
                 else {"group_instance_id": settings.group_instance_id})
        with _broker_unreachable(KafkaTimeoutError, KafkaConnectionError):
            self.client = KafkaConsumer(
                bootstrap_servers=config.bootstrap,
                group_id=settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset="none",
                max_poll_records=settings.max_poll_records,
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=settings.heartbeat_interval_ms,
                # Range gives each member the same partition numbers of every topic: a join
                # worker must own a user's impressions and clicks (co-partitioned by key).
                partition_assignment_strategy=(RangePartitionAssignor,),
                reconnect_backoff_max_ms=5_000,  # a broker back from an outage: found in 5 s
                **extra,
                **config.security.kafka_python(),
            )
        self._connected = False
        self._connections_read_at = -float("inf")

    def subscribe(self, topics: list[str], listener: RebalanceListener) -> None:
        self.client.subscribe(topics, listener=_KafkaPythonListener(listener))

    def poll(self, timeout_ms: int, max_records: int
             ) -> dict[TopicPartition, list[ConsumedRecord]]:
        from kafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError

        self._free_fetch_slot()
        try:
            try:
                # kafka-python's ConsumerRecord has .offset and .value: no copy needed.
                return self.client.poll(timeout_ms=timeout_ms, max_records=max_records)
            except NoOffsetForPartitionError as exc:  # neither sought nor committed
                self.client.seek_to_beginning(*exc.args[0])
                return self.client.poll(timeout_ms=timeout_ms, max_records=max_records)
        except OffsetOutOfRangeError as exc:
            raise OffsetOutOfRange(exc.args[0]) from exc

    def _free_fetch_slot(self) -> None:
        """Work around kafka-python 3.0.12: a resumed partition is otherwise never fetched.

        Records fetched for a partition while it is paused are parked; the fetcher moves
        them back only while its in-line slot is ``None``, but it leaves an exhausted
        (empty, not ``None``) ``PartitionRecords`` there, and a partition with parked
        records is never fetched. So once the merge had paused and resumed two partitions
        the consumer stalled for good (seen with ``max_buffered_per_partition=1000``). An
        exhausted slot holds nothing to return: emptying it is what the fetcher does
        itself when it moves on.
        """
        fetcher = getattr(self.client, "_fetcher", None)
        slot = getattr(fetcher, "_next_partition_records", None)
        if slot is not None and not slot and getattr(fetcher, "_paused_partition_records",
                                                     None):
            fetcher._next_partition_records = None  # type: ignore[union-attr]

    def assignment(self) -> set[TopicPartition]:
        return set(self.client.assignment())

    def paused(self) -> set[TopicPartition]:
        return set(self.client.paused())

    def pause(self, *partitions: TopicPartition) -> None:
        self.client.pause(*partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.client.resume(*partitions)

    def position(self, tp: TopicPartition) -> int:
        return self.client.position(tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.client.highwater(tp)

    def partition_count(self, topic: str) -> int | None:
        partitions = self.client.partitions_for_topic(topic)
        return len(partitions) if partitions else None

    def offsets_range(self, tp: TopicPartition) -> tuple[int, int]:
        from kafka.errors import KafkaError

        try:
            return (self.client.beginning_offsets([tp])[tp], self.client.end_offsets([tp])[tp])
        except KafkaError as exc:  # the broker did not answer in request_timeout_ms
            raise KafkaClientError(f"log bounds of {tp.topic}/{tp.partition}: {exc}") from exc

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.client.seek(tp, offset)

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.client.seek_to_beginning(*partitions)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        from kafka.errors import KafkaError, RebalanceInProgressError
        from kafka.structs import OffsetAndMetadata

        try:
            # Bounded: without a timeout kafka-python retries until a coordinator answers, and
            # the loop would hang through a broker outage for a commit that is only for lag.
            self.client.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()},
                               timeout_ms=_COMMIT_TIMEOUT_MS)
        except RebalanceInProgressError as exc:
            raise CommitFailed(str(exc), retriable=True) from exc
        except KafkaError as exc:
            raise CommitFailed(str(exc), retriable=False) from exc

    def connected(self) -> bool:
        # From the client's public metrics; building them costs, so at most once a second.
        now = time.monotonic()
        if now - self._connections_read_at >= 1.0:
            self._connections_read_at = now
            metrics = self.client.metrics().get("consumer-metrics", {})
            self._connected = metrics.get("connection-count", 0) > 0
        return self._connected

    def close(self, timeout_s: float) -> None:
        self.client.close(autocommit=False, timeout_ms=int(timeout_s * 1000))


class KafkaPythonProducer:
    """:class:`Producer` on kafka-python's ``KafkaProducer`` (``client``)."""

    def __init__(self, config: KafkaClientConfig, *, linger_ms: int, batch_bytes: int) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaConnectionError, KafkaTimeoutError

        with _broker_unreachable(KafkaTimeoutError, KafkaConnectionError):
            # Retried until delivery_timeout_ms (2 min by default): an outage shorter than
            # that loses nothing. One request in flight keeps the order under retries; not
            # idempotent, as with confluent (see there).
            self.client = KafkaProducer(
                bootstrap_servers=config.bootstrap, acks="all", linger_ms=linger_ms,
                batch_size=batch_bytes, max_in_flight_requests_per_connection=1,
                enable_idempotence=False, **config.security.kafka_python())
        self._failures: list[BaseException] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             timestamp_ms: int | None = None) -> None:
        future = self.client.send(topic, value, key=key, timestamp_ms=timestamp_ms)
        future.add_errback(self._failures.append)

    def flush(self, timeout_s: float) -> None:
        from kafka.errors import KafkaTimeoutError

        try:
            self.client.flush(timeout=timeout_s)
        except KafkaTimeoutError as exc:
            raise FlushTimeout(f"records unacknowledged after {timeout_s:.0f} s") from exc
        _raise_failures(self._failures)

    def close(self, timeout_s: float) -> None:
        self.client.close(timeout=timeout_s)


@contextlib.contextmanager
def _broker_unreachable(*caught: type[BaseException]) -> Iterator[None]:
    """kafka-python's constructors connect to the bootstrap list (and give up after
    ``request_timeout_ms``): that failure as :class:`BrokerUnreachable`."""
    try:
        yield
    except caught as exc:
        raise BrokerUnreachable(str(exc)) from exc


def _raise_failures(failures: list[Any]) -> None:
    # Sticky: once a record is lost, no later flush succeeds, so no checkpoint can ever
    # claim what was produced before it was delivered (a restart from the last good
    # checkpoint produces it again).
    if failures:
        raise ProduceFailed(f"{len(failures)} record(s) not delivered, the first: "
                            f"{failures[0]}")


# --------------------------------------------------------------------------- confluent-kafka


def _confluent() -> Any:
    try:
        import confluent_kafka
    except ImportError as exc:  # an optional extra
        raise KafkaClientError("the confluent Kafka client needs confluent-kafka: "
                               "pip install 'streamctr[confluent]'") from exc
    return confluent_kafka


class ConfluentConsumer:
    """:class:`Consumer` on confluent-kafka's ``Consumer`` (``client``).

    librdkafka knows a partition's position only after it consumed from it, and its
    cached high watermark only after a fetch returned records, so this adapter resolves
    every assigned partition to a concrete offset at assignment (sought, else
    committed, else an error) and keeps positions and high watermarks itself.
    """

    _WATERMARK_REFRESH_S = 1.0  # an empty partition's end, asked of the broker at most this often

    def __init__(self, config: KafkaClientConfig, settings: ConsumerSettings) -> None:
        ck = self._ck = _confluent()
        self._down_since: float | None = None
        props = {
            "bootstrap.servers": config.bootstrap,
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": settings.heartbeat_interval_ms,
            "partition.assignment.strategy": "range",  # co-partitioned, as kafka-python's
            "reconnect.backoff.max.ms": 5_000,
            "error_cb": self._on_error,
            "logger": log,  # librdkafka's log lines through Python logging, not stderr
            **config.security.librdkafka(),
        }
        if settings.group_instance_id is not None:
            props["group.instance.id"] = settings.group_instance_id
        self.client = ck.Consumer(props)
        self._listener: RebalanceListener | None = None
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._high: dict[TopicPartition, tuple[int, float]] = {}  # (high watermark, asked at)
        self._assigning: dict[TopicPartition, int] | None = None  # seeks inside on_assign

    def _on_error(self, error: Any) -> None:
        ck = self._ck
        down = error.code() in (ck.KafkaError._ALL_BROKERS_DOWN, ck.KafkaError._TRANSPORT)
        if down and self._down_since is None:
            self._down_since = time.monotonic()
        log.warning("kafka consumer: %s", error.str())

    def _ck_tp(self, tp: TopicPartition, offset: int | None = None) -> Any:
        if offset is None:
            return self._ck.TopicPartition(tp.topic, tp.partition)
        return self._ck.TopicPartition(tp.topic, tp.partition, offset)

    def subscribe(self, topics: list[str], listener: RebalanceListener) -> None:
        self._listener = listener
        self.client.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                              on_lost=self._on_lost)

    def _on_assign(self, client: Any, partitions: list[Any]) -> None:
        assert self._listener is not None
        tps = {TopicPartition(p.topic, p.partition) for p in partitions}
        self._assigned = tps
        self._down_since = None
        self._assigning = {}
        try:
            self._listener.on_partitions_assigned(set(tps))
            starts = self._assigning
        finally:
            self._assigning = None
        rest = [tp for tp in tps if tp not in starts]
        if rest:
            committed = client.committed([self._ck_tp(tp) for tp in rest], timeout=10)
            for p in committed:
                if p.offset >= 0:
                    starts[TopicPartition(p.topic, p.partition)] = p.offset
        for tp in tps:  # neither sought nor committed: from the beginning
            if starts.get(tp, self._ck.OFFSET_BEGINNING) == self._ck.OFFSET_BEGINNING:
                starts[tp] = self.offsets_range(tp)[0]
        self._positions = {tp: o for tp, o in starts.items() if tp in tps}
        self._paused.clear()
        assigned = [self._ck_tp(tp, o) for tp, o in self._positions.items()]
        client.assign(assigned)
        # librdkafka keeps a partition paused across revocation and assignment; the
        # interface (as kafka-python) starts every assigned partition unpaused. Without
        # this a partition paused before a rebalance never delivered again (the merge
        # then waited on it for good).
        client.resume(assigned)

    def _on_revoke(self, client: Any, partitions: list[Any]) -> None:
        assert self._listener is not None
        self._take_away(client, partitions, self._listener.on_partitions_revoked)

    def _on_lost(self, client: Any, partitions: list[Any]) -> None:
        assert self._listener is not None
        self._take_away(client, partitions, self._listener.on_partitions_lost)

    def _take_away(self, client: Any, partitions: list[Any],
                   tell: Callable[[set[TopicPartition]], None]) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in partitions}
        tell(tps)
        client.unassign()
        self._assigned -= tps
        self._paused -= tps
        for tp in tps:
            self._positions.pop(tp, None)
            self._high.pop(tp, None)

    def poll(self, timeout_ms: int, max_records: int
             ) -> dict[TopicPartition, list[ConsumedRecord]]:
        ck = self._ck
        messages = self.client.consume(num_messages=max_records, timeout=timeout_ms / 1000)
        out: dict[TopicPartition, list[ConsumedRecord]] = {}
        out_of_range: dict[TopicPartition, int] = {}
        for message in messages:
            error = message.error()
            tp = TopicPartition(message.topic(), message.partition())
            if error is not None:
                if error.code() in (ck.KafkaError._AUTO_OFFSET_RESET,
                                    ck.KafkaError.OFFSET_OUT_OF_RANGE):
                    out_of_range[tp] = self._positions.get(tp, -1)
                elif error.code() != ck.KafkaError._PARTITION_EOF:
                    log.warning("kafka consumer: %s/%s: %s", tp.topic, tp.partition,
                                error.str())
                continue
            if tp not in self._assigned or tp in self._paused:
                continue  # fetched before a pause or revocation: read again from position
            offset = message.offset()
            out.setdefault(tp, []).append(ConsumedRecord(offset, message.value()))
            self._positions[tp] = offset + 1
        if messages:
            self._down_since = None
        if out_of_range:
            # Records of other partitions consumed in this call are read again.
            for tp in out:
                self._positions[tp] = out[tp][0].offset
                self.client.seek(self._ck_tp(tp, out[tp][0].offset))
            raise OffsetOutOfRange(out_of_range)
        for tp, records in out.items():
            high, at = self._high.get(tp, (-1, 0.0))
            if records[-1].offset + 1 > high:
                self._high[tp] = (records[-1].offset + 1, at)
        return out

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *partitions: TopicPartition) -> None:
        self.client.pause([self._ck_tp(tp) for tp in partitions])
        self._paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        # librdkafka dropped what it had fetched ahead when pausing: read on from position.
        for tp in partitions:
            self.client.seek(self._ck_tp(tp, self._positions[tp]))
        self.client.resume([self._ck_tp(tp) for tp in partitions])
        self._paused.difference_update(partitions)

    def position(self, tp: TopicPartition) -> int:
        return self._positions[tp]

    def highwater(self, tp: TopicPartition) -> int | None:
        _, cached = self.client.get_watermark_offsets(self._ck_tp(tp), cached=True)
        high, asked_at = self._high.get(tp, (-1, 0.0))
        now = time.monotonic()
        if cached < 0 and high <= self._positions.get(tp, 0) and (
                now - asked_at >= self._WATERMARK_REFRESH_S):
            # Nothing fetched lately (an empty or caught-up partition): ask the broker.
            try:
                cached = self.offsets_range(tp)[1]
            except KafkaClientError:
                cached = -1
            asked_at = now
        high = max(high, cached)
        self._high[tp] = (high, asked_at)
        return high if high >= 0 else None

    def partition_count(self, topic: str) -> int | None:
        try:
            metadata = self.client.list_topics(topic, timeout=10).topics.get(topic)
        except self._ck.KafkaException:
            return None
        if metadata is None or metadata.error is not None:
            return None
        return len(metadata.partitions)

    def offsets_range(self, tp: TopicPartition) -> tuple[int, int]:
        try:
            low, high = self.client.get_watermark_offsets(self._ck_tp(tp), timeout=10)
        except self._ck.KafkaException as exc:
            raise KafkaClientError(f"watermarks of {tp.topic}/{tp.partition}: {exc}") from exc
        return low, high

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self._assigning is not None:
            self._assigning[tp] = offset  # applied by the assign that follows the listener
            return
        self.client.seek(self._ck_tp(tp, offset))
        self._positions[tp] = offset

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            if self._assigning is not None:
                self._assigning[tp] = self._ck.OFFSET_BEGINNING
            else:
                self.seek(tp, self.offsets_range(tp)[0])

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        ck = self._ck
        try:
            self.client.commit(offsets=[self._ck_tp(tp, o) for tp, o in offsets.items()],
                               asynchronous=False)
        except ck.KafkaException as exc:
            error = exc.args[0]
            retriable = error.code() in (ck.KafkaError.REBALANCE_IN_PROGRESS,
                                         ck.KafkaError._STATE) or error.retriable()
            raise CommitFailed(error.str(), retriable=retriable) from exc

    def connected(self) -> bool:
        return self._down_since is None

    def close(self, timeout_s: float) -> None:
        # librdkafka's close takes no timeout: it leaves the group and returns when done.
        self.client.close()


class ConfluentProducer:
    """:class:`Producer` on confluent-kafka's ``Producer`` (``client``)."""

    def __init__(self, config: KafkaClientConfig, *, linger_ms: int, batch_bytes: int) -> None:
        ck = _confluent()
        self.client = ck.Producer({
            "bootstrap.servers": config.bootstrap,
            "acks": "all",
            # Ordered under retries as kafka-python's (one request in flight); retried up to
            # message.timeout.ms (5 min). Not the idempotent producer: a broker that lost
            # its state (a restarted broker with memory storage) fails its producer id
            # fatally; what is produced is at-least-once anyway (pipeline.service).
            "max.in.flight.requests.per.connection": 1,
            "linger.ms": linger_ms,
            "batch.size": batch_bytes,
            "partitioner": "murmur2_random",  # the Java client's (and kafka-python's) choice
            "error_cb": lambda error: log.warning("kafka producer: %s", error.str()),
            "logger": log,
            **config.security.librdkafka(),
        })
        self._failures: list[str] = []

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self._failures.append(error.str())

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             timestamp_ms: int | None = None) -> None:
        extra = {} if timestamp_ms is None else {"timestamp": timestamp_ms}
        while True:
            try:
                self.client.produce(topic, value, key, on_delivery=self._delivered, **extra)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self.client.poll(0.05)
        self.client.poll(0)  # serve delivery callbacks

    def flush(self, timeout_s: float) -> None:
        left = self.client.flush(timeout_s)
        if left:
            raise FlushTimeout(f"{left} record(s) unacknowledged after {timeout_s:.0f} s")
        _raise_failures(self._failures)

    def close(self, timeout_s: float) -> None:
        self.client.flush(timeout_s)
