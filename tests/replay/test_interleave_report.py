"""``streamctr interleave``: rankers of a replay folder, simulated users, the report."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from replay.interleave_report import InterleaveConfig, run_interleave
from replay.simulation import SimulationError
from replay.synthetic import generate, write_stream
from tests.pipeline.test_cli import one_line_error

SMALL = InterleaveConfig(min_pool=20_000, draws=500)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("interleave") / "stream"
    write_stream(generate(30_000, seed=4), out)
    return out


def test_the_cli_names_the_better_oracle_with_fewer_users_by_interleaving(folder, tmp_path,
                                                                        capsys):
    report = tmp_path / "report"
    assert main(["interleave", str(folder), "--models", "oracle+3,oracle", "--report",
                 str(report), "--min-pool", "20000"]) == 0
    assert "oracle+3 vs oracle: better oracle" in capsys.readouterr().out
    doc = json.loads((report / "report.json").read_text())
    (pair,) = doc["pairs"]
    assert pair["better"] == "oracle" and pair["truth"] == 1
    assert pair["interleaving"]["ci"][0] > 0 and pair["ab"]["ci"][0] > 0
    need = pair["users_needed"]
    assert need["ratio"] > 1 and need["interleaving"] < need["ab"]
    assert doc["ground_truth"].startswith("truth.parquet")
    assert doc["pool"] >= 20_000 and doc["click_model"]["name"] == "pbm"
    # PBM's examination fitted to the log falls with the position.
    assert doc["click_model"]["examination"][0] > doc["click_model"]["examination"][-1]
    text = (report / "report.md").read_text()
    assert "| oracle+3 vs oracle | oracle |" in text
    for plot in ("p_correct.png", "win_rates.png"):
        assert (report / plot).stat().st_size > 1_000


def test_a_learner_ranks_by_its_replay_scores_and_loses_to_the_oracle(folder) -> None:
    doc = run_interleave(folder, ["ftrl", "oracle"], None, SMALL, show_progress=False)
    (pair,) = doc["pairs"]
    assert pair["better"] == "oracle"
    assert pair["interleaving"]["mean"] > 0  # interleaving agrees
    assert doc["agreement"] == 1.0


def test_a_snapshot_scores_only_the_requests_after_it_frozen(folder) -> None:
    whole = run_interleave(folder, ["oracle", "logged"], None, SMALL)
    doc = run_interleave(folder, ["ftrl@0.5", "ftrl", "oracle"], None, SMALL,
                         show_progress=False)
    assert doc["snapshot_ts"] is not None
    # About the second half of the requests, none before the snapshot.
    assert 0.35 * whole["requests"] < doc["requests"] < 0.65 * whole["requests"]
    pairs = {(p["a"], p["b"]): p for p in doc["pairs"]}
    assert pairs[("ftrl@0.5", "oracle")]["better"] == "oracle"
    # The frozen model ranks differently from the one still learning.
    live = pairs[("ftrl@0.5", "ftrl")]["interleaving"]
    assert live["wins_a"] + live["wins_b"] > 0


def test_multileaving_orders_three_rankers_and_agrees_with_ab(folder) -> None:
    cfg = InterleaveConfig(method="team-draft-multileave", min_pool=20_000, draws=500)
    doc = run_interleave(folder, ["oracle", "oracle+1", "oracle+4"], None, cfg)
    better = {(p["a"], p["b"]): p["better"] for p in doc["pairs"]}
    assert better[("oracle", "oracle+4")] == "oracle"
    assert better[("oracle+1", "oracle+4")] == "oracle+1"
    assert doc["agreement"] == 1.0 and doc["decided_pairs"] >= 2


def test_without_truth_the_fitted_click_model_gives_the_ground_truth(folder, tmp_path) -> None:
    logged = tmp_path / "logged"
    logged.mkdir()
    for name in ("impressions.parquet", "clicks.parquet"):
        (logged / name).write_bytes((folder / name).read_bytes())
    cfg = InterleaveConfig(click_model="dbn", min_pool=20_000, draws=500)
    doc = run_interleave(logged, ["oracle", "logged"], None, cfg)
    assert doc["ground_truth"].startswith("the fitted dbn's attractiveness")
    (pair,) = doc["pairs"]
    # The oracle ranks by the fitted attractiveness, which A/B under the same users rewards.
    assert pair["better"] in ("oracle", None)


@pytest.mark.parametrize(("args", "message"), [
    (["--models", "oracle"], "at least two rankers"),
    (["--models", "oracle,svm"], "unknown ranker 'svm'"),
    (["--models", "oracle,oracle+x"], "unknown ranker 'oracle+x'"),
    (["--models", "oracle,ftrl@1.5"], "fraction of the stream must be in (0, 1)"),
    (["--models", "oracle,oracle"], "at least two rankers"),  # a list's repeats are dropped
    (["--models", "oracle,logged", "--method", "coin"], "--method"),
    (["--models", "oracle,logged", "--click-model", "ubm"], "--click-model"),
    (["--models", "oracle,logged", "--k", "0"], "--k"),
    (["--models", "oracle,logged", "--ab-metric", "dwell"], "--ab-metric"),
])
def test_bad_options_are_one_line_errors(folder, tmp_path, capsys, args, message) -> None:
    assert main(["interleave", str(folder), "--report", str(tmp_path / "r"), *args]) == 2
    assert message in one_line_error(capsys)


def test_bad_config_values_raise_simulation_error(folder) -> None:
    with pytest.raises(SimulationError, match="named twice"):
        run_interleave(folder, ["oracle", "oracle"], None, SMALL)
    with pytest.raises(SimulationError, match="method"):
        InterleaveConfig(method="coin")
    with pytest.raises(SimulationError, match="repeats"):
        InterleaveConfig(repeats=0)
