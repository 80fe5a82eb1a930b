from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from learners import FTRLProximal
from pipeline.checkpoint import (
    CheckpointError,
    CheckpointStore,
    describe_folder,
    fingerprint,
    has_checkpoint,
    load_checkpoint,
    render_listing,
    save_checkpoint,
)
from pipeline.cli import main

X = [{"bias": 1.0, f"user=u{i % 7}": 1.0, f"item=i{i % 11}": 1.0} for i in range(300)]


def trained(extra: int = 0) -> FTRLProximal:
    model = FTRLProximal(n_bits=12)
    for i, x in enumerate(X + X[:extra]):
        model.learn_one(x, int(i % 5 == 0))
    return model


def fresh() -> FTRLProximal:
    return FTRLProximal(n_bits=12)


def ckpt_names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("ckpt-"))


def test_restored_learner_makes_identical_next_predictions(tmp_path):
    model = trained()
    save_checkpoint(tmp_path / "ckpt", {"ftrl": model})
    assert has_checkpoint(tmp_path / "ckpt")
    restored = fresh()
    load_checkpoint(tmp_path / "ckpt", {"ftrl": restored})
    for x in X[:50]:
        assert restored.predict_proba_one(x) == model.predict_proba_one(x)
        restored.learn_one(x, 1)
        model.learn_one(x, 1)


def test_checkpoints_are_numbered_the_last_k_kept_and_the_newest_restored(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt", keep=3)
    models = [trained(extra=i) for i in range(5)]
    written = [store.write({"ftrl": m}, offsets={"clicks/0": i}, records=i)
               for i, m in enumerate(models)]
    assert [w.id for w in written] == [1, 2, 3, 4, 5]
    assert ckpt_names(tmp_path / "ckpt") == ["ckpt-000000003", "ckpt-000000004",
                                             "ckpt-000000005"]
    assert not list((tmp_path / "ckpt").glob(".ckpt-*"))  # no staging left
    assert written[-1].size_bytes == sum(
        p.stat().st_size for p in written[-1].path.glob("*.npz"))
    assert written[-1].duration_s > 0 and written[-1].written_at_ms > 0
    restored = fresh()
    result = store.restore({"ftrl": restored})
    assert result is not None and result.checkpoint.id == 5 and result.skipped == ()
    assert result.offsets == {"clicks/0": 4} and result.records == 4
    assert np.array_equal(restored.state_dict()["z"], models[-1].state_dict()["z"])


def test_the_manifest_holds_checksums_sizes_offsets_samples_and_a_fingerprint(tmp_path):
    model = trained()
    written = save_checkpoint(tmp_path / "ckpt", {"learner.ftrl": model},
                              offsets={"impressions/1": 42, "impressions/0": 7}, records=49)
    manifest = json.loads((written.path / "manifest.json").read_text())
    assert manifest["format"] == 3 and manifest["id"] == 1 and manifest["records"] == 49
    assert manifest["offsets"] == {"impressions/0": 7, "impressions/1": 42}
    part = manifest["parts"]["learner.ftrl"]
    data = (written.path / "learner.ftrl.npz").read_bytes()
    assert part["sha256"] == hashlib.sha256(data).hexdigest() and part["bytes"] == len(data)
    assert part["samples_learned"] == model.n_learned == 300
    assert part["fingerprint"] == fingerprint(model.state_dict())


def test_a_corrupt_newest_checkpoint_is_skipped_with_one_warning_and_the_previous_used(
    tmp_path, caplog
):
    store = CheckpointStore(tmp_path / "ckpt")
    older, newer = trained(), trained(extra=10)
    store.write({"ftrl": older}, offsets={"clicks/0": 1}, records=1)
    bad = store.write({"ftrl": newer}, offsets={"clicks/0": 2}, records=2).path
    npz = bad / "ftrl.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the middle of the weights
    npz.write_bytes(bytes(data))
    restored = fresh()
    with caplog.at_level(logging.WARNING, logger="pipeline.checkpoint"):
        result = store.restore({"ftrl": restored})
    assert result is not None and result.checkpoint.id == 1 and result.offsets == {"clicks/0": 1}
    assert np.array_equal(restored.state_dict()["z"], older.state_dict()["z"])
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skips) == 1
    assert str(bad) in skips[0] and "ftrl.npz: SHA-256 mismatch" in skips[0]
    assert result.skipped == ((bad, "ftrl.npz: SHA-256 mismatch (the file was altered or "
                                    "damaged)"),)


