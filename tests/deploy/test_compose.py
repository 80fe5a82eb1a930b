"""deploy/compose.yaml: valid against the Compose specification, and wired together.

No Docker engine runs here, so the stack is not started: the file is validated with
check-jsonschema's vendored compose-spec schema, and its wiring is checked below.
"""

from __future__ import annotations

import re

from tests.deploy.helpers import DEPLOY, ROOT, resolve_serve, run, serve_env_names, tool, yaml_load

COMPOSE = DEPLOY / "compose.yaml"
GPU = DEPLOY / "compose.gpu.yaml"


def services() -> dict:
    return yaml_load(COMPOSE)["services"]


def test_compose_files_follow_the_compose_specification():
    run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE),
        str(GPU))


def test_kafka_runs_in_kraft_mode_without_zookeeper():
    kafka = services()["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert not any("ZOOKEEPER" in key for key in env)
    assert "zookeeper" not in services()


def test_the_service_reaches_kafka_on_its_advertised_in_network_listener():
    env = services()["streamctr"]["environment"]
    advertised = services()["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"PLAINTEXT://{env['STREAMCTR_BOOTSTRAP']}" in advertised.split(",")
    topics = services()["kafka-topics"]["command"][0]
    for topic in ("impressions", "clicks", "samples", "dlq"):
        assert re.search(rf"\b{topic}\b", topics)


def test_service_environment_is_made_of_serve_options_with_valid_values():
    env: dict[str, str] = {}
    for path in (COMPOSE, GPU):  # the GPU file overrides the base one, as compose merges them
        env.update({k: str(v) for k, v in yaml_load(path)["services"]["streamctr"]
                    ["environment"].items()})
        unknown = {k for k in env if k.startswith("STREAMCTR_")} - serve_env_names()
        assert not unknown, f"{path.name}: not options of streamctr serve: {unknown}"
        args = resolve_serve(env)  # raises ConfigError on a bad value
        assert args.metrics_port == 9100
    assert "din" in args.learners


def test_service_image_builds_from_the_repository_with_the_deploy_dockerfile():
    build = services()["streamctr"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).is_file()
    assert yaml_load(GPU)["services"]["streamctr"]["build"]["args"]["VARIANT"] == "cuda"
    assert services()["streamctr"]["ports"] == ["9100:9100"]
    assert services()["streamctr"]["volumes"] == ["checkpoints:/var/lib/streamctr"]


def test_prometheus_and_grafana_mount_files_that_exist():
    for name in ("prometheus", "grafana"):
        for volume in services()[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    command = services()["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
