"""deploy/prometheus: the scrape config and alert rules, checked and unit-tested by promtool."""

from __future__ import annotations

import pytest

from tests.deploy.helpers import (
    PROMETHEUS_DIR,
    exported_sample_names,
    metric_names,
    run,
    tool,
    yaml_load,
)

ALERTS = PROMETHEUS_DIR / "alerts.yml"
REQUIRED_ALERTS = {  # issue 7: lag growing, AUC drop, calibration drift, checkpoint stale, DLQ rate
    "StreamctrConsumerLagGrowing", "StreamctrAucDropped", "StreamctrCalibrationDrift",
    "StreamctrCheckpointStale", "StreamctrDlqRateHigh",
}


def alert_rules() -> list[dict]:
    return [rule for group in yaml_load(ALERTS)["groups"] for rule in group["rules"]]


def test_promtool_checks_the_scrape_config_and_the_rule_files_it_names():
    out = run(tool("promtool"), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert "SUCCESS" in out and "1 rule files found" in out


def test_promtool_checks_the_alert_rules():
    out = run(tool("promtool"), "check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_alerts_pass_their_promtool_unit_tests_on_synthetic_series():
    out = run(tool("promtool"), "test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_and_the_issue_s_alerts_exist():
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= REQUIRED_ALERTS
    tests = yaml_load(PROMETHEUS_DIR / "alerts_test.yml")["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    firing = {case["alertname"] for test in tests for case in test["alert_rule_test"]
              if case.get("exp_alerts")}
    assert tested == names and firing == names, (names - tested, names - firing)


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_reads_only_metrics_the_service_exports(rule):
    missing = metric_names(rule["expr"]) - exported_sample_names()
    assert not missing, f"{rule['alert']} reads metrics nobody exports: {sorted(missing)}"
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"]


def test_scrape_config_targets_the_compose_service_on_its_metrics_port():
    config = yaml_load(PROMETHEUS_DIR / "prometheus.yml")
    compose = yaml_load(PROMETHEUS_DIR.parent / "compose.yaml")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "streamctr"  # StreamctrDown reads up{job="streamctr"}
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose["services"]
    assert compose["services"][host]["environment"]["STREAMCTR_METRICS_PORT"] == port
