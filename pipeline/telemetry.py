"""Prometheus metrics of the service, on its own registry (several services can share a process).

Counters mirror the joiner's: a scrape shows what was consumed, rejected, joined,
late, duplicate and orphaned, and the samples emitted by label. Gauges show the
learners' rolling logloss and exact AUC over their last ``window`` outcomes and
how far processing is behind the newest event (event-time lag) and behind the
log end (records not read yet). Learners with a ``stats()`` method (the GBDT+LR hybrid)
add their tree refits, swaps and drift detections.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from features.joiner import JoinStats
from replay.engine import Outcome
from replay.metrics import RollingWindow

__all__ = ["ServiceMetrics"]

_CLICK_OUTCOMES = {
    "joined": "clicks_joined",
    "late": "late_clicks",
    "duplicate": "duplicate_clicks",
    "orphan": "orphan_clicks",
}


class ServiceMetrics:
    """The service's metric families and the rolling windows behind the learner gauges."""

    def __init__(self, learner_names: Iterable[str], window: int = 10_000) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "streamctr_events_consumed", "Records consumed, by topic", ["topic"], registry=r
        )
        self.rejected = Counter(
            "streamctr_events_rejected",
            "Records that failed validation or never joined, sent to the DLQ, by topic",
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
        self.rolling_logloss = Gauge(
            "streamctr_rolling_logloss", "Logloss over the learner's last outcomes", ["learner"],
            registry=r,
        )
        self.rolling_auc = Gauge(
            "streamctr_rolling_auc", "Exact AUC over the learner's last outcomes", ["learner"],
            registry=r,
        )
        self.event_lag = Gauge(
            "streamctr_processing_lag_seconds",
            "Wall-clock now minus the event time of the newest processed event",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "streamctr_consumer_lag_records", "Records between the read position and the log end",
            ["topic"], registry=r,
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
        self._windows = {name: RollingWindow(window) for name in learner_names}
        self._last_learner_stats: dict[str, Mapping[str, int]] = {}
        self._last_stats = JoinStats()
        self._server: WSGIServer | None = None
        self.port: int | None = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start the /metrics endpoint; port 0 picks a free one. Return the port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        self.port = server.server_port
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def on_outcome(self, outcome: Outcome) -> None:
        """Engine callback: feed each learner's rolling window."""
        label = outcome.release.label
        for name, score in outcome.scores.items():
            self._windows[name].add(label, score)

    def publish(self, stats: JoinStats, open_windows: int, newest_event_ts: int | None) -> None:
        """Bring counters and gauges up to date (called about once a second, and at stop)."""
        last = self._last_stats
        for outcome, attr in _CLICK_OUTCOMES.items():
            self._inc(self.clicks.labels(outcome), getattr(stats, attr) - getattr(last, attr))
        self._inc(self.samples.labels("1"), stats.samples_positive - last.samples_positive)
        self._inc(self.samples.labels("0"), stats.samples_negative - last.samples_negative)
        self._inc(self.duplicate_impressions,
                  stats.duplicate_impressions - last.duplicate_impressions)
        self._last_stats = JoinStats(**stats.as_dict())
        self.open_windows.set(open_windows)
        for name, window in self._windows.items():
            self.rolling_logloss.labels(name).set(window.logloss())
            self.rolling_auc.labels(name).set(window.auc())
        if newest_event_ts is not None:
            self.event_lag.set(max(0.0, time.time() - newest_event_ts / 1000))

    def publish_learners(self, stats: Mapping[str, Mapping[str, int]]) -> None:
        """Advance the tree counters to each learner's ``stats()`` (cumulative counts)."""
        for name, now in stats.items():
            last = self._last_learner_stats.get(name, {})

            def delta(key: str, now: Mapping[str, int] = now, last=last) -> int:
                return now.get(key, 0) - last.get(key, 0)

            drift = delta("drift_refits")
            self._inc(self.tree_refits.labels(name, "drift"), drift)
            self._inc(self.tree_refits.labels(name, "schedule"), delta("refits") - drift)
            self._inc(self.tree_swaps.labels(name, "loss"), delta("swaps_on_loss"))
            self._inc(self.tree_swaps.labels(name, "warmup"), delta("swaps_on_warmup"))
            self._inc(self.drift_detections.labels(name), delta("drifts"))
            self._last_learner_stats[name] = dict(now)

    @staticmethod
    def _inc(counter: Counter, amount: int) -> None:
        if amount > 0:
            counter.inc(amount)
