"""Learner checkpoints on disk: one ``.npz`` per learner, a JSON manifest, no pickle.

Layout of a checkpoint folder::

    manifest.json        {"format": 1, "learners": ["ftrl", ...], "written_at_ms": ...}
    learners/ftrl.npz    the learner's state_dict, nested keys joined with "/"

A checkpoint is written to a sibling temporary folder and renamed into place, so
a crash mid-write leaves the previous checkpoint intact. Arrays are loaded with
``allow_pickle=False``: a checkpoint cannot execute code.

>>> import tempfile, numpy as np
>>> class Tiny:
...     def __init__(self): self.w = np.zeros(2)
...     def state_dict(self): return {"w": self.w, "meta": {"steps": 3, "name": "t"}}
...     def load_state_dict(self, d): self.w = d["w"]; self.meta = d["meta"]
>>> folder = tempfile.mkdtemp()
>>> a = Tiny(); a.w[:] = [1.5, -2.0]
>>> save_learners(folder, {"tiny": a})
>>> b = Tiny(); load_learners(folder, {"tiny": b}); b.w.tolist(), b.meta
([1.5, -2.0], {'steps': 3, 'name': 't'})
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from learners import Learner

__all__ = ["CheckpointError", "has_checkpoint", "load_learners", "save_learners"]

FORMAT_VERSION = 1
_SEP = "/"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or does not fit the learners it should restore."""


def has_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / "manifest.json").is_file()


def save_learners(folder: str | Path, learners: Mapping[str, Learner]) -> None:
    """Atomically replace the checkpoint in ``folder`` with the learners' current state."""
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "learners").mkdir(parents=True)
    for name, learner in learners.items():
        flat = _flatten(learner.state_dict())
        np.savez(staging / "learners" / f"{name}.npz", **flat)
    manifest = {
        "format": FORMAT_VERSION,
        "learners": sorted(learners),
        "written_at_ms": int(time.time() * 1000),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    previous = target.with_name(f".{target.name}.old")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def load_learners(folder: str | Path, learners: Mapping[str, Learner]) -> None:
    """Restore every learner from the checkpoint in ``folder``; all must be present."""
    root = Path(folder)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{root}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{root}: checkpoint format {manifest.get('format')!r}, expected {FORMAT_VERSION}"
        )
    missing = sorted(set(learners) - set(manifest.get("learners", [])))
    if missing:
        raise CheckpointError(f"{root}: no state for learner(s) {', '.join(missing)}")
    for name, learner in learners.items():
        with np.load(root / "learners" / f"{name}.npz", allow_pickle=False) as npz:
            learner.load_state_dict(_unflatten({k: npz[k] for k in npz.files}))


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
