"""deploy/k8s: schema-valid manifests (kubernetes-validate, strict, offline schemas) whose
probes, ports, volumes and configuration match what the service really does."""

from __future__ import annotations

import urllib.error
import urllib.request

from learners import LEARNERS, make_learner
from pipeline.config import learner_params
from pipeline.telemetry import ServiceMetrics
from tests.deploy.helpers import (
    DEPLOY,
    resolve_serve,
    run,
    serve_env_names,
    tool,
    yaml_load,
    yaml_load_all,
)

K8S = DEPLOY / "k8s"


def resources() -> dict[str, dict]:
    files = yaml_load(K8S / "kustomization.yaml")["resources"]
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc
            for name in files for doc in yaml_load_all(K8S / name)}


def statefulset() -> dict:
    return resources()["StatefulSet/streamctr"]


def container() -> dict:
    (only,) = statefulset()["spec"]["template"]["spec"]["containers"]
    return only


def pod_env() -> dict[str, str]:
    env = {}
    for source in container().get("envFrom", []):
        env.update(resources()[f"ConfigMap/{source['configMapRef']['name']}"]["data"])
    env.update({item["name"]: item["value"] for item in container().get("env", [])})
    return env


def test_kustomization_lists_every_manifest():
    listed = set(yaml_load(K8S / "kustomization.yaml")["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_manifests_validate_against_the_kubernetes_schemas():
    files = [str(K8S / name) for name in yaml_load(K8S / "kustomization.yaml")["resources"]]
    out = run(tool("kubernetes-validate"), "--strict", *files)
    assert out.count("passed") == len(resources()), out


def test_statefulset_keeps_checkpoints_on_a_persistent_volume():
    spec = statefulset()["spec"]
    assert spec["replicas"] == 1  # one instance owns all partitions
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    checkpoint_dir = pod_env()["STREAMCTR_CHECKPOINT_DIR"]
    assert checkpoint_dir.startswith(mounts[claim["metadata"]["name"]] + "/")
    security = spec["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["fsGroup"] == security["runAsGroup"]


def test_configuration_is_made_of_serve_options_with_valid_values():
    env = {k: v for k, v in pod_env().items() if k.startswith("STREAMCTR_")}
    unknown = set(env) - serve_env_names()
    assert not unknown, f"not options of streamctr serve: {unknown}"
    args = resolve_serve(env)  # raises ConfigError on a bad value
    assert args.metrics_port == container()["ports"][0]["containerPort"]
    assert args.bootstrap and args.learners


def test_config_file_named_by_the_args_is_the_mounted_config_map():
    args = container()["args"]
    assert args[0] == "serve"
    config_path = args[args.index("--config") + 1]
    folder, name = config_path.rsplit("/", 1)
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in statefulset()["spec"]["template"]["spec"]["volumes"]}
    config_map = volumes[mounts[folder]]["configMap"]["name"]
    assert name in resources()[f"ConfigMap/{config_map}"]["data"]


def test_learner_table_of_the_config_map_builds_the_learners(tmp_path):
    data = resources()["ConfigMap/streamctr-config"]["data"]
    path = tmp_path / "streamctr.toml"
    path.write_text(data["streamctr.toml"])
    params = learner_params(str(path), LEARNERS)
    for name, kwargs in params.items():
        make_learner(name, **kwargs)  # raises on an unknown hyper-parameter
    assert params


def test_probes_point_at_the_endpoints_the_service_serves():
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    probes = {kind: container()[kind] for kind in ("startupProbe", "livenessProbe",
                                                   "readinessProbe")}
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    metrics = ServiceMetrics(["ftrl"])
    port = metrics.serve(0, addr="127.0.0.1")
    try:
        for kind, probe in probes.items():
            assert probe["httpGet"]["port"] in ports, kind
            url = f"http://127.0.0.1:{port}{probe['httpGet']['path']}"
            try:
                status = urllib.request.urlopen(url, timeout=5).status
            except urllib.error.HTTPError as err:
                status = err.code
            # Live from the start; not ready until the service says so (never 404).
            assert status == (503 if kind == "readinessProbe" else 200), kind
    finally:
        metrics.close()


def test_resources_have_requests_and_limits():
    res = container()["resources"]
    assert set(res["requests"]) >= {"cpu", "memory"}
    assert set(res["limits"]) >= {"cpu", "memory"}


def test_metrics_service_selects_the_pods_and_scrapes_unready_ones():
    service = resources()["Service/streamctr"]
    labels = statefulset()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert statefulset()["spec"]["serviceName"] == "streamctr"
    assert service["spec"]["publishNotReadyAddresses"] is True
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container()["ports"]}
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["port"])
    assert annotations["prometheus.io/path"] == "/metrics"
