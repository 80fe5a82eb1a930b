"""deploy/grafana: the dashboard is well-formed, reads exported metrics, and its PromQL parses."""

from __future__ import annotations

import json

from tests.deploy.helpers import (
    DASHBOARD,
    DEPLOY,
    dashboard_exprs,
    exported_sample_names,
    metric_names,
    run,
    tool,
    yaml_load,
)


def test_dashboard_is_well_formed_grafana_json():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "streamctr" and doc["title"] and doc["schemaVersion"] >= 36
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource = yaml_load(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    uid = datasource["datasources"][0]["uid"]
    graphs = [p for p in doc["panels"] if p["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid and target["expr"].strip()
            assert target["refId"]


def test_dashboard_reads_only_metrics_the_service_exports():
    for expr in dashboard_exprs():
        missing = metric_names(expr) - exported_sample_names()
        assert not missing, f"{expr!r} reads metrics nobody exports: {sorted(missing)}"


def test_dashboard_covers_the_issue_s_metrics():
    read = set().union(*(metric_names(e) for e in dashboard_exprs()))
    for name in ("streamctr_events_consumed_total", "streamctr_consumer_lag_records",
                 "streamctr_clicks_total", "streamctr_label_delay_seconds_bucket",
                 "streamctr_rolling_auc", "streamctr_rolling_logloss",
                 "streamctr_rolling_normalized_entropy", "streamctr_rolling_calibration",
                 "streamctr_batch_duration_seconds_bucket",
                 "streamctr_checkpoint_last_success_timestamp_seconds",
                 "streamctr_checkpoint_duration_seconds_bucket", "streamctr_checkpoint_size_bytes",
                 "streamctr_events_rejected_total", "streamctr_tree_swaps_total",
                 "streamctr_learner_device_info", "streamctr_learner_step_seconds_total"):
        assert name in read, name


def test_every_dashboard_expression_parses_as_promql(tmp_path):
    # promtool has no expression checker of its own: each expression becomes a recording
    # rule, which `promtool check rules` parses (the integration test also runs them).
    exprs = dashboard_exprs()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    out = run(tool("promtool"), "check", "rules", str(path))
    assert f"SUCCESS: {len(exprs)} rules found" in out


def test_grafana_provisioning_loads_this_dashboard_where_compose_mounts_it():
    compose = yaml_load(DEPLOY / "compose.yaml")["services"]["grafana"]
    provider = yaml_load(DEPLOY / "grafana/provisioning/dashboards/streamctr.yml")["providers"][0]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in compose["volumes"]
                  if volume.startswith("./"))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_in_container = mounts["./grafana/streamctr.json"]
    assert dashboard_in_container.startswith(provider["options"]["path"] + "/")
    assert (DEPLOY / "grafana/streamctr.json").exists()
