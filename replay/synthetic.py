"""Synthetic impression/click stream with a known ground truth.

The stream has the columns of design.md ("Events") and comes with the true click
probability of every impression, so a learner's scores can be compared with the
best possible ones. Everything is drawn with numpy from one seed (no Python loop
per event), so ``generate(n, seed)`` returns identical frames for identical
arguments.

The model of the world
----------------------
All symbols are fields of :class:`SyntheticConfig`; ``C`` = ``n_categories``.

* **Items.** Item ``i`` belongs to one category ``c(i)`` (category sizes Zipf with
  ``category_zipf``; every category has at least one item), has a popularity
  weight (Zipf with ``item_zipf`` over a random ranking of the items) and a quality
  ``q_i ~ Normal(0, item_quality_std)``.
* **Users.** User ``u`` has lifelong interests ``theta_u ~ Dirichlet(interest_concentration)``
  over the categories and the affinity
  ``a_uc = affinity_strength * clip(ln(C * theta_uc), -3, 3)``, a primary device
  (drawn with ``device_weights``) and an activity weight (Zipf with ``user_zipf``).
* **Drift.** At time ``t`` user ``u`` has one boosted category
  ``d_u(t) = (o_u + s_u * floor((t - start_ms + phi_u) / drift_period_ms)) mod C``
  with a random offset ``o_u``, step ``s_u`` in ``1..C-1`` and phase ``phi_u``; so the
  short-term interest jumps to another category once per period, at a different
  moment for every user. Items of ``d_u(t)`` get ``+drift_strength`` on the logit.
* **Requests.** Request times form a Poisson process (exponential gaps with mean
  ``mean_gap_ms``, ms resolution, non-decreasing). Each request picks a user by
  activity, a device (the user's primary one with probability ``device_loyalty``,
  else one drawn with ``device_weights``) and a page (drawn with ``page_weights``);
  both are the request's ``context``. The request shows ``list_length`` distinct
  items: each slot is, with probability ``popular_mix``, a popular item (drawn by
  popularity from all items), with probability ``drift_mix`` an item of the
  boosted category ``d_u(t)``, else an item of a category drawn from ``theta_u``
  (items inside a category drawn by popularity).
* **Click model.** The relevance logit of a slot is
  ``l = a_{u,c(i)} + drift_strength * [c(i) = d_u(t)] + q_i
  + device_effects[device] + page_effects[page]
  + hour_effect * cos(2 pi (hour - peak_hour) / 24) + base_logit``, where ``hour`` is
  the UTC hour of ``ts``. The diurnal term is deliberately not in the context: it is
  an unobserved non-stationarity (an hour-of-day feature would also take a new value
  every hour of a stream shorter than a day, and be cold each time).
  A noisy ranker orders the slots of a request by ``ranker_skill * l + Normal(0, 1)``
  (descending) into positions ``0..list_length-1``, and the true click probability
  is ``p = (1 + position) ** -position_decay * sigmoid(l)``; the click is
  ``Bernoulli(p)``. This ``p`` is ``truth.p_click``, and ``sigmoid(l)``, the click
  probability of the slot if it were shown first, ``truth.relevance`` (the ground truth
  of rankers compared by interleaving, :mod:`replay.simulation`).
* **Click delay.** Lognormal with median ``click_delay_median_ms`` and log-sd
  ``click_delay_sigma``; with probability ``late_click_fraction`` instead
  ``late_click_min_ms`` plus an exponential with mean ``late_click_mean_extra_ms``
  (clicks a 15-minute join window misses). Every delay is at least 1 ms, so a click's
  ``ts`` is always after its impression's.

Delivery faults (what a joiner must survive): a fraction ``duplicate_impression_rate``
of impressions and ``duplicate_click_rate`` of clicks appear twice (exact copies,
right after the original in ts order); ``orphan_click_rate`` times the number of
clicks extra clicks name impression ids that do not exist (``imp-`` followed by a
number past the last impression); and a fraction ``out_of_order_rate`` of rows of
each file is delivered late: the files are sorted by ``ts`` except for those rows,
which sit where ``ts + Uniform(1 s, max_delivery_lag_ms)`` would put them.

>>> stream = generate(3_000, seed=7)
>>> stream.impressions.columns
['impression_id', 'request_id', 'user_id', 'item_id', 'category_id', 'position', 'ts', 'context']
>>> stream.clicks.columns, stream.truth.columns
(['impression_id', 'user_id', 'ts'], ['impression_id', 'p_click', 'clicked', 'relevance'])
>>> 3_000 - 40 < stream.n_events <= 3_000
True
>>> stream.truth.height == stream.impressions["impression_id"].n_unique()
True
>>> stream.impressions["context"][0]
{'device': 'ios', 'page': 'detail'}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["SyntheticConfig", "SyntheticStream", "generate", "write_stream"]

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
_AFFINITY_CLIP = 3.0
_DEDUP_ROUNDS = 20


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic world (see the module docstring for the model).

    The defaults give an overall CTR of about 5 %, a position-0 CTR over ten times
    the position-9 CTR, about 2 % of clicks later than 15 minutes, and about 26 hours
    of event time per million events.
    """

    # World.
    n_users: int = 5_000
    n_items: int = 2_000
    n_categories: int = 24
    category_zipf: float = 0.8
    item_zipf: float = 1.0
    user_zipf: float = 0.8
    interest_concentration: float = 0.3
    affinity_strength: float = 0.5
    item_quality_std: float = 0.5
    drift_strength: float = 1.0
    drift_period_ms: int = 2 * HOUR_MS
    # Requests.
    list_length: int = 10
    start_ms: int = 1_704_067_200_000  # 2024-01-01T00:00:00Z
    mean_gap_ms: float = 1_000.0
    popular_mix: float = 0.25
    drift_mix: float = 0.15
    ranker_skill: float = 0.5
    # Clicks.
    position_decay: float = 0.7
    base_logit: float = -2.6
    click_delay_median_ms: float = 30_000.0
    click_delay_sigma: float = 1.0
    late_click_fraction: float = 0.02
    late_click_min_ms: int = 15 * MINUTE_MS
    late_click_mean_extra_ms: float = 30 * MINUTE_MS
    # Context.
    devices: tuple[str, ...] = ("ios", "android", "web")
    device_weights: tuple[float, ...] = (0.45, 0.40, 0.15)
    device_effects: tuple[float, ...] = (0.1, -0.1, 0.0)
    device_loyalty: float = 0.9
    pages: tuple[str, ...] = ("feed", "search", "detail")
    page_weights: tuple[float, ...] = (0.6, 0.25, 0.15)
    page_effects: tuple[float, ...] = (0.0, 0.4, -0.3)
    # Unobserved diurnal effect (the hour is not a context field).
    hour_effect: float = 0.2
    peak_hour: int = 20
    # Delivery faults.
    duplicate_impression_rate: float = 0.005
    duplicate_click_rate: float = 0.02
    out_of_order_rate: float = 0.01
    max_delivery_lag_ms: int = 120_000
    orphan_click_rate: float = 0.002

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                if isinstance(value, bool) or not isinstance(value, int | np.integer):
                    raise ValueError(f"{f.name} must be an integer, got {value!r}")
            elif f.type == "float":
                if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                    raise ValueError(f"{f.name} must be a number, got {value!r}")
                if not math.isfinite(value):
                    raise ValueError(f"{f.name} must be finite, got {value!r}")
        positive = ("n_users", "n_items", "n_categories", "list_length", "drift_period_ms",
                    "mean_gap_ms", "interest_concentration", "click_delay_median_ms",
                    "click_delay_sigma", "max_delivery_lag_ms")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        non_negative = ("category_zipf", "item_zipf", "user_zipf", "affinity_strength",
                        "item_quality_std", "drift_strength", "start_ms", "ranker_skill",
                        "position_decay", "late_click_min_ms", "late_click_mean_extra_ms")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        probabilities = ("popular_mix", "drift_mix", "late_click_fraction", "device_loyalty",
                         "duplicate_impression_rate", "duplicate_click_rate",
                         "out_of_order_rate", "orphan_click_rate")
        for name in probabilities:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.popular_mix + self.drift_mix > 1.0:
            raise ValueError("popular_mix + drift_mix must be <= 1")
        if self.n_categories > self.n_items:
            raise ValueError(f"n_categories ({self.n_categories}) must be <= n_items "
                             f"({self.n_items})")
        if self.list_length > self.n_items:
            raise ValueError(f"list_length ({self.list_length}) must be <= n_items "
                             f"({self.n_items})")
        if not 0 <= self.peak_hour <= 23:
            raise ValueError(f"peak_hour must be in 0..23, got {self.peak_hour!r}")
        if self.max_delivery_lag_ms <= 1_000:
            raise ValueError(f"max_delivery_lag_ms must be > 1000, got {self.max_delivery_lag_ms}")
        _check_categorical("device", self.devices, self.device_weights, self.device_effects)
        _check_categorical("page", self.pages, self.page_weights, self.page_effects)


