"""Checkpoints on disk: a folder of numbered, checksummed checkpoints; no pickle.

Layout of a checkpoint folder ``DIR`` (format 3)::

    DIR/
      ckpt-000000041/          the last ``keep`` checkpoints (default 3), oldest pruned
      ckpt-000000042/
        manifest.json          written last; describes everything else
        engine.npz             each part's state_dict(), nested keys joined with "/"
        learner.ftrl.npz
      .ckpt-000000043.tmp/     only while a checkpoint is being written (or after a crash)
      .lock                    held (flock) by the service writing DIR

``manifest.json``::

    {"format": 3, "id": 42, "written_at_ms": 1767225600000, "records": 123456,
     "offsets": {"clicks/0": 4567, "impressions/0": 118889},
     "parts": {"engine":       {"file": "engine.npz", "bytes": 81234, "sha256": "…",
                                "fingerprint": "…"},
               "learner.ftrl": {"file": "learner.ftrl.npz", "bytes": 33554688,
                                "sha256": "…", "fingerprint": "…",
                                "samples_learned": 98765}}}

A *part* is anything with ``state_dict()`` / ``load_state_dict(d)`` whose state is
arrays, numbers and strings. ``offsets`` are the next offsets to read of every
partition, ``records`` the records (valid or rejected) the state has taken in over
its life, ``samples_learned`` a part's ``n_learned`` where its state has one.
``sha256`` / ``bytes`` are those of the file; ``fingerprint`` (:func:`fingerprint`)
is a hash of the state itself, whatever the file layout: the same model gives the
same fingerprint.

Writing: every file goes to a staging folder and is fsynced, the manifest last; the
staging folder is fsynced, renamed to ``ckpt-<id>`` and ``DIR`` fsynced. A crash
leaves a staging folder (removed by the next write) and the earlier checkpoints
intact. Loading (:meth:`CheckpointStore.restore`) takes the newest *valid*
checkpoint: one whose manifest is readable and whose files are all there with the
recorded size and SHA-256. An invalid one is skipped with one WARNING line naming
it and why, and the one before it used. A checkpoint that is valid but does not fit
the parts (other learners or hyper-parameters) is an error, not skipped: an older
one would not fit either. Arrays are loaded with ``allow_pickle=False`` and object
arrays are refused when writing: a checkpoint cannot execute code.

Format 2 (one folder holding ``manifest.json`` and the ``.npz`` files directly, no
checksums) is still read: when ``DIR`` holds no numbered checkpoint, its format-2
files are restored (validated by loading them) and the next write starts
``ckpt-000000001`` next to them; they are never modified.

>>> import tempfile, numpy as np
>>> class Tiny:
...     def __init__(self): self.w = np.zeros(2)
...     def state_dict(self): return {"w": self.w, "meta": {"steps": 3, "name": "t"}}
...     def load_state_dict(self, d): self.w = d["w"]; self.meta = d["meta"]
>>> store = CheckpointStore(tempfile.mkdtemp())
>>> a = Tiny(); a.w[:] = [1.5, -2.0]
>>> store.write({"tiny": a}, offsets={"clicks/0": 7}, records=7).id
1
>>> b = Tiny(); store.restore({"tiny": b}).offsets
{'clicks/0': 7}
>>> b.w.tolist(), b.meta
([1.5, -2.0], {'steps': 3, 'name': 't'})
>>> fingerprint(a.state_dict()) == fingerprint(b.state_dict())
True
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "CheckpointWritten",
    "PartInfo",
    "Restored",
    "Stateful",
    "describe_folder",
    "fingerprint",
    "has_checkpoint",
    "load_checkpoint",
    "render_listing",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
LEGACY_FORMAT = 2
DEFAULT_KEEP = 3
MANIFEST = "manifest.json"
_SEP = "/"
_NAME = re.compile(r"^ckpt-(\d{9,})$")
_STAGING = re.compile(r"^\.ckpt-\d{9,}\.tmp$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class Stateful(Protocol):
    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, d: dict[str, Any]) -> None: ...


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the parts it should restore."""


