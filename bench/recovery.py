"""Recovery after SIGKILL: how long a restarted ``streamctr serve`` takes to work again.

The stream is produced once into four-partition topics of the embedded broker. One
``streamctr serve`` subprocess (run as tests/pipeline/test_recovery.py runs it) is
killed with SIGKILL a random delay after it wrote a checkpoint past each kill point
of the stream, and restarted at once from its checkpoint folder, until its state has
taken in every record (``--max-events`` counts over restarts). Of each restart the
bench times, from ``Popen``: the log line saying the checkpoint was restored, the
first record consumed and the first batch processed (both from the service's
``/metrics``, polled); and counts the records read again — those the killed process
had consumed past the checkpoint the restart restored.

Run: ``.venv/bin/python bench/run_all.py --only recovery``.
"""

from __future__ import annotations

import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service import PARTITIONS, produce_stream  # noqa: E402  (bench/service.py)

from pipeline.broker import EmbeddedBroker, free_port  # noqa: E402

LEARNERS = ("ftrl", "gbdt_lr", "din")
INTERVAL_S = 2.0  # --checkpoint-interval
POLL_S = 0.05  # /metrics polling period: the resolution of the first-record times
_RESTORED = re.compile(r"restored checkpoint \S+: ([\d,]+) records")
_WRITTEN = re.compile(r"checkpoint ckpt-\d+ written \(\w+\): ([\d,]+) records")


