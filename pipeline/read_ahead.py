"""A :class:`~pipeline.kafka_clients.Consumer` whose client reads ahead in a child process.

Why: the service reads and processes on one thread, so its rate is bounded by
``1 / (1/consume + 1/process)``. With kafka-python, which parses the fetch responses
in Python, that bound is near 0.55 of the bare consumer's rate however fast the
engine gets; and under the GIL a reader *thread* would not overlap with it. In a
child process the client polls the next batch while the service processes the last
one, on the second core.

What goes between the two (``multiprocessing.connection`` framing over a socket
pair, msgspec MessagePack, no pickle):

* child → parent, in the order the client produced them: each poll's records,
  columnar, with the consumer's state right after that poll (assignment, each
  fetched partition's high watermark and position, connected); rebalance events;
  a poll's exception; replies to calls.
* parent → child: subscribe, calls (``seek``, ``pause``, ``commit`` …), ``continue``,
  close.

The parent's answers are the ones a consumer on the service's own thread would give,
because everything reaches it in the client's order:

* ``poll`` returns the next polled batch (split if it holds more than ``max_records``),
  and ``assignment``, ``position``, ``highwater`` and ``connected`` are the state as of
  the last batch returned — not of the child's newest poll, which may be a few batches
  ahead (a writer thread in the child sends them while the client polls on);
* a rebalance runs the listener inside the parent's ``poll``, after every batch the
  client returned before it was processed, while the child waits inside its own
  listener: the listener's ``seek`` / ``commit`` / ``partition_count`` are answered from
  there, so a revoked partition's checkpoint is written before the group moves on and
  a new partition is sought before it is fetched;
* a poll's exception (:class:`~pipeline.kafka_clients.OffsetOutOfRange` …) is raised
  from the parent's ``poll``, again in order; the child does not poll again until the
  parent does, so the seeks the service answers it with come first.

Seeking outside the listener or the handling of a poll's exception would be wrong
here — records after the old position may already be on their way — so it raises
``RuntimeError``; the service never does.

Lifecycle. The child ignores SIGINT and SIGTERM (its parent decides when to stop
and closes it, which may run the listener once more). If the parent dies — SIGKILL
included — the child's next write or read fails within a poll timeout, and it leaves
the group and exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec

from pipeline.kafka_clients import (
    BrokerUnreachable,
    CommitFailed,
    ConsumedRecord,
    ConsumerSettings,
    KafkaClientConfig,
    KafkaClientError,
    OffsetOutOfRange,
    RebalanceListener,
    TopicPartition,
    make_consumer,
)

__all__ = ["ReadAheadConsumer"]

log = logging.getLogger(__name__)

# The child's poll timeout: how long a call waits at most while the child polls an idle
# topic, and how often the parent hears the consumer's state when nothing arrives.
_CHILD_POLL_MS = 50
# Messages the child may have written ahead of the parent's reading: polls go on while
# the parent processes earlier batches (one batch ahead was not enough when the two took
# about as long per batch: the parent then waited for about a quarter of the run).
# Memory: up to this many polls of max_poll_records (~1 MB each for 5,000 events).
_AHEAD_MESSAGES = 4
_ORPHAN_CLOSE_S = 5.0  # the client's close when the parent is gone
_START_TIMEOUT_S = 60.0  # the child's interpreter start and the client's bootstrap
_CALL_TIMEOUT_S = 120.0  # a call the child does not answer: it is stuck, not slow
# Calls that wait for the broker: refused inside the client's listener (its IO thread).
_BLOCKING_CALLS = frozenset({"commit", "offsets_range", "position"})


# ----------------------------------------------------------------------- the messages


class _Records(msgspec.Struct, array_like=True, gc=False):
    """One partition's records of one poll, columnar."""

    topic: str
    partition: int
    offsets: list[int]
    values: list[bytes | None]