class _Invalid(CheckpointError):
    """This checkpoint is corrupt or partial (skipped on restore); the message says why."""


@dataclass(frozen=True)
class PartInfo:
    """One part of a checkpoint as its manifest records it."""

    name: str
    file: str
    size_bytes: int
    sha256: str  # of the file ("" in a format-2 checkpoint, which has no checksums)
    fingerprint: str  # of the state (:func:`fingerprint`)
    samples_learned: int | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose manifest was read and whose files were verified."""

    id: int  # 0 for a format-2 checkpoint
    path: Path
    format: int
    written_at_ms: int
    records: int | None  # None in format 2
    offsets: dict[str, int]
    parts: dict[str, PartInfo]

    @property
    def name(self) -> str:
        return self.path.name if self.format != LEGACY_FORMAT else f"{self.path.name} (format 2)"

    @property
    def size_bytes(self) -> int:
        return sum(p.size_bytes for p in self.parts.values())


@dataclass(frozen=True)
class CheckpointWritten:
    """What one write did: for logs and for the service's checkpoint metrics."""

    id: int
    path: Path
    written_at_ms: int
    duration_s: float
    size_bytes: int


@dataclass(frozen=True)
class Restored:
    """The checkpoint :meth:`CheckpointStore.restore` loaded, and the invalid ones it skipped."""

    checkpoint: Checkpoint
    skipped: tuple[tuple[Path, str], ...] = ()

    @property
    def offsets(self) -> dict[str, int]:
        return dict(self.checkpoint.offsets)

    @property
    def records(self) -> int:
        """Records the state has taken in (format 2 has no count: the offsets' sum)."""
        ckpt = self.checkpoint
        return ckpt.records if ckpt.records is not None else sum(ckpt.offsets.values())


@dataclass
class _Entry:
    """A checkpoint folder found in ``DIR``, before or after verification."""

    id: int
    path: Path
    legacy: bool = False
    checkpoint: Checkpoint | None = None
    error: str | None = None
    states: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # legacy only


