"""Replay input from a time range of the topics of a running broker.

:func:`read_topic_range` reads the impressions and clicks topics of a broker and
returns the same :class:`~replay.inputs.ReplayInput` a replay folder gives, so
``streamctr replay --bootstrap HOST:PORT --from-time T --to-time T`` replays what
the service consumed in that range through the same joiner and learners.

What the range ``[from_ms, to_ms)`` keeps, by the events' own ``ts`` (event time):

* **impressions** with ``from_ms <= ts < to_ms`` — these are the samples the
  replay scores and learns;
* **clicks** with ``from_ms <= ts < to_ms + window_ms``. An attribution window is
  ``[ts, ts + window_ms]`` in event time, so an impression at ``to_ms - 1`` can
  still be clicked at ``to_ms - 1 + window_ms``: without those clicks the labels
  of the range's last window would be wrong. Allowed lateness does not widen
  this: it delays when a label becomes final, not which clicks join (a click
  after the window is late however early it arrives), and a replay input is
  sorted anyway. Clicks before ``from_ms`` are left out: a click does not precede
  its impression, so they could only belong to impressions outside the range.
  Clicks whose impression is outside the range (an impression before
  ``from_ms``, or one in ``[to_ms, to_ms + window_ms)``) stay in: the replay
  reports them as orphans ("unknown impression"), as the service would have
  had it started at ``from_ms``;
* **rejected**: records that fail to decode or validate, with the reason the
  service gives its DLQ (the message of :class:`~features.events.InvalidEvent`;
  a record without a value, a tombstone, is ``"no value"``). Such a record has no
  event time, so its Kafka record timestamp decides whether it is in the range
  (the same bounds as its topic's events). ``source`` is ``"topic/partition"``,
  ``row`` the record's offset (an offset names a record only together with its
  partition), ``record`` the value as text.

How it reads. No consumer group: partitions are assigned by hand and nothing is
committed, so a replay never moves the service's committed offsets and starts at
once. Each partition starts at ``offsets_for_times(from_ms)`` — the first offset
whose record timestamp is ``>= from_ms`` — which loses no event of the range as
long as a record's timestamp is not earlier than its event time (``streamctr
produce`` sets it to the event time; broker or producer clock time is later).
Each partition is read up to its end as of the start of the read: the high
watermark of its first fetch, frozen then, so the read ends even while producers
keep writing; newer records are for a later replay. (Not ``end_offsets()``: the
embedded tansu broker answers it with the last batch's base offset plus one,
while its fetch high watermark is right; on Kafka both agree.) The embedded
broker also answers every ``offsets_for_times`` with offset 0, which only makes
the read start earlier: events are filtered by their time either way.

Order. Each output frame is sorted by ``ts``; equal times keep partition order,
then offset order — the service's merge order. Columns and dtypes are those
:func:`~replay.inputs.read_replay_input` gives for a folder: the event fields as
``Utf8`` / ``Int64`` in the schema's order, and ``context`` as a Struct of
``Utf8`` fields (every key seen, in first-seen order; a key an impression lacks is
null, which reads back as absent) — left out when no impression has any context.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from features.events import (
    CLICK_FIELDS,
    IMPRESSION_FIELDS,
    Click,
    Impression,
    InvalidEvent,
    decode_click,
    decode_impression,
)
from features.joiner import JoinerConfig
from replay.inputs import REJECTED_SCHEMA, ReplayInput, ReplayInputError
from replay.progress import progress

__all__ = [
    "BrokerUnreachableError",
    "TopicRangeError",
    "format_time_ms",
    "parse_time_ms",
    "read_topic_range",
]

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_POLL_MS = 200
_MAX_POLL_RECORDS = 10_000
_IMPRESSION_SCHEMA: dict[str, pl.DataType] = {
    f: pl.Int64() if f in ("position", "ts") else pl.Utf8()
    for f in IMPRESSION_FIELDS if f != "context"
}
_CLICK_SCHEMA: dict[str, pl.DataType] = {
    f: pl.Int64() if f == "ts" else pl.Utf8() for f in CLICK_FIELDS
}


class TopicRangeError(ReplayInputError):
    """A topic range that cannot be replayed: empty range, missing topic, unreachable broker."""


class BrokerUnreachableError(TopicRangeError):
    """The broker did not answer in time (at connect, or while reading a partition)."""


def parse_time_ms(value: str | int | datetime) -> int:
    """A point in time as epoch milliseconds: ISO-8601 with a zone, or epoch ms.

    >>> parse_time_ms("2026-11-30T12:00:00Z"), parse_time_ms("1700000000000")
    (1796040000000, 1700000000000)
    >>> parse_time_ms("2026-11-30T13:00:00.250+01:00")
    1796040000250
    >>> parse_time_ms("2026-11-30T12:00")
    Traceback (most recent call last):
    ...
    ValueError: '2026-11-30T12:00' has no time zone: add Z (UTC) or an offset like +01:00
    """
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, datetime):  # a TOML offset date-time
        ms = _datetime_ms(value, repr(value.isoformat()))
    else:
        text = str(value).strip()
        if text.isdigit():
            ms = int(text)
        else:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"not a time: {value!r} (use ISO-8601 like "
                                 "2026-11-30T12:00:00Z, or epoch milliseconds)") from None
            ms = _datetime_ms(parsed, repr(value))
    if ms < 0:
        raise ValueError(f"a time before 1970 is not an event time: {value!r}")
    return ms


def _datetime_ms(moment: datetime, shown: str) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"{shown} has no time zone: add Z (UTC) or an offset like +01:00")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def format_time_ms(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC (``Z``); milliseconds only when not zero.

    >>> format_time_ms(1796040000000), format_time_ms(250)
    ('2026-11-30T12:00:00Z', '1970-01-01T00:00:00.250Z')
    """
    moment = _EPOCH + timedelta(milliseconds=ms)
    spec = "milliseconds" if ms % 1000 else "seconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def read_topic_range(
    bootstrap: str,
    from_ms: int | None = None,
    to_ms: int | None = None,
    *,
    impressions_topic: str = "impressions",
    clicks_topic: str = "clicks",
    window_ms: int = JoinerConfig().window_ms,
    timeout_s: float = 10.0,
    show_progress: bool = True,
) -> ReplayInput:
    """The events of ``[from_ms, to_ms)`` on the topics of ``bootstrap`` (see the module doc).

    ``from_ms`` None: from the topics' beginning; ``to_ms`` None: up to now.
    ``window_ms`` is the joiner's attribution window (clicks are kept up to
    ``to_ms + window_ms``). ``timeout_s`` bounds connecting and every wait for a
    fetch. Raises :class:`TopicRangeError` for an empty range or a missing topic,
    :class:`BrokerUnreachableError` when the broker does not answer.
    """
    read_at = int(time.time() * 1000)
    from_ms = 0 if from_ms is None else from_ms
    to_ms = read_at if to_ms is None else to_ms
    if from_ms < 0:
        raise TopicRangeError(f"--from-time must not be before 1970, got {from_ms} ms")
    if from_ms >= to_ms:
        raise TopicRangeError(f"empty range: from {format_time_ms(from_ms)} is not before to "
                              f"{format_time_ms(to_ms)}")
    if window_ms <= 0:
        raise ValueError(f"window_ms must be > 0, got {window_ms}")
    if impressions_topic == clicks_topic:
        raise TopicRangeError(f"impressions and clicks need two topics, got {clicks_topic!r} "
                              "for both")
    stops = {impressions_topic: to_ms, clicks_topic: to_ms + window_ms}
    consumer = _connect(bootstrap, timeout_s)
    sink = _Sink(impressions_topic, from_ms, stops)
    try:
        starts = _start_offsets(consumer, bootstrap, [impressions_topic, clicks_topic],
                                from_ms, timeout_s)
        for tp, messages in _read(consumer, bootstrap, starts, timeout_s, show_progress):
            sink.add(tp, messages)
    except KafkaError as exc:
        raise BrokerUnreachableError(f"reading from {bootstrap} failed: "
                                     f"{type(exc).__name__}: {exc}") from None
    finally:
        consumer.close(autocommit=False)
    name = (f"{impressions_topic}+{clicks_topic}@{bootstrap} "
            f"[{format_time_ms(from_ms)}, {format_time_ms(to_ms)})")
    result = sink.result(name)
    if result.impressions.height:
        newest = int(result.impressions["ts"].max())  # type: ignore[arg-type]
        if newest + window_ms > read_at:
            log.warning("attribution windows of impressions after %s are still open: their "
                        "clicks may not have happened yet", format_time_ms(read_at - window_ms))
    return result


