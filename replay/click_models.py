"""Click models as simulated users: PBM, cascade and DBN, fitted to a click log.

Interleaving and A/B simulation need users who click on the lists they are shown
the way real users do: mostly near the top, more on attractive results, often
stopping after a satisfying click. A *click model* says how; fitted to a click log,
it also says what the logged users found attractive. This module holds three of
them (definitions and EM updates as in Chuklin, Markov and de Rijke, *Click Models
for Web Search*, 2015):

- :class:`PositionBasedModel` (PBM): position ``r`` is examined with probability
  ``γ_r`` whatever happened elsewhere; an examined result ``d`` of query ``q`` is
  clicked with its attractiveness ``α_qd``, so ``P(C_r = 1) = γ_r α_qd``. Fitted by EM.
- :class:`CascadeModel` (Craswell et al., WSDM 2008): the user scans top-down,
  clicks an examined result with probability ``α_qd`` and stops at the first click.
  Fitted in closed form (maximum likelihood).
- :class:`DynamicBayesianNetwork` (DBN; Chapelle and Zhang, WWW 2009): top-down;
  an examined result is clicked with ``α_qd``; after a click the user is satisfied
  with ``σ_qd`` and stops; a user not satisfied (after a click or a skip) goes on to
  the next position with the continuation probability ``γ`` (one for all positions,
  as in the paper), else abandons. Fitted by EM over the hidden examination and
  satisfaction; ``γ`` may also be fixed.

Data: :class:`ClickSessions`, ``n`` result pages of ``K`` positions (query id,
document ids top first, clicks); :func:`yandex_sessions` reads one from the Yandex
WSCD log. Arrays index positions from 0 (the top); the text says "position ``r``".

Conventions shared by the models:

- **Fitting.** Hyper-parameters go to the constructor, :meth:`~ClickModel.fit`
  learns the parameters (and returns the model); ``history_`` holds the fit's
  objective, per session, at the start and after each EM iteration — the
  log-likelihood of the sessions plus the log of the priors the pseudo-counts stand
  for; EM never decreases it. Every probability parameter is estimated as
  ``(expected successes + a) / (expected trials + a + b)`` with
  ``pseudo_counts=(a, b)`` (default ``(1, 1)``: add-one smoothing, i.e. the MAP
  estimate under a ``Beta(a + 1, b + 1)`` prior); ``(0, 0)`` is plain maximum
  likelihood. EM starts from every parameter at 0.5.
- **Unseen pairs.** A (query, document) pair absent from the fitted sessions gets
  ``default_attractiveness`` (constructor; ``None``: the impression-weighted mean of
  the fitted ``α``, i.e. the mean ``α`` of a logged impression) and, for DBN,
  ``default_satisfaction`` (``None``: the click-weighted mean of the fitted ``σ``).
- **Evaluation.** :meth:`~ClickModel.log_likelihood` is the mean over sessions of
  ``log P(C_1, …, C_K)`` in nats (sum over positions of the log of each click's
  probability given the clicks above it; divide by ``K`` for PyClick's per-position
  figure). :meth:`~ClickModel.perplexity` is the per-position perplexity
  ``2 ** -mean_s log2 P(C_r = c_r)`` of the book (Dupret and Piwowarski 2008), with
  the marginal ``P(C_r = 1)`` of :meth:`~ClickModel.click_probabilities` (conditioned
  on nothing), or with the conditional one given ``conditional=True``; the model's
  perplexity is the mean of the array (1 is perfect, 2 is a coin flip). Both floor
  every probability at :data:`PROB_MIN` (``1e-6``, PyClick's), so an event the model
  calls impossible costs ``log 1e-6`` rather than infinity.
- **Simulation.** ``simulate(attractiveness, rng, ...)`` draws clicks (bool
  ``(n, K)``) for pages whose per-position attractiveness — the click-if-examined
  probability — is given, with the model's fitted (or given) examination
  parameters. The attractiveness can be a synthetic stream's ground truth or a
  fitted model's :meth:`~ClickModel.attractiveness` of logged pages.
- **State.** :meth:`~ClickModel.state_dict` holds only numpy arrays and plain
  scalars / strings (``None`` hyper-parameters are stored as NaN), so it can be
  written with ``numpy.savez`` and read back with ``allow_pickle=False``;
  :meth:`~ClickModel.load_state_dict` refuses another format, version or
  hyper-parameters.

Bad input (shapes, ``K < 1``, non-binary clicks, probabilities outside ``[0, 1]``,
an unfitted model, a foreign state dict, ...) raises :class:`ClickModelError`, a
``ValueError`` whose message is one line.

>>> sessions = ClickSessions(queries=[7, 7], docs=[[1, 2], [2, 1]],
...                          clicks=[[True, False], [False, False]])
>>> model = CascadeModel(pseudo_counts=(0, 0)).fit(sessions)
>>> model.attractiveness(sessions)  # doc 1: 1 click in 2 examinations; doc 2: 0 in 1
array([[0.5, 0. ],
       [0. , 0.5]])
>>> model.click_probabilities(sessions)
array([[0.5, 0. ],
       [0. , 0.5]])
>>> model.simulate([[1.0, 1.0]], rng=0)  # a cascade stops at the first click
array([[ True, False]])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl

from learners.base import check_state

__all__ = [
    "CLICK_MODELS",
    "PROB_MIN",
    "CascadeModel",
    "ClickModel",
    "ClickModelError",
    "ClickSessions",
    "DynamicBayesianNetwork",
    "PositionBasedModel",
    "yandex_sessions",
]

PROB_MIN = 1e-6  # floor of every probability in log_likelihood and perplexity (PyClick's)
_TINY = 1e-300  # floor in the fit's objective: only keeps log(0) finite
_INIT = 0.5  # EM's starting value of every parameter
_VERSION = 1


class ClickModelError(ValueError):
    """Bad input to a click model or its sessions (one-line message)."""


# ---------------------------------------------------------------------------------------------
# Input conversion and validation


def _ids(x: Any, name: str, ndim: int) -> np.ndarray:
    """Integer ids as a fresh int64 array of ``ndim`` dimensions."""
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ClickModelError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ClickModelError(f"{name} must hold integer ids, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ClickModelError(f"{name} has ids beyond the int64 range")
    return np.array(arr, dtype=np.int64)


def _clicks(x: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Clicks as a fresh bool array of ``shape``; 0/1 numbers are accepted."""
    arr = np.asarray(x)
    if arr.shape != shape:
        raise ClickModelError(f"clicks must have the shape of docs {shape}, got {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.copy()
    if arr.dtype.kind not in "iuf":
        raise ClickModelError(f"clicks must be bool or 0/1, got dtype {arr.dtype}")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        raise ClickModelError(f"clicks must be 0 or 1, found {arr[bad][0]!r}")
    return arr.astype(np.bool_)


def _probabilities(x: Any, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Probabilities as a float64 ``(n, K)`` array (broadcast to ``shape`` when given)."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ClickModelError(f"{name} must be numeric probabilities") from None
    if shape is not None:
        try:
            arr = np.broadcast_to(arr, shape)
        except ValueError:
            raise ClickModelError(f"{name} must be a scalar or shaped {shape}, "
                                  f"got shape {arr.shape}") from None
    if arr.ndim != 2:
        raise ClickModelError(f"{name} must be 2-dimensional (pages, positions), "
                              f"got shape {arr.shape}")
    if arr.shape[1] < 1:
        raise ClickModelError(f"{name} must have at least one position")
    if not np.isfinite(arr).all():
        raise ClickModelError(f"{name} must be finite")
    if ((arr < 0.0) | (arr > 1.0)).any():
        bad = arr[(arr < 0.0) | (arr > 1.0)][0]
        raise ClickModelError(f"{name} must lie in [0, 1], found {bad!r}")
    return arr


def _rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ClickModelError(f"rng must be a numpy Generator or an int seed, "
                          f"got {type(rng).__name__}")


def _int_param(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ClickModelError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _float_param(value: Any, name: str, low: float, high: float, *, optional: bool = False,
                 open_low: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ClickModelError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not (low < v if open_low else low <= v) or not v <= high:
        bracket = "(" if open_low else "["
        raise ClickModelError(f"{name} must lie in {bracket}{low}, {high}], got {value!r}")
    return v


def _pseudo_counts(value: Any) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ClickModelError(f"pseudo_counts must be two numbers (a, b), got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and a >= 0 and b >= 0):
        raise ClickModelError(f"pseudo_counts must be finite and >= 0, got {value!r}")
    return a, b


# ---------------------------------------------------------------------------------------------
# Sessions


@dataclass(frozen=True, eq=False)
class ClickSessions:
    """``n`` result pages of ``K`` positions: who asked what, what was shown, what was clicked.

    ``queries``: int64 ``(n,)`` query ids; ``docs``: int64 ``(n, K)`` document ids at
    each position, top first; ``clicks``: bool ``(n, K)`` (0/1 numbers are accepted).
    Ids need not be dense. The arrays are copied and made read-only. ``n >= 1`` and
    ``K >= 1``. Indexing (an int, a slice, an index or bool array over pages) gives
    the selected pages as new sessions.

    >>> s = ClickSessions([3, 4], [[10, 11], [11, 10]], [[1, 0], [0, 0]])
    >>> len(s), s.n_positions, s.clicks.sum()
    (2, 2, np.int64(1))
    >>> s[1:].docs
    array([[11, 10]])
    >>> ClickSessions([3], [[10, 11]], [[2, 0]])
    Traceback (most recent call last):
    ...
    replay.click_models.ClickModelError: clicks must be 0 or 1, found np.int64(2)
    """

    queries: np.ndarray
    docs: np.ndarray
    clicks: np.ndarray

    def __post_init__(self) -> None:
        queries = _ids(self.queries, "queries", 1)
        docs = _ids(self.docs, "docs", 2)
        _check_pages(queries, docs)
        clicks = _clicks(self.clicks, docs.shape)
        for name, arr in (("queries", queries), ("docs", docs), ("clicks", clicks)):
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return self.queries.shape[0]

    @property
    def n_positions(self) -> int:
        """``K``, the positions of every page."""
        return self.docs.shape[1]

    def __getitem__(self, index: Any) -> ClickSessions:
        try:
            rows = np.atleast_1d(np.arange(len(self))[index])
        except (IndexError, TypeError, ValueError) as e:
            raise ClickModelError(f"bad page index: {e}") from None
        return ClickSessions(self.queries[rows], self.docs[rows], self.clicks[rows])


def _check_pages(queries: np.ndarray, docs: np.ndarray) -> None:
    if docs.shape[0] != queries.shape[0]:
        raise ClickModelError(f"docs has {docs.shape[0]} pages, queries has {queries.shape[0]}")
    if queries.shape[0] < 1:
        raise ClickModelError("no pages: need at least one result page")
    if docs.shape[1] < 1:
        raise ClickModelError("pages must have at least one position (K >= 1)")


Pages = ClickSessions | tuple[Any, Any]


def _pages(pages: Pages) -> tuple[np.ndarray, np.ndarray]:
    """Query ids ``(n,)`` and document ids ``(n, K)`` of sessions or of a (queries, docs) pair."""
    if isinstance(pages, ClickSessions):
        return pages.queries, pages.docs
    if isinstance(pages, tuple) and len(pages) == 2:
        queries, docs = _ids(pages[0], "queries", 1), _ids(pages[1], "docs", 2)
        _check_pages(queries, docs)
        return queries, docs
    raise ClickModelError(f"pages must be ClickSessions or a (queries, docs) tuple, "
                          f"got {type(pages).__name__}")


def _sessions(sessions: Any) -> ClickSessions:
    if not isinstance(sessions, ClickSessions):
        raise ClickModelError(f"sessions must be ClickSessions, got {type(sessions).__name__}")
    return sessions


def yandex_sessions(path: str | Path) -> ClickSessions:
    """The result pages of a Yandex WSCD click log (``yandex_wscd_train.txt``, ``_test.txt``).

    Read with :func:`features.importers.yandex.load` (so its rules hold: malformed
    records are skipped, a repeated click on a url keeps the first, clicks on urls not
    shown are dropped), one page per record in file order. The query is the importer's
    ``category_id`` (the query id without its region); query and url ids keep their
    numeric values rather than being renumbered, so the pages of the train and test
    files share ids. Raises the importer's ``DatasetError`` for a file it cannot read
    and :class:`ClickModelError` if pages differ in length or an id is not an integer.
    """
    from features.importers import yandex

    result = yandex.load(path)
    shown = result.impressions.select("impression_id", "request_id", "category_id",
                                      "item_id", "position", "ts")
    clicked = result.clicks.select("impression_id", pl.lit(True).alias("click")).unique(
        "impression_id")
    frame = (shown.join(clicked, on="impression_id", how="left")
             .with_columns(pl.col("click").fill_null(False))
             .sort("ts", "request_id", "position"))
    lengths = frame.group_by("request_id", maintain_order=True).len()["len"]
    if lengths.n_unique() != 1:
        raise ClickModelError(f"{path}: pages have {lengths.min()} to {lengths.max()} results; "
                              "ClickSessions needs one length")
    n, k = lengths.len(), int(lengths[0])
    ids = {}
    for column, name in (("category_id", "query"), ("item_id", "url")):
        values = frame[column].cast(pl.Int64, strict=False)
        if values.null_count():
            bad = frame.filter(values.is_null())[column][0]
            raise ClickModelError(f"{path}: {name} id {bad!r} is not an integer")
        ids[column] = values.to_numpy().reshape(n, k)
    positions = frame["position"].to_numpy().reshape(n, k)
    if not (positions == np.arange(k)).all():
        raise ClickModelError(f"{path}: pages do not hold positions 0..{k - 1}")
    return ClickSessions(ids["category_id"][:, 0], ids["item_id"],
                         frame["click"].to_numpy().reshape(n, k))


# ---------------------------------------------------------------------------------------------
# (query, document) pairs → parameter slots


class _Pairs:
    """The distinct (query, document) pairs of a model, sorted by (query, doc), and a lookup."""

    def __init__(self, queries: np.ndarray, docs: np.ndarray) -> None:
        self.queries, self.docs = queries, docs
        self._qv, self._dv = np.unique(queries), np.unique(docs)
        self._keys = (np.searchsorted(self._qv, queries) * self._dv.size
                      + np.searchsorted(self._dv, docs))
        if self._keys.size and not (np.diff(self._keys) > 0).all():
            raise ClickModelError("pairs must be distinct and sorted by (query, doc)")

    @classmethod
    def of(cls, queries: np.ndarray, docs: np.ndarray) -> tuple[_Pairs, np.ndarray]:
        """The pairs shown on pages, and each position's pair index ``(n, K)``."""
        qv, dv = np.unique(queries), np.unique(docs)
        keys = np.searchsorted(qv, queries)[:, None] * dv.size + np.searchsorted(dv, docs)
        unique, index = np.unique(keys, return_inverse=True)
        pairs = cls(qv[unique // dv.size], dv[unique % dv.size])
        return pairs, index.reshape(docs.shape)

    def __len__(self) -> int:
        return self.queries.size

    def lookup(self, queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
        """Pair index of each position ``(n, K)``, -1 for pairs not among these."""
        if self._keys.size == 0:
            return np.full(docs.shape, -1, np.int64)
        qi = np.minimum(np.searchsorted(self._qv, queries), self._qv.size - 1)
        di = np.minimum(np.searchsorted(self._dv, docs), self._dv.size - 1)
        keys = qi[:, None] * self._dv.size + di
        at = np.minimum(np.searchsorted(self._keys, keys), self._keys.size - 1)
        found = ((self._qv[qi] == queries)[:, None] & (self._dv[di] == docs)
                 & (self._keys[at] == keys))
        return np.where(found, at, -1)


# ---------------------------------------------------------------------------------------------
# Shared arithmetic


def _estimate(successes: np.ndarray | float, trials: np.ndarray | float,
              prior: tuple[float, float], fallback: float = _INIT) -> np.ndarray:
    """``(successes + a) / (trials + a + b)``; ``fallback`` where that is 0 / 0."""
    a, b = prior
    den = np.asarray(trials, np.float64) + a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (np.asarray(successes, np.float64) + a) / den
    return np.where(den > 0, out, fallback)


def _log_prior(theta: np.ndarray | float, prior: tuple[float, float]) -> float:
    """``Σ a log θ + b log(1 - θ)``: the log of the Beta prior the pseudo-counts stand for."""
    a, b = prior
    theta = np.asarray(theta, np.float64)
    total = 0.0
    if a:
        total += a * float(np.log(np.maximum(theta, _TINY)).sum())
    if b:
        total += b * float(np.log(np.maximum(1.0 - theta, _TINY)).sum())
    return total


def _observed_log_probs(clicks: np.ndarray, p_click: np.ndarray, floor: float) -> np.ndarray:
    """``log P(C_r = c_r)`` per position, each probability floored at ``floor``."""
    p = np.where(clicks, p_click, 1.0 - p_click)
    return np.log(np.clip(p, floor, 1.0))


def _last_click(clicks: np.ndarray) -> np.ndarray:
    """Index of each page's last click, -1 for pages without one."""
    k = clicks.shape[1]
    return np.where(clicks.any(axis=1), k - 1 - np.argmax(clicks[:, ::-1], axis=1), -1)


def _cascade_examination(attractiveness: np.ndarray, satisfaction: np.ndarray | float,
                         gamma: float) -> np.ndarray:
    """Marginal ``P(E_r = 1)`` of a top-down model: ``e_1 = 1``,
    ``e_{r+1} = e_r γ (1 - α_r σ_r)`` (cascade: ``γ = σ = 1``)."""
    keep = gamma * (1.0 - attractiveness * satisfaction)
    exam = np.ones_like(attractiveness)
    exam[:, 1:] = np.cumprod(keep[:, :-1], axis=1)
    return exam


def _plain(d: Any) -> dict[str, Any]:
    """A state dict with 0-d arrays (what ``numpy.load`` gives for scalars) as scalars."""
    if not isinstance(d, Mapping):
        raise ClickModelError(f"state dict must be a mapping, got {type(d).__name__}")
    return {k: v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v
            for k, v in d.items()}


def _check_fields(d: Mapping[str, Any], fmt: str, required: tuple[str, ...],
                  hyper: Mapping[str, Any]) -> None:
    """Refuse a state dict of another format, version or hyper-parameters, or lacking keys
    (hyper-parameters None are stored as NaN; every one compares as a float array)."""
    stored = {name: np.asarray(math.nan if mine is None else mine, np.float64)
              for name, mine in hyper.items()}
    check_state(d, fmt, _VERSION, required, stored, error=ClickModelError)


def _state_array(d: Mapping[str, Any], name: str, shape: tuple[int, ...] | None,
                 kind: str = "f") -> np.ndarray:
    a = d[name]
    if not isinstance(a, np.ndarray) or a.dtype.kind not in kind or a.ndim != 1:
        raise ClickModelError(f"state dict {name} must be a 1-d "
                              f"{'float' if kind == 'f' else 'integer'} array")
    if shape is not None and a.shape != shape:
        raise ClickModelError(f"state dict {name} must have shape {shape}, got {a.shape}")
    if kind == "f" and not np.isfinite(a).all():
        raise ClickModelError(f"state dict {name} has non-finite values")
    return a.copy()


def _state_probability(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu" or not np.isfinite(arr).all() or (
            (arr < 0) | (arr > 1)).any():
        raise ClickModelError(f"state dict {name} must be probabilities in [0, 1]")
    return np.array(arr, np.float64)


# ---------------------------------------------------------------------------------------------
# Models


class ClickModel:
    """What the three click models share: (query, document) parameters, evaluation, state.

    Subclasses set the per-pair attractiveness ``α`` in :meth:`fit` and define
    :meth:`click_probabilities`, :meth:`conditional_click_probabilities`,
    :meth:`examination_probabilities` and :meth:`simulate`.
    """

    _FORMAT: ClassVar[str] = ""
    _HYPER: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pseudo_counts: tuple[float, float] = (1.0, 1.0),
                 default_attractiveness: float | None = None) -> None:
        self.pseudo_counts = _pseudo_counts(pseudo_counts)
        self.default_attractiveness = _float_param(
            default_attractiveness, "default_attractiveness", 0.0, 1.0, optional=True)
        self._pairs: _Pairs | None = None
        self._alpha = np.zeros(0)
        self.default_attractiveness_ = math.nan
        self.history_: list[float] = []
        self.n_iter_ = 0
        self.converged_ = False

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, sessions: ClickSessions) -> Self:
        """Learn the parameters from ``sessions`` (replacing any learned before); ``self``."""
        sessions = _sessions(sessions)
        pairs, index = _Pairs.of(sessions.queries, sessions.docs)
        self._fit(sessions, pairs, index)
        self._pairs = pairs
        return self

    def _fit(self, sessions: ClickSessions, pairs: _Pairs, index: np.ndarray) -> None:
        raise NotImplementedError

    def _default_alpha(self, alpha: np.ndarray, index: np.ndarray) -> float:
        if self.default_attractiveness is not None:
            return self.default_attractiveness
        return float(alpha[index].mean())

    def _check_fitted(self) -> _Pairs:
        if self._pairs is None:
            raise ClickModelError(f"{type(self).__name__} is not fitted: call fit or "
                                  "load_state_dict first")
        return self._pairs

    def _per_position(self, values: np.ndarray, default: float, pages: Pages) -> np.ndarray:
        pairs = self._check_fitted()
        queries, docs = _pages(pages)
        index = pairs.lookup(queries, docs)
        return np.where(index >= 0, values[np.maximum(index, 0)] if values.size else default,
                        default)

    # -- reading parameters -----------------------------------------------------------------

    def attractiveness(self, pages: Pages) -> np.ndarray:
        """``α_qd`` of each shown position ``(n, K)`` (``default_attractiveness_`` for pairs
        not in the fitted sessions). ``pages``: sessions, or a ``(queries, docs)`` tuple."""
        return self._per_position(self._alpha, self.default_attractiveness_, pages)

    def params(self) -> dict[str, np.ndarray]:
        """The learned per-pair table: ``query``, ``doc`` and ``attractiveness`` (and, for
        DBN, ``satisfaction``), one entry per pair, sorted by (query, doc); copies."""
        pairs = self._check_fitted()
        return {"query": pairs.queries.copy(), "doc": pairs.docs.copy(),
                "attractiveness": self._alpha.copy()}

    # -- probabilities and evaluation --------------------------------------------------------

    def click_probabilities(self, pages: Pages) -> np.ndarray:
        """Marginal ``P(C_r = 1)`` of each shown position ``(n, K)``, conditioned on nothing."""
        raise NotImplementedError

    def conditional_click_probabilities(self, sessions: ClickSessions) -> np.ndarray:
        """``P(C_r = 1 | C_1, …, C_{r-1})`` of each position ``(n, K)``, given the clicks above."""
        raise NotImplementedError

    def examination_probabilities(self, attractiveness: Any = None) -> np.ndarray:
        """Marginal ``P(E_r = 1)``; see the subclass."""
        raise NotImplementedError

    def _log_likelihoods(self, sessions: ClickSessions, floor: float) -> np.ndarray:
        """``log P(clicks of the page)`` per page, each click's probability floored."""
        q = self.conditional_click_probabilities(sessions)
        return _observed_log_probs(sessions.clicks, q, floor).sum(axis=1)

    def log_likelihood(self, sessions: ClickSessions) -> float:
        """Mean over pages of ``log P(C_1, …, C_K)`` (nats), probabilities floored at
        :data:`PROB_MIN`."""
        sessions = _sessions(sessions)
        return float(self._log_likelihoods(sessions, PROB_MIN).mean())

    def perplexity(self, sessions: ClickSessions, *, conditional: bool = False) -> np.ndarray:
        """Per-position perplexity ``2 ** -mean_s log2 P(C_r = c_r)`` ``(K,)``; its mean is the
        model's perplexity. ``P`` is the marginal click probability (the book's and PyClick's
        ``Perplexity``), or with ``conditional=True`` the one given the clicks above
        (PyClick's ``PerplexityCond``); floored at :data:`PROB_MIN`."""
        sessions = _sessions(sessions)
        q = (self.conditional_click_probabilities(sessions) if conditional
             else self.click_probabilities(sessions))
        log2 = _observed_log_probs(sessions.clicks, q, PROB_MIN) / math.log(2.0)
        return np.exp2(-log2.mean(axis=0))

    # -- state ---------------------------------------------------------------------------

    def _hyper(self) -> dict[str, Any]:
        """Hyper-parameters as plain scalars / arrays (None → NaN)."""
        out: dict[str, Any] = {}
        for name in self._HYPER:
            value = getattr(self, name)
            if name == "pseudo_counts":
                value = np.array(value, np.float64)
            elif value is None:
                value = math.nan
            out[name] = value
        return out

    def _learned(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Format, version, hyper-parameters and the learned parameters: numpy arrays and
        plain scalars / strings only (no pickle needed to write or read it)."""
        pairs = self._check_fitted()
        return {
            "format": self._FORMAT,
            "version": _VERSION,
            **self._hyper(),
            "queries": pairs.queries.copy(),
            "docs": pairs.docs.copy(),
            "alpha": self._alpha.copy(),
            "default_alpha": self.default_attractiveness_,
            "history": np.array(self.history_, np.float64),
            "n_iter": self.n_iter_,
            "converged": bool(self.converged_),
            **self._learned(),
        }

    _LEARNED: ClassVar[tuple[str, ...]] = ()

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Replace the learned parameters with ``d`` (from :meth:`state_dict`); nothing
        changes if ``d`` is refused (another format, version or hyper-parameters, or
        arrays of the wrong shape or values)."""
        d = _plain(d)
        hyper = {name: getattr(self, name) for name in self._HYPER}
        required = ("queries", "docs", "alpha", "default_alpha", "history", "n_iter",
                    "converged", *self._LEARNED)
        _check_fields(d, self._FORMAT, required, hyper)
        queries = _state_array(d, "queries", None, "iu").astype(np.int64)
        docs = _state_array(d, "docs", queries.shape, "iu").astype(np.int64)
        pairs = _Pairs(queries, docs)
        alpha = _state_probability(_state_array(d, "alpha", queries.shape), "alpha")
        default = float(_state_probability(d["default_alpha"], "default_alpha"))
        history = [float(v) for v in _state_array(d, "history", None)]
        n_iter = _int_param(d["n_iter"], "state dict n_iter", 0)
        if not isinstance(d["converged"], bool | np.bool_):
            raise ClickModelError(f"state dict converged must be a bool, got {d['converged']!r}")
        learned = self._load_learned(d, queries.shape)
        self._pairs, self._alpha, self.default_attractiveness_ = pairs, alpha, default
        self.history_, self.n_iter_, self.converged_ = history, n_iter, bool(d["converged"])
        for name, value in learned.items():
            setattr(self, name, value)

    def _load_learned(self, d: Mapping[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> Self:
        """A model with the hyper-parameters recorded in ``d`` and its learned parameters."""
        d = _plain(d)
        try:
            params = {name: d[name] for name in cls._HYPER}
        except KeyError as e:
            raise ClickModelError(f"state dict lacks hyper-parameter {e}") from None
        for name, value in params.items():
            if name == "pseudo_counts":
                params[name] = tuple(np.asarray(value, np.float64).tolist())
            elif isinstance(value, float) and math.isnan(value):
                params[name] = None
        model = cls(**params)
        model.load_state_dict(d)
        return model

    def __repr__(self) -> str:
        hyper = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._HYPER)
        return f"{type(self).__name__}({hyper})"


class PositionBasedModel(ClickModel):
    """PBM: ``P(C_r = 1) = γ_r α_qd``; examination depends on the position only.

    Fitted by EM (Chuklin et al. 2015, sec. 4.1): for a skipped result the posteriors
    are ``P(A = 1 | C = 0) = α(1 - γ) / (1 - γα)`` and
    ``P(E = 1 | C = 0) = γ(1 - α) / (1 - γα)`` (both 1 for a click), and ``α`` and
    ``γ_r`` are their smoothed means. Iterates until the objective gains less than
    ``tol`` per session, at most ``iterations`` times.

    Only the products ``γ_r α_qd`` are identified by clicks: ``(c γ, α / c)`` explains
    the data as well, within ``[0, 1]``; the pseudo-counts (and EM's start) pick the
    scale. Compare ``γ`` across positions as ratios.

    Learned: ``gamma_`` (``(K,)``, per position), per-pair ``α`` (:meth:`params`,
    :meth:`attractiveness`), ``default_attractiveness_``. Pages given to it later may
    have at most the fitted ``K`` positions (the first ones are used).

    >>> rng = np.random.default_rng(1)
    >>> docs = np.array([rng.permutation(3) for _ in range(20_000)])
    >>> alpha = np.array([0.8, 0.5, 0.2])
    >>> truth = PositionBasedModel()
    >>> clicks = truth.simulate(alpha[docs], rng, gamma=[0.9, 0.6, 0.3])
    >>> model = PositionBasedModel().fit(ClickSessions(np.zeros(20_000, int), docs, clicks))
    >>> np.round(model.gamma_ / model.gamma_[0], 1)  # the ratios γ_r / γ_1 of the truth
    array([1. , 0.7, 0.3])
    """

    _FORMAT = "streamctr.replay.click_models.pbm"
    _HYPER = ("iterations", "tol", "pseudo_counts", "default_attractiveness")
    _LEARNED = ("gamma",)

    def __init__(self, iterations: int = 200, tol: float = 1e-7,
                 pseudo_counts: tuple[float, float] = (1.0, 1.0),
                 default_attractiveness: float | None = None) -> None:
        super().__init__(pseudo_counts, default_attractiveness)
        self.iterations = _int_param(iterations, "iterations", 1)
        self.tol = _float_param(tol, "tol", 0.0, math.inf)
        self.gamma_ = np.zeros(0)

    def _objective(self, clicks: np.ndarray, alpha: np.ndarray, gamma: np.ndarray,
                   index: np.ndarray) -> float:
        ll = _observed_log_probs(clicks, gamma * alpha[index], _TINY).sum()
        prior = _log_prior(alpha, self.pseudo_counts) + _log_prior(gamma, self.pseudo_counts)
        return float((ll + prior) / clicks.shape[0])

    def _fit(self, sessions: ClickSessions, pairs: _Pairs, index: np.ndarray) -> None:
        clicks, prior = sessions.clicks, self.pseudo_counts
        n, k = clicks.shape
        flat = index.ravel()
        shown = np.bincount(flat, minlength=len(pairs))
        alpha, gamma = np.full(len(pairs), _INIT), np.full(k, _INIT)
        history = [self._objective(clicks, alpha, gamma, index)]
        converged = False
        for _ in range(self.iterations):
            a = alpha[index]
            skip = np.maximum(1.0 - gamma * a, _TINY)
            post_a = np.where(clicks, 1.0, a * (1.0 - gamma) / skip)
            post_e = np.where(clicks, 1.0, gamma * (1.0 - a) / skip)
            alpha = _estimate(np.bincount(flat, post_a.ravel(), len(pairs)), shown, prior)
            gamma = _estimate(post_e.sum(axis=0), n, prior)
            history.append(self._objective(clicks, alpha, gamma, index))
            if history[-1] - history[-2] < self.tol:
                converged = True
                break
        self._alpha, self.gamma_ = alpha, gamma
        self.default_attractiveness_ = self._default_alpha(alpha, index)
        self.history_, self.n_iter_, self.converged_ = history, len(history) - 1, converged

    def _gamma(self, k: int, gamma: Any = None) -> np.ndarray:
        if gamma is None:
            self._check_fitted()
            gamma = self.gamma_
        g = np.asarray(gamma, np.float64)
        if g.ndim != 1 or not np.isfinite(g).all() or ((g < 0) | (g > 1)).any():
            raise ClickModelError("gamma must be a 1-d array of probabilities in [0, 1]")
        if g.size < k:
            raise ClickModelError(f"pages have {k} positions, the model examines {g.size}")
        return g[:k]

    def click_probabilities(self, pages: Pages) -> np.ndarray:
        """``γ_r α_qd`` of each shown position ``(n, K)``."""
        alpha = self.attractiveness(pages)
        return self._gamma(alpha.shape[1]) * alpha

    def conditional_click_probabilities(self, sessions: ClickSessions) -> np.ndarray:
        """Equal to :meth:`click_probabilities`: PBM's positions are independent."""
        return self.click_probabilities(_sessions(sessions))

    def examination_probabilities(self, attractiveness: Any = None) -> np.ndarray:
        """``γ_r`` ``(K,)`` (a copy); with ``attractiveness`` ``(n, K)``, the same broadcast to
        its shape (PBM's examination does not depend on what is shown)."""
        if attractiveness is None:
            self._check_fitted()
            return self.gamma_.copy()
        a = _probabilities(attractiveness, "attractiveness")
        return np.broadcast_to(self._gamma(a.shape[1]), a.shape).copy()

    def simulate(self, attractiveness: Any, rng: np.random.Generator | int, *,
                 gamma: Any = None) -> np.ndarray:
        """Clicks ``(n, K)``: position ``r`` is examined with ``γ_r`` (the fitted ``gamma_``, or
        ``gamma`` given, at least ``K`` long) and an examined one clicked with its
        attractiveness, independently."""
        a = _probabilities(attractiveness, "attractiveness")
        g = self._gamma(a.shape[1], gamma)
        return _rng(rng).random(a.shape) < g * a

    def _learned(self) -> dict[str, Any]:
        return {"gamma": self.gamma_.copy()}

    def _load_learned(self, d: Mapping[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
        gamma = _state_probability(_state_array(d, "gamma", None), "gamma")
        if gamma.size < 1:
            raise ClickModelError("state dict gamma must have at least one position")
        return {"gamma_": gamma}


class CascadeModel(ClickModel):
    """Cascade model: scan top-down, click an examined result with ``α_qd``, stop at the click.

    ``P(C_r = 1) = α_r Π_{i<r} (1 - α_i)``. The model allows one click per page; real
    logs have more. As PyClick's CM does (following the book's MLE), a page is used
    down to its *first* click: the positions at or above it were examined (skipped
    ones unattractive, the clicked one attractive), the positions below it are
    unobserved and ignored. The fit is the closed-form MLE
    ``α_qd = clicks / examinations`` over those positions (with the pseudo-counts);
    ``history_`` holds its objective (one entry): the log-likelihood of the pages cut
    after their first click. Evaluated on a full page, a click below the first is
    impossible under the model, and :meth:`log_likelihood` floors its probability at
    :data:`PROB_MIN` (PyClick floors every position below the first click, clicked or
    not; here an unclicked one has probability 1, as the model says).

    Learned: per-pair ``α`` and ``examination_`` — the marginal ``P(E_r = 1)`` averaged
    over the fitted pages — returned by :meth:`examination_probabilities` without
    arguments.
    """

    _FORMAT = "streamctr.replay.click_models.cascade"
    _HYPER = ("pseudo_counts", "default_attractiveness")
    _LEARNED = ("examination",)

    def __init__(self, pseudo_counts: tuple[float, float] = (1.0, 1.0),
                 default_attractiveness: float | None = None) -> None:
        super().__init__(pseudo_counts, default_attractiveness)
        self.examination_ = np.zeros(0)

    def _fit(self, sessions: ClickSessions, pairs: _Pairs, index: np.ndarray) -> None:
        clicks = sessions.clicks
        seen = (np.cumsum(clicks, axis=1) - clicks) == 0  # at or above the first click
        examined = np.bincount(index[seen], minlength=len(pairs))
        clicked = np.bincount(index[seen & clicks], minlength=len(pairs))
        pooled = clicked.sum() / max(examined.sum(), 1)
        alpha = _estimate(clicked, examined, self.pseudo_counts, fallback=pooled)
        a = alpha[index]
        ll = np.where(seen, _observed_log_probs(clicks, a, _TINY), 0.0).sum()
        objective = (ll + _log_prior(alpha, self.pseudo_counts)) / clicks.shape[0]
        self._alpha = alpha
        self.examination_ = _cascade_examination(a, 1.0, 1.0).mean(axis=0)
        self.default_attractiveness_ = self._default_alpha(alpha, index)
        self.history_, self.n_iter_, self.converged_ = [float(objective)], 0, True

    def click_probabilities(self, pages: Pages) -> np.ndarray:
        """``α_r Π_{i<r} (1 - α_i)`` of each shown position ``(n, K)``."""
        a = self.attractiveness(pages)
        return a * _cascade_examination(a, 1.0, 1.0)

    def conditional_click_probabilities(self, sessions: ClickSessions) -> np.ndarray:
        """``α_r`` down to the first click, 0 below it (the user has left)."""
        sessions = _sessions(sessions)
        a = self.attractiveness(sessions)
        above = np.cumsum(sessions.clicks, axis=1) - sessions.clicks
        return np.where(above == 0, a, 0.0)

    def examination_probabilities(self, attractiveness: Any = None) -> np.ndarray:
        """Marginal ``P(E_r = 1) = Π_{i<r} (1 - α_i)``: averaged over the fitted pages
        ``(K,)`` without arguments, else of each page of ``attractiveness`` ``(n, K)``."""
        if attractiveness is None:
            self._check_fitted()
            return self.examination_.copy()
        return _cascade_examination(_probabilities(attractiveness, "attractiveness"), 1.0, 1.0)

    def simulate(self, attractiveness: Any, rng: np.random.Generator | int) -> np.ndarray:
        """Clicks ``(n, K)``: scan top-down, click the first result that attracts (with its
        attractiveness), stop there — at most one click per page. Needs no fitted model."""
        a = _probabilities(attractiveness, "attractiveness")
        attracted = _rng(rng).random(a.shape) < a
        first = np.argmax(attracted, axis=1)
        clicks = np.zeros(a.shape, np.bool_)
        rows = np.flatnonzero(attracted.any(axis=1))
        clicks[rows, first[rows]] = True
        return clicks

    def _learned(self) -> dict[str, Any]:
        return {"examination": self.examination_.copy()}

    def _load_learned(self, d: Mapping[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
        exam = _state_probability(_state_array(d, "examination", None), "examination")
        return {"examination_": exam}


class DynamicBayesianNetwork(ClickModel):
    """DBN (Chapelle and Zhang 2009): attractiveness ``α_qd``, satisfaction ``σ_qd``,
    continuation ``γ``.

    The user examines position 1; an examined result is clicked with ``α_qd``; after a
    click the user is satisfied with ``σ_qd`` and stops; a user not satisfied (after a
    click or a skip) examines the next position with probability ``γ``, else abandons.
    ``P(E_{r+1} = 1) = P(E_r = 1) γ (1 - α_r σ_r)`` and ``P(C_r = 1) = P(E_r = 1) α_r``.

    EM (exact E-step): positions down to a page's last click were examined; below it,
    with ``X_r = P(no click from r on | E_r = 1)`` from the bottom up and the chance
    ``ρ`` of examining the position after the last click (``(1 - σ) γ``; 1 for a page
    without clicks), ``P(E_r = 1 | clicks) = ρ Π (1 - α) γ · X_r / (1 - ρ + ρ X)``.
    From these, ``α`` is the smoothed mean of ``P(A = 1 | clicks)`` over impressions,
    ``σ`` of ``P(S = 1 | clicks)`` over clicks (only the last click of a page may have
    satisfied), and ``γ`` the smoothed ratio of expected continuations to the expected
    chances to continue (examined, not satisfied, not at the bottom). With
    ``gamma=`` a number, ``γ`` is fixed (as in the paper's experiments) and only ``α``,
    ``σ`` are learned. Stops when the objective gains less than ``tol`` per session, or
    after ``iterations``.

    Learned: per-pair ``α`` and ``σ`` (:meth:`params`, :meth:`attractiveness`,
    :meth:`satisfaction`), ``gamma_``, the defaults for unseen pairs, and
    ``examination_`` (marginal ``P(E_r = 1)`` averaged over the fitted pages).

    >>> rng = np.random.default_rng(2)
    >>> docs = np.array([rng.permutation(4) for _ in range(20_000)])
    >>> alpha, sigma = np.array([0.7, 0.5, 0.3, 0.1]), np.array([0.6, 0.4, 0.2, 0.1])
    >>> clicks = DynamicBayesianNetwork().simulate(alpha[docs], rng, satisfaction=sigma[docs],
    ...                                            gamma=0.8)
    >>> model = DynamicBayesianNetwork().fit(ClickSessions(np.zeros(20_000, int), docs, clicks))
    >>> round(model.gamma_, 1), np.round(model.params()["attractiveness"], 1)
    (0.8, array([0.7, 0.5, 0.3, 0.1]))
    """

    _FORMAT = "streamctr.replay.click_models.dbn"
    _HYPER = ("iterations", "tol", "pseudo_counts", "gamma", "default_attractiveness",
              "default_satisfaction")
    _LEARNED = ("sigma", "default_sigma", "gamma_value", "examination")

    def __init__(self, iterations: int = 200, tol: float = 1e-7,
                 pseudo_counts: tuple[float, float] = (1.0, 1.0), gamma: float | None = None,
                 default_attractiveness: float | None = None,
                 default_satisfaction: float | None = None) -> None:
        super().__init__(pseudo_counts, default_attractiveness)
        self.iterations = _int_param(iterations, "iterations", 1)
        self.tol = _float_param(tol, "tol", 0.0, math.inf)
        self.gamma = _float_param(gamma, "gamma", 0.0, 1.0, optional=True)
        self.default_satisfaction = _float_param(
            default_satisfaction, "default_satisfaction", 0.0, 1.0, optional=True)
        self._sigma = np.zeros(0)
        self.default_satisfaction_ = math.nan
        self.gamma_ = math.nan if gamma is None else self.gamma
        self.examination_ = np.zeros(0)

    # -- the E-step and the objective ------------------------------------------------------

    @staticmethod
    def _conditional(clicks: np.ndarray, a: np.ndarray, s: np.ndarray,
                     gamma: float) -> np.ndarray:
        """Forward filter: ``P(C_r = 1 | clicks above)`` ``(n, K)``."""
        n, k = clicks.shape
        q = np.empty((n, k))
        exam = np.ones(n)  # P(E_r = 1 | clicks above r)
        for r in range(k):
            q[:, r] = exam * a[:, r]
            skipped = exam * (1.0 - a[:, r]) / np.maximum(1.0 - q[:, r], _TINY)
            exam = gamma * np.where(clicks[:, r], 1.0 - s[:, r], skipped)
        return q

    def _objective(self, clicks: np.ndarray, alpha: np.ndarray, sigma: np.ndarray,
                   gamma: float, index: np.ndarray) -> float:
        q = self._conditional(clicks, alpha[index], sigma[index], gamma)
        ll = _observed_log_probs(clicks, q, _TINY).sum()
        prior = _log_prior(alpha, self.pseudo_counts) + _log_prior(sigma, self.pseudo_counts)
        if self.gamma is None:
            prior += _log_prior(gamma, self.pseudo_counts)
        return float((ll + prior) / clicks.shape[0])

    @staticmethod
    def _posteriors(clicks: np.ndarray, a: np.ndarray, s: np.ndarray, gamma: float
                    ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """E-step: ``P(A_r = 1 | C)``, ``P(S_r = 1 | C)`` (clicked positions), and the
        expected continuations and chances to continue, summed over pages."""
        n, k = clicks.shape
        rows = np.arange(n)
        pos = np.arange(k)[None, :]
        last = _last_click(clicks)
        clicked = last >= 0
        start = last + 1  # first position of the click-free tail
        # X[:, r] = P(no click at r or below | E_r = 1); X[:, k] = 1.
        no_click = np.ones((n, k + 1))
        for r in range(k - 1, -1, -1):
            no_click[:, r] = (1.0 - a[:, r]) * (1.0 - gamma + gamma * no_click[:, r + 1])
        s_last = np.where(clicked, s[rows, np.maximum(last, 0)], 0.0)
        reach = np.where(clicked, (1.0 - s_last) * gamma, 1.0)  # P(E_start = 1 | past)
        norm = np.maximum(1.0 - reach + reach * no_click[rows, start], _TINY)
        # prior[:, r] = P(E_r = 1, no click in start..r-1 | past), for r >= start
        prior = np.where(start == 0, reach, 0.0)[:, None] * np.ones((1, k))
        for r in range(1, k):
            carried = prior[:, r - 1] * (1.0 - a[:, r - 1]) * gamma
            prior[:, r] = np.where(r == start, reach, np.where(r > start, carried, 0.0))
        below = pos > last[:, None]
        exam = np.where(below, prior * no_click[:, :k] / norm[:, None], 1.0)
        post_a = np.where(clicks, 1.0, np.where(below, a * (1.0 - exam), 0.0))
        post_s = np.where(clicks & (pos == last[:, None]), s / norm[:, None], 0.0)
        # chances to continue: examined and not satisfied, at positions 1..K-1
        at_last = (1.0 - s) * (1.0 - gamma + gamma * no_click[:, 1:]) / norm[:, None]
        chance = np.where(pos < last[:, None], 1.0,
                          np.where(pos == last[:, None], at_last, exam))
        return post_a, post_s, float(exam[:, 1:].sum()), float(chance[:, :-1].sum())

    def _fit(self, sessions: ClickSessions, pairs: _Pairs, index: np.ndarray) -> None:
        clicks, prior = sessions.clicks, self.pseudo_counts
        m = len(pairs)
        flat, flat_clicks = index.ravel(), index[clicks]
        shown = np.bincount(flat, minlength=m)
        clicked = np.bincount(flat_clicks, minlength=m)
        alpha, sigma = np.full(m, _INIT), np.full(m, _INIT)
        gamma = _INIT if self.gamma is None else self.gamma
        history = [self._objective(clicks, alpha, sigma, gamma, index)]
        converged = False
        for _ in range(self.iterations):
            post_a, post_s, moved, chances = self._posteriors(
                clicks, alpha[index], sigma[index], gamma)
            alpha = _estimate(np.bincount(flat, post_a.ravel(), m), shown, prior)
            sigma = _estimate(np.bincount(flat_clicks, post_s[clicks], m), clicked, prior)
            if self.gamma is None:
                gamma = float(_estimate(moved, chances, prior))
            history.append(self._objective(clicks, alpha, sigma, gamma, index))
            if history[-1] - history[-2] < self.tol:
                converged = True
                break
        self._alpha, self._sigma, self.gamma_ = alpha, sigma, gamma
        self.default_attractiveness_ = self._default_alpha(alpha, index)
        self.default_satisfaction_ = (
            self.default_satisfaction if self.default_satisfaction is not None
            else float(sigma[flat_clicks].mean()) if flat_clicks.size
            else float(_estimate(0.0, 0.0, prior)))
        self.examination_ = _cascade_examination(alpha[index], sigma[index], gamma).mean(axis=0)
        self.history_, self.n_iter_, self.converged_ = history, len(history) - 1, converged

    # -- reading parameters -----------------------------------------------------------------

    def satisfaction(self, pages: Pages) -> np.ndarray:
        """``σ_qd`` of each shown position ``(n, K)`` (``default_satisfaction_`` for pairs
        not in the fitted sessions)."""
        return self._per_position(self._sigma, self.default_satisfaction_, pages)

    def params(self) -> dict[str, np.ndarray]:
        out = super().params()
        out["satisfaction"] = self._sigma.copy()
        return out

    params.__doc__ = ClickModel.params.__doc__

    def _gamma(self, gamma: Any = None) -> float:
        if gamma is None:
            if self.gamma is not None:
                return self.gamma
            self._check_fitted()
            return float(self.gamma_)
        g = _float_param(gamma, "gamma", 0.0, 1.0)
        assert g is not None
        return g

    # -- probabilities -----------------------------------------------------------------------

    def click_probabilities(self, pages: Pages) -> np.ndarray:
        """``P(E_r = 1) α_r`` of each shown position ``(n, K)``."""
        a, s = self.attractiveness(pages), self.satisfaction(pages)
        return a * _cascade_examination(a, s, self._gamma())

    def conditional_click_probabilities(self, sessions: ClickSessions) -> np.ndarray:
        """``P(E_r = 1 | clicks above) α_r`` of each position ``(n, K)``."""
        sessions = _sessions(sessions)
        return self._conditional(sessions.clicks, self.attractiveness(sessions),
                                 self.satisfaction(sessions), self._gamma())

    def examination_probabilities(self, attractiveness: Any = None,
                                  satisfaction: Any = None) -> np.ndarray:
        """Marginal ``P(E_r = 1)``: averaged over the fitted pages ``(K,)`` without arguments,
        else of each page of ``attractiveness`` ``(n, K)`` with ``satisfaction`` (default:
        the attractiveness, as in :meth:`simulate`) and the fitted (or fixed) ``γ``."""
        if attractiveness is None:
            self._check_fitted()
            return self.examination_.copy()
        a = _probabilities(attractiveness, "attractiveness")
        s = a if satisfaction is None else _probabilities(satisfaction, "satisfaction", a.shape)
        return _cascade_examination(a, s, self._gamma())

    def simulate(self, attractiveness: Any, rng: np.random.Generator | int, *,
                 satisfaction: Any = None, gamma: float | None = None) -> np.ndarray:
        """Clicks ``(n, K)``: examine top-down from position 1; click an examined result with
        its attractiveness; after a click stop with probability ``satisfaction`` (a scalar or
        ``(n, K)``; default: the attractiveness itself — a result that attracts more also
        satisfies more); if not stopped, go on with ``γ`` (``gamma`` given, else the fixed or
        fitted one)."""
        a = _probabilities(attractiveness, "attractiveness")
        s = a if satisfaction is None else _probabilities(satisfaction, "satisfaction", a.shape)
        g = self._gamma(gamma)
        gen = _rng(rng)
        n, k = a.shape
        u = gen.random((3, n, k))
        clicks = np.zeros((n, k), np.bool_)
        exam = np.ones(n, np.bool_)
        for r in range(k):
            clicks[:, r] = exam & (u[0, :, r] < a[:, r])
            satisfied = clicks[:, r] & (u[1, :, r] < s[:, r])
            exam = exam & ~satisfied & (u[2, :, r] < g)
        return clicks

    # -- state ---------------------------------------------------------------------------

    def _learned(self) -> dict[str, Any]:
        return {"sigma": self._sigma.copy(), "default_sigma": self.default_satisfaction_,
                "gamma_value": float(self.gamma_), "examination": self.examination_.copy()}

    def _load_learned(self, d: Mapping[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
        sigma = _state_probability(_state_array(d, "sigma", shape), "sigma")
        return {
            "_sigma": sigma,
            "default_satisfaction_": float(_state_probability(d["default_sigma"],
                                                              "default_sigma")),
            "gamma_": float(_state_probability(d["gamma_value"], "gamma_value")),
            "examination_": _state_probability(_state_array(d, "examination", None),
                                               "examination"),
        }


# Name (as ``streamctr interleave --click-model`` takes it) -> model class.
CLICK_MODELS: dict[str, type[ClickModel]] = {
    "pbm": PositionBasedModel,
    "cascade": CascadeModel,
    "dbn": DynamicBayesianNetwork,
}