@pytest.mark.parametrize("damage, reason", [
    (lambda p: (p / "ftrl.npz").unlink(), "ftrl.npz is missing"),
    (lambda p: os.truncate(p / "ftrl.npz", 100), "ftrl.npz has 100 bytes, the manifest says"),
    (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda p: (p / "manifest.json").write_text("{half"), "unreadable manifest.json"),
    (lambda p: (p / "manifest.json").write_text(json.dumps(
        dict(json.loads((p / "manifest.json").read_text()), format=99))),
     "manifest format 99, expected 3"),
    (lambda p: (p / "manifest.json").write_text(json.dumps(
        dict(json.loads((p / "manifest.json").read_text()), id=7))),
     "manifest id 7 does not match the folder name"),
    (lambda p: (p / "manifest.json").write_text(json.dumps(
        dict(json.loads((p / "manifest.json").read_text()), offsets={"clicks/0": -1}))),
     "manifest offsets are not a map of partition to offset"),
])
def test_each_kind_of_damage_is_detected_and_named(tmp_path, damage, reason):
    store = CheckpointStore(tmp_path / "ckpt")
    store.write({"ftrl": trained()}, records=1)
    damage(store.write({"ftrl": trained(extra=3)}, records=2).path)
    result = store.restore({"ftrl": fresh()})
    assert result is not None and result.checkpoint.id == 1
    assert len(result.skipped) == 1 and reason in result.skipped[0][1]


def test_a_folder_whose_checkpoints_are_all_invalid_is_refused_not_started_from_scratch(
    tmp_path
):
    path = save_checkpoint(tmp_path / "ckpt", {"ftrl": trained()}).path
    (path / "ftrl.npz").unlink()
    with pytest.raises(CheckpointError, match=r"none of its 1 checkpoint.*is valid.*move them "
                                              r"away to start from scratch"):
        CheckpointStore(tmp_path / "ckpt").restore({"ftrl": fresh()})


def test_an_empty_or_absent_folder_restores_nothing(tmp_path):
    assert CheckpointStore(tmp_path / "absent").restore({"ftrl": fresh()}) is None
    (tmp_path / "empty").mkdir()
    assert CheckpointStore(tmp_path / "empty").restore({"ftrl": fresh()}) is None
    assert not has_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty", {"ftrl": fresh()})


