from __future__ import annotations

import json

import numpy as np
import pytest

from learners import FTRLProximal
from pipeline.checkpoint import CheckpointError, has_checkpoint, load_checkpoint, save_checkpoint

X = [{"bias": 1.0, f"user=u{i % 7}": 1.0, f"item=i{i % 11}": 1.0} for i in range(300)]


def trained() -> FTRLProximal:
    model = FTRLProximal(n_bits=12)
    for i, x in enumerate(X):
        model.learn_one(x, int(i % 5 == 0))
    return model


def test_restored_learner_makes_identical_next_predictions(tmp_path):
    model = trained()
    save_checkpoint(tmp_path / "ckpt", {"ftrl": model})
    assert has_checkpoint(tmp_path / "ckpt")
    restored = FTRLProximal(n_bits=12)
    load_checkpoint(tmp_path / "ckpt", {"ftrl": restored})
    for x in X[:50]:
        assert restored.predict_proba_one(x) == model.predict_proba_one(x)
        restored.learn_one(x, 1)
        model.learn_one(x, 1)


def test_saving_again_replaces_the_checkpoint_and_leaves_no_staging(tmp_path):
    first, second = trained(), trained()
    second.learn_one(X[0], 1)
    save_checkpoint(tmp_path / "ckpt", {"ftrl": first})
    save_checkpoint(tmp_path / "ckpt", {"ftrl": second})
    restored = FTRLProximal(n_bits=12)
    load_checkpoint(tmp_path / "ckpt", {"ftrl": restored})
    assert np.array_equal(restored.state_dict()["z"], second.state_dict()["z"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_checkpoint_without_the_asked_learner_is_refused(tmp_path):
    save_checkpoint(tmp_path / "ckpt", {"ftrl": trained()})
    with pytest.raises(CheckpointError, match="no state for other"):
        load_checkpoint(tmp_path / "ckpt", {"ftrl": FTRLProximal(n_bits=12), "other":
                                          FTRLProximal(n_bits=12)})


def test_checkpoint_of_another_format_version_is_refused(tmp_path):
    save_checkpoint(tmp_path / "ckpt", {"ftrl": trained()})
    manifest = tmp_path / "ckpt" / "manifest.json"
    manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), format=99)))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "ckpt", {"ftrl": FTRLProximal(n_bits=12)})


def test_unreadable_manifest_is_a_checkpoint_error(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "manifest.json").write_text("{half")
    with pytest.raises(CheckpointError, match="unreadable manifest"):
        load_checkpoint(tmp_path / "ckpt", {"ftrl": FTRLProximal(n_bits=12)})


def test_offsets_travel_with_the_state(tmp_path):
    save_checkpoint(tmp_path / "ckpt", {"ftrl": trained()}, offsets={"impressions/0": 42})
    assert load_checkpoint(tmp_path / "ckpt", {"ftrl": FTRLProximal(n_bits=12)}) == {
        "impressions/0": 42}


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
    for i, x in enumerate(X):
        assert restored.predict_proba_one(x) == model.predict_proba_one(x)
        restored.learn_one(x, int(i % 3 == 0))
        model.learn_one(x, int(i % 3 == 0))
    assert restored.n_skipped == model.n_skipped > 0