def _check_categorical(
    field: str, values: tuple[str, ...], weights: tuple[float, ...], effects: tuple[float, ...]
) -> None:
    """A context field's values, their draw weights and logit effects must line up."""
    n = len(values)
    if n == 0 or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{field}s must be a non-empty tuple of non-empty strings")
    if len(set(values)) != n:
        raise ValueError(f"{field}s must be distinct")
    if len(weights) != n or len(effects) != n:
        raise ValueError(f"{field}_weights and {field}_effects need one value per {field}")
    w = np.asarray(weights, dtype=float)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"{field}_weights must be finite, >= 0 and not all 0")
    if not np.all(np.isfinite(np.asarray(effects, dtype=float))):
        raise ValueError(f"{field}_effects must be finite")


@dataclass(frozen=True)
class SyntheticStream:
    """A generated stream: the two replay files and the ground truth.

    ``impressions`` and ``clicks`` are in delivery (file) order, with copies,
    late-delivered rows and orphan clicks; ``truth`` has one row per distinct
    impression (``impression_id``, true ``p_click``, ``clicked``, ``relevance``) in
    event-time order.
    """

    impressions: pl.DataFrame
    clicks: pl.DataFrame
    truth: pl.DataFrame

    @property
    def n_events(self) -> int:
        """Impression rows plus click rows, copies and orphans included."""
        return self.impressions.height + self.clicks.height


