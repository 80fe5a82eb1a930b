from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from replay.interleaving import (
    BalancedInterleaving,
    InterleavingError,
    ProbabilisticInterleaving,
    TeamDraftInterleaving,
    balanced,
    probabilistic,
    team_draft,
    team_draft_multileave,
)

Z999 = 3.2905  # two-sided 99.9 % normal quantile

TWO_RANKER = {"balanced": balanced, "team_draft": team_draft, "probabilistic": probabilistic}
ALL_METHODS = {**TWO_RANKER, "multileave": team_draft_multileave}
EXAM = 0.7 / np.arange(1, 11) ** 0.7  # position-based examination: clicks ignore the items


def random_rankings(rng: np.random.Generator, n_rankings: int = 2, universe: int = 15):
    """Rankings of random length (0 included) over random subsets of ``range(universe)``."""
    return [
        rng.choice(universe, size=int(rng.integers(0, universe + 1)), replace=False).tolist()
        for _ in range(n_rankings)
    ]


def shape_cases():
    rng = np.random.default_rng(2024)
    for i in range(60):
        n_rankings = 2 if i % 3 else 3
        k = None if i % 5 == 0 else int(rng.integers(1, 18))
        yield random_rankings(rng, n_rankings), k


def methods_for(n_rankings: int):
    return ALL_METHODS.values() if n_rankings == 2 else [team_draft_multileave]


def best_unshown(ranking, shown):
    return next(d for d in ranking if d not in shown)


def assert_fair(wins: int, losses: int) -> None:
    n = wins + losses
    assert n > 0
    assert abs(wins - n / 2) <= Z999 * math.sqrt(n) / 2, f"{wins} wins vs {losses} losses"


def assert_mean_zero(x: np.ndarray) -> None:
    bound = Z999 * x.std() / math.sqrt(len(x)) + 1e-12
    assert abs(x.mean()) <= bound, f"mean {x.mean():.5f} outside ±{bound:.5f}"


# --------------------------------------------------------------------------------------------
# Shown lists: every method


def test_shown_lists_are_distinct_full_length_and_come_from_the_credited_team():
    seed = 0
    for rankings, k in shape_cases():
        distinct = len(set().union(*map(set, rankings)))
        expected_len = distinct if k is None else min(k, distinct)
        for method in methods_for(len(rankings)):
            seed += 1
            r = method(rankings, np.random.default_rng(seed), k)
            assert len(r.items) == len(set(r.items)) == expected_len == len(r.teams)
            assert r.n_rankers == len(rankings)
            for item, team in zip(r.items, r.teams.tolist(), strict=True):
                assert item in rankings[team], (method.__name__, rankings, r)


def test_default_k_shows_every_distinct_item():
    rankings = [[1, 2, 3], [4, 2]]
    for method in ALL_METHODS.values():
        assert sorted(method(rankings, np.random.default_rng(0)).items) == [1, 2, 3, 4]


def test_items_only_one_ranking_holds_and_an_empty_ranking_are_shown():
    for method in ALL_METHODS.values():
        r = method([["only-a", "x"], []], np.random.default_rng(5), k=10)
        assert r.items == ("only-a", "x") and r.teams.tolist() == [0, 0]
        assert r.credit([True, True]).tolist() == [2.0, 0.0]
        empty = method([[], []], np.random.default_rng(5))
        assert empty.items == () and empty.credit([]).tolist() == [0.0, 0.0]


def test_any_hashable_item_ids_and_numpy_rankings_work():
    r = team_draft([np.array([3, 1, 2]), np.array([2, 3])], np.random.default_rng(1))
    assert sorted(r.items) == [1, 2, 3] and all(type(d) is int for d in r.items)
    r = probabilistic([[("a", 1), "b"], ["b", 7]], np.random.default_rng(1), k=3)
    assert set(r.items) == {("a", 1), "b", 7}


def test_same_seed_gives_the_same_list():
    rankings = [list(range(10)), list(range(9, -1, -1))]
    for method in ALL_METHODS.values():
        a = method(rankings, np.random.default_rng(99), 6)
        b = method(rankings, np.random.default_rng(99), 6)
        assert a.items == b.items and a.teams.tolist() == b.teams.tolist()


