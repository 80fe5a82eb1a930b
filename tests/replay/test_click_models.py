"""Click models (replay.click_models): fits recover the parameters they simulated with, EM
never loses likelihood, the E-step and likelihood agree with brute-force enumeration over
the hidden states, simulation matches the models' probabilities, state survives a
``numpy.savez`` round trip, and the fits on the Yandex WSCD slice (skipped when
``../shared/datasets`` is absent) look like the literature's.

Tolerances come from the sample size: a binomial standard error ``sqrt(p (1 - p) / m)``
over the ``m`` examinations (or last clicks) that inform a parameter, times a factor
that leaves room for the variance EM adds by inferring hidden states.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from replay.click_models import (
    PROB_MIN,
    CascadeModel,
    ClickModel,
    ClickModelError,
    ClickSessions,
    DynamicBayesianNetwork,
    PositionBasedModel,
    yandex_sessions,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
YANDEX_TRAIN = SHARED / "yandex_wscd_train.txt"
YANDEX_TEST = SHARED / "yandex_wscd_test.txt"

N, K, QUERIES, DOCS = 50_000, 10, 3, 10  # 30 (query, doc) pairs, each shown ~16,700 times
PBM_GAMMA = 1.0 / (1.0 + 0.35 * np.arange(K))
DBN_GAMMA = 0.8


# --------------------------------------------------------------------------------------------
# A synthetic world with known parameters: every page shows all 10 docs of its query in a
# random order, so positions and docs are not confounded.


class World:
    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.query_of_page = rng.integers(0, QUERIES, N)
        self.slot = rng.permuted(np.tile(np.arange(DOCS), (N, 1)), axis=1)
        self.alpha = rng.uniform(0.1, 0.9, (QUERIES, DOCS))  # truth per (query, slot)
        self.sigma = rng.uniform(0.1, 0.9, (QUERIES, DOCS))
        self.queries = 1000 + 7 * self.query_of_page  # ids need not be dense
        self.docs = 100 * self.query_of_page[:, None] + self.slot + 5
        self.A = self.alpha[self.query_of_page[:, None], self.slot]  # (N, K) truth per position
        self.S = self.sigma[self.query_of_page[:, None], self.slot]
        self.pair = self.query_of_page[:, None] * DOCS + self.slot  # (N, K) pair number

    def sessions(self, clicks: np.ndarray) -> ClickSessions:
        return ClickSessions(self.queries, self.docs, clicks)

    def truth_of(self, model: ClickModel, table: np.ndarray) -> np.ndarray:
        """The true value of ``table`` for each of the model's fitted pairs, in its order."""
        p = model.params()
        q = (p["query"] - 1000) // 7
        return table[q, p["doc"] - 100 * q - 5]

    def pair_counts(self, model: ClickModel, mask: np.ndarray,
                    weights: np.ndarray | None = None) -> np.ndarray:
        """Per fitted pair, the number (or weight) of positions where ``mask`` holds."""
        w = None if weights is None else weights[mask]
        counts = np.bincount(self.pair[mask], w, QUERIES * DOCS)
        p = model.params()
        q = (p["query"] - 1000) // 7
        return counts[q * DOCS + p["doc"] - 100 * q - 5]


def with_params(model: ClickModel, **arrays: object) -> ClickModel:
    """A copy of a fitted ``model`` whose state entries are replaced by ``arrays``."""
    state = model.state_dict()
    state.update(arrays)
    return type(model).from_state_dict(state)


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def pbm_case(world: World):
    clicks = PositionBasedModel().simulate(world.A, world.rng, gamma=PBM_GAMMA)
    sessions = world.sessions(clicks)
    return sessions, PositionBasedModel().fit(sessions)


@pytest.fixture(scope="module")
def cascade_case(world: World):
    sessions = world.sessions(CascadeModel().simulate(world.A, world.rng))
    return sessions, CascadeModel().fit(sessions)


@pytest.fixture(scope="module")
def dbn_case(world: World):
    clicks = DynamicBayesianNetwork().simulate(world.A, world.rng, satisfaction=world.S,
                                               gamma=DBN_GAMMA)
    sessions = world.sessions(clicks)
    return sessions, DynamicBayesianNetwork().fit(sessions)


