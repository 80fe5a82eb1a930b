"""Interleaving against A/B tests on simulated users, and the statistics that compare them.

A simulation needs requests (candidate lists with a ground-truth attractiveness per
candidate), rankers (a score per candidate), a click model (the simulated user,
:mod:`replay.click_models`) and an interleaving method (:mod:`replay.interleaving`).

* :class:`Requests`: n requests of at most K candidates, ``attractiveness`` float (n, K)
  — the probability of a click on the candidate if the user examines it — NaN where a
  request has fewer candidates. :func:`stream_requests` takes them from a synthetic stream
  (its true relevance, the click probability at the first position); logged pages
  take theirs from a click model fitted to the log (:mod:`replay.interleave_report`).
* Rankers are score arrays float (n, K), higher first: :func:`noisy_oracle` gives
  rankers of controlled quality (the true logit plus Gaussian noise); the replay's
  learner scores are another source (:mod:`replay.interleave_report`).
* :func:`simulate_ab` shows each request, in each of two arms, its ranker's top k and
  draws the user's clicks: the A/B metric (clicks per request, or the reciprocal rank of
  the first click) of each request in each arm. :func:`simulate_interleaving`
  shows each request the interleaved list and credits the clicks: the preference of
  ranker b over ranker a per request (in [-1, 1]; ±1 or 0 for the deterministic
  credit rules).
* Statistics: :func:`sign_test` (binomial test of wins against losses, ties left out)
  and :func:`ab_test` (Welch's t-test) with bootstrap confidence intervals;
  :func:`p_correct` and :func:`users_needed`, Netflix's protocol (Chapelle et al. TOIS
  2012 §6; the Netflix tech blog, 2017): with N users, interleaving sees N requests and
  each A/B arm N/2, and the verdict is correct when it names the ranker the whole pool
  says is better; :func:`agreement` over ranker pairs; :func:`sequential_sign_test`, an
  SPRT that stops as soon as the evidence allows, with its false-positive rate on A/A
  pairs measured by :func:`aa_false_positive_rate`.

Bootstraps here are exact resamples drawn cheaply: every outcome takes few distinct
values (clicks per request 0…k, reciprocal ranks 1, 1/2 … 1/k, 0; a preference −1, 0,
+1, or the finitely many values of
probabilistic credit), so the sum of N draws with replacement is a multinomial draw of
the values' counts — the same distribution as resampling N indices, at a cost
independent of N.

>>> from replay.synthetic import generate
>>> rng = np.random.default_rng(0)
>>> requests = stream_requests(generate(20_000, seed=1))
>>> requests.n, requests.k
(1877, 10)
>>> good = noisy_oracle(requests, noise=0.5, rng=rng)
>>> bad = noisy_oracle(requests, noise=3.0, rng=rng)
>>> int(np.sum(np.isnan(good))) == int(np.sum(np.isnan(requests.attractiveness)))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import polars as pl

from replay.synthetic import SyntheticStream

__all__ = [
    "AB_METRICS",
    "ABPool",
    "ClickSimulator",
    "Requests",
    "SimulationError",
    "Verdict",
    "aa_false_positive_rate",
    "ab_test",
    "agreement",
    "bootstrap_mean_ci",
    "noisy_oracle",
    "p_correct",
    "rankings",
    "sequential_sign_test",
    "sign_test",
    "simulate_ab",
    "simulate_interleaving",
    "stream_requests",
    "truth_requests",
    "users_needed",
]


class SimulationError(ValueError):
    """Input a simulation cannot use: arrays of the wrong shape, rankers that do not
    match the requests, an empty pool, a bad parameter. The message is one line."""


class ClickSimulator(Protocol):
    """A simulated user: clicks on lists whose attractiveness is given, in shown order."""

    def simulate(self, attractiveness: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """bool (n, k) clicks for float (n, k) attractiveness (0 where nothing is shown)."""
        ...


@dataclass(frozen=True)
class Requests:
    """n requests of at most K candidates: ``attractiveness`` float (n, K) in [0, 1], NaN
    in slots without a candidate (each request's candidates come first)."""

    attractiveness: np.ndarray

    def __post_init__(self) -> None:
        a = np.asarray(self.attractiveness, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise SimulationError(f"attractiveness must be a non-empty (n, K) array, got "
                                  f"shape {a.shape}")
        real = ~np.isnan(a)
        if not real[:, 0].all():
            raise SimulationError("every request needs at least one candidate (column 0)")
        if np.any(real[:, 1:] & ~real[:, :-1]):
            raise SimulationError("a request's candidates must come first (no NaN before a "
                                  "candidate)")
        if np.any((a[real] < 0) | (a[real] > 1)):
            raise SimulationError("attractiveness must be in [0, 1]")
        object.__setattr__(self, "attractiveness", a)

    @property
    def n(self) -> int:
        return int(self.attractiveness.shape[0])

    @property
    def k(self) -> int:
        return int(self.attractiveness.shape[1])

    @property
    def sizes(self) -> np.ndarray:
        """int (n,): candidates per request."""
        return np.sum(~np.isnan(self.attractiveness), axis=1)


def stream_requests(stream: SyntheticStream) -> Requests:
    """The requests of a synthetic stream, each with its shown items as candidates and
    their true relevance (``truth.relevance``: the click probability at the first
    position, see :mod:`replay.synthetic`) as attractiveness."""
    return truth_requests(stream.impressions, stream.truth)[0]


def truth_requests(impressions: pl.DataFrame, truth: pl.DataFrame
                   ) -> tuple[Requests, pl.DataFrame]:
    """Requests from impressions (``request_id``, ``impression_id``, ``position``, ``ts``)
    and a ground truth (``impression_id``, ``relevance``), with the frame that places each
    impression: ``impression_id``, ``request``, ``slot`` (row and column of
    :class:`Requests`). Requests are in time order, candidates in shown order; copies of
    an impression count once."""
    missing = {"impression_id", "relevance"} - set(truth.columns)
    if missing:
        raise SimulationError(f"the ground truth lacks {', '.join(sorted(missing))}")
    frame = (impressions.unique("impression_id", keep="first", maintain_order=True)
             .join(truth.select("impression_id", "relevance"), on="impression_id", how="left")
             .sort("ts", "request_id", "position"))
    if frame["relevance"].null_count():
        raise SimulationError(f"{frame['relevance'].null_count()} impressions have no "
                              "ground truth")
    request = frame["request_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, request[1:] != request[:-1]])
    sizes = np.diff(np.r_[starts, frame.height])
    row = np.repeat(np.arange(starts.size), sizes)
    slot = np.arange(frame.height) - np.repeat(starts, sizes)
    out = np.full((starts.size, int(sizes.max())), np.nan)
    out[row, slot] = frame["relevance"].to_numpy().clip(0.0, 1.0)
    placed = frame.select("impression_id").with_columns(request=pl.Series(row),
                                                         slot=pl.Series(slot))
    return Requests(out), placed


def noisy_oracle(requests: Requests, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A ranker of controlled quality: float (n, K) scores ``logit(attractiveness) +
    noise × Normal(0, 1)``, NaN where there is no candidate (noise 0: the ideal ranker)."""
    if not math.isfinite(noise) or noise < 0:
        raise SimulationError(f"noise must be finite and >= 0, got {noise!r}")
    a = requests.attractiveness.clip(1e-9, 1 - 1e-9)
    return np.log(a / (1 - a)) + noise * rng.standard_normal(a.shape)


def rankings(scores: np.ndarray, requests: Requests) -> np.ndarray:
    """int (n, K): each request's candidate slots by descending score (ties: lower slot
    first), slots without a candidate last."""
    _check_scores(scores, requests)
    key = np.where(np.isnan(requests.attractiveness), np.inf, -np.nan_to_num(scores, nan=0.0))
    return np.argsort(key, axis=1, kind="stable")


def _check_scores(scores: np.ndarray, requests: Requests) -> None:
    if np.shape(scores) != requests.attractiveness.shape:
        raise SimulationError(f"scores have shape {np.shape(scores)}, the requests "
                              f"{requests.attractiveness.shape}")
    real = ~np.isnan(requests.attractiveness)
    if np.isnan(np.asarray(scores)[real]).any():
        raise SimulationError("a ranker has no score (NaN) for a candidate")


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise SimulationError(f"k (positions shown) must be an int >= 1, got {k!r}")


AB_METRICS = ("clicks", "reciprocal-rank")


@dataclass(frozen=True)
class ABPool:
    """The A/B metric of every request shown in arm a and, independently, in arm b:
    float (n,) each. An A/B test of N users samples N/2 requests of each."""

    values_a: np.ndarray
    values_b: np.ndarray

    @property
    def difference(self) -> float:
        """Mean metric per request of b minus a over the pool."""
        return float(self.values_b.mean() - self.values_a.mean())

    @property
    def standard_error(self) -> float:
        """Of :attr:`difference` (the two arms' draws are independent)."""
        n = self.values_a.size
        return float(math.sqrt((self.values_a.var(ddof=1) + self.values_b.var(ddof=1)) / n))


def _shown(requests: Requests, ranking: np.ndarray, k: int) -> np.ndarray:
    """float (n, k): the attractiveness of the top k of each ranking (0 past a request's
    candidates)."""
    top = ranking[:, :k]
    a = np.take_along_axis(requests.attractiveness, top, axis=1)
    return np.nan_to_num(a, nan=0.0)


def simulate_ab(requests: Requests, scores_a: np.ndarray, scores_b: np.ndarray,
                model: ClickSimulator, rng: np.random.Generator, k: int = 10,
                metric: str = "clicks") -> ABPool:
    """Every request shown in each arm (its ranker's top ``k``), clicks drawn by
    ``model`` independently per arm, and the request's ``metric``: ``clicks`` (clicks per
    request) or ``reciprocal-rank`` (1 / the rank of the first click, 0 without one).

    Under cascade users, clicks per request do not depend on the order at all — every
    user scans down to their first attractive result, wherever it is — so only a metric
    of where the click lands, such as the reciprocal rank, can tell rankers apart."""
    _check_k(k)
    if metric not in AB_METRICS:
        raise SimulationError(f"unknown A/B metric {metric!r}; one of {', '.join(AB_METRICS)}")
    pools = []
    for scores in (scores_a, scores_b):
        clicks = np.asarray(
            model.simulate(_shown(requests, rankings(scores, requests), k), rng), dtype=bool)
        if metric == "clicks":
            pools.append(clicks.sum(axis=1).astype(np.float64))
        else:
            first = np.argmax(clicks, axis=1)
            pools.append(np.where(clicks.any(axis=1), 1.0 / (1.0 + first), 0.0))
    return ABPool(*pools)


def simulate_interleaving(requests: Requests, scores: Sequence[np.ndarray],
                          method: Callable[..., Any], model: ClickSimulator,
                          rng: np.random.Generator, k: int = 10) -> np.ndarray:
    """Float (n,): for two rankers, the preference of the second over the first in each
    request; for R > 2, float (n, R, R) pairwise preferences (``[i, j] > 0``: i won).

    ``method(rankings, rng, k)`` is an interleaving of :mod:`replay.interleaving`; its
    result's ``items`` are the shown candidate slots and ``preference(clicks)`` the
    R × R matrix. The lists are interleaved one request at a time (the methods are
    sequential by nature); the clicks are drawn for all requests at once."""
    _check_k(k)
    if len(scores) < 2:
        raise SimulationError("interleaving needs at least two rankers")
    orders = [rankings(s, requests) for s in scores]
    sizes = requests.sizes
    shown = np.zeros((requests.n, k), dtype=np.int64)
    length = np.zeros(requests.n, dtype=np.int64)
    results = []
    for i in range(requests.n):
        lists = [order[i, :sizes[i]].tolist() for order in orders]
        result = method(lists, rng, k=k)
        items = list(result.items)
        shown[i, :len(items)] = items
        length[i] = len(items)
        results.append(result)
    attract = np.take_along_axis(requests.attractiveness, shown, axis=1)
    attract[np.arange(k) >= length[:, None]] = 0.0
    clicks = np.asarray(model.simulate(np.nan_to_num(attract, nan=0.0), rng), dtype=bool)
    prefs = np.stack([np.asarray(r.preference(clicks[i, :length[i]]), dtype=np.float64)
                      for i, r in enumerate(results)])
    return prefs[:, 1, 0] if len(scores) == 2 else prefs


# -- statistics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A test's estimate (b over a), its bootstrap confidence interval and p-value."""

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int


def _histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise SimulationError("an empty pool of outcomes")
    distinct, counts = np.unique(values, return_counts=True)
    return distinct, counts / counts.sum()


def _resampled_means(values: np.ndarray, n: int, draws: int, rng: np.random.Generator
                     ) -> np.ndarray:
    """Means of ``draws`` resamples of ``n`` outcomes with replacement from ``values``."""
    distinct, p = _histogram(values)
    return rng.multinomial(n, p, size=draws) @ distinct / n


def bootstrap_mean_ci(values: np.ndarray, rng: np.random.Generator, level: float = 0.95,
                      draws: int = 4000) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    means = _resampled_means(values, np.size(values), draws, rng)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def sign_test(preferences: np.ndarray, rng: np.random.Generator) -> Verdict:
    """Interleaving's verdict: the mean preference of b over a, its bootstrap 95 % CI,
    and the two-sided binomial (sign) test of wins against losses, ties left out
    (Chapelle et al. 2012)."""
    from scipy import stats  # ~0.7 s to import: the CLI reads this module's names at start

    prefs = np.asarray(preferences, dtype=np.float64)
    wins, losses = int(np.sum(prefs > 0)), int(np.sum(prefs < 0))
    p = 1.0 if wins + losses == 0 else stats.binomtest(wins, wins + losses).pvalue
    low, high = bootstrap_mean_ci(prefs, rng)
    return Verdict(float(prefs.mean()), low, high, float(p), int(prefs.size))


def ab_test(values_a: np.ndarray, values_b: np.ndarray, rng: np.random.Generator) -> Verdict:
    """The A/B verdict: the metric per request of b minus a, a bootstrap 95 % CI (arms
    resampled independently) and Welch's t-test."""
    from scipy import stats  # as in sign_test

    a, b = (np.asarray(c, dtype=np.float64) for c in (values_a, values_b))
    diffs = (_resampled_means(b, b.size, 4000, rng) - _resampled_means(a, a.size, 4000, rng))
    p = stats.ttest_ind(b, a, equal_var=False).pvalue
    p = 1.0 if not math.isfinite(p) else float(p)
    return Verdict(float(b.mean() - a.mean()), float(np.quantile(diffs, 0.025)),
                   float(np.quantile(diffs, 0.975)), p, int(a.size + b.size))


def p_correct(outcomes: np.ndarray | ABPool, users: int, truth: int,
              rng: np.random.Generator, draws: int = 2000) -> float:
    """Probability that an experiment with ``users`` users names the better ranker
    (``truth`` +1: b, −1: a); a tie counts one half.

    Interleaving (``outcomes``: per-request preferences of b over a): ``users`` requests
    resampled, verdict the sign of their sum. A/B (an :class:`ABPool`): ``users // 2``
    requests resampled in each arm, verdict the sign of the difference of the arms'
    clicks."""
    if truth not in (-1, 1):
        raise SimulationError(f"truth must be +1 (b better) or -1 (a better), got {truth!r}")
    if isinstance(users, bool) or not isinstance(users, int | np.integer) or users < 2:
        raise SimulationError(f"users must be an int >= 2, got {users!r}")
    if isinstance(outcomes, ABPool):
        half = users // 2
        score = (_resampled_means(outcomes.values_b, half, draws, rng)
                 - _resampled_means(outcomes.values_a, half, draws, rng))
    else:
        score = _resampled_means(outcomes, users, draws, rng)
    verdict = np.sign(np.round(score * users, 9))  # exact zero sums are ties
    return float(np.mean(np.where(verdict == 0, 0.5, verdict == truth)))


def users_needed(outcomes: np.ndarray | ABPool, truth: int, rng: np.random.Generator,
                 target: float = 0.95, max_users: int = 2_000_000, draws: int = 2000
                 ) -> float | None:
    """Fewest users for :func:`p_correct` ≥ ``target`` (interpolated in log users
    between points of a grid of 8 per decade from 10), or None if even ``max_users``
    are not enough."""
    grid = np.unique(np.round(10 ** np.arange(1, math.log10(max_users) + 1e-9, 1 / 8)))
    previous: tuple[float, float] | None = None
    for users in grid.astype(np.int64):
        p = p_correct(outcomes, int(users), truth, rng, draws)
        if p >= target:
            if previous is None or previous[1] >= p:
                return float(users)
            (u0, p0), (u1, p1) = previous, (float(users), p)
            frac = (target - p0) / (p1 - p0)
            return float(math.exp(math.log(u0) + frac * (math.log(u1) - math.log(u0))))
        previous = (float(users), p)
    return None


def agreement(interleaving_signs: Sequence[int], ab_signs: Sequence[int]) -> float:
    """Fraction of ranker pairs on which interleaving's preferred ranker is A/B's."""
    i, a = np.asarray(interleaving_signs), np.asarray(ab_signs)
    if i.shape != a.shape or i.size == 0:
        raise SimulationError("agreement needs as many interleaving as A/B signs, and some")
    return float(np.mean(i == a))


def sequential_sign_test(preferences: np.ndarray, alpha: float = 0.05, delta: float = 0.05,
                         power: float = 0.8) -> tuple[int, int]:
    """Wald's SPRT on the wins and losses of a stream of preferences, in order: two
    one-sided tests of P(win | not a tie) = 1/2 against 1/2 ± ``delta``, each at level
    ``alpha`` / 2 with the given power. Returns (verdict, outcomes read): +1 b better, −1
    a better, 0 no difference (both tests accepted 1/2) or the stream ended first."""
    if not 0 < alpha < 1 or not 0 < delta < 0.5 or not 0 < power < 1:
        raise SimulationError("alpha and power must be in (0, 1), delta in (0, 0.5)")
    a, b = alpha / 2, 1 - power
    upper, lower = math.log((1 - b) / a), math.log(b / (1 - a))
    win = math.log((0.5 + delta) / 0.5)  # log-likelihood ratio of a win for "b better"
    loss = math.log((0.5 - delta) / 0.5)
    prefs = np.asarray(preferences, dtype=np.float64)
    step = np.where(prefs > 0, 1, np.where(prefs < 0, -1, 0))
    wins, losses = np.cumsum(step == 1), np.cumsum(step == -1)
    for_b = wins * win + losses * loss  # "b better" against "no difference"
    for_a = wins * loss + losses * win
    decided_b = for_b >= upper
    decided_a = for_a >= upper
    neither = (for_b <= lower) & (for_a <= lower)
    stop = np.flatnonzero(decided_b | decided_a | neither)
    if stop.size == 0:
        return 0, int(prefs.size)
    at = int(stop[0])
    return (1 if decided_b[at] else -1 if decided_a[at] else 0), at + 1


def aa_false_positive_rate(preferences: np.ndarray, rng: np.random.Generator,
                           runs: int = 1000, max_users: int = 100_000, **sprt: float) -> float:
    """Fraction of A/A experiments (``preferences`` of identical rankers, resampled in a
    random order for each run) in which :func:`sequential_sign_test` names a winner."""
    prefs = np.asarray(preferences, dtype=np.float64)
    wrong = 0
    for _ in range(runs):
        stream = prefs[rng.integers(0, prefs.size, size=max_users)]
        wrong += sequential_sign_test(stream, **sprt)[0] != 0
    return wrong / runs

