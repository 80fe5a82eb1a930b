"""deploy/Dockerfile: linted by hadolint; its variants, copies and runtime settings checked.

No Docker engine runs here, so the image is not built.
"""

from __future__ import annotations

import re
import tomllib

from tests.deploy.helpers import DEPLOY, ROOT, run, tool, yaml_load

DOCKERFILE = DEPLOY / "Dockerfile"


def text() -> str:
    return DOCKERFILE.read_text()


def test_hadolint_finds_nothing():
    run(tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE))


def test_cpu_and_cuda_variants_by_build_argument():
    body = text()
    assert re.search(r"^ARG VARIANT=cpu$", body, re.M)
    assert re.search(r"^\s+cpu\) export PIP_INDEX_URL=https://download\.pytorch\.org/whl/cpu", body,
                     re.M)
    assert re.search(r"^\s+cuda\) ;;", body, re.M)  # PyPI's torch wheel is the CUDA build
    assert "exit 1" in body  # any other VARIANT fails the build
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (torch_req,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    version = re.search(r"ARG TORCH_VERSION=(\S+)", body).group(1)
    upper = re.search(r"<(\d+\.\d+)", torch_req).group(1)
    assert tuple(map(int, version.split(".")[:2])) < tuple(map(int, upper.split("."))), \
        f"TORCH_VERSION {version} outside {torch_req}"


def test_image_copies_every_package_the_distribution_installs():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]
                ["include"]}
    copied = set(re.findall(r"^COPY (\S+) \1$", text(), re.M))
    assert packages <= copied
    for path in copied | {"pyproject.toml", "README.md"}:
        assert (ROOT / path).exists(), path
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert packages | {"pyproject.toml", "README.md"} <= kept


def test_runtime_matches_what_compose_and_kubernetes_expect():
    body = text()
    assert re.search(r'^ENTRYPOINT \["streamctr"\]$', body, re.M)  # exec form: gets SIGTERM
    assert "EXPOSE 9100" in body and "STREAMCTR_METRICS_PORT=9100" in body
    assert "/healthz" in body
    user = re.search(r"^USER (\d+):(\d+)$", body, re.M)
    assert user, "a numeric non-root user (Kubernetes' runAsNonRoot needs one)"
    pod = yaml_load(DEPLOY / "k8s/statefulset.yaml")["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == \
        tuple(map(int, user.groups()))
    assert 'VOLUME ["/var/lib/streamctr"]' in body
    assert "STREAMCTR_CHECKPOINT_DIR=/var/lib/streamctr/checkpoints" in body


def test_yaml_files_pass_yamllint():
    run(tool("yamllint"), "--strict", "-c", str(DEPLOY / ".yamllint.yaml"), str(DEPLOY))