@pytest.fixture(scope="module")
def true_models(world: World, pbm_case, cascade_case, dbn_case):
    """Each kind of model with exactly the true parameters, and the sessions it simulated."""
    pbm, cascade, dbn = pbm_case[1], cascade_case[1], dbn_case[1]
    return {
        "pbm": (pbm_case[0], with_params(pbm, alpha=world.truth_of(pbm, world.alpha),
                                         gamma=PBM_GAMMA.copy())),
        "cascade": (cascade_case[0],
                    with_params(cascade, alpha=world.truth_of(cascade, world.alpha))),
        "dbn": (dbn_case[0], with_params(dbn, alpha=world.truth_of(dbn, world.alpha),
                                         sigma=world.truth_of(dbn, world.sigma),
                                         gamma_value=DBN_GAMMA)),
    }


# --------------------------------------------------------------------------------------------
# Fits recover what they simulated


def test_pbm_fit_recovers_position_bias_and_click_probabilities(world, pbm_case):
    _, model = pbm_case
    # Only the products γ_r α_qd are identified (a common scale is free): compare them, and
    # γ_r / γ_1. Each (position, pair) cell is seen ~N / 30 times; its CTR's standard error
    # bounds that of the fitted product, which pools all cells.
    alpha = world.truth_of(model, world.alpha)
    fitted = model.gamma_[:, None] * model.params()["attractiveness"][None, :]
    cell_se = math.sqrt(0.25 / (N / (QUERIES * DOCS)))
    assert np.abs(fitted - PBM_GAMMA[:, None] * alpha[None, :]).max() < 4 * cell_se
    ratio_se = 0.5 / math.sqrt(N * world.alpha.mean())  # γ_r from N pages, ~mean α of clicks
    assert np.abs(model.gamma_ / model.gamma_[0] - PBM_GAMMA).max() < 8 * ratio_se
    assert model.converged_


def test_cascade_fit_recovers_attractiveness(world, cascade_case):
    sessions, model = cascade_case
    clicks = sessions.clicks
    examined = (np.cumsum(clicks, axis=1) - clicks) == 0  # at or above the first click
    m = world.pair_counts(model, examined)
    alpha = world.truth_of(model, world.alpha)
    se = np.sqrt(alpha * (1 - alpha) / m)
    assert np.all(np.abs(model.params()["attractiveness"] - alpha) < 5 * se)


def test_dbn_fit_recovers_attractiveness_satisfaction_and_continuation(world, dbn_case):
    sessions, model = dbn_case
    truth = DynamicBayesianNetwork(gamma=DBN_GAMMA)
    examined = truth.examination_probabilities(world.A, world.S)  # expected examinations
    p = model.params()
    alpha = world.truth_of(model, world.alpha)
    m_alpha = world.pair_counts(model, np.ones_like(examined, bool), examined)
    assert np.all(np.abs(p["attractiveness"] - alpha) < 5 * np.sqrt(alpha * (1 - alpha)
                                                                     / m_alpha))
    # σ is learned from a page's last click only (an earlier click did not satisfy).
    clicks = sessions.clicks
    last = clicks & (np.cumsum(clicks[:, ::-1], axis=1)[:, ::-1] == 1)
    sigma = world.truth_of(model, world.sigma)
    m_sigma = world.pair_counts(model, last)
    assert np.all(np.abs(p["satisfaction"] - sigma) < 6 * np.sqrt(sigma * (1 - sigma)
                                                                  / m_sigma))
    # ~150K examined transitions: a standard error near 0.001, inflated by hidden states.
    assert model.gamma_ == pytest.approx(DBN_GAMMA, abs=0.02)


def test_dbn_with_fixed_continuation_keeps_it(dbn_case):
    sessions, _ = dbn_case
    model = DynamicBayesianNetwork(gamma=0.6, iterations=5).fit(sessions[:5_000])
    assert model.gamma_ == 0.6
    assert model.state_dict()["gamma_value"] == 0.6


# --------------------------------------------------------------------------------------------
# EM and the likelihood


@pytest.mark.parametrize("kind", ["pbm", "dbn"])
def test_em_objective_never_decreases(kind, pbm_case, dbn_case):
    _, model = {"pbm": pbm_case, "dbn": dbn_case}[kind]
    history = np.array(model.history_)
    assert len(history) >= 5 and model.n_iter_ == len(history) - 1
    assert np.diff(history).min() >= -1e-12
    assert history[-1] > history[0] + 0.1


