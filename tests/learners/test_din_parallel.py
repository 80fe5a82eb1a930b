"""DIN's data-parallel steps (torch.distributed, Gloo on CPU here): the same model as one
process, state on rank 0 only, workers that fail loudly and never outlive the learner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from learners import DIN, LearnerError
from learners.din_parallel import DataParallelError
from tests.learners.test_din import SMALL, _interest_stream, _train

# PReLU everywhere: Dice's training statistics are each process's share of the batch.
PRELU = {**SMALL, "activation": "prelu", "admit_after": 1, "l2": 1e-3}


def _scores(model: DIN, xs) -> np.ndarray:
    return np.array([model.predict_proba_one(x) for x in xs])


def _learn_mixed(model: DIN, xs, ys) -> None:
    """Every third sample in the fnw delayed-feedback mode, the rest weighted."""
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if k % 3 == 0:
            model.learn_fnw_one(x, y)
        else:
            model.learn_one(x, y, 0.5 + (k % 5) / 4)


@pytest.mark.parametrize(("processes", "params"), [
    (2, {}),
    (3, {"wide": False, "optimizer": "adagrad"}),
])
def test_steps_split_over_processes_give_the_model_of_one_process(processes, params) -> None:
    xs, ys = _interest_stream(600, seed=5)  # 9 steps of 64, shards of 32 or 21-22
    one = DIN(**PRELU, **params)
    many = DIN(**PRELU, **params, data_parallel=processes)
    try:
        _learn_mixed(one, xs, ys)
        _learn_mixed(many, xs, ys)
        assert many.stats()["steps"] == one.stats()["steps"] == 9
        np.testing.assert_allclose(_scores(many, xs[:300]), _scores(one, xs[:300]), atol=1e-7)
        a, b = one.state_dict(), many.state_dict()
        for name, value in a["net"].items():
            np.testing.assert_allclose(b["net"][name], value, atol=1e-6, err_msg=name)
        for name, value in a["opt_embedding"].items():
            np.testing.assert_allclose(b["opt_embedding"][name], value, atol=1e-6,
                                       err_msg=name)
    finally:
        many.close()


def test_with_dice_the_running_statistics_are_averaged_over_processes() -> None:
    xs, ys = _interest_stream(64, seed=6)  # one step: two shards of 32 on the same weights
    dice = {**PRELU, "activation": "dice"}
    one, many = DIN(**dice), DIN(**dice, data_parallel=2)
    try:
        _train(one, xs, ys)
        _train(many, xs, ys)
        # The first Dice layer's input is the same in both; the mean of two equal shards'
        # means is the batch's mean, so the averaged running mean is one process's.
        name = "output_mlp:activations:0:running_mean"
        want = one.state_dict()["net"][name]
        assert np.abs(want).max() > 1e-3  # moved from its initial 0
        np.testing.assert_allclose(many.state_dict()["net"][name], want, atol=1e-7)
        # The variances (and so the scores) are each shard's: close, not equal.
        diff = np.abs(_scores(many, xs) - _scores(one, xs)).max()
        assert 0.0 < diff < 1e-3
    finally:
        many.close()


def test_a_state_learned_in_two_processes_continues_identically_in_one() -> None:
    xs, ys = _interest_stream(500, seed=7)
    many = DIN(**PRELU, data_parallel=2)
    try:
        _train(many, xs[:300], ys[:300])  # 4 steps and 44 buffered samples
        restored = DIN(**PRELU)
        restored.load_state_dict(many.state_dict())
        np.testing.assert_array_equal(_scores(restored, xs), _scores(many, xs))
        _train(many, xs[300:], ys[300:])
        _train(restored, xs[300:], ys[300:])
        np.testing.assert_allclose(_scores(restored, xs), _scores(many, xs), atol=1e-7)
    finally:
        many.close()


def test_a_dead_worker_fails_the_step_with_data_parallel_error_not_bad_input() -> None:
    xs, ys = _interest_stream(200, seed=8)
    model = DIN(**PRELU, data_parallel=2)
    try:
        _train(model, xs[:64], ys[:64])  # the first step starts the worker
        worker = model._step_group._workers[0]
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        with pytest.raises(DataParallelError, match="exited with -9") as raised:
            _train(model, xs[64:128], ys[64:128])
        # Not LearnerError, which the service routes to the dead-letter queue as one bad
        # sample: the step is half applied and the process must recover from a checkpoint.
        assert not isinstance(raised.value, LearnerError)
    finally:
        model.close()


def test_close_stops_the_workers_and_a_later_step_starts_new_ones() -> None:
    xs, ys = _interest_stream(200, seed=9)
    model = DIN(**PRELU, data_parallel=2)
    _train(model, xs[:64], ys[:64])
    first = model._step_group._workers[0]
    model.close()
    assert first.wait(10) == 0
    _train(model, xs[64:128], ys[64:128])
    assert model.stats()["steps"] == 2
    second = model._step_group._workers[0]
    assert second.pid != first.pid and second.poll() is None
    model.close()
    assert second.wait(10) == 0


def test_workers_exit_when_the_learner_process_is_killed() -> None:
    script = textwrap.dedent("""
        import sys, time
        from learners import DIN
        from tests.learners.test_din import _interest_stream, _train
        from tests.learners.test_din_parallel import PRELU
        xs, ys = _interest_stream(64, seed=10)
        model = DIN(**PRELU, data_parallel=2)
        _train(model, xs, ys)
        print(model._step_group._workers[0].pid, flush=True)
        time.sleep(600)
    """)
    learner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               text=True, cwd=os.getcwd(),
                               env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        worker = int(learner.stdout.readline())
    finally:
        learner.kill()
        learner.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    pytest.fail(f"worker {worker} outlived its killed learner by 20 s")


@pytest.mark.parametrize(("params", "match"), [
    ({"data_parallel": 0}, "data_parallel"),
    ({"data_parallel": 65}, "must not exceed batch_size"),
    ({"data_parallel": 2.5}, "data_parallel"),
])
def test_bad_data_parallel_raises_learner_error(params, match) -> None:
    with pytest.raises(LearnerError, match=match):
        DIN(**{**PRELU, **params})


def _gradient_workers() -> list[int]:
    """Pids of this process's children that are DIN gradient workers."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rpartition(")")[2].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue  # exited meanwhile
        if parent == os.getpid() and b"learners.din_parallel import main" in command:
            found.append(int(entry))
    return found