@dataclass(frozen=True)
class _World:
    item_cat: np.ndarray  # (n_items,) category of each item
    item_quality: np.ndarray  # (n_items,)
    item_pop: np.ndarray  # (n_items,) popularity probabilities
    cat_order: np.ndarray  # item indices sorted by category
    cat_start: np.ndarray  # (C + 1,) offsets into cat_order
    cat_cum: np.ndarray  # within-category popularity CDF + category index, along cat_order
    user_cum: np.ndarray  # (n_users * C,) interest CDF + user index
    user_affinity: np.ndarray  # (n_users, C)
    user_activity: np.ndarray  # (n_users,) probabilities
    user_device: np.ndarray  # (n_users,)
    drift_offset: np.ndarray
    drift_step: np.ndarray
    drift_phase: np.ndarray


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf probabilities over ``n`` entities in a random order."""
    weights = np.arange(1, n + 1, dtype=float) ** -exponent
    weights = weights[rng.permutation(n)]
    return weights / weights.sum()


def _build_world(cfg: SyntheticConfig, rng: np.random.Generator) -> _World:
    n_cat = cfg.n_categories
    cat_w = _zipf(n_cat, cfg.category_zipf, rng)
    item_cat = np.concatenate(
        [np.arange(n_cat), rng.choice(n_cat, cfg.n_items - n_cat, p=cat_w)]
    )[rng.permutation(cfg.n_items)]
    item_quality = rng.normal(0.0, cfg.item_quality_std, cfg.n_items)
    item_pop = _zipf(cfg.n_items, cfg.item_zipf, rng)

    cat_order = np.argsort(item_cat, kind="stable")
    cat_sorted = item_cat[cat_order]
    cat_start = np.concatenate([[0], np.cumsum(np.bincount(item_cat, minlength=n_cat))])
    cs = np.cumsum(item_pop[cat_order])
    before = np.concatenate([[0.0], cs])[cat_start[:-1]]  # mass before each category
    total = np.concatenate([[0.0], cs])[cat_start[1:]] - before
    within = (cs - before[cat_sorted]) / total[cat_sorted]
    within[cat_start[1:] - 1] = 1.0
    cat_cum = within + cat_sorted

    theta = rng.dirichlet(np.full(n_cat, cfg.interest_concentration), size=cfg.n_users)
    theta = np.nan_to_num(theta, nan=1.0 / n_cat)
    cum = np.cumsum(theta, axis=1)
    cum[:, -1] = 1.0
    user_cum = (cum + np.arange(cfg.n_users)[:, None]).ravel()
    with np.errstate(divide="ignore"):
        log_ratio = np.log(n_cat * theta)
    user_affinity = cfg.affinity_strength * np.clip(log_ratio, -_AFFINITY_CLIP, _AFFINITY_CLIP)
    user_activity = _zipf(cfg.n_users, cfg.user_zipf, rng)
    dev_w = np.asarray(cfg.device_weights, dtype=float)
    user_device = rng.choice(len(dev_w), cfg.n_users, p=dev_w / dev_w.sum())
    drift_offset = rng.integers(0, n_cat, cfg.n_users)
    drift_step = rng.integers(1, n_cat, cfg.n_users) if n_cat > 1 else np.zeros(cfg.n_users, int)
    drift_phase = rng.integers(0, cfg.drift_period_ms, cfg.n_users)
    return _World(item_cat, item_quality, item_pop, cat_order, cat_start, cat_cum, user_cum,
                  user_affinity, user_activity, user_device, drift_offset, drift_step,
                  drift_phase)


def _items_in_categories(world: _World, cat: np.ndarray, u: np.ndarray) -> np.ndarray:
    """An item of category ``cat[k]`` drawn by popularity, with uniforms ``u``."""
    idx = np.searchsorted(world.cat_cum, cat + u, side="right")
    idx = np.clip(idx, world.cat_start[cat], world.cat_start[cat + 1] - 1)
    return world.cat_order[idx]


def _dedupe_lists(items: np.ndarray, n_items: int, length: int, world: _World,
                  rng: np.random.Generator) -> np.ndarray:
    """Replace repeated items inside a request's list (rows of ``items``, shape (R, L))."""
    n_req = items.shape[0]
    req = np.repeat(np.arange(n_req), length)
    flat = items.ravel().copy()
    for round_ in range(_DEDUP_ROUNDS + 1):
        key = req * n_items + flat
        order = np.argsort(key, kind="stable")
        repeated = np.zeros(flat.size, dtype=bool)
        repeated[order[1:]] = key[order[1:]] == key[order[:-1]]
        n_rep = int(repeated.sum())
        if n_rep == 0:
            break
        if round_ < _DEDUP_ROUNDS // 2:
            flat[repeated] = rng.choice(n_items, n_rep, p=world.item_pop)
        elif round_ < _DEDUP_ROUNDS:
            flat[repeated] = rng.integers(0, n_items, n_rep)
        else:  # a handful of stubborn lists (tiny catalogues): fill from unused items
            rows = flat.reshape(n_req, length)
            for r in np.unique(req[repeated]):
                _, first = np.unique(rows[r], return_index=True)
                keep = np.zeros(length, dtype=bool)
                keep[first] = True
                unused = np.setdiff1d(np.arange(n_items), rows[r][keep])
                rows[r][~keep] = rng.choice(unused, int((~keep).sum()), replace=False)
    return flat.reshape(n_req, length)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _ids(prefix: str, values: np.ndarray, width: int = 0) -> pl.Series:
    s = pl.Series(values.astype(np.int64)).cast(pl.String)
    if width:
        s = s.str.zfill(width)
    return (prefix + s).rename(prefix)