def test_em_without_pseudo_counts_climbs_the_log_likelihood_itself(pbm_case, dbn_case):
    for sessions, kind in ((pbm_case[0][:5_000], PositionBasedModel),
                           (dbn_case[0][:5_000], DynamicBayesianNetwork)):
        model = kind(pseudo_counts=(0, 0), iterations=30).fit(sessions)
        assert np.diff(model.history_).min() >= -1e-12
        assert model.history_[-1] == pytest.approx(model.log_likelihood(sessions), rel=1e-9)


def test_em_stops_after_the_given_iterations(dbn_case):
    model = DynamicBayesianNetwork(iterations=3, tol=0.0).fit(dbn_case[0][:2_000])
    assert (model.n_iter_, len(model.history_), model.converged_) == (3, 4, False)


def _dbn_brute_force(clicks, docs, alpha, sigma, gamma):
    """Enumerate attraction, satisfaction and continuation of every position: the session
    log-likelihood and the expected counts of one EM step (per doc, and for γ)."""
    k = clicks.shape[1]
    ll, ea, es, moved, chances = 0.0, np.zeros_like(alpha), np.zeros_like(sigma), 0.0, 0.0
    for c, d in zip(clicks, docs, strict=True):
        total, pa, ps, pm, pc = 0.0, np.zeros(k), np.zeros(k), 0.0, 0.0
        for hidden in itertools.product([0, 1], repeat=3 * k):
            att, sat, cont = hidden[:k], hidden[k:2 * k], hidden[2 * k:]
            w, exam, shown, m, ch = 1.0, True, [], 0, 0
            for r in range(k):
                w *= alpha[d[r]] if att[r] else 1 - alpha[d[r]]
                w *= sigma[d[r]] if sat[r] else 1 - sigma[d[r]]
                w *= gamma if cont[r] else 1 - gamma
                click = exam and bool(att[r])
                shown.append(click)
                stop = click and bool(sat[r])
                if r < k - 1 and exam and not stop:
                    ch += 1
                    m += cont[r]
                exam = exam and not stop and bool(cont[r])
            if shown != list(c):
                continue
            total += w
            pa += w * np.array(att)
            ps += w * np.array(sat) * c
            pm, pc = pm + w * m, pc + w * ch
        ll += math.log(total)
        np.add.at(ea, d, pa / total)
        np.add.at(es, d, ps / total)
        moved, chances = moved + pm / total, chances + pc / total
    return ll / len(clicks), ea, es, moved, chances


def test_dbn_likelihood_and_em_step_equal_brute_force_enumeration():
    rng = np.random.default_rng(5)
    n, k, n_docs = 14, 3, 4
    docs = np.array([rng.choice(n_docs, k, replace=False) for _ in range(n)])
    clicks = rng.random((n, k)) < 0.4
    clicks[0] = [True, True, True]
    clicks[1] = [False, False, False]
    sessions = ClickSessions(np.zeros(n, np.int64), docs, clicks)
    # Two EM steps from 0.5 everywhere (the documented start), pseudo-counts (1, 1).
    alpha, sigma, gamma = np.full(n_docs, 0.5), np.full(n_docs, 0.5), 0.5
    shown = np.bincount(docs.ravel(), minlength=n_docs)
    clicked = np.bincount(docs[clicks], minlength=n_docs)
    for _ in range(2):
        _, ea, es, moved, chances = _dbn_brute_force(clicks, docs, alpha, sigma, gamma)
        alpha, sigma = (ea + 1) / (shown + 2), (es + 1) / (clicked + 2)
        gamma = (moved + 1) / (chances + 2)
    model = DynamicBayesianNetwork(iterations=2, tol=0.0).fit(sessions)
    p = model.params()
    np.testing.assert_allclose(p["attractiveness"], alpha[p["doc"]], rtol=1e-12)
    np.testing.assert_allclose(p["satisfaction"], sigma[p["doc"]], rtol=1e-12)
    assert model.gamma_ == pytest.approx(gamma, rel=1e-12)
    ll, *_ = _dbn_brute_force(clicks, docs, alpha, sigma, gamma)
    assert model.log_likelihood(sessions) == pytest.approx(ll, rel=1e-12)


