from __future__ import annotations

import argparse

import pytest

from pipeline.config import ConfigError, Options, parse_duration_ms, parse_names


def make(tmp_path=None, toml: str | None = None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    opts = Options("serve")
    opts.add(parser, "--metrics-port", type=int, default=9100, help="port")
    opts.add(parser, "--bootstrap", help="broker")
    opts.add(parser, "--window", type=parse_duration_ms, default=900_000, help="window")
    argv: list[str] = []
    if toml is not None:
        path = tmp_path / "c.toml"
        path.write_text(toml)
        argv = ["--config", str(path)]
    return parser, opts, argv


def test_flag_beats_env_beats_file_beats_default(tmp_path):
    parser, opts, argv = make(tmp_path, 'bootstrap = "file:1"\nmetrics_port = 1\n'
                                        '[serve]\nmetrics_port = 2\nwindow = "1m"\n')
    args = opts.resolve(parser.parse_args([*argv, "--bootstrap", "flag:9"]),
                        env={"STREAMCTR_METRICS_PORT": "3"})
    assert args.bootstrap == "flag:9"
    assert args.metrics_port == 3
    assert args.window == 60_000
    args = opts.resolve(parser.parse_args(argv), env={})
    assert (args.bootstrap, args.metrics_port) == ("file:1", 2)


def test_default_used_when_nothing_given():
    parser, opts, _ = make()
    args = opts.resolve(parser.parse_args(["--bootstrap", "b:1"]), env={})
    assert args.metrics_port == 9100 and args.window == 900_000


def test_missing_required_option_is_named():
    parser, opts, _ = make()
    with pytest.raises(ConfigError, match="--bootstrap is required"):
        opts.resolve(parser.parse_args([]), env={})


def test_bad_env_value_names_its_source():
    parser, opts, _ = make()
    with pytest.raises(ConfigError, match="STREAMCTR_METRICS_PORT"):
        opts.resolve(parser.parse_args(["--bootstrap", "b"]),
                     env={"STREAMCTR_METRICS_PORT": "many"})


def test_invalid_toml_is_a_config_error(tmp_path):
    parser, opts, argv = make(tmp_path, "this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        opts.resolve(parser.parse_args(argv), env={})


def test_missing_config_file_is_a_config_error(tmp_path):
    parser, opts, _ = make()
    with pytest.raises(ConfigError, match="cannot read config file"):
        opts.resolve(parser.parse_args(["--config", str(tmp_path / "nope.toml")]), env={})


@pytest.mark.parametrize(
    ("text", "ms"), [("15m", 900_000), ("30s", 30_000), ("500ms", 500), ("2h", 7_200_000),
                     ("1.5s", 1_500), ("10", 10_000)],
)
def test_durations_parse_with_units(text, ms):
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "fast", "15 minutes", "-3s"])
def test_bad_durations_are_rejected(text):
    with pytest.raises(ValueError):
        parse_duration_ms(text)


def test_names_are_split_deduplicated_and_non_empty():
    assert parse_names("ftrl, din,ftrl") == ("ftrl", "din")
    assert parse_names(["a", "b"]) == ("a", "b")
    with pytest.raises(ValueError):
        parse_names(" , ")