class CheckpointStore:
    """The numbered checkpoints of one folder: write, list, verify, restore, prune."""

    def __init__(self, root: str | Path, keep: int = DEFAULT_KEEP) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}")
        self.root = Path(root)
        self.keep = keep
        self._lock_fd: int | None = None

    # -- listing --------------------------------------------------------------------------

    def _numbered(self) -> list[tuple[int, Path]]:
        """(id, path) of every ``ckpt-<id>`` folder, oldest first (not verified)."""
        try:
            children = list(self.root.iterdir())
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise CheckpointError(f"{self.root} is not a folder") from None
        found = []
        for child in children:
            match = _NAME.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
        return sorted(found)

    def _entries(self) -> list[_Entry]:
        """Every checkpoint of the folder, newest first; a format-2 one last."""
        entries = [_Entry(i, p) for i, p in reversed(self._numbered())]
        if (self.root / MANIFEST).is_file():
            entries.append(_Entry(0, self.root, legacy=True))
        return entries

    def has_any(self) -> bool:
        return bool(self._entries())

    def scan(self) -> list[_Entry]:
        """Every checkpoint, newest first, each verified (``checkpoint`` or ``error`` set)."""
        entries = self._entries()
        for entry in entries:
            self._verify(entry)
        return entries

    # -- writing --------------------------------------------------------------------------

    def write(
        self,
        parts: Mapping[str, Stateful],
        offsets: Mapping[str, int] | None = None,
        records: int | None = None,
    ) -> CheckpointWritten:
        """Write the parts' state, the offsets and the record count as the next checkpoint.

        Durable when this returns (files, folder and rename fsynced); then all but the
        newest ``keep`` checkpoints are removed.
        """
        started = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        for child in self.root.iterdir():  # left by a crash mid-write
            if _STAGING.match(child.name):
                shutil.rmtree(child, ignore_errors=True)
        numbered = self._numbered()
        ckpt_id = (numbered[-1][0] if numbered else 0) + 1
        name = f"ckpt-{ckpt_id:09d}"
        staging = self.root / f".{name}.tmp"
        staging.mkdir()
        try:
            manifest_parts: dict[str, Any] = {}
            for part_name, part in sorted(parts.items()):
                _check_part_name(part_name)
                flat = _flatten(part.state_dict())
                file = f"{part_name}.npz"
                path = staging / file
                with open(path, "wb") as f:
                    np.savez(f, **flat)
                    f.flush()
                    os.fsync(f.fileno())
                info: dict[str, Any] = {"file": file, "bytes": path.stat().st_size,
                                        "sha256": _sha256_file(path),
                                        "fingerprint": _fingerprint_flat(flat)}
                learned = _samples_learned(flat)
                if learned is not None:
                    info["samples_learned"] = learned
                manifest_parts[part_name] = info
            written_at_ms = int(time.time() * 1000)
            manifest = {
                "format": FORMAT_VERSION,
                "id": ckpt_id,
                "written_at_ms": written_at_ms,
                "records": None if records is None else int(records),
                "offsets": {str(k): int(v) for k, v in sorted((offsets or {}).items())},
                "parts": manifest_parts,
            }
            with open(staging / MANIFEST, "w") as f:
                f.write(json.dumps(manifest, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(staging)
            final = self.root / name
            staging.rename(final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._prune()
        size = sum(p["bytes"] for p in manifest_parts.values())
        return CheckpointWritten(ckpt_id, final, written_at_ms, time.perf_counter() - started,
                                 size)

    def _prune(self) -> None:
        numbered = self._numbered()
        for _, path in numbered[:-self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        if len(numbered) > self.keep:
            _fsync_dir(self.root)

    # -- reading --------------------------------------------------------------------------

    def restore(self, parts: Mapping[str, Stateful]) -> Restored | None:
        """Load the newest valid checkpoint into ``parts``; None if the folder has none.

        Invalid checkpoints are skipped, each with one WARNING line. Raises
        :class:`CheckpointError` when there are checkpoints but none is valid (starting
        from scratch would silently drop the state: move them away to do that), and when
        the valid one does not fit ``parts``.
        """
        skipped: list[tuple[Path, str]] = []
        for entry in self._entries():
            self._verify(entry)
            if entry.checkpoint is None:
                assert entry.error is not None
                log.warning("checkpoint %s skipped: %s", entry.path, entry.error)
                skipped.append((entry.path, entry.error))
                continue
            self._load_into(entry, parts)
            if skipped:
                log.warning("restored checkpoint %s instead, the newest valid one",
                            entry.path)
            return Restored(entry.checkpoint, tuple(skipped))
        if skipped:
            raise CheckpointError(
                f"{self.root}: none of its {len(skipped)} checkpoint(s) is valid (newest: "
                f"{skipped[0][1]}); move them away to start from scratch")
        return None

    def _verify(self, entry: _Entry) -> None:
        try:
            entry.checkpoint = (self._verify_legacy(entry) if entry.legacy
                                else _verify_numbered(entry.id, entry.path))
        except _Invalid as exc:
            entry.checkpoint, entry.error = None, str(exc)

    def _verify_legacy(self, entry: _Entry) -> Checkpoint:
        """A format-2 checkpoint has no checksums: it is valid if every file loads."""
        manifest = _read_manifest(entry.path)
        if manifest.get("format") != LEGACY_FORMAT:
            raise _Invalid(f"manifest format {manifest.get('format')!r}, expected "
                           f"{FORMAT_VERSION} (numbered folders) or {LEGACY_FORMAT}")
        names = manifest.get("parts")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _Invalid("manifest 'parts' is not a list of names")
        offsets = _offsets(manifest.get("offsets", {}))
        parts = {}
        for name in names:
            _check_part_name(name, _Invalid)
            path = entry.path / f"{name}.npz"
            flat = _load_npz(path)
            entry.states[name] = flat
            parts[name] = PartInfo(name, path.name, path.stat().st_size, "",
                                   _fingerprint_flat(flat), _samples_learned(flat))
        written = manifest.get("written_at_ms", 0)
        return Checkpoint(0, entry.path, LEGACY_FORMAT, written if isinstance(written, int)
                          else 0, None, offsets, parts)

    def _load_into(self, entry: _Entry, parts: Mapping[str, Stateful]) -> None:
        ckpt = entry.checkpoint
        assert ckpt is not None
        missing = sorted(set(parts) - set(ckpt.parts))
        if missing:
            raise CheckpointError(f"{ckpt.path}: no state for {', '.join(missing)} (it holds "
                                  f"{', '.join(sorted(ckpt.parts))})")
        states = {}
        for name in parts:  # every state read before any part changes
            try:
                flat = (entry.states[name] if name in entry.states
                        else _load_npz(ckpt.path / ckpt.parts[name].file))
            except _Invalid as exc:
                raise CheckpointError(f"{ckpt.path}: {exc}") from None
            states[name] = _unflatten(flat)
        for name, part in parts.items():
            try:
                part.load_state_dict(states[name])
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{ckpt.path}: {name} does not fit: {exc}") from None

    # -- the writer's lock ----------------------------------------------------------------

    def lock(self) -> None:
        """Hold ``DIR/.lock`` (flock) until :meth:`unlock`: one writer per folder.

        Raises :class:`CheckpointError` if another process holds it. The kernel drops
        the lock when the process dies, however it dies.
        """
        import fcntl

        if self._lock_fd is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise CheckpointError(f"{self.root} is in use by another process (pid "
                                      f"{holder}): one service per checkpoint folder") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None


# -- verification of one numbered checkpoint ------------------------------------------------


def _verify_numbered(ckpt_id: int, path: Path) -> Checkpoint:
    manifest = _read_manifest(path)
    fmt = manifest.get("format")
    if fmt != FORMAT_VERSION:
        raise _Invalid(f"manifest format {fmt!r}, expected {FORMAT_VERSION}")
    if manifest.get("id") != ckpt_id:
        raise _Invalid(f"manifest id {manifest.get('id')!r} does not match the folder name")
    written, records = manifest.get("written_at_ms"), manifest.get("records")
    if not _is_count(written):
        raise _Invalid(f"manifest written_at_ms {written!r} is not a time in ms")
    if records is not None and not _is_count(records):
        raise _Invalid(f"manifest records {records!r} is not a count")
    offsets = _offsets(manifest.get("offsets"))
    raw_parts = manifest.get("parts")
    if not isinstance(raw_parts, dict) or not raw_parts:
        raise _Invalid("manifest has no parts")
    parts = {}
    for name, info in raw_parts.items():
        _check_part_name(name, _Invalid)
        if not isinstance(info, dict):
            raise _Invalid(f"manifest entry of part {name} is not an object")
        file, size, digest = info.get("file"), info.get("bytes"), info.get("sha256")
        fp, learned = info.get("fingerprint"), info.get("samples_learned")
        if (not isinstance(file, str) or file != f"{name}.npz" or not _is_count(size)
                or not isinstance(digest, str) or not _HEX64.match(digest)
                or not isinstance(fp, str) or not _HEX64.match(fp)
                or (learned is not None and not _is_count(learned))):
            raise _Invalid(f"manifest entry of part {name} is malformed")
        file_path = path / file
        try:
            actual = file_path.stat().st_size
        except FileNotFoundError:
            raise _Invalid(f"{file} is missing") from None
        if actual != size:
            raise _Invalid(f"{file} has {actual} bytes, the manifest says {size} "
                           "(truncated or replaced)")
        if _sha256_file(file_path) != digest:
            raise _Invalid(f"{file}: SHA-256 mismatch (the file was altered or damaged)")
        parts[name] = PartInfo(name, file, size, digest, fp, learned)
    return Checkpoint(ckpt_id, path, FORMAT_VERSION, written, records, offsets, parts)


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise _Invalid(f"{MANIFEST} is missing (a partial write?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Invalid(f"unreadable {MANIFEST} ({exc})") from None
    if not isinstance(manifest, dict):
        raise _Invalid(f"{MANIFEST} is not a JSON object")
    return manifest


def _offsets(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict) or not all(
            isinstance(k, str) and _is_count(v) for k, v in raw.items()):
        raise _Invalid("manifest offsets are not a map of partition to offset")
    return dict(raw)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_part_name(name: Any, error: type[CheckpointError] = CheckpointError) -> None:
    if (not isinstance(name, str) or not name or name.startswith(".") or _SEP in name
            or "\\" in name or name == MANIFEST):
        raise error(f"bad part name {name!r}")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise _Invalid(f"{path.name} is missing") from None
    except (OSError, ValueError, EOFError, KeyError) as exc:  # zipfile errors are OSError
        raise _Invalid(f"{path.name} is not a readable .npz ({exc})") from None
    except Exception as exc:  # zipfile.BadZipFile and friends
        raise _Invalid(f"{path.name} is not a readable .npz ({type(exc).__name__}: "
                       f"{exc})") from None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- state flattening and fingerprints --------------------------------------------------------


def _flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if _SEP in key:
            raise CheckpointError(f"state key {key!r} contains {_SEP!r}")
        path = prefix + key
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + _SEP))
        else:
            array = np.asarray(value)
            if array.dtype.kind not in "biufcUS":
                # np.savez would pickle it, and np.load(allow_pickle=False) refuse it.
                raise CheckpointError(f"state key {path!r} holds {array.dtype} data: "
                                      "checkpoints take numbers and strings only (no pickle)")
            flat[path] = array
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


def _samples_learned(flat: Mapping[str, np.ndarray]) -> int | None:
    value = flat.get("n_learned")
    if value is None or value.ndim != 0 or value.dtype.kind not in "iu":
        return None
    return int(value)


_CANONICAL = {"b": np.dtype(np.uint8), "i": np.dtype("<i8"), "u": np.dtype("<u8"),
              "f": np.dtype("<f8"), "c": np.dtype("<c16")}


def fingerprint(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a state dict's content, independent of how it is stored.

    Keys in sorted order (nested keys joined with ``/``); each value as its kind
    (bool, int, unsigned, float, complex, text, bytes), shape and values in one
    canonical width (int64, float64 …, little-endian, C order); strings as UTF-8
    with their lengths. So a learner and its restored copy, or the same model saved
    as float32 or float64, give the same fingerprint; any changed weight changes it.

    >>> import numpy as np
    >>> fingerprint({"w": np.array([1.0, 2.0], np.float32), "n": 3}) == fingerprint(
    ...     {"n": np.int64(3), "w": np.array([1.0, 2.0])})
    True
    >>> fingerprint({"w": np.array([1.0, 2.0])}) == fingerprint({"w": np.array([1.0, 2.5])})
    False
    """
    return _fingerprint_flat(_flatten(state))


def _fingerprint_flat(flat: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256(b"streamctr-state-v1\0")
    for key in sorted(flat):
        array = np.asarray(flat[key])
        kind = array.dtype.kind
        digest.update(f"{key}\0{kind}{array.shape}\0".encode())
        if kind in "US":
            for item in array.ravel().tolist():
                raw = item if isinstance(item, bytes) else str(item).encode()
                digest.update(len(raw).to_bytes(8, "little"))
                digest.update(raw)
        elif kind in _CANONICAL:
            digest.update(np.ascontiguousarray(array, dtype=_CANONICAL[kind]).reshape(-1)
                          .view(np.uint8))
        else:
            raise CheckpointError(f"state key {key!r} holds {array.dtype} data")
    return digest.hexdigest()


# -- the single-call forms ----------------------------------------------------------------------


def has_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds any checkpoint (valid or not; see :meth:`CheckpointStore.scan`)."""
    return CheckpointStore(folder).has_any()


def save_checkpoint(
    folder: str | Path, parts: Mapping[str, Stateful], offsets: Mapping[str, int] | None = None,
    *, records: int | None = None, keep: int = DEFAULT_KEEP,
) -> CheckpointWritten:
    """Write the parts' state and offsets as the next checkpoint of ``folder``."""
    return CheckpointStore(folder, keep=keep).write(parts, offsets, records)


def load_checkpoint(folder: str | Path, parts: Mapping[str, Stateful]) -> dict[str, int]:
    """Restore every part from the newest valid checkpoint of ``folder``; return its offsets."""
    restored = CheckpointStore(folder).restore(parts)
    if restored is None:
        raise CheckpointError(f"{folder}: no checkpoint")
    return restored.offsets


# -- `streamctr checkpoint show` ----------------------------------------------------------------


def describe_folder(folder: str | Path) -> dict[str, Any]:
    """Every checkpoint of ``folder``, newest first, verified, as JSON-ready data.

    Raises :class:`CheckpointError` when the folder holds no checkpoint at all.
    """
    store = CheckpointStore(folder)
    if not Path(folder).is_dir():
        raise CheckpointError(f"{folder}: no such folder")
    entries = store.scan()
    if not entries:
        raise CheckpointError(f"{folder}: no checkpoint (no ckpt-NNNNNNNNN folder, no "
                              f"{MANIFEST})")
    listed = []
    for entry in entries:
        item: dict[str, Any] = {"name": entry.path.name, "path": str(entry.path),
                                "id": entry.id, "valid": entry.checkpoint is not None,
                                "error": entry.error}
        ckpt = entry.checkpoint
        if ckpt is not None:
            learners = {name.removeprefix("learner."): {"samples_learned": p.samples_learned,
                                                         "fingerprint": p.fingerprint}
                        for name, p in ckpt.parts.items() if name.startswith("learner.")}
            item.update({
                "format": ckpt.format,
                "written_at_ms": ckpt.written_at_ms,
                "written_at": _iso(ckpt.written_at_ms),
                "records": ckpt.records,
                "offsets": ckpt.offsets,
                "size_bytes": ckpt.size_bytes,
                "learners": learners,
                "parts": {name: {"file": p.file, "size_bytes": p.size_bytes, "sha256": p.sha256,
                                 "fingerprint": p.fingerprint,
                                 "samples_learned": p.samples_learned}
                          for name, p in ckpt.parts.items()},
            })
        listed.append(item)
    newest = next((c["name"] for c in listed if c["valid"]), None)
    return {"folder": str(folder), "newest_valid": newest, "checkpoints": listed}


def render_listing(listing: Mapping[str, Any]) -> str:
    """The text form of :func:`describe_folder` (fingerprints shortened to 16 hex digits)."""
    checkpoints = listing["checkpoints"]
    valid = sum(c["valid"] for c in checkpoints)
    lines = [f"{listing['folder']}: {len(checkpoints)} checkpoint(s), {valid} valid; newest "
             f"valid: {listing['newest_valid'] or 'none'}"]
    for c in checkpoints:
        if not c["valid"]:
            lines.append(f"{c['name']}  INVALID: {c['error']}")
            continue
        records = "?" if c["records"] is None else f"{c['records']:,}"
        legacy = "  (format 2, no checksums)" if c["format"] == LEGACY_FORMAT else ""
        lines.append(f"{c['name']}  {c['written_at']}  records {records}  "
                     f"{_size(c['size_bytes'])}{legacy}")
        offsets = "  ".join(f"{tp}={o:,}" for tp, o in sorted(c["offsets"].items()))
        lines.append(f"  offsets  {offsets or '(none)'}")
        width = max([len(n) for n in c["parts"]] + [7])
        for name, p in sorted(c["parts"].items()):
            learned = ("" if p["samples_learned"] is None
                       else f"samples learned {p['samples_learned']:,}  ")
            lines.append(f"  {name:<{width}}  {learned}fingerprint {p['fingerprint'][:16]}")
    return "\n".join(lines)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