def _connect(bootstrap: str, timeout_s: float) -> KafkaConsumer:
    timeout_ms = max(1, int(timeout_s * 1000))
    try:
        return KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,  # manual assignment: no group, no commits
            enable_auto_commit=False,
            allow_auto_create_topics=False,  # a misspelt topic is an error, not a new topic
            auto_offset_reset="earliest",  # a start offset already deleted: the oldest kept
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=max(timeout_ms, 1_000),
            max_poll_records=_MAX_POLL_RECORDS,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
    except KafkaError as exc:
        raise BrokerUnreachableError(f"no Kafka broker answers at {bootstrap} within "
                                     f"{timeout_s:g} s ({type(exc).__name__})") from None


def _start_offsets(consumer: KafkaConsumer, bootstrap: str, topics: list[str], from_ms: int,
                   timeout_s: float) -> dict[TopicPartition, int]:
    """Every partition of ``topics`` (in topic, then partition order) and its first offset."""
    partitions = {topic: sorted(consumer.partitions_for_topic(topic)) for topic in topics}
    missing = [topic for topic, found in partitions.items() if not found]
    if missing:
        raise TopicRangeError(f"no topic {' or '.join(map(repr, missing))} on {bootstrap}")
    tps = [TopicPartition(topic, p) for topic in topics for p in partitions[topic]]
    timeout_ms = int(timeout_s * 1000)
    beginning = consumer.beginning_offsets(tps, timeout_ms=timeout_ms)
    if from_ms == 0:
        return {tp: beginning[tp] for tp in tps}
    found = consumer.offsets_for_times({tp: from_ms for tp in tps}, timeout_ms=timeout_ms)
    starts = {}
    ends = None
    for tp in tps:
        hit = found.get(tp)
        if hit is None:  # no record at or after from_ms: nothing of the range here
            if ends is None:
                ends = consumer.end_offsets(tps, timeout_ms=timeout_ms)
            starts[tp] = ends[tp]
        else:
            starts[tp] = max(hit.offset, beginning[tp])
    return starts