class _State(msgspec.Struct, array_like=True, gc=False):
    """The consumer right after a poll: what the service asks between two polls."""

    assignment: list[tuple[str, int]]
    fetched: list[tuple[str, int, int, int]]  # topic, partition, highwater, position
    connected: bool


class _Failure(msgspec.Struct, array_like=True):
    """An exception of the child's client, to be raised again in the parent."""

    kind: str  # "out-of-range", "commit", "unreachable", "client", "unexpected"
    message: str
    positions: list[tuple[str, int, int]] = []
    retriable: bool = False


class _Ready(msgspec.Struct, tag="ready"):
    pass


class _Polled(msgspec.Struct, tag="polled", gc=False):
    records: list[_Records]
    state: _State | None  # None: records kept back by the parent while paused


class _Rebalance(msgspec.Struct, tag="rebalance"):
    kind: str  # "revoked", "lost" or "assigned"
    partitions: list[tuple[str, int]]


class _Raised(msgspec.Struct, tag="raised"):
    during: str  # "start", "poll" or "call"
    failure: _Failure


class _Reply(msgspec.Struct, tag="reply"):
    value: Any = None


class _Closed(msgspec.Struct, tag="closed"):
    pass


class _Subscribe(msgspec.Struct, tag="subscribe"):
    topics: list[str]


class _Call(msgspec.Struct, tag="call"):
    method: str
    partitions: list[tuple[str, int]] = []
    offsets: list[int] = []  # seek: one; commit: one per partition
    topic: str = ""


class _Continue(msgspec.Struct, tag="continue"):
    pass


class _Close(msgspec.Struct, tag="close"):
    timeout_s: float


class _Start(msgspec.Struct):
    config: KafkaClientConfig
    settings: ConsumerSettings
    log_level: int


_ToParent = _Ready | _Polled | _Rebalance | _Raised | _Reply | _Closed
_ToChild = _Subscribe | _Call | _Continue | _Close
_encode = msgspec.msgpack.Encoder().encode
_decode_to_parent = msgspec.msgpack.Decoder(_ToParent).decode
_decode_to_child = msgspec.msgpack.Decoder(_ToChild).decode


def _tps(pairs: list[tuple[str, int]]) -> set[TopicPartition]:
    return {TopicPartition(topic, partition) for topic, partition in pairs}


def _pairs(partitions: set[TopicPartition] | tuple[TopicPartition, ...]
           ) -> list[tuple[str, int]]:
    return [(tp.topic, tp.partition) for tp in partitions]


def _failure(exc: BaseException) -> _Failure:
    if isinstance(exc, OffsetOutOfRange):
        return _Failure("out-of-range", str(exc), [(tp.topic, tp.partition, offset)
                                                   for tp, offset in exc.positions.items()])
    if isinstance(exc, CommitFailed):
        return _Failure("commit", str(exc), retriable=exc.retriable)
    if isinstance(exc, BrokerUnreachable):
        return _Failure("unreachable", str(exc))
    if isinstance(exc, KafkaClientError):
        return _Failure("client", str(exc))
    return _Failure("unexpected", "".join(traceback.format_exception(exc)).rstrip())


def _exception(failure: _Failure) -> KafkaClientError:
    if failure.kind == "out-of-range":
        return OffsetOutOfRange({TopicPartition(t, p): o for t, p, o in failure.positions})
    if failure.kind == "commit":
        return CommitFailed(failure.message, retriable=failure.retriable)
    if failure.kind == "unreachable":
        return BrokerUnreachable(failure.message)
    if failure.kind == "client":
        return KafkaClientError(failure.message)
    return KafkaClientError(f"the read-ahead process failed:\n{failure.message}")


# ------------------------------------------------------------------------- the parent