def test_pbm_and_cascade_likelihoods_have_their_closed_forms():
    sessions = ClickSessions([1, 1, 1], [[0, 1, 2], [2, 1, 0], [1, 0, 2]],
                             [[0, 1, 0], [0, 0, 0], [1, 0, 1]])
    pbm = PositionBasedModel(iterations=4).fit(sessions)
    a, g = pbm.attractiveness(sessions), pbm.gamma_
    p = g * a
    expect = np.log(np.where(sessions.clicks, p, 1 - p)).sum(axis=1).mean()
    assert pbm.log_likelihood(sessions) == pytest.approx(expect, rel=1e-12)
    cascade = CascadeModel().fit(sessions)
    a = cascade.attractiveness(sessions)
    # page 3 clicks twice: its second click is impossible for a cascade (floored), and the
    # position between the two clicks is below the first click, so certain to be skipped
    per_page = [math.log(1 - a[0, 0]) + math.log(a[0, 1]),
                math.log((1 - a[1]).prod()),
                math.log(a[2, 0]) + math.log(PROB_MIN)]
    assert cascade.log_likelihood(sessions) == pytest.approx(np.mean(per_page), rel=1e-12)


# --------------------------------------------------------------------------------------------
# Perplexity


@pytest.mark.parametrize("kind", ["pbm", "cascade", "dbn"])
def test_perplexity_is_at_least_one_and_lower_for_the_true_model(kind, true_models):
    sessions, truth = true_models[kind]
    wrong = with_params(truth, alpha=np.random.default_rng(3).permutation(
        truth.params()["attractiveness"]))
    pp_true, pp_wrong = truth.perplexity(sessions), wrong.perplexity(sessions)
    assert pp_true.shape == (K,)
    assert np.all(pp_true >= 1.0) and np.all(pp_true < 2.0)
    assert pp_true.mean() < pp_wrong.mean() - 0.01
    assert truth.log_likelihood(sessions) > wrong.log_likelihood(sessions)


def test_pbm_perplexity_is_the_same_conditional_or_not(pbm_case):
    sessions, model = pbm_case
    np.testing.assert_array_equal(model.perplexity(sessions),
                                  model.perplexity(sessions, conditional=True))


def test_dbn_conditional_perplexity_uses_the_clicks_above(dbn_case):
    sessions, model = dbn_case
    # Knowing the clicks above can only help a correct model: lower perplexity below the top.
    marginal, conditional = model.perplexity(sessions), model.perplexity(sessions,
                                                                         conditional=True)
    assert marginal[0] == pytest.approx(conditional[0], rel=1e-12)
    assert np.all(conditional[1:] < marginal[1:])


# --------------------------------------------------------------------------------------------
# Simulation


def test_cascade_never_simulates_two_clicks_and_stops_at_the_first_attraction():
    a = np.full((40_000, K), 0.5)
    clicks = CascadeModel().simulate(a, np.random.default_rng(1))
    assert clicks.sum(axis=1).max() == 1
    first = 0.5 ** np.arange(1, K + 1)  # P(first click at r) = α (1 - α)^(r - 1)
    se = np.sqrt(first * (1 - first) / len(a))
    assert np.all(np.abs(clicks.mean(axis=0) - first) < 5 * se)


def test_pbm_simulated_click_rate_is_gamma_times_attractiveness():
    rng = np.random.default_rng(2)
    alpha = np.linspace(0.9, 0.2, K)
    a = np.tile(alpha, (40_000, 1))
    clicks = PositionBasedModel().simulate(a, rng, gamma=PBM_GAMMA)
    p = PBM_GAMMA * alpha
    assert np.all(np.abs(clicks.mean(axis=0) - p) < 5 * np.sqrt(p * (1 - p) / len(a)))


@pytest.mark.parametrize("kind", ["pbm", "cascade", "dbn"])
def test_simulated_click_rates_match_the_marginal_click_probabilities(kind, true_models):
    sessions, truth = true_models[kind]
    p = truth.click_probabilities(sessions).mean(axis=0)
    rate = sessions.clicks.mean(axis=0)  # simulated from these very parameters
    assert np.all(np.abs(rate - p) < 5 * np.sqrt(p * (1 - p) / len(sessions)))


def test_dbn_satisfaction_defaults_to_the_attractiveness_when_simulating():
    a = np.random.default_rng(0).uniform(0.1, 0.9, (20_000, K))
    model = DynamicBayesianNetwork(gamma=0.9)  # a fixed γ needs no fit to simulate
    same = model.simulate(a, np.random.default_rng(7))
    explicit = model.simulate(a, np.random.default_rng(7), satisfaction=a)
    np.testing.assert_array_equal(same, explicit)
    # γ = 1 and σ = 1 is the cascade model
    assert model.simulate(a, 3, satisfaction=1.0, gamma=1.0).sum(axis=1).max() == 1
    np.testing.assert_allclose(
        DynamicBayesianNetwork(gamma=1.0).examination_probabilities(a, satisfaction=1.0),
        CascadeModel().examination_probabilities(a))


