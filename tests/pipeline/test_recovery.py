"""Crash recovery of ``streamctr serve``: SIGKILL at random points ends in the same model.

The stream is produced once into two-partition topics. One ``streamctr serve``
subprocess runs over it uninterrupted; another is killed with SIGKILL at seeded
random moments — spread over the stream, a random delay after a checkpoint, so
kills land in a batch, in a checkpoint write, in a tree refit, during start-up —
and restarted each time from its checkpoint folder until its state has taken in
every record (``--max-events`` is the total over restarts). Both final
checkpoints must hold the same learner weights (fingerprints), the same joiner
state, the same samples learned and the same offsets, and give the same
predictions.

SIGTERM and revocation have their own tests below.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from features.joiner import JoinerConfig
from learners import make_learner
from pipeline.broker import create_topics
from pipeline.checkpoint import CheckpointStore, describe_folder
from pipeline.config import learner_params
from pipeline.produce import produce_folder
from pipeline.service import Topics
from replay.engine import OnlineEngine
from replay.inputs import iter_events, read_replay_input
from replay.run import run_replay
from replay.synthetic import generate, write_stream

pytestmark = pytest.mark.integration

EVENTS = 20_000
LEARNERS = ("ftrl", "gbdt_lr", "din")
KILLS = 4
WINDOW = JoinerConfig(window_ms=60_000)
# Small models (checkpoints of a few MB, written in well under the interval) and
# frequent tree refits, so that kills land during refits and in shadow phases too.
CONFIG = """
[learner.ftrl]
n_bits = 16

[learner.gbdt_lr]
n_bits = 16
min_samples = 1500
refit_every = 2500
adopt_after = 800
buffer_size = 4000
n_trees = 8
shadow_window = 400
shadow_max = 1500

[learner.din]
embedding_dim = 8
capacity = 8192
batch_size = 256
attention_hidden = [16]
mlp_hidden = [32, 16]
"""


@pytest.fixture(scope="module")
def stream(kafka_bootstrap, tmp_path_factory) -> dict:
    """The synthetic stream in a folder and in fresh two-partition topics."""
    folder = tmp_path_factory.mktemp("recovery")
    write_stream(generate(EVENTS, seed=11), folder / "data")
    (folder / "config.toml").write_text(CONFIG)
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(f"impressions-{suffix}", f"clicks-{suffix}", f"samples-{suffix}",
                    f"dlq-{suffix}")
    create_topics(kafka_bootstrap, [topics.impressions, topics.clicks, topics.samples,
                                    topics.dlq], partitions=2)
    produced = produce_folder(folder / "data", kafka_bootstrap, topics=topics,
                              show_progress=False)
    return {"folder": folder, "topics": topics,
            "total": produced.impressions + produced.clicks}


def serve(bootstrap: str, stream: dict, ckpt: Path, group: str, *, learners=LEARNERS,
          interval: str = "250ms", max_events: int | None = None) -> subprocess.Popen:
    topics = stream["topics"]
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--bootstrap", bootstrap,
           "--learners", ",".join(learners), "--metrics-port", "0",
           "--impressions-topic", topics.impressions, "--clicks-topic", topics.clicks,
           "--samples-topic", topics.samples, "--dlq-topic", topics.dlq,
           "--group-id", group, "--checkpoint-dir", str(ckpt), "--checkpoint-interval", interval,
           "--window", "1m", "--config", str(stream["folder"] / "config.toml"),
           "--max-events", str(max_events or stream["total"])]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def newest(ckpt: Path) -> tuple[int, int]:
    """(id, records) of the newest checkpoint folder, unverified; (0, 0) if none yet."""
    ids = sorted(int(m.group(1)) for p in (ckpt.iterdir() if ckpt.is_dir() else ())
                 if (m := re.fullmatch(r"ckpt-(\d+)", p.name)))
    for ckpt_id in reversed(ids):
        try:
            manifest = json.loads((ckpt / f"ckpt-{ckpt_id:09d}" / "manifest.json").read_text())
            return ckpt_id, int(manifest["records"])
        except (OSError, ValueError, KeyError):  # pruned meanwhile
            continue
    return 0, 0


def show(ckpt: Path) -> dict:
    """What ``streamctr checkpoint show DIR --json`` prints (in-process: no second start-up)."""
    return json.loads(json.dumps(describe_folder(ckpt)))


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    return out, err


def probe_features(folder: Path, n: int = 3_000) -> list[dict[str, float]]:
    """Feature dicts of the stream's first impressions, as the engine makes them."""

    class Probe:
        uses_behaviours = True  # DIN reads the sequences: make them

        def __init__(self) -> None:
            self.xs: list[dict[str, float]] = []

        def predict_proba_one(self, x):
            self.xs.append(x)
            return 0.5

        def learn_one(self, x, y, w=1.0):
            pass

    probe = Probe()
    engine = OnlineEngine({"probe": probe}, WINDOW)  # type: ignore[dict-item]
    events = list(iter_events(read_replay_input(folder / "data")))
    engine.process(events[:n])
    return probe.xs


