"""Prometheus metrics, liveness and readiness of the service, on its own registry.

Every :class:`ServiceMetrics` has its own :class:`~prometheus_client.CollectorRegistry`,
so several services (or tests) can share a process. Its HTTP endpoint serves

* ``/metrics`` — the Prometheus text exposition (also ``/``);
* ``/healthz`` — liveness: 200 while the service loop shows signs of life
  (:meth:`ServiceMetrics.heartbeat`, which :meth:`~ServiceMetrics.publish` calls
  about once a second), 503 once the loop has been silent for ``stall_after_s``;
* ``/readyz`` — readiness: 200 once the service says it is ready with
  :meth:`~ServiceMetrics.set_ready` (broker reachable, partitions assigned), 503 before
  and while it reports a reason not to be.

Metric names follow Prometheus' conventions (base units, ``_total`` counters,
``_seconds``, ``_bytes``, timestamps rather than ages). Counters mirror the
joiner's: what was consumed, rejected (the DLQ), joined, late, duplicate and
orphaned, and the samples emitted by label. Gauges show each learner's rolling
exact AUC, logloss, normalized entropy and calibration over its last ``window``
outcomes, how far processing is behind the newest event (event-time lag) and
behind the log end per partition (records not read yet). Histograms give the
label delay of joined clicks, the time of a processed batch and of a checkpoint.
Learners with a ``stats()`` method add their counters: the GBDT+LR hybrid its tree
refits, swaps and drift detections, DIN its optimiser steps (and their time when
``stats()`` reports ``step_seconds``); learners with a ``device`` attribute export it.

What each metric needs from the service (the calls it makes) is listed in
:class:`ServiceMetrics`' docstring.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from features.joiner import JoinStats, Release
from replay.breakdown import DELAY_EDGES_S
from replay.engine import Outcome
from replay.metrics import RollingWindow

__all__ = ["LearnerWindow", "ServiceMetrics"]

_CLICK_OUTCOMES = {
    "joined": "clicks_joined",
    "late": "late_clicks",
    "duplicate": "duplicate_clicks",
    "orphan": "orphan_clicks",
}

# Label delays: the replay report's edges (1 s … 30 days), without the 0 edge.
_LABEL_DELAY_BUCKETS = tuple(float(e) for e in DELAY_EDGES_S if e > 0)
_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CHECKPOINT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class LearnerWindow(RollingWindow):
    """A :class:`~replay.metrics.RollingWindow` that also gives NE and calibration.

    Like ``logloss()`` and ``auc()``, both return ``nan`` where undefined (empty
    window; NE with a single class; calibration with no positive label).

    >>> w = LearnerWindow(4)
    >>> w.add_many([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5])
    >>> w.calibration(), round(w.normalized_entropy(), 4)
    (2.0, 1.2326)
    """

    __slots__ = ()

    def normalized_entropy(self) -> float:
        """Logloss over the entropy of the window's own click rate (He et al. 2014)."""
        y, _ = self._contents()
        ctr = float(y.mean()) if len(y) else math.nan
        if not 0.0 < ctr < 1.0:
            return math.nan
        background = -(ctr * math.log(ctr) + (1.0 - ctr) * math.log(1.0 - ctr))
        return self.logloss() / background

    def calibration(self) -> float:
        """Mean predicted over observed click rate (1.0 is calibrated)."""
        y, p = self._contents()
        observed = float(y.sum())
        if observed == 0.0:
            return math.nan
        return float(p.sum()) / observed