def test_simulation_is_reproducible_from_a_seed(pbm_case):
    _, model = pbm_case
    a = np.full((100, K), 0.5)
    np.testing.assert_array_equal(model.simulate(a, 11), model.simulate(a, 11))


# --------------------------------------------------------------------------------------------
# Parameters, unseen pairs, examination


def test_unseen_pairs_get_the_documented_defaults(dbn_case, world):
    sessions, model = dbn_case
    pages = (np.array([1000, 424242]), np.array([[5, 999_999], [5, 6]]))  # unknown doc, query
    a = model.attractiveness(pages)
    assert a[0, 0] == model.attractiveness(sessions)[sessions.docs == 5][0]
    assert a[0, 1] == a[1, 0] == a[1, 1] == model.default_attractiveness_
    assert model.default_attractiveness_ == pytest.approx(
        model.attractiveness(sessions).mean(), rel=1e-12)  # impression-weighted mean α
    s = model.satisfaction(pages)
    clicked = model.satisfaction(sessions)[sessions.clicks]
    assert s[1, 1] == model.default_satisfaction_ == pytest.approx(clicked.mean(), rel=1e-12)
    fixed = DynamicBayesianNetwork(iterations=2, default_attractiveness=0.05,
                                   default_satisfaction=0.3).fit(sessions[:1_000])
    assert fixed.attractiveness(pages)[1, 1] == 0.05 and fixed.satisfaction(pages)[1, 1] == 0.3


