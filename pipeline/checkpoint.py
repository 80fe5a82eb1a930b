"""Checkpoints on disk: one ``.npz`` per stateful part, a JSON manifest, no pickle.

Layout of a checkpoint folder::

    manifest.json     {"format": 2, "parts": ["engine", "learner.ftrl"],
                       "offsets": {"impressions/0": 1234, ...}, "written_at_ms": ...}
    engine.npz        each part's state_dict(), nested keys joined with "/"
    learner.ftrl.npz

A part is anything with ``state_dict()`` / ``load_state_dict(d)`` whose state is
arrays, numbers and strings. ``offsets`` are the next offsets to read, saved in the
same atomic write as the state they belong to, so a restart resumes exactly where
the saved state ends. A checkpoint is written to a sibling temporary folder and
renamed into place: a crash mid-write leaves the previous one intact. Arrays are
loaded with ``allow_pickle=False``: a checkpoint cannot execute code.

>>> import tempfile, numpy as np
>>> class Tiny:
...     def __init__(self): self.w = np.zeros(2)
...     def state_dict(self): return {"w": self.w, "meta": {"steps": 3, "name": "t"}}
...     def load_state_dict(self, d): self.w = d["w"]; self.meta = d["meta"]
>>> folder = tempfile.mkdtemp()
>>> a = Tiny(); a.w[:] = [1.5, -2.0]
>>> save_checkpoint(folder, {"tiny": a}, offsets={"clicks/0": 7})
>>> b = Tiny(); load_checkpoint(folder, {"tiny": b})
{'clicks/0': 7}
>>> b.w.tolist(), b.meta
([1.5, -2.0], {'steps': 3, 'name': 't'})
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "CheckpointError",
    "Stateful",
    "has_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 2
_SEP = "/"


class Stateful(Protocol):
    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, d: dict[str, Any]) -> None: ...


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the parts it should restore."""


def has_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / "manifest.json").is_file()


def save_checkpoint(
    folder: str | Path, parts: Mapping[str, Stateful], offsets: Mapping[str, int] | None = None
) -> None:
    """Atomically replace the checkpoint in ``folder`` with the parts' state and offsets."""
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, part in parts.items():
        np.savez(staging / f"{name}.npz", **_flatten(part.state_dict()))
    manifest = {
        "format": FORMAT_VERSION,
        "parts": sorted(parts),
        "offsets": dict(offsets or {}),
        "written_at_ms": int(time.time() * 1000),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    previous = target.with_name(f".{target.name}.old")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def load_checkpoint(folder: str | Path, parts: Mapping[str, Stateful]) -> dict[str, int]:
    """Restore every part from the checkpoint in ``folder``; return the saved offsets."""
    root = Path(folder)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{root}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{root}: checkpoint format {manifest.get('format')!r}, expected {FORMAT_VERSION}"
        )
    missing = sorted(set(parts) - set(manifest.get("parts", [])))
    if missing:
        raise CheckpointError(f"{root}: no state for {', '.join(missing)}")
    for name, part in parts.items():
        with np.load(root / f"{name}.npz", allow_pickle=False) as npz:
            state = _unflatten({k: npz[k] for k in npz.files})
        try:
            part.load_state_dict(state)
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{root}: {name} does not fit: {exc}") from None
    return {str(k): int(v) for k, v in manifest.get("offsets", {}).items()}


def _flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if _SEP in key:
            raise CheckpointError(f"state key {key!r} contains {_SEP!r}")
        path = prefix + key
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + _SEP))
        else:
            flat[path] = np.asarray(value)
    return flat


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for path, array in flat.items():
        *parents, leaf = path.split(_SEP)
        node = state
        for part in parents:
            node = node.setdefault(part, {})
        # 0-d arrays were Python scalars when saved; hand scalars back.
        node[leaf] = array.item() if array.ndim == 0 else array
    return state