class ReadAheadConsumer:
    """:class:`~pipeline.kafka_clients.Consumer` over ``make_consumer(config, settings)``
    run in a child process that polls a few batches ahead (see the module doc).

    Raises what ``make_consumer`` raises (:class:`~pipeline.kafka_clients.BrokerUnreachable`
    …) if the child cannot build the client.
    """

    def __init__(self, config: KafkaClientConfig, settings: ConsumerSettings) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # The child imports this package wherever the parent found it (an editable
        # install, a source checkout on sys.path, a test's working folder).
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.read_ahead", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self._inbox: deque[_ToParent] = deque()
        self._listener: RebalanceListener | None = None
        self._assignment: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._highwater: dict[TopicPartition, int] = {}
        self._position: dict[TopicPartition, int] = {}
        # Records of paused partitions that were read ahead before the pause reached the
        # child: returned, in order, after the resume.
        self._held: dict[TopicPartition, list[_Records]] = {}
        self._connected = False
        self._owes_continue = False  # the child waits for the parent's next poll
        self._in_listener = False
        self._closed = False
        try:
            self._send(_Start(config, settings, logging.getLogger().getEffectiveLevel()))
            reply = self._receive(_START_TIMEOUT_S)
            if isinstance(reply, _Raised):
                raise _exception(reply.failure)
            if not isinstance(reply, _Ready):
                raise KafkaClientError(f"the read-ahead process did not start: {reply!r}")
        except BaseException:
            self._kill()
            raise

    @property
    def pid(self) -> int:
        """The child process's id."""
        return self._process.pid

    # Consumer

    def subscribe(self, topics: list[str], listener: RebalanceListener) -> None:
        self._listener = listener
        self._send(_Subscribe(list(topics)))

    def poll(self, timeout_ms: int, max_records: int
             ) -> dict[TopicPartition, list[ConsumedRecord]]:
        if self._owes_continue:  # the service has answered the last poll's exception
            self._owes_continue = False
            self._send(_Continue())
        message = self._inbox.popleft() if self._inbox else self._receive(timeout_ms / 1000)
        if message is None:
            return {}
        if isinstance(message, _Polled):
            return self._deliver(message, max_records)
        if isinstance(message, _Rebalance):
            self._rebalance(message)
            return {}
        if isinstance(message, _Raised) and message.during == "poll":
            self._owes_continue = True
            raise _exception(message.failure)
        raise KafkaClientError(f"the read-ahead process sent {message!r} unasked")

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *partitions: TopicPartition) -> None:
        self._call(_Call("pause", _pairs(partitions)))
        self._paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._call(_Call("resume", _pairs(partitions)))
        self._paused.difference_update(partitions)
        # Records kept back while paused come first: the child read none of them since.
        held = [part for tp in partitions for part in self._held.pop(tp, ())]
        if held:
            self._inbox.appendleft(_Polled(held, None))

    def position(self, tp: TopicPartition) -> int:
        position = self._position.get(tp)
        if position is None:  # nothing of it returned yet: ask the child, and then take
            position = self._call(_Call("position", _pairs((tp,))))
            # the first record it read ahead of that, if any came before its answer.
            waiting = [part.offsets[0] for part in self._held.get(tp, ())]
            waiting += [part.offsets[0] for message in self._inbox
                        if isinstance(message, _Polled) for part in message.records
                        if (part.topic, part.partition) == (tp.topic, tp.partition)]
            position = min(waiting, default=position)
        return position

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater.get(tp)

    def offsets_range(self, tp: TopicPartition) -> tuple[int, int]:
        low, high = self._call(_Call("offsets_range", _pairs((tp,))))
        return low, high

    def partition_count(self, topic: str) -> int | None:
        return self._call(_Call("partition_count", topic=topic))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._check_may_seek()
        self._call(_Call("seek", _pairs((tp,)), [offset]))
        self._forget((tp,))
        self._position[tp] = offset

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self._check_may_seek()
        self._call(_Call("seek_to_beginning", _pairs(partitions)))
        self._forget(partitions)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._call(_Call("commit", _pairs(tuple(offsets)), list(offsets.values())))

    def connected(self) -> bool:
        return self._connected

    def close(self, timeout_s: float) -> None:
        """Close the child's client (its listener may run here once more), then reap it."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s + 5.0
        try:
            self._send(_Close(timeout_s))
            while (left := deadline - time.monotonic()) > 0:
                message = self._receive(left)
                if message is None or isinstance(message, _Closed):
                    break
                if isinstance(message, _Rebalance):
                    self._rebalance(message)
                # Records read ahead are dropped: the service took in nothing after them.
        except KafkaClientError as exc:
            log.warning("closing the read-ahead process: %s", exc)
        finally:
            self._conn.close()
            try:
                self._process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("the read-ahead process %s did not exit; killing it", self.pid)
                self._kill()

    # internals

    def _deliver(self, polled: _Polled, max_records: int
                 ) -> dict[TopicPartition, list[ConsumedRecord]]:
        out: dict[TopicPartition, list[ConsumedRecord]] = {}
        left = max_records
        for i, part in enumerate(polled.records):
            tp = TopicPartition(part.topic, part.partition)
            if tp in self._paused:  # read before the child heard of the pause: kept
                self._held.setdefault(tp, []).append(part)
                continue
            # Past max_records, the rest comes with the next poll, and this poll's state
            # with the rest's last record.
            rest = polled.records[i + 1:]
            if left == 0:
                self._inbox.appendleft(_Polled([part, *rest], polled.state))
                return out
            offsets, values = part.offsets[:left], part.values[:left]
            # extend: records kept back while paused come as several parts of one partition
            out.setdefault(tp, []).extend(map(ConsumedRecord, offsets, values))
            self._position[tp] = offsets[-1] + 1
            left -= len(offsets)
            if len(offsets) < len(part.offsets):
                self._inbox.appendleft(_Polled(
                    [_Records(part.topic, part.partition, part.offsets[len(offsets):],
                              part.values[len(offsets):]), *rest], polled.state))
                return out
        if polled.state is not None:
            self._apply(polled.state)
        return out

    def _apply(self, state: _State) -> None:
        self._assignment = _tps(state.assignment)
        self._paused &= self._assignment
        self._connected = state.connected
        for topic, partition, highwater, position in state.fetched:
            tp = TopicPartition(topic, partition)
            self._highwater[tp] = highwater
            if tp not in self._held:  # else it is where the first record kept back is
                self._position[tp] = position

    def _forget(self, partitions: set[TopicPartition] | tuple[TopicPartition, ...]) -> None:
        """Drop what is known and kept back of partitions revoked or sought."""
        for tp in partitions:
            self._held.pop(tp, None)
            self._highwater.pop(tp, None)
            self._position.pop(tp, None)

    def _rebalance(self, event: _Rebalance) -> None:
        partitions = _tps(event.partitions)
        if event.kind == "assigned":
            self._assignment |= partitions
        else:
            self._assignment -= partitions
            self._paused -= partitions
            self._forget(partitions)
        self._in_listener = True
        try:
            if self._listener is not None:
                getattr(self._listener, f"on_partitions_{event.kind}")(partitions)
        finally:
            self._in_listener = False
            self._send(_Continue())

    def _check_may_seek(self) -> None:
        if not (self._in_listener or self._owes_continue):
            raise RuntimeError("a read-ahead consumer seeks only in its rebalance listener "
                               "or after a poll raised: records after the old position may "
                               "already be read")

    def _call(self, call: _Call) -> Any:
        self._send(call)
        deadline = time.monotonic() + _CALL_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            message = self._receive(left)
            if isinstance(message, _Reply):
                return message.value
            if isinstance(message, _Raised) and message.during == "call":
                raise _exception(message.failure)
            if message is not None:
                self._inbox.append(message)  # read ahead: for the next polls, in order
        raise KafkaClientError(f"the read-ahead process did not answer {call.method} in "
                               f"{_CALL_TIMEOUT_S:.0f} s")

    def _send(self, message: msgspec.Struct) -> None:
        try:
            self._conn.send_bytes(_encode(message))
        except OSError as exc:
            raise KafkaClientError(f"the read-ahead process is gone "
                                   f"(exit code {self._process.poll()}): {exc}") from exc

    def _receive(self, timeout_s: float) -> _ToParent | None:
        try:
            if not self._conn.poll(timeout_s):
                return None
            return _decode_to_parent(self._conn.recv_bytes())
        except (OSError, EOFError) as exc:
            raise KafkaClientError(f"the read-ahead process is gone "
                                   f"(exit code {self._process.poll()}): {exc!r}") from exc

    def _kill(self) -> None:
        self._process.kill()
        self._process.wait()
        self._conn.close()


# -------------------------------------------------------------------------- the child


class _ParentGone(Exception):
    pass


class _Child:
    """The child's side: the client, its listener, and the loop that feeds the parent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.consumer: Any = None
        self.close_timeout_s: float | None = None  # set: the parent asked to close
        self.subscribed = False
        self.parent_gone = False
        self.in_listener = False
        # Encoded messages in order, written by the writer thread (None: no more).
        self.outbox: queue.Queue[bytes | None] = queue.Queue(_AHEAD_MESSAGES)
        self.writer = threading.Thread(target=self.write, name="read-ahead-writer",
                                       daemon=True)
        self.writer.start()

    def send(self, message: msgspec.Struct) -> None:
        """Queue ``message`` for the parent; blocks while _AHEAD_MESSAGES are not written."""
        if self.parent_gone:
            raise _ParentGone
        self.outbox.put(_encode(message))

    def write(self) -> None:
        """The writer thread: the outbox to the socket, until the end or the parent is gone
        (then it only empties the outbox, so that ``send`` never blocks for good)."""
        while (data := self.outbox.get()) is not None:
            if self.parent_gone:
                continue
            try:
                self.conn.send_bytes(data)
            except OSError:
                self.parent_gone = True

    def flush(self) -> None:
        """Wait until every queued message is written (or the parent is found gone)."""
        self.outbox.put(None)
        self.writer.join()

    def receive(self) -> _ToChild:
        return _decode_to_child(self.receive_bytes())

    def receive_bytes(self) -> bytes:
        try:
            return self.conn.recv_bytes()
        except (OSError, EOFError) as exc:
            self.parent_gone = True
            raise _ParentGone from exc

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.flush()  # a daemon thread's queue would be dropped at exit

    def _run(self) -> None:
        try:
            start = msgspec.msgpack.decode(self.receive_bytes(), type=_Start)
        except _ParentGone:
            return
        logging.basicConfig(level=start.log_level, format="%(asctime)s %(levelname)s "
                            "read-ahead %(name)s: %(message)s")
        try:
            self.consumer = make_consumer(start.config, start.settings)
        except Exception as exc:  # raised again in the parent
            self.send(_Raised("start", _failure(exc)))
            return
        self.send(_Ready())
        max_records = start.settings.max_poll_records
        try:
            while self.close_timeout_s is None and not self.parent_gone:
                # Calls first (they are rare and the parent waits), then one poll.
                while self.close_timeout_s is None and (not self.subscribed
                                                        or self.conn.poll(0)):
                    self.serve(self.receive())
                if self.close_timeout_s is not None:
                    break
                try:
                    polled = self.consumer.poll(timeout_ms=_CHILD_POLL_MS,
                                                max_records=max_records)
                except Exception as exc:  # raised again in the parent
                    self.send(_Raised("poll", _failure(exc)))
                    self.wait_for_continue()
                    continue
                self.send(_Polled(
                    [_Records(tp.topic, tp.partition, [r.offset for r in records],
                              [r.value for r in records])
                     for tp, records in polled.items() if records],
                    self.state()))
        except _ParentGone:
            pass
        if self.parent_gone:  # SIGKILL, most likely: leave the group, so it moves on now
            log.warning("the service process is gone: leaving the group")
            # Bounded whatever the client does: kafka-python's close once took 30 s here
            # (a LeaveGroup unanswered under load). Past it the group expires the member.
            closing = threading.Thread(target=self.consumer.close, args=(2.0,), daemon=True)
            closing.start()
            closing.join(_ORPHAN_CLOSE_S)
            return
        self.consumer.close(self.close_timeout_s)
        self.send(_Closed())

    def state(self) -> _State:
        consumer = self.consumer
        assigned = consumer.assignment()
        fetched = []
        for tp in assigned:
            highwater = consumer.highwater(tp)
            if highwater is not None:  # fetched at least once: its position is known
                fetched.append((tp.topic, tp.partition, highwater, consumer.position(tp)))
        return _State(_pairs(assigned), fetched, consumer.connected())

    def serve(self, message: _ToChild) -> None:
        """One command of the parent; replies to calls."""
        if isinstance(message, _Subscribe):
            self.consumer.subscribe(message.topics, _ForwardRebalance(self))
            self.subscribed = True
        elif isinstance(message, _Close):
            self.close_timeout_s = message.timeout_s
        elif isinstance(message, _Call):
            try:
                value = self.call(message)
            except Exception as exc:  # raised again in the parent
                self.send(_Raised("call", _failure(exc)))
            else:
                self.send(_Reply(value))
        # _Continue outside a wait: nothing waits for it

    def call(self, call: _Call) -> Any:
        consumer = self.consumer
        partitions = [TopicPartition(t, p) for t, p in call.partitions]
        if self.in_listener and call.method in _BLOCKING_CALLS:
            # kafka-python runs its listener on its IO thread, where a call that waits for
            # the broker cannot be made; the service commits again after the rebalance.
            if call.method == "commit":
                raise CommitFailed("rebalance in progress", retriable=True)
            raise KafkaClientError(f"{call.method} cannot be answered during a rebalance")
        if call.method == "seek":
            return consumer.seek(partitions[0], call.offsets[0])
        if call.method == "seek_to_beginning":
            return consumer.seek_to_beginning(*partitions)
        if call.method == "pause":
            return consumer.pause(*partitions)
        if call.method == "resume":
            return consumer.resume(*partitions)
        if call.method == "commit":
            return consumer.commit(dict(zip(partitions, call.offsets, strict=True)))
        if call.method == "position":
            return consumer.position(partitions[0])
        if call.method == "offsets_range":
            return list(consumer.offsets_range(partitions[0]))
        if call.method == "partition_count":
            return consumer.partition_count(call.topic)
        raise ValueError(f"unknown call {call.method!r}")

    def wait_for_continue(self) -> None:
        """Serve the parent's calls until it lets the client go on (a close counts)."""
        while True:
            message = self.receive()
            if isinstance(message, _Continue):
                return
            self.serve(message)
            if isinstance(message, _Close):
                return  # closed once the client is out of its poll


class _ForwardRebalance:
    """The child client's listener: the parent runs the service's, the child waits."""

    def __init__(self, child: _Child) -> None:
        self._child = child

    def _forward(self, kind: str, partitions: set[TopicPartition]) -> None:
        # The client catches what its listener raises: a lost parent is seen by the loop.
        child = self._child
        child.in_listener = True
        try:
            with contextlib.suppress(_ParentGone):
                child.send(_Rebalance(kind, _pairs(partitions)))
                child.wait_for_continue()
        finally:
            child.in_listener = False

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._forward("revoked", revoked)

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self._forward("lost", lost)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._forward("assigned", assigned)


def _main(argv: list[str]) -> None:
    # The parent decides when to stop (and closes the client properly); a terminal's
    # Ctrl-C or a SIGTERM to the process group must not cut the child off first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _Child(Connection(int(argv[1]))).run()


if __name__ == "__main__":
    _main(sys.argv)
