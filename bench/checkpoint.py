"""Checkpoint write and restore time against the size of the service's state.

The state is built as the service builds it: an :class:`~replay.engine.OnlineEngine`
with the learners of a set (default hyper-parameters, the service's default joiner)
is fed the synthetic stream in batches of ``max_poll_records``; at each size the
bench writes the parts :meth:`pipeline.service.Service._stateful_parts` names
(``engine`` and ``learner.<name>``) with :meth:`CheckpointStore.write` — offsets and
record count as the service passes them — several times, then restores the newest
checkpoint into freshly built parts several times, as a restarted service does.

Run: ``.venv/bin/python bench/run_all.py --only checkpoint``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learners import make_learner  # noqa: E402
from pipeline.checkpoint import CheckpointStore  # noqa: E402
from pipeline.service import ServiceConfig  # noqa: E402
from replay.engine import OnlineEngine  # noqa: E402
from replay.inputs import iter_events, read_replay_input  # noqa: E402

LEARNER_SETS = (("ftrl",), ("ftrl", "gbdt_lr", "din"))
BATCH = ServiceConfig.max_poll_records


def _parts(names: tuple[str, ...]) -> tuple[OnlineEngine, dict[str, Any]]:
    """A fresh engine and the parts a service of these learners checkpoints."""
    learners = {name: make_learner(name) for name in names}
    engine = OnlineEngine(learners)
    return engine, {"engine": engine, **{f"learner.{n}": m for n, m in learners.items()}}


def measure(data: Path, n_events: int, sizes: tuple[int, ...], runs: int) -> dict:
    """Write and restore times at each of ``sizes`` (events taken in, ascending) of the
    stream in ``data`` (``generate(n_events, seed=0)``)."""
    events = list(iter_events(read_replay_input(data)))
    sizes = tuple(min(s, len(events)) for s in sizes)
    load_before = os.getloadavg()
    rows = []
    for names in LEARNER_SETS:
        engine, parts = _parts(names)
        fed = 0
        with tempfile.TemporaryDirectory() as tmp:
            store = CheckpointStore(Path(tmp) / "ckpt")
            for size in sizes:
                print(f"bench: checkpoint: {','.join(names)}, {size:,} events", file=sys.stderr,
                      flush=True)
                for start in range(fed, size, BATCH):
                    engine.process(events[start:min(start + BATCH, size)])
                fed = size
                # The manifest's few bytes: where the offsets stand does not change the cost.
                offsets = {"impressions/0": size, "clicks/0": 0}
                writes = []
                for _ in range(runs):
                    started = time.perf_counter()
                    written = store.write(parts, offsets, size)
                    writes.append(time.perf_counter() - started)
                by_part = {name: (written.path / f"{name}.npz").stat().st_size
                           for name in parts}
                restores = []
                for _ in range(runs):
                    _, fresh = _parts(names)
                    started = time.perf_counter()
                    restored = store.restore(fresh)
                    restores.append(time.perf_counter() - started)
                    assert restored is not None and restored.records == size
                rows.append({"learners": names, "events": size, "bytes": written.size_bytes,
                             "by_part": by_part, "write": writes, "restore": restores})
    return {"n_events": n_events, "rows": rows, "runs": runs,
            "load": (load_before, os.getloadavg())}


def markdown(m: dict) -> list[str]:
    runs = m["runs"]
    (b1, b5, _), (e1, e5, _) = m["load"]
    lines = [
        "## Checkpoint write and restore vs state size (`bench/checkpoint.py`)",
        "",
        f"Command: `.venv/bin/python bench/run_all.py --only checkpoint` "
        f"({datetime.now(UTC):%Y-%m-%d}). An `OnlineEngine` with each learner set (default "
        f"hyper-parameters and joiner, as `streamctr serve` without a config file) is fed "
        f"the synthetic stream (`generate({m['n_events']:_}, seed=0)`) in batches of "
        f"{BATCH:,}; at each size the parts the service checkpoints (`engine`, "
        f"`learner.<name>`) are written "
        f"with `CheckpointStore.write` {runs} times (`np.savez` per part, SHA-256, fsync "
        f"of files and folder, rename, prune), then restored {runs} times into freshly "
        f"built parts with `CheckpointStore.restore` (verify checksums, load, "
        "`load_state_dict`), in a temporary folder (on the same disk as the repository). "
        "Medians (min–max):",
        "",
        "| learners | events taken in | checkpoint MB | write s | write MB/s | restore s | "
        "restore MB/s | MB by part |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in m["rows"]:
        mb = row["bytes"] / 1e6
        write, restore = statistics.median(row["write"]), statistics.median(row["restore"])
        parts = " · ".join(f"{name.removeprefix('learner.')} {size / 1e6:.2f}"
                           for name, size in row["by_part"].items())
        lines.append(
            f"| {', '.join(row['learners'])} | {row['events']:,} | {mb:.1f} | {write:.2f} "
            f"({min(row['write']):.2f}–{max(row['write']):.2f}) | {mb / write:,.0f} | "
            f"{restore:.2f} ({min(row['restore']):.2f}–{max(row['restore']):.2f}) | "
            f"{mb / restore:,.0f} | {parts} |")
    lines += [
        "",
        "MB are 10⁶ bytes of the parts' `.npz` files (the manifest aside). Restore reads "
        "files just written, so from the page cache: a restart after a reboot also reads "
        "them from disk. A running service writes one such checkpoint every "
        "`--checkpoint-interval` (60 s by default) between two batches, so the write time "
        "is a pause of the loop.",
        "",
        f"Noise: {os.cpu_count()} cores shared with other work; load average (1 / 5 min) "
        f"{b1:.1f} / {b5:.1f} when this section started, {e1:.1f} / {e5:.1f} when it ended.",
        "",
    ]
    return lines
