"""A real Prometheus server scrapes a real `streamctr serve` and answers through its HTTP API.

The service runs as a subprocess configured only by STREAMCTR_* variables (as in the
container), against the test broker; Prometheus (Debian's `prometheus` binary) runs
with a temporary storage folder on a free port, scraping every second, with the alert
rules of deploy/prometheus/alerts.yml loaded. Every expression of the Grafana dashboard
is then run through Prometheus' query API.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipeline.produce import produce_folder
from pipeline.service import Topics
from replay.synthetic import generate, write_stream
from tests.deploy.helpers import PROMETHEUS_DIR, ROOT, dashboard_exprs, tool, yaml_load

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:  # a bad query answers 400 with a JSON error
        return json.loads(err.read())


def query(base: str, expr: str) -> dict[str, Any]:
    return api(base, "/api/v1/query", query=expr)


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}:\n"
                        f"{proc.stdout.read().decode() if proc.stdout else ''}")
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def start_prometheus(tmp: Path, target: str) -> tuple[subprocess.Popen, str]:
    binary = tool("prometheus")
    config = yaml_load(PROMETHEUS_DIR / "prometheus.yml")
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    path = tmp / "prometheus.yml"
    path.write_text(json.dumps(config))
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={path}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"{base}/-/ready", timeout=1).status == 200
        except OSError:
            return False

    wait_for("Prometheus to be ready", ready, 20, proc)
    return proc, base


def stop(proc: subprocess.Popen, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_prometheus_scrapes_the_service_and_answers_queries(kafka_bootstrap, kafka_topics,
                                                            tmp_path):
    tool("prometheus")  # skip before producing anything when it is absent
    topics = Topics(**kafka_topics)
    stream_dir = tmp_path / "stream"
    write_stream(generate(2_000, seed=3), stream_dir)
    produced = produce_folder(stream_dir, kafka_bootstrap, topics=topics, show_progress=False)

    metrics_port = free_port()
    env = {**os.environ,
           "STREAMCTR_BOOTSTRAP": kafka_bootstrap,
           "STREAMCTR_METRICS_PORT": str(metrics_port),
           "STREAMCTR_GROUP_ID": f"g-{topics.impressions}",
           "STREAMCTR_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
           "STREAMCTR_LEARNERS": "ftrl",
           **{f"STREAMCTR_{role.upper()}_TOPIC": name for role, name in kafka_topics.items()}}
    service = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve"], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    prometheus = None
    try:
        prometheus, base = start_prometheus(tmp_path, f"127.0.0.1:{metrics_port}")

        def consumed() -> bool:
            got = {}
            for topic in (topics.impressions, topics.clicks):
                result = query(base, f'streamctr_events_consumed_total{{topic="{topic}"}}')
                samples = result["data"]["result"]
                got[topic] = float(samples[0]["value"][1]) if samples else None
            return got == {topics.impressions: produced.impressions,
                           topics.clicks: produced.clicks}

        # Generous limits: on a fresh checkout the service first compiles the joiner's
        # kernel (numba, tens of seconds), with the loop blocked; warm, both take seconds.
        wait_for("Prometheus to show every produced record consumed", consumed, 120, service)

        def ready() -> bool:  # partitions assigned: /readyz answers 200, the gauge says 1
            samples = query(base, "streamctr_ready")["data"]["result"]
            return bool(samples) and float(samples[0]["value"][1]) == 1.0

        wait_for("streamctr_ready == 1 in Prometheus", ready, 120, service)

        def processed() -> bool:  # consumed is counted at decode; the first batch may still
            # be compiling the joiner's kernels, and a SIGTERM waits for the batch
            samples = query(base, "streamctr_batch_duration_seconds_count")["data"]["result"]
            return bool(samples) and float(samples[0]["value"][1]) > 0

        wait_for("a first batch through the engine", processed, 180, service)
        health = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=5)
        assert health.status == 200
        up = query(base, 'up{job="streamctr"}')["data"]["result"]
        assert [float(s["value"][1]) for s in up] == [1.0]
        built = query(base, "streamctr_build_info")["data"]["result"]
        assert built and built[0]["metric"]["instance"] == f"127.0.0.1:{metrics_port}"

        for expr in dashboard_exprs():
            answer = query(base, expr)
            assert answer["status"] == "success", (expr, answer)

        def rules_evaluated() -> list[dict] | None:
            groups = api(base, "/api/v1/rules")["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if rules and all(r["health"] != "unknown" for r in rules) else None

        rules = wait_for("every alert rule to be evaluated", rules_evaluated, 15)
        assert {r["name"] for r in rules} >= {"StreamctrDlqRateHigh", "StreamctrCheckpointStale"}
        assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
    finally:
        if prometheus is not None:
            stop(prometheus)
        code = stop(service)
    output = service.stdout.read().decode() if service.stdout else ""
    assert code == 0, f"streamctr serve exited {code} on SIGTERM:\n{output}"