def test_a_crash_mid_write_leaves_a_staging_folder_that_is_ignored_then_removed(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    store.write({"ftrl": trained()}, records=1)
    staging = tmp_path / "ckpt" / ".ckpt-000000002.tmp"  # what SIGKILL mid-write leaves
    staging.mkdir()
    (staging / "ftrl.npz").write_bytes(b"half a zip")
    result = store.restore({"ftrl": fresh()})
    assert result is not None and result.checkpoint.id == 1 and result.skipped == ()
    assert store.write({"ftrl": trained()}, records=2).id == 2
    assert not staging.exists()


def test_a_failed_write_leaves_no_trace_and_the_previous_checkpoint(tmp_path):
    class Broken:
        def state_dict(self):
            raise RuntimeError("disk full")

        def load_state_dict(self, d):
            pass

    store = CheckpointStore(tmp_path / "ckpt")
    store.write({"ftrl": trained()}, records=1)
    with pytest.raises(RuntimeError, match="disk full"):
        store.write({"a": trained(), "z": Broken()}, records=2)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["ckpt-000000001"]
    assert not list((tmp_path / "ckpt").glob(".ckpt-*"))


def test_checkpoint_without_the_asked_learner_is_refused_not_skipped(tmp_path):
    save_checkpoint(tmp_path / "ckpt", {"ftrl": trained()})
    with pytest.raises(CheckpointError, match="no state for other"):
        load_checkpoint(tmp_path / "ckpt", {"ftrl": fresh(), "other": fresh()})


def test_state_of_another_shape_is_a_checkpoint_error(tmp_path):
    save_checkpoint(tmp_path / "ckpt", {"ftrl": trained()})
    with pytest.raises(CheckpointError, match="ftrl does not fit"):
        load_checkpoint(tmp_path / "ckpt", {"ftrl": FTRLProximal(n_bits=14)})


def test_learner_with_other_hyper_parameters_than_the_checkpoint_is_refused(tmp_path):
    save_checkpoint(tmp_path / "ckpt", {"ftrl": trained()})
    changed = FTRLProximal(n_bits=12, crosses=[("user", "item")])
    with pytest.raises(CheckpointError, match="ftrl does not fit: state dict was learned with "
                                              "crosses"):
        load_checkpoint(tmp_path / "ckpt", {"ftrl": changed})
    assert changed.n_learned == 0


def test_sparse_learner_state_with_string_arrays_survives_the_checkpoint(tmp_path):
    model = FTRLProximal(n_bits=12, crosses=[("user", "item")], negative_rate=0.5, seed=4)
    for i, x in enumerate(X):
        model.learn_one(x, int(i % 5 == 0))
    save_checkpoint(tmp_path / "ckpt", {"ftrl": model})
    restored = FTRLProximal(n_bits=12, crosses=[("user", "item")], negative_rate=0.5, seed=4)
    load_checkpoint(tmp_path / "ckpt", {"ftrl": restored})
    assert fingerprint(restored.state_dict()) == fingerprint(model.state_dict())
    for i, x in enumerate(X):
        assert restored.predict_proba_one(x) == model.predict_proba_one(x)
        restored.learn_one(x, int(i % 3 == 0))
        model.learn_one(x, int(i % 3 == 0))
    assert restored.n_skipped == model.n_skipped > 0


def test_object_arrays_are_refused_when_writing_no_pickle(tmp_path):
    class Sneaky:
        def state_dict(self):
            return {"payload": np.array([{"a": 1}], dtype=object)}

        def load_state_dict(self, d):
            pass

    with pytest.raises(CheckpointError, match=r"payload.*no pickle"):
        save_checkpoint(tmp_path / "ckpt", {"sneaky": Sneaky()})
    assert not ckpt_names(tmp_path / "ckpt")


def test_fingerprint_is_the_content_whatever_the_layout():
    model = trained()
    state = model.state_dict()
    as_float32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f"
                      and np.array_equal(v.astype(np.float32), v) else v)
                  for k, v in reversed(list(state.items()))}
    assert fingerprint(as_float32) == fingerprint(state)
    assert fingerprint({"a": {"b": 1}}) == fingerprint({"a": {"b": np.int32(1)}})
    assert fingerprint({"a": {"b": 1}}) != fingerprint({"a": {"c": 1}})
    other = trained(extra=1)
    assert fingerprint(other.state_dict()) != fingerprint(state)
    assert fingerprint({"s": np.array(["ab", "c"])}) != fingerprint({"s": np.array(["a", "bc"])})