def _read(
    consumer: KafkaConsumer, bootstrap: str, starts: dict[TopicPartition, int],
    timeout_s: float, show_progress: bool,
) -> Iterator[tuple[TopicPartition, list[Any]]]:
    """Every record of each partition from its start to its end as of the first fetch."""
    consumer.assign(list(starts))
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    ends: dict[TopicPartition, int] = {}
    early: list[tuple[TopicPartition, list[Any]]] = []
    waiting_since = time.monotonic()
    while len(ends) < len(starts):  # the first fetch of every partition fixes its end
        polled = consumer.poll(timeout_ms=_POLL_MS)
        early.extend(polled.items())
        fresh = {tp: hw for tp in starts if tp not in ends
                 and (hw := consumer.highwater(tp)) is not None}
        ends.update(fresh)
        if polled or fresh:
            waiting_since = time.monotonic()
        else:
            _check_stall(waiting_since, timeout_s, bootstrap,
                         next(tp for tp in starts if tp not in ends), "its first fetch")
    total = sum(max(0, ends[tp] - starts[tp]) for tp in starts)
    done: set[TopicPartition] = set()
    with progress("read topics", total, enabled=show_progress) as ticker:

        def within(tp: TopicPartition, messages: list[Any]) -> list[Any]:
            kept = [m for m in messages if m.offset < ends[tp]]
            ticker.tick(len(kept))
            return kept

        for tp, messages in early:
            yield tp, within(tp, messages)
        while True:
            for tp in starts:
                if tp not in done and consumer.position(tp) >= ends[tp]:
                    done.add(tp)
                    consumer.pause(tp)  # newer records are not part of this read
            if len(done) == len(starts):
                return
            polled = consumer.poll(timeout_ms=_POLL_MS)
            for tp, messages in polled.items():
                if tp not in done:
                    yield tp, within(tp, messages)
            if polled:
                waiting_since = time.monotonic()
            else:
                late = next(tp for tp in starts if tp not in done)
                _check_stall(waiting_since, timeout_s, bootstrap, late,
                             f"offset {consumer.position(late)} of {ends[late]}")