def test_examination_probabilities(pbm_case, cascade_case, dbn_case):
    pbm, cascade, dbn = pbm_case[1], cascade_case[1], dbn_case[1]
    np.testing.assert_array_equal(pbm.examination_probabilities(), pbm.gamma_)
    a = np.full((2, K), 0.3)
    assert pbm.examination_probabilities(a).shape == (2, K)
    sessions = cascade_case[0]
    expect = np.cumprod(np.hstack([np.ones((len(sessions), 1)),
                                   1 - cascade.attractiveness(sessions)[:, :-1]]), axis=1)
    np.testing.assert_allclose(cascade.examination_probabilities(), expect.mean(axis=0))
    exam = dbn.examination_probabilities()
    assert exam[0] == 1.0 and np.all(np.diff(exam) < 0)
    # per page: click probability = examination × attractiveness; averaged: examination_
    s = dbn_case[0]
    a = dbn.attractiveness(s)
    per_page = dbn.examination_probabilities(a, dbn.satisfaction(s))
    np.testing.assert_allclose(dbn.click_probabilities(s), per_page * a, rtol=1e-12)
    np.testing.assert_allclose(per_page.mean(axis=0), exam, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# State


@pytest.mark.parametrize("kind", ["pbm", "cascade", "dbn"])
def test_state_dict_round_trip_through_npz_gives_identical_probabilities(
        kind, pbm_case, cascade_case, dbn_case, tmp_path):
    sessions, model = {"pbm": pbm_case, "cascade": cascade_case, "dbn": dbn_case}[kind]
    np.savez(tmp_path / "state.npz", **model.state_dict())
    with np.load(tmp_path / "state.npz", allow_pickle=False) as f:
        state = dict(f)
    loaded = type(model).from_state_dict(state)
    some = sessions[:2_000]
    np.testing.assert_array_equal(loaded.click_probabilities(some),
                                  model.click_probabilities(some))
    np.testing.assert_array_equal(loaded.conditional_click_probabilities(some),
                                  model.conditional_click_probabilities(some))
    np.testing.assert_array_equal(loaded.examination_probabilities(),
                                  model.examination_probabilities())
    assert loaded.log_likelihood(some) == model.log_likelihood(some)
    assert loaded.history_ == model.history_ and loaded.n_iter_ == model.n_iter_
    a = model.attractiveness(some)
    np.testing.assert_array_equal(loaded.simulate(a, 4), model.simulate(a, 4))
    fresh = type(model)()  # load_state_dict into a model with the same hyper-parameters
    fresh.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(fresh.click_probabilities(some), model.click_probabilities(some))


@pytest.mark.parametrize("change, message", [
    ({"format": "streamctr.learners.ftrl"}, "format"),
    ({"version": 99}, "version"),
    ({"pseudo_counts": np.array([2.0, 2.0])}, "pseudo_counts"),
    ({"alpha": np.array([0.5])}, "shape"),
    ({"alpha": "x"}, "alpha"),
    ({"gamma_value": 1.5}, "gamma_value"),
    ({"sigma": None}, "sigma"),
    ({"queries": None}, "queries"),
])
def test_load_state_dict_refuses_a_foreign_or_broken_state(change, message, dbn_case):
    _, model = dbn_case
    state = model.state_dict()
    state.update(change)
    target = DynamicBayesianNetwork().fit(dbn_case[0][:500])
    before = target.state_dict()
    with pytest.raises(ClickModelError, match=message):
        target.load_state_dict(state)
    np.testing.assert_array_equal(target.state_dict()["alpha"], before["alpha"])


def test_load_state_dict_refuses_a_missing_key_and_another_model(pbm_case, dbn_case):
    state = pbm_case[1].state_dict()
    del state["gamma"]
    with pytest.raises(ClickModelError, match="lacks gamma"):
        PositionBasedModel().load_state_dict(state)
    with pytest.raises(ClickModelError, match="format"):
        PositionBasedModel.from_state_dict(
            {**dbn_case[1].state_dict(), "iterations": 200, "tol": 1e-7})


# --------------------------------------------------------------------------------------------
# Sessions and bad input


def test_sessions_are_read_only_copies_and_can_be_indexed():
    clicks = np.array([[1, 0], [0, 1], [0, 0]])
    s = ClickSessions(np.array([1, 2, 3], np.uint32), [[4, 5], [5, 4], [4, 6]], clicks)
    clicks[0, 0] = 0
    assert s.clicks[0, 0] and s.clicks.dtype == np.bool_ and s.docs.dtype == np.int64
    with pytest.raises(ValueError):
        s.docs[0, 0] = 9
    assert len(s[[0, 2]]) == 2 and s[1].docs.tolist() == [[5, 4]]
    assert s[np.array([False, True, True])].queries.tolist() == [2, 3]


PAGES_1 = ([1], [[1, 2]])


@pytest.mark.parametrize("call, message", [
    (lambda: ClickSessions([[1]], [[1]], [[0]]), "queries must be 1-dimensional"),
    (lambda: ClickSessions([1], [1], [0]), "docs must be 2-dimensional"),
    (lambda: ClickSessions([1, 2], [[1, 2]], [[0, 0]]), "docs has 1 pages, queries has 2"),
    (lambda: ClickSessions([1], np.zeros((1, 0), int), np.zeros((1, 0))), "K >= 1"),
    (lambda: ClickSessions(np.zeros(0, int), np.zeros((0, 3), int), np.zeros((0, 3))),
     "no pages"),
    (lambda: ClickSessions([1.5], [[1, 2]], [[0, 0]]), "integer ids"),
    (lambda: ClickSessions([1], [["a", "b"]], [[0, 0]]), "integer ids"),
    (lambda: ClickSessions([1], [[1, 2]], [[0, 0, 0]]), "shape of docs"),
    (lambda: ClickSessions([1], [[1, 2]], [[0, 0.5]]), "0 or 1"),
    (lambda: ClickSessions([1], [[1, 2]], [["y", "n"]]), "bool or 0/1"),
    (lambda: ClickSessions([1], [[1, 2]], [[0, 0]])[5], "bad page index"),
    (lambda: PositionBasedModel(iterations=0), "iterations"),
    (lambda: DynamicBayesianNetwork(iterations=2.5), "iterations"),
    (lambda: PositionBasedModel(tol=-1), "tol"),
    (lambda: CascadeModel(pseudo_counts=(-1, 1)), "pseudo_counts"),
    (lambda: CascadeModel(pseudo_counts=(1,)), "pseudo_counts"),
    (lambda: DynamicBayesianNetwork(gamma=1.2), "gamma"),
    (lambda: CascadeModel(default_attractiveness=2), "default_attractiveness"),
    (lambda: PositionBasedModel().fit("pages"), "sessions must be ClickSessions"),
    (lambda: PositionBasedModel().attractiveness(PAGES_1), "not fitted"),
    (lambda: DynamicBayesianNetwork().state_dict(), "not fitted"),
    (lambda: PositionBasedModel().simulate([[0.5]], 0), "not fitted"),
    (lambda: DynamicBayesianNetwork().simulate([[0.5]], 0), "not fitted"),
    (lambda: CascadeModel().simulate([[1.5, 0.2]], 0), r"in \[0, 1\]"),
    (lambda: CascadeModel().simulate([[np.nan, 0.2]], 0), "finite"),
    (lambda: CascadeModel().simulate([0.5, 0.2], 0), "2-dimensional"),
    (lambda: CascadeModel().simulate(np.zeros((3, 0)), 0), "at least one position"),
    (lambda: CascadeModel().simulate([["a"]], 0), "numeric"),
    (lambda: CascadeModel().simulate([[0.5]], "seed"), "rng"),
    (lambda: PositionBasedModel().simulate([[0.5, 0.5]], 0, gamma=[0.9]), "2 positions"),
    (lambda: PositionBasedModel().simulate([[0.5]], 0, gamma=[1.1]), "gamma"),
    (lambda: DynamicBayesianNetwork().simulate([[0.5, 0.5]], 0, gamma=0.5,
                                               satisfaction=[[0.1, 0.2, 0.3]]), "shaped"),
    (lambda: DynamicBayesianNetwork().simulate([[0.5]], 0, gamma=2), "gamma"),
    (lambda: CascadeModel().fit(ClickSessions(*PAGES_1, [[1, 0]])).attractiveness([1, 2]),
     "pages must be ClickSessions or a"),
    (lambda: CascadeModel().fit(ClickSessions(*PAGES_1, [[1, 0]])).attractiveness(
        ([1, 2], [[1, 2]])), "docs has 1 pages, queries has 2"),
    (lambda: PositionBasedModel().fit(ClickSessions(*PAGES_1, [[1, 0]])).click_probabilities(
        ([1], [[1, 2, 3]])), "pages have 3 positions, the model examines 2"),
    (lambda: CascadeModel().load_state_dict([1, 2]), "must be a mapping"),
])
def test_bad_input_raises_click_model_error(call, message):
    with pytest.raises(ClickModelError, match=message):
        call()


def test_click_model_error_is_a_value_error():
    assert issubclass(ClickModelError, ValueError)


# --------------------------------------------------------------------------------------------
# The Yandex WSCD slice

needs_yandex = pytest.mark.skipif(
    not (YANDEX_TRAIN.is_file() and YANDEX_TEST.is_file()),
    reason=f"no Yandex WSCD slice at {SHARED} (a fresh clone has no ../shared)")


@pytest.fixture(scope="module")
def yandex():
    train, test = yandex_sessions(YANDEX_TRAIN), yandex_sessions(YANDEX_TEST)
    models = {"pbm": PositionBasedModel(), "cascade": CascadeModel(),
              "dbn": DynamicBayesianNetwork()}
    for model in models.values():
        model.fit(train)
    return train, test, models


@needs_yandex
def test_yandex_sessions_hold_every_page_and_click(yandex):
    from features.importers import yandex as importer

    train, _, _ = yandex
    assert (len(train), train.n_positions) == (35_064, 10)
    assert train.clicks.sum() == importer.load(YANDEX_TRAIN).clicks.height
    first = YANDEX_TRAIN.read_text().split(";")[0]  # 98435_1<TAB>232429,688835,... : ...
    query, rest = first.split("\t")
    assert train.queries[0] == int(query.split("_")[0])
    assert train.docs[0].tolist() == [int(u) for u in rest.split(":")[0].split(",")]
    clicked = {int(u) for u in rest.split(":")[1].split(",") if u.strip()}
    assert set(train.docs[0][train.clicks[0]].tolist()) == clicked


@needs_yandex
def test_yandex_fits_look_like_the_literature(yandex):
    _, test, models = yandex
    gamma = models["pbm"].gamma_
    assert gamma[0] > gamma[-1] and (np.diff(gamma) < 0).sum() >= 7  # mostly decreasing
    for name, model in models.items():
        pp = model.perplexity(test)
        assert np.all(np.isfinite(pp)) and np.all(pp > 1.0), name
        assert 1.3 < pp.mean() < 1.6, (name, pp.mean())  # literature: ~1.3-1.6
    pp = {name: model.perplexity(test).mean() for name, model in models.items()}
    assert pp["cascade"] > max(pp["pbm"], pp["dbn"])  # one click per page is a poor fit
    assert models["dbn"].log_likelihood(test) > models["cascade"].log_likelihood(test)
