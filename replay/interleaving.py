"""Interleaved comparison of rankers: balanced, team-draft, probabilistic, team-draft multileaving.

An A/B test compares two rankers by splitting the traffic; interleaving shows every request
*one* list merged from the rankers' lists and credits each click to the ranker(s) it speaks for,
so both rankers are judged on the same users and queries. That removes the between-bucket
variance and typically needs one to two orders of magnitude fewer requests than an A/B test to
find the better ranker (Chapelle, Joachims, Radlinski, Yue, TOIS 2012). This module builds the
shown lists and the credit; ``replay.simulation`` drives them against simulated users.

Methods (each takes ``rankings``: one sequence of item ids per ranker, best first; ``rng``: a
``numpy.random.Generator``; ``k``: the list length, by default every distinct item):

- :func:`balanced` (Joachims 2002/2003): two rankers; a coin picks the ranker that leads, then
  the two take turns by *rank*: the shown top-``i`` is always the union of ranker A's top-``ka``
  and ranker B's top-``kb`` with ``|ka - kb| <= 1``.
- :func:`team_draft` (Radlinski, Kurup, Joachims, CIKM 2008): two rankers draft a team; the team
  with fewer picks picks next (a coin when equal) and adds its best item not yet shown.
- :func:`probabilistic` (Hofmann, Whiteson, de Rijke, CIKM 2011): each ranking becomes a softmax
  over ranks, ``P(d) ∝ rank(d) ** -tau``; at each position a fair coin picks a ranker, which
  samples an item not yet shown (its distribution renormalised over those).
- :func:`team_draft_multileave` (Schuth, Sietsma, Whiteson, Lefortier, de Rijke, CIKM 2014):
  team-draft for ``R >= 2`` rankers; each round the rankers pick in a random order.

The shown list is ``min(k, distinct items)`` long. Rankings may differ in length and hold items
the others lack; where the papers stop when a ranking runs out, here the rankers that still have
unshown items fill the list (the credit rules below are unchanged by this).

Protocol. Every method returns an :class:`Interleaving` (frozen) with

- ``items``: the shown list, a tuple of item ids, top first;
- ``teams``: ``int64`` array, ``teams[i]`` = index of the ranker that placed position ``i``
  (for :func:`probabilistic` the ranker that actually sampled it; its credit marginalises);
- ``n_rankers``;
- ``credit(clicks) -> ndarray`` (``float64``, one entry per ranker), ``clicks`` a bool (or 0/1)
  array with one entry per shown position;
- ``preference(clicks) -> ndarray`` (``R × R``, antisymmetric, entries in ``[-1, 1]``):
  ``P[i, j] > 0`` means ranker ``i`` beat ranker ``j`` on these clicks, ``-P[i, j]`` for ``j``
  over ``i``, ``0`` a tie (no clicks, or equal credit);
- ``outcome(clicks) -> float``: ``preference(clicks)[0, 1]`` for two rankers: ``+1`` the first
  ranker wins, ``-1`` the second, ``0`` a tie (a float in ``[-1, 1]`` for probabilistic).

Credit rules.

- Balanced: let ``d`` be the lowest (deepest) clicked shown item and ``m`` the smaller of its ranks
  in the two rankings (an item a ranking lacks has rank infinity there); each ranker is credited
  with the clicked items among its own top-``m``; ``P[0, 1] = sign(credit A - credit B)``.
- Team-draft and multileaving: a ranker's credit is the number of clicked positions its team
  placed; ``P[i, j] = sign(credit i - credit j)`` (so credits sum to the number of clicks).
- Probabilistic, marginalised over team assignments (the paper's estimator): given the shown list,
  the assignments of the positions are independent a posteriori (each step's ranker is an
  independent fair coin, and the not-yet-shown set at each step is fixed by the list), so
  ``q[j, i] = P(position i came from ranker j | list) = p_j(i) / sum_r p_r(i)``, where ``p_j(i)``
  is ranker ``j``'s softmax probability of ``items[i]`` renormalised over the items not shown
  before ``i`` (``0`` where ``j`` lacks it). Credit is the expected credit ``sum_clicked q[j, i]``;
  the outcome is the exact ``E[sign(clicks of A - clicks of B)]`` under that posterior (a
  Poisson-binomial over the clicked positions, identical to summing over all ``2 ** k``
  assignments weighted by their probability). The result's ``posterior`` holds ``q``.

Bad input (fewer than two rankings, or not two where the method compares two; a ranking that
lists an item twice; unhashable items; ``k < 1``; ``tau <= 0``; clicks of the wrong length or not
0/1) raises :class:`InterleavingError`, a ``ValueError`` whose message is one line.

>>> rng = np.random.default_rng(7)
>>> shown = team_draft([["a", "b", "c"], ["b", "d", "a"]], rng, k=3)
>>> shown.items, shown.teams.tolist()
(('a', 'b', 'd'), [0, 1, 1])
>>> shown.credit([False, True, True]).tolist(), shown.outcome([False, True, True])
([0.0, 2.0], -1.0)
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "METHODS",
    "BalancedInterleaving",
    "Interleaving",
    "InterleavingError",
    "ProbabilisticInterleaving",
    "TeamDraftInterleaving",
    "balanced",
    "probabilistic",
    "team_draft",
    "team_draft_multileave",
]


class InterleavingError(ValueError):
    """Invalid input to an interleaving method or to its credit (one-line message)."""


# ---------------------------------------------------------------------------------------------
# Results and their credit


@dataclass(frozen=True, eq=False, slots=True)
class Interleaving:
    """A shown list: its ``items`` (top first), the ranker (team) that placed each position,
    and the credit rule of the method that built it (see the module docstring)."""

    items: tuple[Hashable, ...]
    teams: np.ndarray
    n_rankers: int

    def __post_init__(self) -> None:
        self.teams.flags.writeable = False

    def __len__(self) -> int:
        return len(self.items)

    def credit(self, clicks: Any) -> np.ndarray:
        """Credit of each ranker for ``clicks`` (one bool per shown position), ``float64``."""
        raise NotImplementedError

    def preference(self, clicks: Any) -> np.ndarray:
        """``R × R`` antisymmetric matrix: ``P[i, j] = sign(credit[i] - credit[j])``."""
        c = self.credit(clicks)
        return np.sign(c[:, None] - c[None, :])

    def outcome(self, clicks: Any) -> float:
        """Two rankers only: ``+1`` the first wins, ``-1`` the second, ``0`` a tie."""
        if self.n_rankers != 2:
            raise InterleavingError(
                f"outcome compares two rankers, this list has {self.n_rankers}; use preference"
            )
        return float(self.preference(clicks)[0, 1])

    def _clicks(self, clicks: Any) -> np.ndarray:
        """Clicks as a bool array, one per shown position."""
        arr = np.asarray(clicks)
        if arr.shape != (len(self.items),):
            raise InterleavingError(
                f"clicks must have one entry per shown position ({len(self.items)}), "
                f"got shape {arr.shape}"
            )
        if arr.dtype == np.bool_:
            return arr
        try:
            out = arr.astype(np.bool_)
            ok = bool(((arr == 0) | (arr == 1)).all())
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InterleavingError("clicks must be booleans or 0/1")
        return out


@dataclass(frozen=True, eq=False, slots=True)
class TeamDraftInterleaving(Interleaving):
    """Result of :func:`team_draft` and :func:`team_draft_multileave`: a click credits the
    team that placed the item.

    >>> r = TeamDraftInterleaving(("x", "y", "z"), np.array([0, 1, 1]), 2)
    >>> r.credit([True, True, True]).tolist()
    [1.0, 2.0]
    >>> r.preference([True, False, False]).tolist()
    [[0.0, 1.0], [-1.0, 0.0]]
    """

    def credit(self, clicks: Any) -> np.ndarray:
        c = self._clicks(clicks)
        return np.bincount(self.teams[c], minlength=self.n_rankers).astype(np.float64)


@dataclass(frozen=True, eq=False, slots=True)
class BalancedInterleaving(Interleaving):
    """Result of :func:`balanced`. ``ranks[j, i]`` is the 0-based rank of ``items[i]`` in
    ranking ``j``, ``-1`` where ranking ``j`` lacks it.

    Example (the credit rule): A = (1, 2), B = (2, 3) shown as (2, 1, 3); clicks on 2 and 3: the
    deepest click, 3, has rank 2 in B (1-based) and none in A, so each ranker is credited with
    the clicks among its top 2: A with {2}, B with {2, 3}.

    >>> r = BalancedInterleaving((2, 1, 3), np.array([1, 0, 1]), 2,
    ...                          np.array([[1, 0, -1], [0, -1, 1]]))
    >>> r.credit([True, False, True]).tolist(), r.outcome([True, False, True])
    ([1.0, 2.0], -1.0)
    """

    ranks: np.ndarray

    def __post_init__(self) -> None:
        Interleaving.__post_init__(self)
        self.ranks.flags.writeable = False

    def credit(self, clicks: Any) -> np.ndarray:
        c = self._clicks(clicks)
        clicked = np.flatnonzero(c)
        if clicked.size == 0:
            return np.zeros(2)
        depth = np.where(self.ranks < 0, np.iinfo(np.int64).max, self.ranks)
        cutoff = depth[:, clicked[-1]].min()
        return ((depth <= cutoff) & c).sum(axis=1).astype(np.float64)


@dataclass(frozen=True, eq=False, slots=True)
class ProbabilisticInterleaving(Interleaving):
    """Result of :func:`probabilistic`. ``ranks[j, i]`` is the 0-based rank of ``items[i]`` in
    ranking ``j`` (``-1`` where it lacks it), ``lengths`` the rankings' lengths. ``posterior[j,
    i]`` is the probability that ranker ``j`` placed position ``i`` given the shown list (columns
    sum to 1); credit and outcome marginalise over it (see the module docstring). It is computed
    on first use: a list without clicks never needs it.

    Example: A = (a, b), B = (b, a), tau = 1, shown (a, b). At position 0 ranker A picks ``a``
    with 1 / (1 + 1/2) = 2/3, ranker B with 1/3, so ``q = (2/3, 1/3)``; at position 1 only ``b``
    is left and both pick it surely: ``q = (1/2, 1/2)``.

    >>> r = ProbabilisticInterleaving(("a", "b"), np.array([0, 1]), 2,
    ...                               np.array([[0, 1], [1, 0]]), (2, 2), 1.0)
    >>> r.posterior.round(4).tolist()
    [[0.6667, 0.5], [0.3333, 0.5]]
    >>> r.credit([True, True]).round(4).tolist()
    [1.1667, 0.8333]
    >>> round(r.outcome([True, True]), 4)  # P(A placed both) - P(B placed both) = 1/3 - 1/6
    0.1667
    """

    ranks: np.ndarray
    lengths: tuple[int, int]
    tau: float
    _cache: list[np.ndarray] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        Interleaving.__post_init__(self)
        self.ranks.flags.writeable = False

    @property
    def posterior(self) -> np.ndarray:
        """``(2, n)``: ``P(ranker j placed position i | shown list)``."""
        if not self._cache:  # a frozen result fills its one-slot cache once
            q = _posterior(self.ranks, self.lengths, self.tau)
            q.flags.writeable = False
            self._cache.append(q)
        return self._cache[0]

    def credit(self, clicks: Any) -> np.ndarray:
        c = self._clicks(clicks)
        if not c.any():
            return np.zeros(2)
        return self.posterior[:, c].sum(axis=1)

    def preference(self, clicks: Any) -> np.ndarray:
        """``[[0, o], [-o, 0]]`` with ``o = E[sign(clicks of A - clicks of B) | list]``."""
        c = self._clicks(clicks)
        o = _expected_sign(self.posterior[0, c].tolist()) if c.any() else 0.0
        return np.array([[0.0, o], [-o, 0.0]])


def _expected_sign(q: list[float]) -> float:
    """``P(X > m/2) - P(X < m/2)`` for ``X`` = number of successes of independent trials with
    probabilities ``q`` (``m = len(q)``): the exact outcome of a click set marginalised over
    the ``2 ** m`` team assignments of the clicked positions."""
    m = len(q)
    if m == 1:
        return 2.0 * q[0] - 1.0
    dist = [1.0]  # dist[t] = P(t of the positions so far came from ranker A)
    for qi in q:
        nxt = [0.0] * (len(dist) + 1)
        for t, pt in enumerate(dist):
            nxt[t] += pt * (1.0 - qi)
            nxt[t + 1] += pt * qi
        dist = nxt
    o = sum(dist[t] for t in range(m + 1) if 2 * t > m) - sum(
        dist[t] for t in range(m + 1) if 2 * t < m
    )
    return min(1.0, max(-1.0, o))


# ---------------------------------------------------------------------------------------------
# Input checks


def _check_rng(rng: Any) -> None:
    if not isinstance(rng, np.random.Generator):
        raise InterleavingError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def _as_list(ranking: Any, j: int) -> list[Hashable]:
    if isinstance(ranking, (str, bytes)):
        raise InterleavingError(f"ranking {j} is a string; give a sequence of item ids")
    if isinstance(ranking, np.ndarray):
        if ranking.ndim != 1:
            raise InterleavingError(f"ranking {j} must be one-dimensional, got {ranking.shape}")
        return ranking.tolist()
    try:
        return list(ranking)
    except TypeError:
        raise InterleavingError(f"ranking {j} is not a sequence of item ids") from None


def _prepare(
    rankings: Any, method: str, *, exactly_two: bool
) -> tuple[list[list[Hashable]], list[dict[Hashable, int]], int]:
    """The rankings as lists, each one's item → 0-based rank map, and the distinct item count."""
    if isinstance(rankings, (str, bytes)) or not isinstance(rankings, Sequence | np.ndarray):
        raise InterleavingError(
            f"rankings must be a sequence of rankings, got {type(rankings).__name__}"
        )
    lists = [_as_list(r, j) for j, r in enumerate(rankings)]
    n_rankings = len(lists)
    if exactly_two and n_rankings != 2:
        hint = "; use team_draft_multileave for more" if n_rankings > 2 else ""
        raise InterleavingError(f"{method} compares exactly 2 rankings, got {n_rankings}{hint}")
    if n_rankings < 2:
        raise InterleavingError(f"{method} needs at least 2 rankings, got {n_rankings}")
    indexes = []
    for j, r in enumerate(lists):
        try:
            index = dict(zip(r, range(len(r)), strict=True))
        except TypeError:
            raise InterleavingError(f"ranking {j} holds an unhashable item") from None
        if len(index) < len(r):
            seen: set[Hashable] = set()
            for d in r:  # pragma: no branch - a duplicate exists
                if d in seen:
                    raise InterleavingError(f"ranking {j} lists item {d!r} more than once")
                seen.add(d)
        indexes.append(index)
    distinct = len(set().union(*indexes))
    return lists, indexes, distinct