def _delivery_order(ts: np.ndarray, rate: float, max_lag: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Row order: by ``ts`` (stable), except a fraction ``rate`` delivered late."""
    by_ts = np.argsort(ts, kind="stable")
    late = rng.random(ts.size) < rate
    lag = np.where(late, rng.integers(1_000, max_lag + 1, ts.size), 0)
    key = ts[by_ts] + lag
    return by_ts[np.argsort(key, kind="stable")]


def generate(n_events: int, seed: int = 0, config: SyntheticConfig | None = None
             ) -> SyntheticStream:
    """Generate about ``n_events`` events (impression rows + click rows) from ``seed``.

    How ``n_events`` is met: whole requests are kept, in time order, while the
    running count of impressions + clicks (copies included) stays within
    ``n_events`` minus the orphan clicks (about ``orphan_click_rate`` of the
    clicks), and then the orphans are added. So ``stream.n_events <= n_events``
    and falls short by less than one request's events (``list_length``
    impressions plus their clicks and copies) — except that at least one request
    is always generated, so a tiny ``n_events`` gives one full list.
    """
    if isinstance(n_events, bool) or not isinstance(n_events, int | np.integer):
        raise ValueError(f"n_events must be an integer, got {n_events!r}")
    if n_events < 1:
        raise ValueError(f"n_events must be >= 1, got {n_events}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    cfg = SyntheticConfig() if config is None else config
    if not isinstance(cfg, SyntheticConfig):
        raise ValueError(f"config must be a SyntheticConfig, got {type(cfg).__name__}")

    rng_world, rng_req, rng_click, rng_out = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(4)
    )
    world = _build_world(cfg, rng_world)
    n_cat, length = cfg.n_categories, cfg.list_length

    # Requests: at most ceil(n_events / length) of them fit (each has `length` impressions).
    n_req = -(-int(n_events) // length)
    gaps = rng_req.exponential(cfg.mean_gap_ms, n_req)
    ts_req = cfg.start_ms + np.floor(np.cumsum(gaps)).astype(np.int64)
    user_req = rng_req.choice(cfg.n_users, n_req, p=world.user_activity)
    dev_w = np.asarray(cfg.device_weights, dtype=float)
    device_req = np.where(rng_req.random(n_req) < cfg.device_loyalty, world.user_device[user_req],
                          rng_req.choice(dev_w.size, n_req, p=dev_w / dev_w.sum()))
    page_w = np.asarray(cfg.page_weights, dtype=float)
    page_req = rng_req.choice(page_w.size, n_req, p=page_w / page_w.sum())
    hour_req = (ts_req // HOUR_MS) % 24  # unobserved: drives only the diurnal term
    epoch = (ts_req - cfg.start_ms + world.drift_phase[user_req]) // cfg.drift_period_ms
    drift_req = (world.drift_offset[user_req] + world.drift_step[user_req] * epoch) % n_cat

    # Slots: which item each of the `length` places of a request shows.
    n_slots = n_req * length
    user_s = np.repeat(user_req, length)
    drift_s = np.repeat(drift_req, length)
    mode = rng_req.random(n_slots)
    idx = np.searchsorted(world.user_cum, user_s + rng_req.random(n_slots), side="right")
    cat = np.clip(idx, user_s * n_cat, user_s * n_cat + n_cat - 1) - user_s * n_cat
    from_drift = (mode >= cfg.popular_mix) & (mode < cfg.popular_mix + cfg.drift_mix)
    cat[from_drift] = drift_s[from_drift]
    items = _items_in_categories(world, cat, rng_req.random(n_slots))
    popular = mode < cfg.popular_mix
    items[popular] = rng_req.choice(cfg.n_items, int(popular.sum()), p=world.item_pop)
    items = _dedupe_lists(items.reshape(n_req, length), cfg.n_items, length, world, rng_req)

    # True relevance logit of each slot, then the noisy ranker orders each list.
    cat = world.item_cat[items]  # (R, L)
    hour_term = cfg.hour_effect * np.cos(2 * np.pi * (hour_req - cfg.peak_hour) / 24)
    context_term = (np.asarray(cfg.device_effects, dtype=float)[device_req]
                    + np.asarray(cfg.page_effects, dtype=float)[page_req] + hour_term)
    logit = (world.user_affinity[user_req[:, None], cat]
             + cfg.drift_strength * (cat == drift_req[:, None])
             + world.item_quality[items]
             + (context_term + cfg.base_logit)[:, None])
    score = cfg.ranker_skill * logit + rng_req.standard_normal((n_req, length))
    ranked = np.argsort(-score, axis=1, kind="stable")
    items = np.take_along_axis(items, ranked, axis=1).ravel()
    logit = np.take_along_axis(logit, ranked, axis=1).ravel()
    position = np.tile(np.arange(length, dtype=np.int64), n_req)
    relevance = _sigmoid(logit)
    p_click = (1.0 + position) ** -cfg.position_decay * relevance

    # Clicks, their delays and the copies, decided for every slot before truncation.
    clicked = rng_click.random(n_slots) < p_click
    dup_imp = rng_click.random(n_slots) < cfg.duplicate_impression_rate
    dup_click = clicked & (rng_click.random(n_slots) < cfg.duplicate_click_rate)
    delay = np.exp(rng_click.normal(np.log(cfg.click_delay_median_ms), cfg.click_delay_sigma,
                                    n_slots))
    late = rng_click.random(n_slots) < cfg.late_click_fraction
    late_delay = cfg.late_click_min_ms + rng_click.exponential(
        max(cfg.late_click_mean_extra_ms, 1e-9), n_slots)
    delay = np.maximum(np.where(late, late_delay, delay).astype(np.int64), 1)

    per_req = (1 + dup_imp + clicked + dup_click).reshape(n_req, length).sum(axis=1)
    total = int(per_req.sum())
    n_orphans = round(cfg.orphan_click_rate * int(clicked.sum()) * min(1.0, n_events / total))
    keep_req = max(1, int(np.searchsorted(np.cumsum(per_req), n_events - n_orphans, "right")))
    n = keep_req * length
    ts_imp = np.repeat(ts_req[:keep_req], length)
    items, position, p_click, relevance = items[:n], position[:n], p_click[:n], relevance[:n]
    clicked, dup_imp, dup_click, delay = clicked[:n], dup_imp[:n], dup_click[:n], delay[:n]
    req_s = np.repeat(np.arange(keep_req), length)
    user_s = user_s[:n]

    # Impressions: originals plus copies, in delivery order.
    slot_ids = _ids("imp-", np.arange(n), 9)
    base = pl.DataFrame({
        "impression_id": slot_ids,
        "request_id": _ids("req-", req_s, 9),
        "user_id": _ids("u", user_s),
        "item_id": _ids("it", items),
        "category_id": _ids("c", world.item_cat[items]),
        "position": position,
        "ts": ts_imp,
        "context": pl.DataFrame({
            "device": pl.Series(cfg.devices, dtype=pl.String).gather(
                np.repeat(device_req[:keep_req], length)),
            "page": pl.Series(cfg.pages, dtype=pl.String).gather(
                np.repeat(page_req[:keep_req], length)),
        }).to_struct("context"),
    })
    rows = np.concatenate([np.arange(n), np.flatnonzero(dup_imp)])
    rows = rows[_delivery_order(ts_imp[rows], cfg.out_of_order_rate, cfg.max_delivery_lag_ms,
                                rng_out)]
    impressions = base[rows]

    # Clicks: real ones, their copies and the orphans, in delivery order.
    hit = np.flatnonzero(clicked)
    click_rows = np.concatenate([hit, np.flatnonzero(dup_click)])
    orphan_users = rng_out.integers(0, cfg.n_users, n_orphans)
    orphan_ts = rng_out.integers(int(ts_imp[0]), int(ts_imp[-1]) + 1, n_orphans)
    c_imp = pl.concat([slot_ids.gather(click_rows), _ids("imp-", n + np.arange(n_orphans), 9)])
    c_user = np.concatenate([user_s[click_rows], orphan_users])
    c_ts = np.concatenate([ts_imp[click_rows] + delay[click_rows], orphan_ts]).astype(np.int64)
    order = _delivery_order(c_ts, cfg.out_of_order_rate, cfg.max_delivery_lag_ms, rng_out)
    clicks = pl.DataFrame({
        "impression_id": c_imp.gather(order),
        "user_id": _ids("u", c_user[order]),
        "ts": c_ts[order],
    })

    truth = pl.DataFrame({"impression_id": slot_ids, "p_click": p_click, "clicked": clicked,
                          "relevance": relevance})
    return SyntheticStream(impressions, clicks, truth)


def write_stream(stream: SyntheticStream, out_dir: str | Path) -> None:
    """Write ``impressions.parquet``, ``clicks.parquet`` and ``truth.parquet`` into ``out_dir``.

    The folder (and its parents) is created when missing; existing files are replaced.
    """
    if not isinstance(stream, SyntheticStream):
        raise ValueError(f"stream must be a SyntheticStream, got {type(stream).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    stream.impressions.write_parquet(out / "impressions.parquet")
    stream.clicks.write_parquet(out / "clicks.parquet")
    stream.truth.write_parquet(out / "truth.parquet")