class _PartitionLag(Collector):
    """``streamctr_consumer_lag_records{topic,partition}``, replaced as a whole on each
    update, so partitions revoked from this instance stop being exported."""

    def __init__(self) -> None:
        self._lags: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def replace(self, lags: Mapping[tuple[str, str], float]) -> None:
        with self._lock:
            self._lags = dict(lags)

    def set_one(self, key: tuple[str, str], records: float) -> None:
        with self._lock:
            self._lags[key] = records

    def __len__(self) -> int:
        return len(self._lags)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "streamctr_consumer_lag_records",
            "Records between the consumer's position and the log end, by topic and partition",
            labels=["topic", "partition"],
        )
        with self._lock:
            items = sorted(self._lags.items())
        for (topic, partition), records in items:
            family.add_metric([topic, partition], records)
        yield family


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ServiceMetrics:
    """The service's metric families, its health and readiness, and the HTTP endpoint.

    Calls the service makes (the first four exist; the others feed the metrics
    they name and are no-ops for the exposition until called):

    * ``consumed.labels(topic).inc(n)`` and ``rejected.labels(topic).inc()`` —
      ``streamctr_events_consumed_total``, ``streamctr_events_rejected_total`` (the DLQ);
    * :meth:`on_outcome` / :meth:`on_outcomes` (engine callbacks, per sample or per
      batch) — rolling learner gauges, label delays;
    * :meth:`publish` (about once a second) and :meth:`publish_learners` — joiner
      counters, gauges, learner counters; ``publish`` is also the loop's heartbeat;
    * :meth:`set_consumer_lag` — per-partition lag;
    * :meth:`set_ready` — readiness (``/readyz``, ``streamctr_ready``);
    * :meth:`on_batch` — ``streamctr_batch_duration_seconds``;
    * :meth:`on_checkpoint`, :meth:`on_checkpoint_restored`, :meth:`on_checkpoint_failed`
      — checkpoint metrics;
    * :meth:`set_learner_device` — where the learner has no ``device`` attribute.
    """

    def __init__(
        self,
        learners: Iterable[str] | Mapping[str, Any],
        window: int = 10_000,
        *,
        stall_after_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``learners``: names, or a mapping of name to learner (to read ``device``).

        ``stall_after_s``: how long the loop may go without a heartbeat before
        ``/healthz`` fails. ``clock``: Unix time in seconds (tests pass a fake).
        """
        self.registry = CollectorRegistry()
        self._clock = clock
        self.stall_after_s = stall_after_s
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("streamctr_build", "Version of the running streamctr", registry=r).info(
            {"version": _version()})
        # -- input and joiner ----------------------------------------------------------
        self.consumed = Counter(
            "streamctr_events_consumed", "Records consumed, by topic", ["topic"], registry=r
        )
        self.records_skipped = Counter(
            "streamctr_records_skipped",
            "Records deleted by the broker (retention) before the service read them, by topic",
            ["topic"], registry=r,
        )
        self.rejected = Counter(
            "streamctr_events_rejected",
            "Records sent to the DLQ (failed validation, or clicks that never joined), by topic",
            ["topic"],
            registry=r,
        )
        self.samples = Counter(
            "streamctr_samples_emitted", "Labelled samples emitted by the joiner", ["label"],
            registry=r,
        )
        self.clicks = Counter(
            "streamctr_clicks", "Clicks by join outcome", ["outcome"], registry=r
        )
        self.duplicate_impressions = Counter(
            "streamctr_duplicate_impressions", "Impressions seen again and dropped", registry=r
        )
        self.open_windows = Gauge(
            "streamctr_open_windows", "Impressions waiting for a click or their window end",
            registry=r,
        )
        self.joiner_keys = Gauge(
            "streamctr_joiner_keys", "Users, items and user × category pairs the joiner holds",
            ["kind"], registry=r,
        )
        self.joiner_keys_evicted = Counter(
            "streamctr_joiner_keys_evicted", "Keys the joiner evicted, idle past its key TTL",
            ["kind"], registry=r,
        )
        self.label_delay = Histogram(
            "streamctr_label_delay_seconds",
            "Event time from an impression to its joined click",
            buckets=_LABEL_DELAY_BUCKETS, registry=r,
        )
        self.event_lag = Gauge(
            "streamctr_processing_lag_seconds",
            "Wall-clock now minus the event time of the newest processed event",
            registry=r,
        )
        self._partition_lag = _PartitionLag()
        r.register(self._partition_lag)
        self.batch_duration = Histogram(
            "streamctr_batch_duration_seconds",
            "Wall time to process one batch of released records (join, score, learn)",
            buckets=_BATCH_BUCKETS, registry=r,
        )
        # -- learners ------------------------------------------------------------------
        self.rolling_logloss = Gauge(
            "streamctr_rolling_logloss", "Logloss over the learner's last outcomes", ["learner"],
            registry=r,
        )
        self.rolling_auc = Gauge(
            "streamctr_rolling_auc", "Exact AUC over the learner's last outcomes", ["learner"],
            registry=r,
        )
        self.rolling_ne = Gauge(
            "streamctr_rolling_normalized_entropy",
            "Logloss over the entropy of the click rate, over the learner's last outcomes",
            ["learner"], registry=r,
        )
        self.rolling_calibration = Gauge(
            "streamctr_rolling_calibration",
            "Mean predicted over observed click rate, over the learner's last outcomes",
            ["learner"], registry=r,
        )
        self.rolling_samples = Gauge(
            "streamctr_rolling_samples",
            "Outcomes in the learner's rolling window (the rolling metrics' sample size)",
            ["learner"], registry=r,
        )
        self.tree_refits = Counter(
            "streamctr_tree_refits", "Tree refits started, by trigger (schedule or drift)",
            ["learner", "trigger"], registry=r,
        )
        self.tree_swaps = Counter(
            "streamctr_tree_swaps",
            "Serving LR replaced by the new trees' shadow LR, by reason (loss or warmup)",
            ["learner", "reason"], registry=r,
        )
        self.drift_detections = Counter(
            "streamctr_drift_detections", "Drift detector firings on a learner's loss",
            ["learner"], registry=r,
        )
        self.learner_steps = Counter(
            "streamctr_learner_steps", "Optimiser steps of mini-batch learners (DIN)",
            ["learner"], registry=r,
        )
        self.learner_step_seconds = Counter(
            "streamctr_learner_step_seconds",
            "Wall time spent in optimiser steps (with streamctr_learner_steps_total: mean step "
            "time)", ["learner"], registry=r,
        )
        self.learner_device = Gauge(
            "streamctr_learner_device_info", "Device a learner computes on (value 1)",
            ["learner", "device"], registry=r,
        )
        # -- checkpoints -----------------------------------------------------------------
        self.checkpoint_duration = Histogram(
            "streamctr_checkpoint_duration_seconds",
            "Wall time to write a checkpoint (producers flushed, state saved, offsets committed)",
            buckets=_CHECKPOINT_BUCKETS, registry=r,
        )
        self.checkpoint_size = Gauge(
            "streamctr_checkpoint_size_bytes", "Size of the newest checkpoint on disk",
            registry=r,
        )
        self.checkpoint_last_success = Gauge(
            "streamctr_checkpoint_last_success_timestamp_seconds",
            "Unix time the newest durable checkpoint was written (the service's start until "
            "the first)", registry=r,
        )
        self.checkpoints = Counter(
            "streamctr_checkpoints", "Checkpoint attempts, by result (success or failure)",
            ["result"], registry=r,
        )
        # -- lifecycle -------------------------------------------------------------------
        self.ready = Gauge(
            "streamctr_ready", "1 while the service is ready (broker reachable, partitions "
            "assigned), else 0", registry=r,
        )
        self.start_time = Gauge(
            "streamctr_start_time_seconds", "Unix time the service started", registry=r,
        )
        started = clock()
        self.start_time.set(started)
        self.checkpoint_last_success.set(started)
        for result in ("success", "failure"):
            self.checkpoints.labels(result)

        self._metrics_app = make_wsgi_app(self.registry)
        self._devices: dict[str, str] = {}
        names = list(learners)
        self._windows = {name: LearnerWindow(window) for name in names}
        for name in names:
            self.rolling_samples.labels(name).set(0)
        if isinstance(learners, Mapping):
            for name, learner in learners.items():
                device = _device_of(learner)
                if device is not None:
                    self.set_learner_device(name, device)
        self._last_learner_stats: dict[str, Mapping[str, float]] = {}
        self._last_stats = JoinStats()
        self._ready = False
        self._not_ready_reason = "no partitions assigned yet"
        self.ready.set_function(lambda: 1.0 if self.readiness()[0] else 0.0)
        self._last_heartbeat = started
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self.address: str | None = None

    # -- HTTP endpoint -------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start ``/metrics``, ``/healthz`` and ``/readyz``; port 0 picks a free one."""
        self.heartbeat()
        server = make_server(addr, port, self.wsgi_app, ThreadingWSGIServer,
                             handler_class=_QuietHandler)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="metrics-http",
                                        daemon=True)
        self._thread.start()
        self.port = server.server_port
        self.address = server.server_address[0]  # the bind address, as the OS took it
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wsgi_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """The endpoint as a WSGI application (serve it with any WSGI server)."""
        path = environ.get("PATH_INFO", "/")
        if path in ("/", "/metrics"):
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            ok, text = self.health()
        elif path == "/readyz":
            ok, text = self.readiness()
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics, /healthz or /readyz\n"]
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [text.encode() + b"\n"]

    # -- liveness and readiness ----------------------------------------------------------

    def heartbeat(self) -> None:
        """The loop is alive (called by :meth:`publish`; call it where the loop may block)."""
        self._last_heartbeat = self._clock()

    def health(self) -> tuple[bool, str]:
        """(alive, text) as ``/healthz`` answers."""
        silent = self._clock() - self._last_heartbeat
        if silent > self.stall_after_s:
            return False, f"stalled: no heartbeat from the service loop for {silent:.0f} s"
        return True, "ok"

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Readiness: True once partitions are assigned and the broker answers; False with
        a reason (``"broker unreachable: …"``) while it does not."""
        self._ready = bool(ready)
        self._not_ready_reason = "" if ready else (reason or "not ready")

    def readiness(self) -> tuple[bool, str]:
        """(ready, text) as ``/readyz`` answers."""
        if self._ready:
            return True, "ready"
        return False, f"not ready: {self._not_ready_reason}"

    # -- feeding -------------------------------------------------------------------------

    def on_outcome(self, outcome: Outcome) -> None:
        """Engine callback: feed each learner's rolling window and the label-delay histogram."""
        release = outcome.release
        for name, score in outcome.scores.items():
            self._windows[name].add(release.label, score)
        self._observe_label_delay(release)

    def on_outcomes(self, releases: Sequence[Release], scores: Mapping[str, np.ndarray]
                    ) -> None:
        """Engine batch callback: :meth:`on_outcome` for a batch of final releases."""
        labels = np.fromiter([r.label for r in releases], np.int8, len(releases))
        for name, batch_scores in scores.items():
            self._windows[name].add_many(labels, batch_scores)
        for release in releases:
            self._observe_label_delay(release)

    def _observe_label_delay(self, release: Release) -> None:
        if release.label == 1 and release.click_ts is not None:
            self.label_delay.observe(max(0.0, (release.click_ts - release.impression.ts) / 1000))

    def publish(self, stats: JoinStats, open_windows: int, newest_event_ts: int | None) -> None:
        """Bring counters and gauges up to date (called about once a second, and at stop)."""
        self.heartbeat()
        last = self._last_stats
        for outcome, attr in _CLICK_OUTCOMES.items():
            self._inc(self.clicks.labels(outcome), getattr(stats, attr) - getattr(last, attr))
        self._inc(self.samples.labels("1"), stats.samples_positive - last.samples_positive)
        self._inc(self.samples.labels("0"), stats.samples_negative - last.samples_negative)
        self._inc(self.duplicate_impressions,
                  stats.duplicate_impressions - last.duplicate_impressions)
        for kind in ("users", "items", "pairs"):
            self._inc(self.joiner_keys_evicted.labels(kind),
                      getattr(stats, f"{kind}_evicted") - getattr(last, f"{kind}_evicted"))
            self.joiner_keys.labels(kind).set(getattr(stats, f"{kind}_live"))
        self._last_stats = JoinStats(**stats.as_dict())
        self.open_windows.set(open_windows)
        for name, window in self._windows.items():
            self.rolling_logloss.labels(name).set(window.logloss())
            self.rolling_auc.labels(name).set(window.auc())
            self.rolling_ne.labels(name).set(window.normalized_entropy())
            self.rolling_calibration.labels(name).set(window.calibration())
            self.rolling_samples.labels(name).set(len(window))
        if newest_event_ts is not None:
            self.event_lag.set(max(0.0, self._clock() - newest_event_ts / 1000))

    def publish_learners(self, stats: Mapping[str, Mapping[str, float]]) -> None:
        """Advance the learner counters to each learner's ``stats()`` (cumulative counts).

        Keys read: ``refits``, ``drift_refits``, ``swaps_on_loss``, ``swaps_on_warmup``,
        ``drifts`` (GBDT+LR); ``steps`` and, where present, ``step_seconds`` (DIN).
        """
        for name, now in stats.items():
            last = self._last_learner_stats.get(name, {})

            def delta(key: str, now: Mapping[str, float] = now, last=last) -> float:
                return now.get(key, 0) - last.get(key, 0)

            if "refits" in now:
                drift = delta("drift_refits")
                self._inc(self.tree_refits.labels(name, "drift"), drift)
                self._inc(self.tree_refits.labels(name, "schedule"), delta("refits") - drift)
                self._inc(self.tree_swaps.labels(name, "loss"), delta("swaps_on_loss"))
                self._inc(self.tree_swaps.labels(name, "warmup"), delta("swaps_on_warmup"))
                self._inc(self.drift_detections.labels(name), delta("drifts"))
            if "steps" in now:
                self._inc(self.learner_steps.labels(name), delta("steps"))
            if "step_seconds" in now:
                self._inc(self.learner_step_seconds.labels(name), delta("step_seconds"))
            self._last_learner_stats[name] = dict(now)

    def set_consumer_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Lag of every partition this instance holds: ``{(topic, partition): records}``.

        Replaces the previous set, so revoked partitions disappear from the exposition.
        """
        self._partition_lag.replace({(topic, str(partition)): max(0, records)
                                     for (topic, partition), records in lags.items()})

    def on_batch(self, seconds: float) -> None:
        """One batch of released records went through the engine in ``seconds``."""
        self.batch_duration.observe(seconds)

    def on_checkpoint(self, duration_s: float, size_bytes: int,
                      written_at_s: float | None = None) -> None:
        """A checkpoint is durable: it took ``duration_s``, holds ``size_bytes`` on disk and
        was written at Unix time ``written_at_s`` (default: now)."""
        self.checkpoint_duration.observe(duration_s)
        self.checkpoint_size.set(size_bytes)
        self.checkpoint_last_success.set(self._clock() if written_at_s is None else written_at_s)
        self.checkpoints.labels("success").inc()

    def on_checkpoint_restored(self, written_at_s: float, size_bytes: int | None = None) -> None:
        """The service started from a checkpoint written at Unix time ``written_at_s``: until
        the next one, that is the newest durable state (its age is what an operator sees)."""
        self.checkpoint_last_success.set(written_at_s)
        if size_bytes is not None:
            self.checkpoint_size.set(size_bytes)

    def on_checkpoint_failed(self) -> None:
        """A checkpoint attempt raised (the previous one stays the newest durable)."""
        self.checkpoints.labels("failure").inc()

    def set_learner_device(self, learner: str, device: str) -> None:
        """Export the device a learner computes on (``cpu``, ``cuda``, ``cuda:1`` …)."""
        previous = self._devices.get(learner)
        if previous is not None and previous != device:
            self.learner_device.remove(learner, previous)  # one series per learner
        self.learner_device.labels(learner, device).set(1)
        self._devices[learner] = device

    @staticmethod
    def _inc(counter: Counter, amount: float) -> None:
        if amount > 0:
            counter.inc(amount)


def _device_of(learner: Any) -> str | None:
    """The device a learner with a ``device`` attribute computes on; ``auto`` resolved as
    the learners resolve it (CUDA when torch sees one)."""
    device = getattr(learner, "device", None)
    if not isinstance(device, str):
        return None
    if device == "auto":
        torch = sys.modules.get("torch")
        cuda = torch is not None and torch.cuda.is_available()
        return "cuda" if cuda else "cpu"
    return device


def _version() -> str:
    try:
        return metadata.version("streamctr")
    except metadata.PackageNotFoundError:
        return "unknown"