# Joiner arrays whose size and order follow the batches the service happened to read
# (tables grow to fit each batch; ring buffers and free lists wrap accordingly): the
# storage, not the content. Everything else of the engine's state must be equal.
JOINER_LAYOUT = {"clock", "ends", "expiries", "features", "free_rows", "free_slots",
                 "held_expiries", "late_ends", "pending_rows", "slots"}


def assert_same_joiner_content(a: Path, b: Path) -> None:
    with np.load(a / "engine.npz") as ea, np.load(b / "engine.npz") as eb:
        assert sorted(ea.files) == sorted(eb.files)
        content = [k for k in ea.files if k.split("/")[:2][-1] not in JOINER_LAYOUT]
        assert "joiner/stats" in content and "joiner/store/ts" in content
        for key in content:
            assert ea[key].shape == eb[key].shape and np.array_equal(ea[key], eb[key]), key
        assert np.array_equal(ea["joiner/clock"][:2], eb["joiner/clock"][:2])  # watermark, max


def restored_learners(ckpt: Path, folder: Path) -> dict:
    params = learner_params(str(folder / "config.toml"), LEARNERS)
    learners = {name: make_learner(name, **params.get(name, {})) for name in LEARNERS}
    restored = CheckpointStore(ckpt).restore({f"learner.{n}": m for n, m in learners.items()})
    assert restored is not None
    return learners