def test_a_format_2_checkpoint_is_still_read_and_superseded_by_the_first_new_one(tmp_path):
    # Format 2: one folder, the manifest and one .npz per part, no checksums.
    model = trained()
    folder = tmp_path / "ckpt"
    folder.mkdir()
    np.savez(folder / "ftrl.npz", **{k: np.asarray(v) for k, v in model.state_dict().items()
                                     if not isinstance(v, dict)})
    (folder / "manifest.json").write_text(json.dumps(
        {"format": 2, "parts": ["ftrl"], "offsets": {"clicks/0": 9}, "written_at_ms": 1}))
    restored = fresh()
    result = CheckpointStore(folder).restore({"ftrl": restored})
    assert result is not None and result.checkpoint.format == 2
    assert result.offsets == {"clicks/0": 9} and result.records == 9
    assert fingerprint(restored.state_dict()) == fingerprint(model.state_dict())
    newer = trained(extra=5)
    assert save_checkpoint(folder, {"ftrl": newer}).id == 1
    again = fresh()
    assert CheckpointStore(folder).restore({"ftrl": again}).checkpoint.id == 1
    assert fingerprint(again.state_dict()) == fingerprint(newer.state_dict())
    listing = describe_folder(folder)
    assert [c["format"] for c in listing["checkpoints"]] == [3, 2]
    assert (folder / "manifest.json").exists() and (folder / "ftrl.npz").exists()


def test_one_writer_per_folder(tmp_path):
    first, second = CheckpointStore(tmp_path / "ckpt"), CheckpointStore(tmp_path / "ckpt")
    first.lock()
    try:
        with pytest.raises(CheckpointError, match=f"in use by another process \\(pid "
                                                  f"{os.getpid()}\\)"):
            second.lock()
    finally:
        first.unlock()
    second.lock()
    second.unlock()


def test_describe_lists_ids_times_offsets_samples_and_fingerprints(tmp_path):
    folder = tmp_path / "ckpt"
    models = {"learner.ftrl": trained(), "engine": trained(extra=1)}
    save_checkpoint(folder, models, offsets={"clicks/0": 3, "impressions/0": 30}, records=33)
    bad = save_checkpoint(folder, models, records=34).path
    (bad / "engine.npz").unlink()
    listing = describe_folder(folder)
    assert listing["newest_valid"] == "ckpt-000000001"
    newest, valid = listing["checkpoints"]
    assert not newest["valid"] and newest["error"] == "engine.npz is missing"
    assert valid["id"] == 1 and valid["records"] == 33 and valid["written_at"].endswith("Z")
    assert valid["offsets"] == {"clicks/0": 3, "impressions/0": 30}
    assert valid["learners"] == {"ftrl": {"samples_learned": 300, "fingerprint": fingerprint(
        models["learner.ftrl"].state_dict())}}
    text = render_listing(listing)
    assert "ckpt-000000002  INVALID: engine.npz is missing" in text
    assert "clicks/0=3  impressions/0=30" in text
    assert "samples learned 300" in text and fingerprint(
        models["learner.ftrl"].state_dict())[:16] in text


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_checkpoint_show_prints_text_and_json(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, {"learner.ftrl": trained()}, offsets={"clicks/0": 3}, records=3)
    assert main(["checkpoint", "show", str(folder)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{folder}: 1 checkpoint(s), 1 valid; newest valid: ckpt-000000001")
    assert main(["checkpoint", "show", str(folder), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["checkpoints"][0]["learners"]["ftrl"]["samples_learned"] == 300


def test_checkpoint_show_of_a_folder_without_checkpoints_exits_2_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "absent"):
        done = run_cli("checkpoint", "show", str(folder))
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and "streamctr checkpoint: error:" in done.stderr
        assert "no checkpoint" in done.stderr or "no such folder" in done.stderr


def test_checkpoint_show_of_only_invalid_checkpoints_lists_them_and_exits_1(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "ckpt", {"learner.ftrl": trained()}).path
    (path / "manifest.json").write_text("[]")
    assert main(["checkpoint", "show", str(tmp_path / "ckpt")]) == 1
    captured = capsys.readouterr()
    assert "INVALID: manifest.json is not a JSON object" in captured.out
    assert "no valid checkpoint" in captured.err


def test_checkpoint_with_an_unknown_action_is_a_one_line_error(tmp_path, capsys):
    assert main(["checkpoint", "list", str(tmp_path)]) == 2
    assert "unknown action 'list'; available: show" in capsys.readouterr().err
