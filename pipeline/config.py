"""Option resolution shared by every CLI command: flag > ``STREAMCTR_*`` env > TOML file > default.

Each command declares its options once with :meth:`Options.add`; after argparse has
run, :meth:`Options.resolve` fills what the command line left out from the
environment (``STREAMCTR_<OPTION>``, e.g. ``STREAMCTR_METRICS_PORT=9200``), then from
the ``--config`` TOML file (the command's own table ``[serve]`` first, then the top
level), then from the declared default. Values from env and file go through the
same converter as the flag, so a bad value fails the same way, naming its source.

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> opts = Options("serve")
>>> opts.add(parser, "--metrics-port", type=int, default=9100, help="port")
>>> args = opts.resolve(parser.parse_args([]), env={"STREAMCTR_METRICS_PORT": "9200"})
>>> args.metrics_port
9200
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "Options", "learner_params", "parse_duration_ms", "parse_names"]

ENV_PREFIX = "STREAMCTR_"
_REQUIRED = object()


class ConfigError(ValueError):
    """A bad option value or config file; the message names the option and its source."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str | int) -> int:
    """``"15m"`` → 900000. Units ms, s, m, h, d; a bare number is seconds.

    >>> parse_duration_ms("15m"), parse_duration_ms("250ms"), parse_duration_ms(90)
    (900000, 250, 90000)
    """
    if isinstance(text, int):
        return text * 1_000
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 30s, 15m, 2h)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return round(value * _UNIT_MS[unit])


def parse_names(text: str | list[str]) -> tuple[str, ...]:
    """``"ftrl, din"`` or ``["ftrl", "din"]`` → ``("ftrl", "din")``; empty is an error."""
    if not isinstance(text, str | list):
        raise ValueError(f"expected a comma-separated string or a list, got {text!r}")
    items = text if isinstance(text, list) else text.split(",")
    names = tuple(dict.fromkeys(str(n).strip() for n in items if str(n).strip()))
    if not names:
        raise ValueError("empty list")
    return names


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


@dataclass
class Options:
    """The options of one command and where their values may come from."""

    command: str
    _converters: dict[str, Callable[[Any], Any]] = field(default_factory=dict, init=False)
    _defaults: dict[str, Any] = field(default_factory=dict, init=False)
    _flags: dict[str, str] = field(default_factory=dict, init=False)

    def add(
        self,
        parser: argparse.ArgumentParser,
        flag: str,
        *,
        type: Callable[[Any], Any] = str,
        default: Any = _REQUIRED,
        help: str,
        positional: bool = False,
        metavar: str | None = None,
        secret: bool = False,
    ) -> None:
        """Declare an option; a ``secret`` one has no flag (command lines are visible to
        every user of the host): only the environment or the config file give it."""
        dest = flag.lstrip("-").replace("-", "_")
        self._converters[dest] = type
        self._defaults[dest] = default
        self._flags[dest] = flag
        shown = help
        if default is _REQUIRED:
            shown += " (required)"
        elif default is not None and default is not False:
            text = ",".join(default) if isinstance(default, tuple) else default
            shown += f" (default: {text})"
        if secret:
            parser.epilog = ((parser.epilog + "; ") if parser.epilog else "Secrets, from the "
                             "environment or the config file only: ") + (
                f"{ENV_PREFIX}{dest.upper()} or config key {dest} ({help})")
        elif type is parse_bool:
            parser.add_argument(flag, dest=dest, action="store_const", const=True,
                                default=None, help=shown)
        elif positional:
            parser.add_argument(dest, nargs="?", default=None, help=shown,
                                metavar=metavar or dest.upper())
        else:
            # No argparse `type`: it would hide the converter's reason; resolve() converts.
            parser.add_argument(flag, dest=dest, default=None, help=shown, metavar=metavar)

    def resolve(
        self, args: argparse.Namespace, env: Mapping[str, str] | None = None
    ) -> argparse.Namespace:
        """Fill every option the command line left unset; raise ConfigError on bad values."""
        env = os.environ if env is None else env
        table = _load_table(getattr(args, "config", None), self.command)
        for dest in self._converters:
            given = getattr(args, dest, None)  # secrets have no flag
            env_key = ENV_PREFIX + dest.upper()
            if given is True:  # a flag without a value
                value = True
            elif given is not None:
                value = self._convert(dest, given, "the command line")
            elif env_key in env:
                value = self._convert(dest, env[env_key], f"environment {env_key}")
            elif dest in table:
                value = self._convert(dest, table[dest], f"config key {dest!r}")
            elif self._defaults[dest] is _REQUIRED:
                raise ConfigError(f"{self.command}: {self._flags[dest]} is required")
            else:
                value = self._defaults[dest]
            setattr(args, dest, value)
        return args

    def _convert(self, dest: str, raw: Any, source: str) -> Any:
        try:
            return self._converters[dest](raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self._flags[dest]} (from {source}): {exc}") from None


def _read_toml(path: str) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def learner_params(path: str | None, known: Collection[str]) -> dict[str, dict[str, Any]]:
    """Each learner's hyper-parameters, from the ``[learner.<name>]`` tables of a TOML file.

    (Singular ``learner``: the top-level key ``learners`` is the ``--learners`` option.)

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
    ...     _ = f.write('[learner.ftrl]\\nalpha = 0.1\\ncrosses = [["user", "category"]]\\n')
    >>> learner_params(f.name, known=["ftrl"])
    {'ftrl': {'alpha': 0.1, 'crosses': [['user', 'category']]}}
    >>> learner_params(None, known=["ftrl"])
    {}
    """
    if path is None:
        return {}
    tables = _read_toml(path).get("learner", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ConfigError(f"config file {path}: [learner] must hold one table per learner, "
                          "e.g. [learner.ftrl]")
    unknown = sorted(set(tables) - set(known))
    if unknown:
        raise ConfigError(f"config file {path}: [learner.{unknown[0]}]: unknown learner; "
                          f"available: {', '.join(known)}")
    return {name: dict(table) for name, table in tables.items()}


def _load_table(path: str | None, command: str) -> dict[str, Any]:
    """Top-level keys of the TOML file overlaid with its ``[command]`` table."""
    if path is None:
        return {}
    doc = _read_toml(path)
    table = {k.replace("-", "_"): v for k, v in doc.items() if not isinstance(v, dict)}
    own = doc.get(command, {})
    if not isinstance(own, dict):
        raise ConfigError(f"config file {path}: [{command}] must be a table")
    table.update({k.replace("-", "_"): v for k, v in own.items()})
    return table
