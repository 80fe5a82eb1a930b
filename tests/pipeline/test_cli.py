from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from learners import LEARNERS
from pipeline.cli import _add_kafka_options, _kafka_config, main
from pipeline.config import Options

COMMANDS = ["demo", "broker", "generate", "produce", "serve", "replay"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_generate_without_required_options_fails_with_one_line(capsys):
    assert main(["generate", "--out", "x"]) == 2
    assert "--events is required" in one_line_error(capsys)


def test_unknown_learner_is_a_one_line_error(capsys, tmp_path):
    assert main(["replay", str(tmp_path), "--learners", "ftrl,xgb", "--report", str(tmp_path)]) == 2
    assert "--learners (from the command line): unknown learner(s) xgb" in one_line_error(capsys)


def test_replay_of_a_folder_without_inputs_is_a_one_line_error(capsys, tmp_path):
    assert main(["replay", str(tmp_path), "--report", str(tmp_path / "r")]) == 2
    assert "impressions.parquet is missing" in one_line_error(capsys)


def test_a_list_option_of_the_wrong_toml_type_is_a_one_line_error(capsys, tmp_path):
    (tmp_path / "bad.toml").write_text("learners = 3\n")
    assert main(["replay", str(tmp_path), "--report", str(tmp_path / "r"),
                 "--config", str(tmp_path / "bad.toml")]) == 2
    assert "--learners (from config key 'learners'): expected a comma-separated string or a list" \
        in one_line_error(capsys)


def test_bad_window_from_environment_names_the_variable(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMCTR_WINDOW", "forever")
    assert main(["replay", str(tmp_path), "--report", str(tmp_path / "r")]) == 2
    assert "STREAMCTR_WINDOW" in one_line_error(capsys)


def test_a_key_ttl_below_its_minimum_is_a_one_line_error(capsys, small_stream, tmp_path):
    assert main(["replay", str(small_stream), "--report", str(tmp_path / "r"),
                 "--key-ttl", "1h"]) == 2
    assert "key_ttl_ms must be >=" in one_line_error(capsys)


@pytest.mark.parametrize(("args", "message"), [
    (["--role", "join", "--learners", "ftrl"], "the join role trains no learners"),
    (["--role", "train", "--publish-samples"], "does not publish them"),
    (["--role", "both"], "--role (from the command line): 'both' is not one of all, join, "
                         "train"),
])
def test_a_role_with_settings_it_cannot_honour_is_a_one_line_error(capsys, args, message):
    assert main(["serve", "--bootstrap", "127.0.0.1:1", *args]) == 2
    assert message in one_line_error(capsys)


def test_a_password_has_no_flag_and_comes_from_the_environment(capsys, monkeypatch):
    with pytest.raises(SystemExit):
        main(["produce", "x", "--bootstrap", "h:1", "--sasl-password", "hunter2"])
    assert "unrecognized arguments: --sasl-password" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    opts = Options("serve")
    _add_kafka_options(opts, parser)
    opts.add(parser, "--bootstrap", help="b")
    monkeypatch.setenv("STREAMCTR_SASL_PASSWORD", "hunter2")
    args = opts.resolve(parser.parse_args(["--bootstrap", "h:1", "--security-protocol",
                                           "SASL_SSL", "--sasl-mechanism", "PLAIN",
                                           "--sasl-username", "svc"]))
    security = _kafka_config(args).security
    assert security.sasl_password == "hunter2" and "hunter2" not in repr(security)
    assert "STREAMCTR_SASL_PASSWORD" in parser.epilog


def test_generate_then_replay_writes_a_report_with_the_design_schema(tmp_path):
    data, report = tmp_path / "data", tmp_path / "report"
    (tmp_path / "run.toml").write_text(
        f'[replay]\nreport = "{report}"\nwindow = "10m"\ntime_bucket = "10m"\n')
    generated = run_cli("generate", "--events", "20000", "--out", str(data), "--seed", "5")
    assert generated.returncode == 0, generated.stderr
    done = run_cli("replay", str(data), "--config", str(tmp_path / "run.toml"),
                   env={"STREAMCTR_LEARNERS": "ftrl"})
    assert done.returncode == 0, done.stderr
    doc = json.loads((report / "report.json").read_text())
    assert set(doc["learners"]) == {"ftrl"}
    assert set(doc["learners"]["ftrl"]) == {"auc", "gauc", "gauc_clicks", "logloss", "ne",
                                            "calibration", "ndcg@10", "samples",
                                            "throughput_eps"}
    assert doc["learners"]["ftrl"]["auc"] > 0.55
    assert doc["details"]["window_ms"] == 600_000
    events = doc["events"]
    assert events["impressions"] == events["impressions_read"]
    assert events["samples_positive"] + events["samples_negative"] == \
        events["impressions"] - events["duplicate_impressions"]
    assert (report / "report.md").read_text().startswith("# Replay of data")
    assert (report / "rejected.parquet").is_file()
    assert doc["over_time"]["width_ms"] == 600_000  # --time-bucket, from the config file
    assert doc["leak_audit"]["consistent"] is True
    assert set(doc["plots"]) == {"metric_over_time.png", "reliability.png", "label_delay.png",
                                 "sequence_lengths.png"}
    for name in doc["plots"]:
        assert (report / name).read_bytes().startswith(b"\x89PNG"), name


@pytest.mark.integration
def test_demo_runs_end_to_end_and_service_agrees_with_replay(tmp_path):
    done = run_cli("demo", "--events", "20000", "--out", str(tmp_path / "demo"),
                   "--window", "2m")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "identical to the service's" in done.stdout
    doc = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert set(doc["learners"]) == {*LEARNERS, "truth (oracle)"}  # the demo runs them all
    assert doc["learners"]["ftrl"]["auc"] > 0.55
    assert doc["details"]["replay_agrees_with_service"] is True
    assert (tmp_path / "demo" / "replay" / "report.json").is_file()


@pytest.fixture(scope="module")
def small_stream(tmp_path_factory):
    from replay.synthetic import generate, write_stream

    folder = tmp_path_factory.mktemp("small")
    write_stream(generate(8000, seed=2), folder)
    return folder


def test_learner_tables_of_the_config_file_set_hyper_parameters(small_stream, tmp_path):
    (tmp_path / "tuned.toml").write_text(
        '[learner.ftrl]\nalpha = 0.3\nnegative_rate = 0.5\ncrosses = [["user", "position"]]\n')
    runs = {}
    for name, extra in (("default", []), ("tuned", ["--config", str(tmp_path / "tuned.toml")])):
        report = tmp_path / name
        # A 30 s window: labels become final (and learned) within the small stream.
        assert main(["replay", str(small_stream), "--report", str(report), "--warmup", "0",
                     "--window", "30s", *extra]) == 0
        runs[name] = json.loads((report / "report.json").read_text())["learners"]["ftrl"]
    assert runs["tuned"]["samples"] == runs["default"]["samples"]
    assert runs["tuned"]["auc"] != runs["default"]["auc"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [('[learner.xgb]\ndepth = 3\n', "[learner.xgb]: unknown learner; available: ftrl"),
     ('[learner.ftrl]\nalpah = 0.1\n', "learner 'ftrl': got an unexpected keyword argument"),
     ('[learner.ftrl]\nalpha = -1.0\n', "alpha must be > 0"),
     ('learner = 3\n', "[learner] must hold one table per learner")],
)
def test_bad_learner_table_is_a_one_line_error(toml, message, small_stream, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text(toml)
    assert main(["replay", str(small_stream), "--report", str(tmp_path / "r"),
                 "--config", str(tmp_path / "bad.toml")]) == 2
    assert message in one_line_error(capsys)