def test_a_replay_with_data_parallel_din_scores_as_one_process_and_stops_its_workers(
        tmp_path) -> None:
    from replay.run import run_replay
    from replay.synthetic import generate, write_stream

    write_stream(generate(6_000, seed=3), tmp_path / "stream")
    small = {k: v for k, v in PRELU.items() if k != "device"}
    results = {
        n: run_replay(tmp_path / "stream", ["din"], None, show_progress=False,
                      learner_params={"din": {**small, "data_parallel": n}})
        for n in (1, 2)}
    assert _gradient_workers() == []
    one, two = (results[n].outcomes["score_din"].to_numpy() for n in (1, 2))
    assert len(one) == len(two) > 1_000
    np.testing.assert_allclose(two, one, atol=1e-6)


def test_a_worker_that_cannot_start_is_reported_with_what_it_said() -> None:
    import torch

    from learners.din_parallel import StepGroup

    network = {"embedding_dim": 4, "n_context": 0, "n_dense": 0, "attention_hidden": [4],
               "mlp_hidden": [4], "activation": "prelu"}
    started = time.monotonic()
    with pytest.raises(DataParallelError, match="did not start") as raised:
        # The worker reads its thread count before it joins the group: a bad one stops it.
        StepGroup([torch.device("cpu")] * 2, network, 16, 5, 3, cpu_threads="x",
                  timeout_s=6.0)
    assert "exited with 1" in str(raised.value) and "ValueError" in str(raised.value)
    assert time.monotonic() - started < 30