class _Serve:
    """One ``streamctr serve`` process; its stderr lines are read as they come, timed."""

    def __init__(self, bootstrap: str, ckpt: Path, total: int) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--bootstrap", bootstrap,
               "--learners", ",".join(LEARNERS), "--metrics-port", str(self.port),
               "--metrics-host", "127.0.0.1",
               # A new group each run, as in the recovery test: where to read comes from
               # the checkpoint; rejoining the dead member's group would first wait out its
               # session timeout.
               "--group-id", f"bench-recovery-{uuid.uuid4()}",
               "--checkpoint-dir", str(ckpt), "--checkpoint-interval", f"{INTERVAL_S:g}s",
               "--max-events", str(total)]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.restored_at: float | None = None
        self.restored_records = 0
        self.checkpointed = 0  # records of the last checkpoint this process wrote
        self.checkpointed_at = self.started  # when its log line came
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if (match := _RESTORED.search(line)) and self.restored_at is None:
                self.restored_at = time.monotonic()
                self.restored_records = int(match.group(1).replace(",", ""))
            elif match := _WRITTEN.search(line):
                self.checkpointed = int(match.group(1).replace(",", ""))
                self.checkpointed_at = time.monotonic()

    def scrape(self) -> dict[str, float]:
        """Samples of ``/metrics`` by name (labels summed); empty until it answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=1) as response:
                text = response.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                name = name.split("{", 1)[0]
                out[name] = out.get(name, 0.0) + float(value)
        return out

    def consumed(self, metrics: dict[str, float]) -> int:
        return int(metrics.get("streamctr_events_consumed_total", 0))

    def wait_first_batch(self, deadline_s: float) -> tuple[float, float]:
        """Seconds from start to the first record consumed and to the first batch processed."""
        first_consumed = None
        while time.monotonic() - self.started < deadline_s:
            metrics = self.scrape()
            now = time.monotonic()
            if first_consumed is None and self.consumed(metrics) > 0:
                first_consumed = now
            if metrics.get("streamctr_batch_duration_seconds_count", 0) > 0:
                return (first_consumed or now) - self.started, now - self.started
            if self.proc.poll() is not None:
                raise RuntimeError("serve exited before its first batch:\n"
                                   + "".join(self.lines[-20:]))
            time.sleep(POLL_S)
        raise RuntimeError("no batch processed in time:\n" + "".join(self.lines[-20:]))

    def kill(self) -> tuple[int, float]:
        """SIGKILL; returns how far it had read (records of its restored state + consumed)
        and the seconds since its last checkpoint was written (work lost)."""
        position = self.restored_records + self.consumed(self.scrape())
        self.proc.send_signal(signal.SIGKILL)
        lost_s = time.monotonic() - self.checkpointed_at
        self.proc.wait()
        self._reader.join()
        return position, lost_s

    def finish(self, timeout_s: float) -> None:
        try:
            self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join()
        assert self.proc.stdout is not None
        if self.proc.returncode != 0 or "stopped (max-events)" not in self.proc.stdout.read():
            raise RuntimeError("serve did not take in every record:\n"
                               + "".join(self.lines[-20:]))


def measure(data: Path, kills: int, seed: int = 7) -> dict:
    load_before = os.getloadavg()
    rng = random.Random(seed)
    restarts = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        total, _ = produce_stream(broker, data)
        ckpt = Path(tmp) / "ckpt"
        # Kill points spread over 10-85 % of the stream, one in each equal slice.
        targets = [(0.10 + 0.75 * rng.uniform(k, k + 1) / kills) * total for k in range(kills)]
        serve = _Serve(broker.bootstrap, ckpt, total)
        started = time.monotonic()
        for k, target in enumerate(targets):
            print(f"bench: recovery: kill {k + 1}/{kills} past {target:,.0f} records",
                  file=sys.stderr, flush=True)
            while serve.checkpointed < target:
                if serve.proc.poll() is not None:
                    raise RuntimeError("serve ended before the kill point:\n"
                                       + "".join(serve.lines[-20:]))
                time.sleep(0.02)
            # Anywhere in the next checkpoint interval: mid-batch, mid-write, mid-refit.
            time.sleep(rng.uniform(0.0, INTERVAL_S))
            position, lost_s = serve.kill()
            serve = _Serve(broker.bootstrap, ckpt, total)
            first_consumed, first_batch = serve.wait_first_batch(deadline_s=180)
            if serve.restored_at is None:
                raise RuntimeError("no checkpoint restored:\n" + "".join(serve.lines[-20:]))
            restarts.append({
                "restored_s": serve.restored_at - serve.started,
                "first_consumed_s": first_consumed,
                "first_batch_s": first_batch,
                "checkpoint_records": serve.restored_records,
                "reread": position - serve.restored_records,
                "lost_s": lost_s,
            })
        serve.finish(timeout_s=600)
        wall = time.monotonic() - started
    return {"records": total, "kills": kills, "restarts": restarts, "wall_s": wall,
            "load": (load_before, os.getloadavg())}


def markdown(m: dict, n_events: int) -> list[str]:
    restarts = m["restarts"]
    (b1, b5, _), (e1, e5, _) = m["load"]

    def cell(key: str, fmt: str) -> str:
        values = [r[key] for r in restarts]
        return (f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}–"
                f"{format(max(values), fmt)})")

    lines = [
        "## Recovery after SIGKILL (`bench/recovery.py`)",
        "",
        f"Command: `.venv/bin/python bench/run_all.py --only recovery` "
        f"({datetime.now(UTC):%Y-%m-%d}). {m['records']:,} records of the synthetic stream "
        f"(`generate({n_events:_}, seed=0)`) in topics of {PARTITIONS} partitions on the "
        f"embedded broker; `streamctr serve --learners {','.join(LEARNERS)} --checkpoint-dir "
        f"D --checkpoint-interval {INTERVAL_S:g}s --max-events {m['records']}` as a "
        f"subprocess (default hyper-parameters), SIGKILLed {m['kills']} times — each a random "
        f"delay within one checkpoint interval after it wrote a checkpoint past a random "
        f"point of the stream — and restarted at once from D with a new consumer group, "
        f"until every record was taken in ({m['wall_s']:.0f} s in all). Medians "
        f"(min–max) of the {len(restarts)} restarts, in seconds from `Popen`:",
        "",
        "| restart → checkpoint restored | → first record consumed | → first batch processed "
        "| records read again | records in the restored checkpoint | s since that checkpoint "
        "at the kill |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {cell('restored_s', '.1f')} | {cell('first_consumed_s', '.1f')} | "
        f"{cell('first_batch_s', '.1f')} | {cell('reread', ',.0f')} | "
        f"{cell('checkpoint_records', ',.0f')} | {cell('lost_s', '.1f')} |",
        "",
        "Restored: the service's `restored checkpoint …` log line (interpreter start, "
        "imports — torch for DIN — and `CheckpointStore.restore`). First record consumed "
        "and first batch processed: `streamctr_events_consumed_total` and "
        "`streamctr_batch_duration_seconds_count` turning non-zero on `/metrics`, polled "
        f"every {POLL_S * 1000:.0f} ms (the histogram counts a batch once the engine is done "
        "with it); between restored and consumed lie the clients' "
        "start and the group join (~3-5 s on the embedded broker), and the first batch "
        "waits until the event-time merge may release records. Records read again: how far "
        "the killed process had read (its restored records + its consumed counter, scraped "
        "just before the kill) minus the records of the checkpoint the restart restored — "
        "processed or merely buffered, they are read and taken in once more, and the "
        "restored state has not seen them, so nothing is learned twice. The service reads "
        "ahead into the merge (up to `max_buffered_per_partition` records a partition), so "
        "over a backlog this is more than one interval's processing; the work actually "
        "lost is the last column, the time from the last checkpoint's log line to the "
        "kill.",
        "",
        f"Noise: {os.cpu_count()} cores shared with other work; load average (1 / 5 min) "
        f"{b1:.1f} / {b5:.1f} when this section started, {e1:.1f} / {e5:.1f} when it ended.",
        "",
    ]
    return lines