def test_sigkill_at_random_points_and_restarts_end_in_the_uninterrupted_model(
    kafka_bootstrap, stream, tmp_path
):
    total = stream["total"]
    started = time.monotonic()
    reference = serve(kafka_bootstrap, stream, tmp_path / "reference", f"ref-{uuid.uuid4()}")

    ckpt = tmp_path / "killed"
    rng = random.Random(20240607)
    # Kill points: the first at a random moment after start (imports, restore, group
    # join); each other one once this run has written a checkpoint past a random point of
    # the stream (one in each third of 0-85 %), a random delay later (mid-batch, mid-write
    # or mid-refit).
    targets = [rng.uniform(k, k + 1) / (KILLS - 1) * 0.85 * total for k in range(KILLS - 1)]
    kills: list[dict] = []
    incarnation = 0
    # A new consumer group for each run: where to read comes from the checkpoint, the group
    # is for lag monitoring only. (Rejoining the same group after a SIGKILL waits out the
    # dead member's session timeout first: ~13 s more per restart on the embedded broker.)
    while True:
        before = newest(ckpt)[0]
        proc = serve(kafka_bootstrap, stream, ckpt, f"killed-{uuid.uuid4()}")
        incarnation += 1
        if len(kills) < KILLS:
            if not kills:
                time.sleep(rng.uniform(1.0, 4.0))
            else:
                target = targets[len(kills) - 1]
                deadline = time.monotonic() + 180
                while proc.poll() is None:
                    ckpt_id, records = newest(ckpt)
                    if ckpt_id > before and records >= target:
                        break
                    assert time.monotonic() < deadline, "no progress"
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 0.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                staging = [p.name for p in ckpt.glob(".ckpt-*.tmp")] if ckpt.is_dir() else []
                kills.append({"records": newest(ckpt)[1], "mid_write": bool(staging)})
                continue
        out, err = finish(proc)
        break
    killed_s = time.monotonic() - started
    finish(reference)
    print(f"\n{len(kills)} SIGKILLs, {incarnation} runs, {killed_s:.0f} s (reference "
          f"{time.monotonic() - started:.0f} s): {kills}")

    assert len(kills) == KILLS, "the service finished before every kill point was reached"
    assert "restored checkpoint" in err and "stopped (max-events)" in out
    assert sum(k["records"] > 0 for k in kills) >= KILLS - 1  # killed after real progress

    ref, rec = show(tmp_path / "reference"), show(ckpt)
    ref_last, rec_last = ref["checkpoints"][0], rec["checkpoints"][0]
    assert ref_last["valid"] and rec_last["valid"]
    assert ref_last["records"] == rec_last["records"] == total
    assert ref_last["offsets"] == rec_last["offsets"]
    assert sum(ref_last["offsets"].values()) == total  # every record, once
    # Nothing lost, nothing learned twice: as many samples as an offline replay releases.
    replayed = run_replay(stream["folder"] / "data", ["ftrl"], None, joiner_config=WINDOW,
                          show_progress=False).events
    samples = replayed["samples_positive"] + replayed["samples_negative"]
    for name in LEARNERS:
        assert rec_last["learners"][name]["samples_learned"] == samples
        assert ref_last["learners"][name]["samples_learned"] == samples
    # The same weights, bit for bit, and the same joins.
    assert {n: v["fingerprint"] for n, v in rec_last["learners"].items()} == {
        n: v["fingerprint"] for n, v in ref_last["learners"].items()}
    assert_same_joiner_content(Path(ref_last["path"]), Path(rec_last["path"]))

    # And so the same predictions.
    xs = probe_features(stream["folder"])
    a = restored_learners(tmp_path / "reference", stream["folder"])
    b = restored_learners(ckpt, stream["folder"])
    for name in LEARNERS:
        pa = np.array([a[name].predict_proba_one(x) for x in xs])
        pb = np.array([b[name].predict_proba_one(x) for x in xs])
        assert np.abs(pa - pb).max() <= 1e-9, name


def test_sigterm_finishes_the_batch_writes_a_checkpoint_and_exits_0(kafka_bootstrap, stream,
                                                                     tmp_path):
    ckpt = tmp_path / "ckpt"
    # No --max-events: it would run until stopped. A periodic checkpoint shows it is busy.
    proc = serve(kafka_bootstrap, stream, ckpt, f"term-{uuid.uuid4()}", interval="1s",
                 max_events=10 ** 9)
    try:
        deadline = time.monotonic() + 120
        while newest(ckpt)[1] == 0:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.05)
        periodic = newest(ckpt)
        time.sleep(random.Random(5).uniform(0.2, 0.8))  # into the next batch
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "stopped (SIGTERM)" in out
    assert "written (stop)" in err or "none written on stop" in err
    state = re.search(r"state: ([\d,]+) records, in checkpoint (ckpt-\d+)", out)
    assert state, out
    last = describe_folder(ckpt)["checkpoints"][0]
    assert last["valid"] and last["name"] == state.group(2) and last["id"] >= periodic[0]
    # Everything it processed is in the checkpoint, and it stopped mid-stream.
    assert last["records"] == int(state.group(1).replace(",", ""))
    assert periodic[1] <= last["records"] < stream["total"]
    assert last["records"] == sum(last["offsets"].values())
    print(f"\nSIGTERM to exit: {took:.1f} s, at {last['records']:,} of {stream['total']:,} "
          "records")
    assert took < 30  # one poll, one batch (<= 5,000 records), one checkpoint, the close