def _check_stall(since: float, timeout_s: float, bootstrap: str, tp: TopicPartition,
                 what: str) -> None:
    if time.monotonic() - since > timeout_s:
        raise BrokerUnreachableError(f"{bootstrap} sent nothing for {timeout_s:g} s while "
                                     f"{tp.topic}/{tp.partition} waits for {what}")


class _Sink:
    """Decodes records, keeps those of the range, collects the rejected ones."""

    def __init__(self, impressions_topic: str, from_ms: int, stops: dict[str, int]) -> None:
        self._impressions_topic = impressions_topic
        self._from = from_ms
        self._stops = stops
        # Per partition, in offset order; concatenated in partition order at the end.
        self._events: dict[TopicPartition, list[Impression | Click]] = {}
        # (topic rank, partition, offset, source, row, reason, record): sorted at the end.
        self._rejected: list[tuple[Any, ...]] = []

    def add(self, tp: TopicPartition, messages: Iterable[Any]) -> None:
        is_impression = tp.topic == self._impressions_topic
        decode = decode_impression if is_impression else decode_click
        start, stop = self._from, self._stops[tp.topic]
        kept = self._events.setdefault(tp, [])
        for message in messages:
            raw = message.value
            try:
                event = decode(raw)  # a tombstone (no value) is an InvalidEvent too
            except InvalidEvent as exc:
                stamp = message.timestamp
                if stamp is None or stamp < 0 or start <= stamp < stop:  # < 0: none set
                    record = None if raw is None else raw.decode("utf-8", errors="replace")
                    self._rejected.append((not is_impression, tp.partition, message.offset,
                                           f"{tp.topic}/{tp.partition}", message.offset,
                                           str(exc), record))
                continue
            if start <= event.ts < stop:
                kept.append(event)

    def result(self, name: str) -> ReplayInput:
        impressions: list[Impression] = []
        clicks: list[Click] = []
        for tp in sorted(self._events, key=lambda tp: tp.partition):  # stable: topics apart
            events = self._events[tp]
            if tp.topic == self._impressions_topic:
                impressions.extend(events)  # type: ignore[arg-type]
            else:
                clicks.extend(events)  # type: ignore[arg-type]
        rows = [row[3:] for row in sorted(self._rejected, key=lambda row: row[:3])]
        rejected = pl.DataFrame(rows, schema=REJECTED_SCHEMA, orient="row")
        return ReplayInput(_impression_frame(impressions),
                           _frame(clicks, _CLICK_SCHEMA).sort("ts", maintain_order=True),
                           rejected, name=name)


def _frame(events: list[Any], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """The events' fields as columns, in the given order (not sorted)."""
    return pl.DataFrame({name: [getattr(e, name) for e in events] for name in schema},
                        schema=schema)


def _impression_frame(events: list[Impression]) -> pl.DataFrame:
    frame = _frame(events, _IMPRESSION_SCHEMA)
    keys = dict.fromkeys(k for e in events for k in e.context)
    if keys:
        dtype = pl.Struct([pl.Field(k, pl.Utf8()) for k in keys])
        frame = frame.with_columns(pl.Series("context", [e.context for e in events], dtype=dtype))
    return frame.sort("ts", maintain_order=True)
