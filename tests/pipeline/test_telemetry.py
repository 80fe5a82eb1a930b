from __future__ import annotations

import math
import shutil
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client import generate_latest

from features.events import Impression
from features.joiner import JoinStats, Release
from learners import GBDTLR
from learners.checks import check_dataset
from pipeline.telemetry import LearnerWindow, ServiceMetrics
from replay import metrics as ref
from replay.engine import Outcome


def value(metrics: ServiceMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def outcome(label: int, scores: dict[str, float], ts: int = 1_000_000,
            click_after_ms: int | None = None) -> Outcome:
    imp = Impression(impression_id=f"i{ts}", request_id="r", user_id="u", item_id="a",
                     category_id="c", position=0, ts=ts)
    click_ts = None if click_after_ms is None else ts + click_after_ms
    release = Release(kind=0, impression=imp, row=0, label=label, click_ts=click_ts,
                      final_ts=click_ts or ts + 60_000, event=-1, phase=0)
    return Outcome(release=release, scores=scores)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_tree_refits_swaps_and_drifts_of_the_hybrid_are_exported_as_counters():
    hybrid = GBDTLR(n_bits=16, n_trees=5, num_leaves=8, min_data_in_leaf=10, buffer_size=400,
                    min_samples=100, refit_every=150, adopt_after=30, shadow_window=40,
                    shadow_max=80)
    xs, ys, _ = check_dataset(700)
    metrics = ServiceMetrics(["gbdt_lr"])
    for start in (0, 350):  # two publishes: counters advance by what happened in between
        hybrid.learn_many(xs[start:start + 350], ys[start:start + 350])
        metrics.publish_learners({"gbdt_lr": hybrid.stats()})
    stats = hybrid.stats()
    assert stats["swaps"] >= 2 and stats["refits"] >= 3
    refits = sum(value(metrics, "streamctr_tree_refits_total", learner="gbdt_lr", trigger=t)
                 for t in ("schedule", "drift"))
    swaps = sum(value(metrics, "streamctr_tree_swaps_total", learner="gbdt_lr", reason=r)
                for r in ("loss", "warmup"))
    assert (refits, swaps) == (stats["refits"], stats["swaps"])
    assert value(metrics, "streamctr_tree_refits_total", learner="gbdt_lr",
                 trigger="drift") == stats["drift_refits"]
    assert value(metrics, "streamctr_drift_detections_total", learner="gbdt_lr") == \
        stats["drifts"]


def feed(metrics: ServiceMetrics, outcomes: list, batched: bool) -> None:
    """One outcome at a time (on_outcome), or in batches of 64 (the engine's on_outcomes)."""
    if not batched:
        for o in outcomes:
            metrics.on_outcome(o)
        return
    for start in range(0, len(outcomes), 64):
        part = outcomes[start:start + 64]
        metrics.on_outcomes([o.release for o in part],
                            {"ftrl": np.array([o.scores["ftrl"] for o in part])})


@pytest.mark.parametrize("batched", [False, True])
def test_rolling_gauges_equal_the_replay_metrics_over_the_last_window_outcomes(batched):
    rng = np.random.default_rng(7)
    n, window = 700, 500
    y = (rng.random(n) < 0.2).astype(int)
    p = np.clip(0.1 + 0.5 * y * rng.random(n) + 0.2 * rng.random(n), 0.0, 1.0)
    metrics = ServiceMetrics(["ftrl"], window=window)
    feed(metrics, [outcome(int(yi), {"ftrl": float(pi)}) for yi, pi in zip(y, p, strict=True)],
         batched)
    metrics.publish(JoinStats(), 0, None)
    yw, pw = y[-window:], p[-window:]
    got = {name: value(metrics, f"streamctr_rolling_{name}", learner="ftrl")
           for name in ("auc", "logloss", "normalized_entropy", "calibration", "samples")}
    assert got["auc"] == pytest.approx(ref.auc(yw, pw), abs=1e-12)
    assert got["logloss"] == pytest.approx(ref.logloss(yw, pw), abs=1e-12)
    assert got["normalized_entropy"] == pytest.approx(ref.normalized_entropy(yw, pw), abs=1e-12)
    assert got["calibration"] == pytest.approx(ref.calibration(yw, pw), abs=1e-12)
    assert got["samples"] == window


def test_rolling_metrics_are_nan_where_undefined():
    w = LearnerWindow(10)
    assert all(math.isnan(f()) for f in (w.auc, w.logloss, w.normalized_entropy, w.calibration))
    w.add_many([0, 0], [0.1, 0.2])  # one class, no positive
    assert math.isnan(w.normalized_entropy()) and math.isnan(w.calibration())
    assert w.logloss() > 0


@pytest.mark.parametrize("batched", [False, True])
def test_label_delay_histogram_counts_joined_clicks_by_seconds_after_the_impression(batched):
    metrics = ServiceMetrics(["ftrl"])
    feed(metrics, [outcome(1, {"ftrl": 0.5}, click_after_ms=1_500),
                   outcome(1, {"ftrl": 0.5}, click_after_ms=45_000),
                   outcome(0, {"ftrl": 0.5})],  # a negative has no label delay
         batched)
    name = "streamctr_label_delay_seconds"
    assert value(metrics, f"{name}_count") == 2
    assert value(metrics, f"{name}_sum") == pytest.approx(46.5)
    assert value(metrics, f"{name}_bucket", le="1.0") == 0
    assert value(metrics, f"{name}_bucket", le="2.0") == 1
    assert value(metrics, f"{name}_bucket", le="60.0") == 2


def test_consumer_lag_is_per_partition_and_revoked_partitions_disappear():
    metrics = ServiceMetrics(["ftrl"])
    metrics.set_consumer_lag({("impressions", 0): 5, ("impressions", 1): 7, ("clicks", 0): -3})
    name = "streamctr_consumer_lag_records"
    assert value(metrics, name, topic="impressions", partition="1") == 7
    assert value(metrics, name, topic="clicks", partition="0") == 0  # never negative
    metrics.set_consumer_lag({("impressions", 0): 2})
    assert value(metrics, name, topic="impressions", partition="0") == 2
    assert value(metrics, name, topic="impressions", partition="1") is None


def test_checkpoint_metrics_start_at_the_service_start_and_follow_each_checkpoint():
    clock = FakeClock(1_000.0)
    metrics = ServiceMetrics(["ftrl"], clock=clock)
    assert value(metrics, "streamctr_checkpoint_last_success_timestamp_seconds") == 1_000.0
    assert value(metrics, "streamctr_start_time_seconds") == 1_000.0
    clock.now = 1_060.0
    metrics.on_checkpoint(0.4, 123_456)
    metrics.on_checkpoint(2.0, 200_000, written_at_s=1_065.0)
    metrics.on_checkpoint_failed()
    assert value(metrics, "streamctr_checkpoint_last_success_timestamp_seconds") == 1_065.0
    assert value(metrics, "streamctr_checkpoint_size_bytes") == 200_000
    assert value(metrics, "streamctr_checkpoint_duration_seconds_count") == 2
    assert value(metrics, "streamctr_checkpoint_duration_seconds_bucket", le="0.5") == 1
    assert value(metrics, "streamctr_checkpoints_total", result="success") == 2
    assert value(metrics, "streamctr_checkpoints_total", result="failure") == 1


def test_a_restored_checkpoint_is_the_newest_durable_state_until_the_next_one():
    metrics = ServiceMetrics(["ftrl"], clock=FakeClock(5_000.0))
    metrics.on_checkpoint_restored(4_000.0, size_bytes=777)
    assert value(metrics, "streamctr_checkpoint_last_success_timestamp_seconds") == 4_000.0
    assert value(metrics, "streamctr_checkpoint_size_bytes") == 777
    assert value(metrics, "streamctr_checkpoints_total", result="success") == 0
    assert value(metrics, "streamctr_checkpoint_duration_seconds_count") == 0


def test_batch_duration_histogram():
    metrics = ServiceMetrics(["ftrl"])
    for seconds in (0.002, 0.03, 0.03, 4.0):
        metrics.on_batch(seconds)
    assert value(metrics, "streamctr_batch_duration_seconds_count") == 4
    assert value(metrics, "streamctr_batch_duration_seconds_bucket", le="0.05") == 3
    assert value(metrics, "streamctr_batch_duration_seconds_sum") == pytest.approx(4.062)


def test_din_steps_step_time_and_device_come_from_the_learner():
    class FakeDIN:
        device = "auto"

    metrics = ServiceMetrics({"din": FakeDIN(), "ftrl": object()})
    assert value(metrics, "streamctr_learner_device_info", learner="din", device="cpu") == 1
    metrics.publish_learners({"din": {"samples": 4096, "steps": 4}})
    metrics.publish_learners({"din": {"samples": 8192, "steps": 8, "step_seconds": 0.5}})
    assert value(metrics, "streamctr_learner_steps_total", learner="din") == 8
    assert value(metrics, "streamctr_learner_step_seconds_total", learner="din") == 0.5
    # GBDT+LR counters are not invented for learners that do not report them.
    assert value(metrics, "streamctr_tree_swaps_total", learner="din", reason="loss") is None
    metrics.set_learner_device("din", "cuda:0")  # moved: one series per learner
    assert value(metrics, "streamctr_learner_device_info", learner="din", device="cpu") is None
    assert value(metrics, "streamctr_learner_device_info", learner="din", device="cuda:0") == 1


def test_readiness_is_false_until_the_service_says_ready_and_gives_its_reason():
    metrics = ServiceMetrics(["ftrl"])
    port = metrics.serve(0, addr="127.0.0.1")
    try:
        status, body = get(port, "/readyz")
        assert status == 503 and "no partitions assigned" in body
        assert value(metrics, "streamctr_ready") == 0
        metrics.set_ready(True)
        assert get(port, "/readyz") == (200, "ready\n")
        assert value(metrics, "streamctr_ready") == 1
        metrics.set_ready(False, "broker unreachable: NoBrokersAvailable")
        assert get(port, "/readyz") == (503, "not ready: broker unreachable: "
                                             "NoBrokersAvailable\n")
        assert get(port, "/nope")[0] == 404
    finally:
        metrics.close()


def test_liveness_fails_once_the_loop_stops_publishing():
    clock = FakeClock()
    metrics = ServiceMetrics(["ftrl"], stall_after_s=60, clock=clock)
    port = metrics.serve(0, addr="127.0.0.1")
    try:
        assert get(port, "/healthz") == (200, "ok\n")
        clock.now += 59
        metrics.publish(JoinStats(), 0, None)  # publish is the loop's heartbeat
        clock.now += 59
        assert get(port, "/healthz")[0] == 200
        clock.now += 2
        status, body = get(port, "/healthz")
        assert status == 503 and "no heartbeat" in body
    finally:
        metrics.close()


def test_two_services_in_one_process_have_separate_registries_and_endpoints():
    a, b = ServiceMetrics(["ftrl"]), ServiceMetrics(["ftrl"])
    pa, pb = a.serve(0, addr="127.0.0.1"), b.serve(0, addr="127.0.0.1")
    try:
        a.consumed.labels("impressions").inc(3)
        line = 'streamctr_events_consumed_total{topic="impressions"} 3.0'
        assert line in get(pa, "/metrics")[1]
        assert line not in get(pb, "/metrics")[1]
        assert get(pb, "/")[1].startswith("# HELP")
    finally:
        a.close()
        b.close()


def filled_exposition() -> bytes:
    """An exposition where every streamctr family has samples."""
    metrics = ServiceMetrics({"ftrl": object(), "din": type("D", (), {"device": "cpu"})()})
    metrics.consumed.labels("impressions").inc(10)
    metrics.rejected.labels("impressions").inc()
    for i in range(20):
        metrics.on_outcome(outcome(i % 2, {"ftrl": 0.3 + 0.02 * i, "din": 0.5}, ts=i * 1000,
                                   click_after_ms=2_000 if i % 2 else None))
    metrics.publish(JoinStats(clicks_joined=10, samples_positive=10, samples_negative=10),
                    5, 1_000)
    metrics.publish_learners({"gbdt_lr": {"refits": 2, "drift_refits": 1, "swaps_on_loss": 1,
                                          "swaps_on_warmup": 0, "drifts": 1},
                              "din": {"steps": 3, "step_seconds": 0.2}})
    metrics.set_consumer_lag({("impressions", 0): 3})
    metrics.on_batch(0.01)
    metrics.on_checkpoint(0.5, 1_000)
    metrics.set_ready(True)
    return generate_latest(metrics.registry)


def test_every_metric_family_is_documented_and_named_by_the_conventions():
    text = filled_exposition().decode()
    families = {line.split()[2]: line for line in text.splitlines()
                if line.startswith("# TYPE streamctr_")}
    assert len(families) >= 25
    for name, line in families.items():
        kind = line.split()[3]
        assert f"# HELP {name} " in text
        assert (kind == "counter") == name.endswith("_total"), name
        assert not any(unit in name for unit in ("_ms", "milliseconds", "_kb", "_mb", "minutes"))


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package 'prometheus'; .ci/run "
                           "installs it)")
def test_exposition_passes_promtool_check_metrics():
    result = subprocess.run(["promtool", "check", "metrics"], input=filled_exposition(),
                            capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert not result.stdout.strip() and not result.stderr.strip(), \
        (result.stdout + result.stderr).decode()