def test_a_revocation_writes_a_checkpoint_first_and_loses_or_repeats_nothing(
    kafka_bootstrap, stream, tmp_path, caplog
):
    """Two rebalances in the middle of the backlog, each revoking every partition of the
    service (eager protocol) and assigning them back: a checkpoint is written at each
    revocation, the records buffered in the merge are dropped and read again from the
    processed offsets, and the scores equal a replay's: nothing lost, nothing repeated.

    The rebalances are asked for by the service's own group coordinator (a JoinGroup /
    SyncGroup round trip with the broker): a second member subscribed to another topic
    makes the embedded broker rebalance again and again, and one on these topics would
    take partitions away (one instance owns them all). The coordinator is reached on the
    service's thread, so the client is not in a read-ahead process here; rebalances
    through one are tested in test_read_ahead.py and test_roles.py.
    """
    from pipeline.service import Service, ServiceConfig
    from replay.report import OutcomeRecorder

    recorder = OutcomeRecorder(("ftrl",))
    service = Service(ServiceConfig(
        bootstrap=kafka_bootstrap, learners=("ftrl", "din"), metrics_port=None,
        topics=stream["topics"], group_id=f"revoke-{uuid.uuid4()}", joiner=WINDOW,
        checkpoint_dir=tmp_path / "ck", checkpoint_interval_s=3600, max_poll_records=500,
        max_events=stream["total"], read_ahead=False,
        # Small merge buffers: a poll's release stays small, so each rejoin (taken at the
        # next poll) lands soon after it was asked for, and partitions are paused and
        # resumed all along (kafka-python 3.0.12 stalled on that: pipeline.service).
        max_buffered_per_partition=1_000,
        learner_params=learner_params(str(stream["folder"] / "config.toml"), LEARNERS)),
        extra_outcome_callbacks=[recorder])
    revocations: list[tuple[int, int]] = []  # (records taken in, records buffered in the merge)
    on_revoked = service._on_revoked

    def spy(revoked):
        if revoked:
            revocations.append((service._records, len(service._merger)))
        on_revoked(revoked)

    service._on_revoked = spy  # type: ignore[method-assign]
    runner = threading.Thread(target=service.run)
    with caplog.at_level(logging.INFO, logger="pipeline.service"):
        runner.start()
        for n in (1, 2):
            # The first after 2,000 records, the second 2,000 records after the first.
            at = 2_000 + (revocations[-1][0] if revocations else 0)
            deadline = time.monotonic() + 120
            while service._records < at:
                assert runner.is_alive() and time.monotonic() < deadline
                time.sleep(0.02)
            service._consumer.client._coordinator.request_rejoin()  # type: ignore[union-attr]
            while len(revocations) < n:
                assert runner.is_alive() and time.monotonic() < deadline
                time.sleep(0.02)
        runner.join(timeout=180)
    assert not runner.is_alive()
    revoked = [r.getMessage() for r in caplog.records if "revoked)" in r.getMessage()]
    assert len(revoked) == 2, "a checkpoint at each revocation"
    revocations = revocations[:2]  # the third is the close's: the stop checkpoint came first
    assert [f"{r:,} records" in m for (r, _), m in zip(revocations, revoked, strict=True)] == [
        True, True]
    assert any(buffered for _, buffered in revocations), "the merge was empty every time"
    assert service._records == stream["total"]
    replayed = run_replay(stream["folder"] / "data", ["ftrl"], None, joiner_config=WINDOW,
                          learner_params={"ftrl": {"n_bits": 16}}, show_progress=False)
    outcomes = recorder.to_frame()
    assert outcomes["impression_id"].to_list() == replayed.outcomes["impression_id"].to_list()
    assert outcomes["score_ftrl"].to_list() == replayed.outcomes["score_ftrl"].to_list()
    print(f"\nrevocations at (records taken in, buffered in the merge): {revocations}")