def test_results_are_frozen_and_their_arrays_read_only():
    r = team_draft([[1, 2], [2, 1]], np.random.default_rng(0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.items = (2, 1)  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        r.teams[0] = 1
    p = probabilistic([[1, 2], [2, 1]], np.random.default_rng(0))
    with pytest.raises(ValueError, match="read-only"):
        p.posterior[0, 0] = 0.0


# --------------------------------------------------------------------------------------------
# Team-draft and multileaving


def test_team_draft_each_pick_is_the_teams_best_unshown_item():
    for seed, (rankings, k) in enumerate(shape_cases()):
        method = team_draft if len(rankings) == 2 else team_draft_multileave
        r = method(rankings, np.random.default_rng(seed), k)
        for i, (item, team) in enumerate(zip(r.items, r.teams.tolist(), strict=True)):
            assert item == best_unshown(rankings[team], set(r.items[:i]))


def test_team_draft_team_sizes_differ_by_at_most_one_at_every_prefix():
    rng = np.random.default_rng(3)
    for seed in range(300):
        rankings = [rng.permutation(12).tolist(), rng.permutation(12).tolist()]
        teams = team_draft(rankings, np.random.default_rng(seed)).teams
        sizes_a = np.cumsum(teams == 0)
        sizes_b = np.cumsum(teams == 1)
        assert np.abs(sizes_a - sizes_b).max() <= 1


def test_multileave_every_round_each_ranker_picks_once_in_uniform_order():
    rng = np.random.default_rng(4)
    first = Counter()
    for seed in range(3000):
        rankings = [rng.permutation(9).tolist() for _ in range(3)]
        teams = team_draft_multileave(rankings, np.random.default_rng(seed)).teams
        for start in range(0, 9, 3):
            assert sorted(teams[start : start + 3].tolist()) == [0, 1, 2]
        first[int(teams[0])] += 1
    for ranker in range(3):  # who opens round 1: 1/3 each
        p, n = 1 / 3, 3000
        assert abs(first[ranker] - n * p) <= Z999 * math.sqrt(n * p * (1 - p))


def test_team_draft_of_identical_rankings_is_that_ranking():
    ranking = ["d", "a", "c", "b", "e"]
    for seed in range(50):
        r = team_draft([ranking, ranking], np.random.default_rng(seed))
        assert r.items == tuple(ranking)
        m = team_draft_multileave([ranking] * 4, np.random.default_rng(seed), k=4)
        assert m.items == tuple(ranking[:4])


def test_team_draft_other_ranker_fills_the_list_when_one_runs_out():
    for seed in range(20):
        r = team_draft([[5], [1, 2, 3, 4]], np.random.default_rng(seed))
        assert sorted(r.items) == [1, 2, 3, 4, 5]
        assert r.teams.tolist().count(0) == 1


def test_team_draft_credit_counts_clicks_on_each_teams_items():
    r = TeamDraftInterleaving(("a", "b", "c", "d"), np.array([1, 0, 0, 1]), 2)
    assert r.credit([True, True, True, False]).tolist() == [2.0, 1.0]
    assert r.outcome([True, True, True, False]) == 1.0
    assert r.outcome([True, False, False, True]) == -1.0
    assert r.outcome([True, True, False, False]) == 0.0
    assert r.outcome([False] * 4) == 0.0
    assert r.credit(np.array([0, 1, 0, 1])).tolist() == [1.0, 1.0]  # 0/1 clicks work too


def test_multileave_credit_sums_to_the_clicks_and_preference_is_sign_of_credit_difference():
    rng = np.random.default_rng(8)
    for seed in range(200):
        rankings = random_rankings(rng, n_rankings=int(rng.integers(2, 6)))
        r = team_draft_multileave(rankings, np.random.default_rng(seed))
        clicks = rng.random(len(r.items)) < 0.4
        credit = r.credit(clicks)
        assert credit.sum() == clicks.sum()
        pref = r.preference(clicks)
        assert pref.shape == (r.n_rankers, r.n_rankers)
        np.testing.assert_array_equal(pref, -pref.T)
        np.testing.assert_array_equal(pref, np.sign(credit[:, None] - credit[None, :]))


# --------------------------------------------------------------------------------------------
# Balanced


def test_balanced_lists_match_the_algorithm_for_both_coin_outcomes():
    cases = {
        ((1, 2), (2, 3), 2): {(1, 2), (2, 1)},
        ((1, 2), (3, 4), 2): {(1, 3), (3, 1)},
        ((1, 2), (3, 4), 3): {(1, 3, 2), (3, 1, 4)},
        ((1, 2), (2, 3), 3): {(1, 2, 3), (2, 1, 3)},  # A runs out: B fills (the papers stop)
    }
    for (a, b, k), expected in cases.items():
        seen = {balanced([a, b], np.random.default_rng(s), k).items for s in range(40)}
        assert seen == expected


def test_balanced_prefixes_are_unions_of_top_prefixes_of_nearly_equal_depth():
    rng = np.random.default_rng(6)
    for seed in range(200):
        a, b = rng.permutation(10).tolist(), rng.permutation(10).tolist()
        items = balanced([a, b], np.random.default_rng(seed)).items
        for i in range(1, len(items) + 1):
            prefix = set(items[:i])
            assert any(
                prefix == set(a[:ka]) | set(b[:kb])
                for ka in range(11)
                for kb in range(max(0, ka - 1), min(10, ka + 1) + 1)
            ), (a, b, items, i)


@pytest.mark.parametrize(
    ("clicked", "credit"),
    [
        ([0, 1, 2], [2, 2]),
        ([0, 1], [1, 1]),
        ([0, 2], [1, 2]),
        ([1, 2], [1, 1]),
        ([0], [0, 1]),
        ([1], [1, 0]),
        ([2], [0, 1]),
        ([], [0, 0]),
    ],
)
def test_balanced_credit_counts_clicks_in_each_rankers_top_down_to_the_deepest_click(
    clicked, credit
):
    # A = (1, 2), B = (2, 3), shown (2, 1, 3)
    r = BalancedInterleaving((2, 1, 3), np.array([1, 0, 1]), 2, np.array([[1, 0, -1], [0, -1, 1]]))
    clicks = np.isin(np.arange(3), clicked)
    assert r.credit(clicks).tolist() == credit
    assert r.outcome(clicks) == float(np.sign(credit[0] - credit[1]))


def test_balanced_shows_its_known_bias_under_a_single_random_click():
    # Hofmann et al. 2011: B = A rotated by one; whichever ranker leads, one uniformly random
    # click makes B win 3 times in 4.
    a, b = [1, 2, 3, 4], [2, 3, 4, 1]
    lists = {}
    for seed in range(40):
        r = balanced([a, b], np.random.default_rng(seed))
        lists[r.items] = [r.outcome(np.eye(4, dtype=bool)[i]) for i in range(4)]
    assert set(lists) == {(1, 2, 3, 4), (2, 1, 3, 4)}
    for outcomes in lists.values():
        assert sorted(outcomes) == [-1.0, -1.0, -1.0, 1.0]


def test_balanced_of_identical_rankings_always_ties():
    clicks = np.random.default_rng(1).random((2000, 8)) < EXAM[:8]
    rng = np.random.default_rng(2)
    ranking = list(range(8))
    assert all(balanced([ranking, ranking], rng).outcome(c) == 0.0 for c in clicks)


# --------------------------------------------------------------------------------------------
# Probabilistic: the marginalised credit against brute force


def brute_force_assignments(rankings, items, tau: int):
    """Exact ``P(list)`` and ``P(assignment | list)`` over all ``2 ** n`` team assignments, from
    the generative definition (fair coin per position, the other ranker when the coin's one has
    nothing left, softmax over ranks renormalised over the unshown items), in fractions."""
    joint = {}
    for assignment in itertools.product((0, 1), repeat=len(items)):
        prob = Fraction(1)
        shown: set = set()
        for d, j in zip(items, assignment, strict=True):
            remaining = [[x for x in r if x not in shown] for r in rankings]
            active = [i for i in (0, 1) if remaining[i]]
            if j not in active or d not in remaining[j]:
                prob = Fraction(0)
                break
            weight = {x: Fraction(1, (rankings[j].index(x) + 1) ** tau) for x in remaining[j]}
            prob *= Fraction(1, len(active)) * weight[d] / sum(weight.values())
            shown.add(d)
        joint[assignment] = prob
    p_list = sum(joint.values())
    return p_list, {a: p / p_list for a, p in joint.items() if p}


def brute_force_credit(posterior, clicks):
    credit = [Fraction(0), Fraction(0)]
    outcome = Fraction(0)
    for assignment, p in posterior.items():
        to_a = sum(1 for c, j in zip(clicks, assignment, strict=True) if c and j == 0)
        to_b = sum(1 for c, j in zip(clicks, assignment, strict=True) if c and j == 1)
        credit[0] += p * to_a
        credit[1] += p * to_b
        outcome += p * ((to_a > to_b) - (to_a < to_b))
    return [float(c) for c in credit], float(outcome)


@pytest.mark.parametrize(
    ("rankings", "k", "tau"),
    [
        ([["a", "b", "c", "d"], ["c", "a", "e"]], 5, 3),
        ([["a", "b", "c", "d"], ["c", "a", "e"]], 4, 1),
        ([[1, 2, 3], [3, 2, 1]], 3, 2),
        ([list(range(12)), list(range(11, -1, -1))], 4, 400),  # rank ** -tau underflows
        ([list(range(8)), [1, 0, *range(2, 8)]], 5, 500),  # so do whole denominators
    ],
)
def test_probabilistic_marginalised_credit_equals_brute_force_enumeration(rankings, k, tau):
    lists_checked = set()
    for seed in range(12):
        r = probabilistic(rankings, np.random.default_rng(seed), k, tau=tau)
        if r.items in lists_checked:
            continue
        lists_checked.add(r.items)
        _, posterior = brute_force_assignments(rankings, r.items, tau)
        for clicks in itertools.product((False, True), repeat=len(r.items)):
            credit, outcome = brute_force_credit(posterior, clicks)
            np.testing.assert_allclose(r.credit(clicks), credit, rtol=1e-9, atol=1e-12)
            assert r.outcome(clicks) == pytest.approx(outcome, rel=1e-9, abs=1e-12)
    assert lists_checked


def test_probabilistic_sampler_and_posterior_match_the_sequential_definition():
    rankings = [["a", "b", "c"], ["c", "d", "b"]]
    n = 20_000
    rng = np.random.default_rng(11)
    counts: Counter = Counter()
    team_counts: dict = {}
    for _ in range(n):
        r = probabilistic(rankings, rng, k=3, tau=1.0)
        counts[r.items] += 1
        team_counts.setdefault(r.items, [r, np.zeros(3)])[1] += r.teams == 0
    for items in {*counts, *itertools.permutations("abcd", 3)}:
        p, posterior = brute_force_assignments(rankings, items, 1)
        p = float(p)
        assert abs(counts[items] - n * p) <= Z999 * math.sqrt(n * p * (1 - p)) + 1, items
        if counts[items] >= 1000:  # the teams actually drawn follow the posterior
            r, from_a = team_counts[items]
            expected = [float(sum(q for a, q in posterior.items() if a[i] == 0)) for i in range(3)]
            np.testing.assert_allclose(r.posterior[0], expected, rtol=1e-12)
            m = counts[items]
            tol = Z999 * np.sqrt(np.asarray(expected) * (1 - np.asarray(expected)) / m) + 1e-9
            assert np.all(np.abs(from_a / m - expected) <= tol)


def test_probabilistic_posterior_columns_sum_to_one_and_credit_to_the_clicks():
    rng = np.random.default_rng(12)
    for seed in range(100):
        rankings = random_rankings(rng)
        r = probabilistic(rankings, np.random.default_rng(seed), tau=float(rng.uniform(0.5, 5)))
        np.testing.assert_allclose(r.posterior.sum(axis=0), 1.0)
        clicks = rng.random(len(r.items)) < 0.5
        assert r.credit(clicks).sum() == pytest.approx(clicks.sum())
        assert -1.0 <= r.outcome(clicks) <= 1.0
        pref = r.preference(clicks)
        np.testing.assert_array_equal(pref, -pref.T)


def test_probabilistic_of_identical_rankings_is_an_exact_tie_for_any_clicks():
    ranking = list(range(10))
    rng = np.random.default_rng(13)
    for _ in range(300):
        r = probabilistic([ranking, ranking], rng)
        np.testing.assert_allclose(r.posterior, 0.5)
        assert r.outcome(rng.random(10) < 0.5) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------
# No bias under clicks that ignore the items; the better ranker wins


def outcomes_under_position_clicks(method, rankings, n: int, seed: int, k: int = 10):
    clicks = np.random.default_rng(seed).random((n, k)) < EXAM[:k]
    rng = np.random.default_rng(seed + 1)
    return np.array([method(rankings, rng, k).outcome(c) for c in clicks])


@pytest.mark.parametrize("identical", [True, False], ids=["identical", "different"])
def test_team_draft_is_unbiased_under_random_clicks(identical):
    a = list(range(20))
    b = a if identical else np.random.default_rng(0).permutation(20).tolist()
    out = outcomes_under_position_clicks(team_draft, [a, b], 100_000 if identical else 40_000, 1)
    assert_fair(int((out > 0).sum()), int((out < 0).sum()))


@pytest.mark.parametrize("identical", [True, False], ids=["identical", "different"])
def test_probabilistic_is_unbiased_under_random_clicks(identical):
    a = list(range(20))
    b = a if identical else np.random.default_rng(0).permutation(20).tolist()
    out = outcomes_under_position_clicks(probabilistic, [a, b], 20_000, 2)
    if identical:
        np.testing.assert_allclose(out, 0.0, atol=1e-12)
    else:
        assert out.std() > 0.1  # not trivially zero
        assert_mean_zero(out)


@pytest.mark.parametrize("identical", [True, False], ids=["identical", "different"])
def test_multileave_pairwise_preferences_average_zero_under_random_clicks(identical):
    gen = np.random.default_rng(0)
    rankings = [list(range(20))] * 3 if identical else [gen.permutation(20).tolist() for _ in "abc"]
    n = 40_000
    clicks = np.random.default_rng(3).random((n, 10)) < EXAM
    rng = np.random.default_rng(4)
    prefs = np.empty((n, 3, 3))
    for t in range(n):
        r = team_draft_multileave(rankings, rng, 10)
        assert r.credit(clicks[t]).sum() == clicks[t].sum()
        prefs[t] = r.preference(clicks[t])
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert_fair(int((prefs[:, i, j] > 0).sum()), int((prefs[:, i, j] < 0).sum()))


def relevance_clicks(items, rng, attraction):
    return rng.random(len(items)) < attraction[list(items)] * EXAM[: len(items)]


@pytest.mark.parametrize("name", list(TWO_RANKER))
def test_the_better_ranker_wins_significantly_more(name):
    method = TWO_RANKER[name]
    attraction = 0.9 * 0.8 ** np.arange(20)  # item i's click chance; the good ranker sorts by it
    good = list(range(20))
    bad = np.random.default_rng(0).permutation(20).tolist()
    rng = np.random.default_rng(5)
    n = 3000
    out = np.empty(n)
    for t in range(n):
        r = method([bad, good] if t % 2 else [good, bad], rng, 10)
        sign = -1.0 if t % 2 else 1.0  # alternate sides so the good one is not always ranker 0
        out[t] = sign * r.outcome(relevance_clicks(r.items, rng, attraction))
    wins, losses = int((out > 0).sum()), int((out < 0).sum())
    assert wins > 2 * losses, (wins, losses)
    z = out.mean() / (out.std() / math.sqrt(n))
    assert z > 8, z


def test_multileave_orders_good_medium_and_bad_rankers():
    attraction = 0.9 * 0.8 ** np.arange(20)
    gen = np.random.default_rng(1)
    good = list(range(20))
    medium = sorted(good, key=lambda i: i + gen.normal(0, 4))
    bad = gen.permutation(20).tolist()
    rng = np.random.default_rng(6)
    n = 4000
    prefs = np.zeros((n, 3, 3))
    for t in range(n):
        r = team_draft_multileave([good, medium, bad], rng, 10)
        prefs[t] = r.preference(relevance_clicks(r.items, rng, attraction))
    for i, j in [(0, 1), (1, 2), (0, 2)]:
        x = prefs[:, i, j]
        assert x.mean() / (x.std() / math.sqrt(n)) > 4, (i, j, x.mean())


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("method", "kwargs", "message"),
    [
        (team_draft, {"rankings": [[1, 2]]}, r"team_draft compares exactly 2 rankings, got 1"),
        (balanced, {"rankings": [[1], [2], [3]]}, r"exactly 2 rankings, got 3; use team_draft_m"),
        (probabilistic, {"rankings": [[1], [2], [3]]}, r"probabilistic compares exactly 2"),
        (team_draft_multileave, {"rankings": [[1, 2]]}, r"needs at least 2 rankings, got 1"),
        (team_draft_multileave, {"rankings": []}, r"needs at least 2 rankings, got 0"),
        (team_draft, {"rankings": [[1, 2, 1], [1]]}, r"ranking 0 lists item 1 more than once"),
        (team_draft_multileave, {"rankings": [[1], [2], ["x", "x"]]}, r"ranking 2 lists item 'x'"),
        (balanced, {"rankings": [[[1], [2]], [1]]}, r"ranking 0 holds an unhashable item"),
        (team_draft, {"rankings": ["abc", "bcd"]}, r"ranking 0 is a string"),
        (team_draft, {"rankings": [[1], 5]}, r"ranking 1 is not a sequence of item ids"),
        (team_draft, {"rankings": 7}, r"rankings must be a sequence of rankings"),
        (team_draft, {"k": 0}, r"k must be at least 1, got 0"),
        (balanced, {"k": -3}, r"k must be at least 1, got -3"),
        (probabilistic, {"k": 2.5}, r"k must be a positive integer, got 2.5"),
        (team_draft_multileave, {"k": True}, r"k must be a positive integer, got True"),
        (probabilistic, {"tau": 0.0}, r"tau must be a positive finite number, got 0.0"),
        (probabilistic, {"tau": -1}, r"tau must be a positive finite number, got -1"),
        (probabilistic, {"tau": float("nan")}, r"tau must be a positive finite number, got nan"),
        (probabilistic, {"tau": "3"}, r"tau must be a positive finite number, got '3'"),
        (team_draft, {"rng": np.random.RandomState(0)}, r"rng must be a numpy.random.Generator"),
        (balanced, {"rng": 42}, r"rng must be a numpy.random.Generator, got int"),
    ],
)
def test_bad_input_raises_interleaving_error_with_a_one_line_message(method, kwargs, message):
    args = {"rankings": [[1, 2, 3], [3, 2]], "rng": np.random.default_rng(0), **kwargs}
    with pytest.raises(InterleavingError, match=message) as info:
        method(**args)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", list(ALL_METHODS))
@pytest.mark.parametrize(
    ("clicks", "message"),
    [
        ([True, False], r"one entry per shown position \(3\), got shape \(2,\)"),
        ([[True, False, True]], r"one entry per shown position"),
        ([0, 2, 1], r"clicks must be booleans or 0/1"),
        (["yes", "no", "no"], r"clicks must be booleans or 0/1"),
    ],
)
def test_bad_clicks_raise_interleaving_error(name, clicks, message):
    r = ALL_METHODS[name]([[1, 2, 3], [3, 2]], np.random.default_rng(0))
    for rule in (r.credit, r.preference, r.outcome):
        with pytest.raises(InterleavingError, match=message):
            rule(clicks)


def test_outcome_needs_two_rankers():
    r = team_draft_multileave([[1], [2], [3]], np.random.default_rng(0))
    with pytest.raises(InterleavingError, match="outcome compares two rankers, this list has 3"):
        r.outcome([True, False, False])


def test_probabilistic_result_type_and_lengths():
    r = probabilistic([[1, 2, 3], [4]], np.random.default_rng(0), k=3)
    assert isinstance(r, ProbabilisticInterleaving)
    assert r.lengths == (3, 1) and r.tau == 3.0 and r.ranks.shape == (2, 3)