def _length(k: Any, distinct: int) -> int:
    """The shown list's length: ``min(k, distinct)``; ``k=None`` means every distinct item."""
    if k is None:
        return distinct
    if isinstance(k, bool):
        raise InterleavingError(f"k must be a positive integer, got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise InterleavingError(f"k must be a positive integer, got {k!r}") from None
    if k < 1:
        raise InterleavingError(f"k must be at least 1, got {k}")
    return min(k, distinct)


def _ranks_of(items: Sequence[Hashable], indexes: list[dict[Hashable, int]]) -> np.ndarray:
    """``(R, n)`` int64: 0-based rank of each shown item in each ranking, ``-1`` if absent."""
    return np.array(
        [[index.get(d, -1) for d in items] for index in indexes], dtype=np.int64
    ).reshape(len(indexes), len(items))


@lru_cache(maxsize=256)
def _log_ranks(length: int) -> np.ndarray:
    """``log(1), ..., log(length)`` (read-only, cached: rankings often share a length)."""
    out = np.log(np.arange(1, length + 1, dtype=np.float64))
    out.flags.writeable = False
    return out


@lru_cache(maxsize=256)
def _log_weights(length: int, tau: float) -> np.ndarray:
    """``-tau * log(rank)`` for ranks ``1..length``: the unnormalised log softmax (read-only)."""
    out = -tau * _log_ranks(length)
    out.flags.writeable = False
    return out


# ---------------------------------------------------------------------------------------------
# Methods


def balanced(
    rankings: Sequence[Sequence[Hashable]], rng: np.random.Generator, k: int | None = None
) -> BalancedInterleaving:
    """Balanced interleaving of two rankings (Joachims 2002; Chapelle et al. 2012, Alg. 1).

    A coin picks the leading ranker; then the ranker whose pointer is behind (the leader on a
    tie) offers its next item, which is shown unless already shown. When one ranking runs out
    the other continues. ``teams[i]`` is the ranker whose turn placed position ``i``.

    >>> r = balanced([[1, 2, 3, 4], [2, 3, 4, 1]], np.random.default_rng(0))
    >>> r.items in {(1, 2, 3, 4), (2, 1, 3, 4)}
    True
    >>> balanced([[1, 2, 3, 4], [2, 3, 4, 1]], np.random.default_rng(0), k=2).ranks.tolist()
    [[1, 0], [0, 3]]
    """
    _check_rng(rng)
    (a, b), indexes, distinct = _prepare(rankings, "balanced", exactly_two=True)
    k = _length(k, distinct)
    a_first = bool(rng.random() < 0.5)
    items: list[Hashable] = []
    teams: list[int] = []
    shown: set[Hashable] = set()
    ka = kb = 0
    len_a, len_b = len(a), len(b)
    while len(items) < k:  # k <= distinct, so a pointer is always left while items are missing
        both_left = ka < len_a and kb < len_b  # else the ranking that has items left goes on
        use_a = (ka < kb or (ka == kb and a_first)) if both_left else ka < len_a
        if use_a:
            d, team = a[ka], 0
            ka += 1
        else:
            d, team = b[kb], 1
            kb += 1
        if d not in shown:
            shown.add(d)
            items.append(d)
            teams.append(team)
    return BalancedInterleaving(
        tuple(items), np.array(teams, dtype=np.int64), 2, _ranks_of(items, indexes)
    )


def _team_draft_walk(
    lists: list[list[Hashable]], rng: np.random.Generator, k: int
) -> TeamDraftInterleaving:
    """Rounds in which every ranker with an unshown item adds its best one, in random order."""
    n_rankers = len(lists)
    items: list[Hashable] = []
    teams: list[int] = []
    shown: set[Hashable] = set()
    pointers = [0] * n_rankers
    while len(items) < k:  # each round adds >= 1 item while fewer than `distinct` are shown
        n_rounds = -(-(k - len(items)) // n_rankers)
        orders = rng.random((n_rounds, n_rankers)).argsort(axis=1).tolist()
        for order in orders:
            for j in order:
                ranking, p = lists[j], pointers[j]
                length = len(ranking)
                while p < length and ranking[p] in shown:
                    p += 1
                if p < length:
                    d = ranking[p]
                    shown.add(d)
                    items.append(d)
                    teams.append(j)
                    p += 1
                pointers[j] = p
                if len(items) == k:
                    break
            if len(items) == k:
                break
    return TeamDraftInterleaving(tuple(items), np.array(teams, dtype=np.int64), n_rankers)


def team_draft(
    rankings: Sequence[Sequence[Hashable]], rng: np.random.Generator, k: int | None = None
) -> TeamDraftInterleaving:
    """Team-draft interleaving of two rankings (Radlinski, Kurup, Joachims, CIKM 2008).

    The team with fewer picks picks next, a coin decides when they are equal; a team adds its
    highest-ranked item not yet shown. When one ranking runs out the other fills the list.

    >>> r = team_draft([[1, 2, 3], [1, 2, 3]], np.random.default_rng(0))
    >>> r.items
    (1, 2, 3)
    >>> sorted(np.bincount(r.teams[:2]).tolist())  # one pick each in every round
    [1, 1]
    """
    _check_rng(rng)
    lists, _, distinct = _prepare(rankings, "team_draft", exactly_two=True)
    return _team_draft_walk(lists, rng, _length(k, distinct))


def team_draft_multileave(
    rankings: Sequence[Sequence[Hashable]], rng: np.random.Generator, k: int | None = None
) -> TeamDraftInterleaving:
    """Team-draft multileaving of ``R >= 2`` rankings (Schuth et al., CIKM 2014).

    Each round the rankers (those with the fewest picks, i.e. all that still have unshown
    items) pick in a uniformly random order, each adding its best item not yet shown. Credit:
    a ranker's clicked positions; ``preference[i, j] = sign(credit[i] - credit[j])``.

    >>> r = team_draft_multileave([[1, 2], [2, 1], [3, 1]], np.random.default_rng(1))
    >>> sorted(r.items), sorted(r.teams.tolist())
    ([1, 2, 3], [0, 1, 2])
    >>> r.preference([True, True, True]).tolist()  # one click per team: all ties
    [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    _check_rng(rng)
    lists, _, distinct = _prepare(rankings, "team_draft_multileave", exactly_two=False)
    return _team_draft_walk(lists, rng, _length(k, distinct))


def probabilistic(
    rankings: Sequence[Sequence[Hashable]],
    rng: np.random.Generator,
    k: int | None = None,
    tau: float = 3.0,
) -> ProbabilisticInterleaving:
    """Probabilistic interleaving of two rankings (Hofmann, Whiteson, de Rijke, CIKM 2011).

    Ranking ``j`` puts ``P_j(d) ∝ rank_j(d) ** -tau`` on its items (``0`` on items it lacks). At
    each position a fair coin picks a ranker (the other one if it has no unshown item), which
    samples from ``P_j`` renormalised over the items not yet shown. The sampling uses the
    equivalent exponential race: ranker ``j`` orders its items by ``rank ** tau * Exp(1)``
    (Gumbel keys) once, and each of its picks is its next unshown item in that order.

    >>> r = probabilistic([["a", "b", "c"], ["c", "b", "a"]], np.random.default_rng(3), k=2)
    >>> len(r.items), r.posterior.sum(axis=0).round(12).tolist()
    (2, [1.0, 1.0])
    >>> r = probabilistic([["a"], ["b"]], np.random.default_rng(3))
    >>> r.posterior[:, r.items.index("a")].tolist()  # only ranker 0 could have placed "a"
    [1.0, 0.0]
    """
    _check_rng(rng)
    lists, indexes, distinct = _prepare(rankings, "probabilistic", exactly_two=True)
    k = _length(k, distinct)
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0 < tau < math.inf:
        raise InterleavingError(f"tau must be a positive finite number, got {tau!r}")
    tau = float(tau)
    orders: list[list[Hashable]] = []
    for ranking in lists:
        if ranking:
            keys = tau * _log_ranks(len(ranking)) - rng.gumbel(size=len(ranking))
            orders.append([ranking[i] for i in np.argsort(keys).tolist()])
        else:
            orders.append([])
    coins = (rng.random(k) < 0.5).tolist()
    items: list[Hashable] = []
    teams: list[int] = []
    shown: set[Hashable] = set()
    pointers = [0, 0]
    for coin in coins:
        j = int(coin)
        for _ in range(2):  # the coin's ranker, else (it has nothing unshown) the other one
            order, p = orders[j], pointers[j]
            while p < len(order) and order[p] in shown:
                p += 1
            pointers[j] = p
            if p < len(order):
                break
            j = 1 - j
        d = orders[j][pointers[j]]
        pointers[j] += 1
        shown.add(d)
        items.append(d)
        teams.append(j)
    ranks = _ranks_of(items, indexes)
    return ProbabilisticInterleaving(
        tuple(items),
        np.array(teams, dtype=np.int64),
        2,
        ranks,
        (len(lists[0]), len(lists[1])),
        tau,
    )


def _posterior(ranks: np.ndarray, lengths: tuple[int, int], tau: float) -> np.ndarray:
    """``q[j, i] = P(ranker j placed position i | shown list)`` for probabilistic interleaving.

    ``p_j(i) = w_j(d_i) / (sum of w_j over the items not shown before i)``, ``w = rank ** -tau``,
    and ``q[:, i] ∝ p[:, i]`` (the fair coin cancels; a ranker with nothing left has ``p = 0``).
    The denominator at ``i`` is the weight of ranking ``j``'s never-shown items plus that of its
    items shown at ``i`` or later; all in log space, as deep ranks underflow ``w`` for large
    ``tau``.
    """
    n = ranks.shape[1]
    log_p = [[-math.inf] * n, [-math.inf] * n]
    for j in (0, 1):
        row = ranks[j].tolist()
        held = [r for r in row if r >= 0]
        if not held:
            continue
        log_w = _log_weights(lengths[j], tau)
        acc = -math.inf  # log of the weight not shown before the current position
        if len(held) < lengths[j]:
            unshown = np.ones(lengths[j], dtype=bool)
            unshown[held] = False
            rest = log_w[unshown]
            top = float(rest[0])  # weights fall with rank: the first is the largest
            acc = top + math.log(float(np.exp(rest - top).sum()))
        out = log_p[j]
        for i in range(n - 1, -1, -1):
            r = row[i]
            if r >= 0:
                w = float(log_w[r])
                acc = _logaddexp(acc, w)
                out[i] = w - acc
    q0 = [_sigmoid(a - b) for a, b in zip(log_p[0], log_p[1], strict=True)]
    return np.array([q0, [1.0 - q for q in q0]], dtype=np.float64).reshape(2, n)


def _logaddexp(x: float, y: float) -> float:
    if x == -math.inf:
        return y
    if y == -math.inf:
        return x
    return max(x, y) + math.log1p(math.exp(-abs(x - y)))


def _sigmoid(d: float) -> float:
    """``1 / (1 + exp(-d))`` for ``d = log p_A - log p_B`` (``±inf`` where a ranker lacks it)."""
    if d >= 0:
        return 1.0 / (1.0 + math.exp(-d))
    e = math.exp(d)
    return e / (1.0 + e)


# Name (as ``streamctr interleave --method`` takes it) -> method.
METHODS = {
    "team-draft": team_draft,
    "balanced": balanced,
    "probabilistic": probabilistic,
    "team-draft-multileave": team_draft_multileave,
}
