"""Interleaving and A/B simulation: requests, rankers, experiments and their statistics."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from replay.click_models import CascadeModel
from replay.interleaving import team_draft
from replay.simulation import (
    ABPool,
    Requests,
    SimulationError,
    aa_false_positive_rate,
    ab_test,
    noisy_oracle,
    p_correct,
    rankings,
    sequential_sign_test,
    sign_test,
    simulate_ab,
    simulate_interleaving,
    stream_requests,
    users_needed,
)
from replay.synthetic import SyntheticConfig, generate

GAMMA = 1.0 / (1.0 + np.arange(10)) ** 0.7


class _Examination:
    """A position-based user with fixed examination probabilities (no fit needed)."""

    def simulate(self, attractiveness: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.random(attractiveness.shape) < GAMMA[:attractiveness.shape[1]] * attractiveness


@pytest.fixture(scope="module")
def requests() -> Requests:
    return stream_requests(generate(220_000, seed=11))


def test_stream_requests_carry_the_true_relevance_of_each_shown_item_in_order() -> None:
    cfg = SyntheticConfig()
    stream = generate(5_000, seed=3)
    req = stream_requests(stream)
    first = (stream.impressions.unique("impression_id").join(stream.truth, on="impression_id")
             .filter(pl.col("request_id") == stream.impressions["request_id"][0])
             .sort("position"))
    np.testing.assert_allclose(req.attractiveness[0], first["relevance"].to_numpy())
    # The relevance is the click probability with the position effect divided out.
    np.testing.assert_allclose(
        first["relevance"].to_numpy(),
        first["p_click"].to_numpy() * (1 + first["position"].to_numpy()) ** cfg.position_decay)
    assert req.k == cfg.list_length and (req.sizes == cfg.list_length).all()


def test_a_noiseless_oracle_ranks_by_attractiveness_and_candidates_before_padding() -> None:
    a = np.array([[0.1, 0.5, 0.3], [0.2, 0.9, np.nan]])
    req = Requests(a)
    order = rankings(noisy_oracle(req, 0.0, np.random.default_rng(0)), req)
    assert order.tolist() == [[1, 2, 0], [1, 0, 2]]


def test_the_better_ranker_gets_more_clicks_in_ab_and_wins_interleaving(requests) -> None:
    rng = np.random.default_rng(1)
    good, bad = noisy_oracle(requests, 0.3, rng), noisy_oracle(requests, 3.0, rng)
    pool = simulate_ab(requests, bad, good, _Examination(), rng)
    assert pool.difference > 4 * pool.standard_error
    prefs = simulate_interleaving(requests, [bad, good], team_draft, _Examination(), rng)
    verdict = sign_test(prefs, rng)
    assert verdict.estimate > 0 and verdict.ci_low > 0 and verdict.p_value < 1e-6
    # Fewer users for interleaving than for A/B, with N/2 users per A/B arm.
    needed_il, needed_ab = users_needed(prefs, 1, rng), users_needed(pool, 1, rng)
    assert needed_il is not None and needed_ab is not None
    assert needed_ab > 2 * needed_il


def test_under_cascade_users_only_the_reciprocal_rank_tells_rankers_apart(requests) -> None:
    rng = np.random.default_rng(8)
    good, bad = noisy_oracle(requests, 0.2, rng), noisy_oracle(requests, 3.0, rng)
    clicks = simulate_ab(requests, bad, good, CascadeModel(), rng)
    assert abs(clicks.difference) < 4 * clicks.standard_error  # the order does not matter
    rank = simulate_ab(requests, bad, good, CascadeModel(), rng, metric="reciprocal-rank")
    assert rank.difference > 4 * rank.standard_error
    assert set(np.unique(rank.values_a)) <= {0.0, *(1 / np.arange(1, 11))}


def test_identical_rankers_tie_in_both_experiments(requests) -> None:
    rng = np.random.default_rng(2)
    same = noisy_oracle(requests, 1.0, rng)
    prefs = simulate_interleaving(requests, [same, same], team_draft, _Examination(), rng)
    verdict = sign_test(prefs, rng)
    assert verdict.ci_low < 0 < verdict.ci_high
    pool = simulate_ab(requests, same, same, _Examination(), rng)
    assert abs(pool.difference) < 4 * pool.standard_error
    # With no better ranker, the verdict is a coin: half right for either "truth".
    assert p_correct(prefs, 2_000, 1, rng) == pytest.approx(0.5, abs=0.05)


def test_p_correct_rises_with_users_and_users_needed_is_where_it_reaches_the_target() -> None:
    rng = np.random.default_rng(3)
    # A win 55 % of the time when not a tie, ties 40 %.
    prefs = rng.choice([1.0, -1.0, 0.0], size=200_000, p=[0.33, 0.27, 0.40])
    probs = [p_correct(prefs, n, 1, rng) for n in (50, 500, 5_000)]
    assert probs[0] < probs[1] < probs[2] and probs[2] > 0.99
    needed = users_needed(prefs, 1, rng)
    assert needed is not None
    assert p_correct(prefs, int(needed * 0.7), 1, rng) < 0.95 < p_correct(
        prefs, int(needed * 1.4), 1, rng)
    assert p_correct(prefs, 5_000, -1, rng) < 0.01  # the other truth: almost never right


def test_the_multinomial_bootstrap_resamples_like_indices() -> None:
    rng = np.random.default_rng(4)
    clicks = rng.poisson(0.4, size=5_000)
    pool = ABPool(clicks, clicks + (rng.random(5_000) < 0.05))
    by_index = [pool.values_b[rng.integers(0, 5_000, 200)].mean()
                - pool.values_a[rng.integers(0, 5_000, 200)].mean() for _ in range(4_000)]
    verdicts = np.mean(np.sign(by_index) > 0) + 0.5 * np.mean(np.sign(by_index) == 0)
    assert p_correct(pool, 400, 1, rng, draws=8_000) == pytest.approx(verdicts, abs=0.03)


def test_ab_test_and_sign_test_report_known_differences() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.poisson(1.0, 20_000), rng.poisson(1.1, 20_000)
    verdict = ab_test(a, b, rng)
    se = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 20_000)
    assert verdict.estimate == pytest.approx(b.mean() - a.mean())
    assert verdict.ci_high - verdict.ci_low == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert verdict.ci_low < verdict.estimate < verdict.ci_high and verdict.p_value < 1e-6
    ties = sign_test(np.zeros(100), rng)
    assert ties.p_value == 1.0 and ties.estimate == 0.0


def test_the_sequential_test_stops_early_on_a_clear_winner_and_rarely_on_an_aa_pair() -> None:
    rng = np.random.default_rng(6)
    clear = rng.choice([1.0, -1.0, 0.0], size=100_000, p=[0.4, 0.2, 0.4])
    verdict, used = sequential_sign_test(clear)
    assert verdict == 1 and used < 2_000
    aa = rng.choice([1.0, -1.0, 0.0], size=100_000, p=[0.3, 0.3, 0.4])
    assert aa_false_positive_rate(aa, rng, runs=400, max_users=20_000) <= 0.08


@pytest.mark.parametrize(("make", "match"), [
    (lambda: Requests(np.zeros((0, 3))), "non-empty"),
    (lambda: Requests(np.array([[np.nan, 0.2]])), "at least one candidate"),
    (lambda: Requests(np.array([[0.1, np.nan, 0.2]])), "come first"),
    (lambda: Requests(np.array([[1.5]])), r"\[0, 1\]"),
    (lambda: noisy_oracle(Requests(np.ones((1, 2)) / 2), -1.0, np.random.default_rng()),
     "noise"),
    (lambda: rankings(np.ones((2, 2)), Requests(np.ones((1, 2)) / 2)), "shape"),
    (lambda: p_correct(np.ones(5), 100, 0, np.random.default_rng()), "truth"),
    (lambda: p_correct(np.ones(5), 1, 1, np.random.default_rng()), "users"),
    (lambda: p_correct(np.array([]), 10, 1, np.random.default_rng()), "empty"),
    (lambda: sequential_sign_test(np.ones(3), alpha=2.0), "alpha"),
    (lambda: simulate_ab(Requests(np.ones((1, 2)) / 2), np.ones((1, 2)), np.ones((1, 2)),
                         _Examination(), np.random.default_rng(), metric="dwell"), "metric"),
])
def test_bad_input_raises_simulation_error(make, match) -> None:
    with pytest.raises(SimulationError, match=match):
        make()
