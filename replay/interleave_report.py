"""``streamctr interleave``: rankers of a replay folder compared by interleaving and by
simulated A/B tests, with the users each needs to pick the better one.

What it does with a folder (``impressions.parquet``, ``clicks.parquet``, and
``truth.parquet`` for a synthetic stream):

1. **Users.** The click model (``pbm``, ``cascade`` or ``dbn``, :mod:`replay.click_models`)
   is fitted to the folder's own log: each request is a page, its impressions in position
   order, the clicks its labels. Its examination parameters are the simulated user's;
   its log-likelihood, perplexity and examination probabilities go to the report.
2. **Ground truth.** Each shown item's attractiveness: the synthetic stream's true
   relevance where the folder has ``truth.parquet`` (its ``relevance`` column), else the
   fitted model's attractiveness of the logged (query, item) pair — the query being the
   request's category where all its items share one (Yandex: the query), else none.
3. **Rankers** (``--models``, two or more): a learner name (``ftrl``, ``gbdt_lr``, ``din``):
   its progressive-validation scores from a leak-free replay of the folder — each
   request ranked by the model as it stood at the request's time; ``LEARNER@F`` (e.g.
   ``ftrl@0.25``): a snapshot, the learner frozen after the first fraction F of the
   stream's events, scoring what comes after (with a snapshot among the rankers, only
   the requests after the latest snapshot are compared, so none is scored by a model
   that learned from it); ``oracle``: the true
   attractiveness; ``oracle+N`` (e.g. ``oracle+1.5``): that plus Gaussian noise of sd
   N on the logit (a ranker of controlled quality); ``logged``: the logged order.
4. **Experiments.** Each request is shown (``repeats`` times, with fresh clicks each
   time) the interleaved top ``k`` of every pair of rankers (or, with
   ``team-draft-multileave``, of all of them at once), and in each A/B arm the arm's
   top ``k``. The pool's A/B difference in the A/B metric (``clicks`` per request, or
   the ``reciprocal-rank`` of the first click: under cascade users clicks per request do
   not depend on the order) names the better ranker of a pair (the truth; a pair whose
   difference is within 3 standard errors is too close to call).
5. **Statistics** (:mod:`replay.simulation`): per pair the interleaving preference with
   its sign test and bootstrap CI, the A/B difference with Welch's test and CI, the
   probability of the correct verdict for a range of users and the users each needs for
   95 % (N users interleaved against N/2 per A/B arm), the sensitivity ratio (A/B users
   ÷ interleaving users), the sequential test's verdict and its A/A false-positive rate;
   overall, how often interleaving's verdict agrees with A/B's.

Output: ``report.json`` (everything), ``report.md`` (the tables) and two plots,
``p_correct.png`` (probability of the correct verdict against users, interleaving and
A/B, per pair) and ``win_rates.png`` (interleaving win rate of each ranker against each
other).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations, islice
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from features.joiner import JoinerConfig
from learners import LEARNERS, Learner, make_learner
from learners.base import close_learner
from replay.click_models import CLICK_MODELS, ClickModel, ClickSessions
from replay.engine import OnlineEngine, Outcome
from replay.inputs import ReplayInput, iter_events, read_replay_input
from replay.interleaving import METHODS
from replay.plots import figure
from replay.progress import progress
from replay.report import OutcomeRecorder, json_safe
from replay.simulation import (
    AB_METRICS,
    ABPool,
    Requests,
    SimulationError,
    aa_false_positive_rate,
    ab_test,
    agreement,
    noisy_oracle,
    p_correct,
    sequential_sign_test,
    sign_test,
    simulate_ab,
    simulate_interleaving,
    users_needed,
)

__all__ = ["InterleaveConfig", "run_interleave", "write_interleave_report"]

_BATCH = 2048  # events per engine call, as the replay's
_USERS_GRID = (10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000)


@dataclass(frozen=True)
class InterleaveConfig:
    """How the experiments run (see the module doc)."""

    method: str = "team-draft"
    click_model: str = "pbm"
    ab_metric: str = "clicks"
    k: int = 10
    repeats: int | None = None  # None: enough for a pool of at least min_pool requests
    min_pool: int = 100_000
    seed: int = 0
    draws: int = 2_000  # bootstrap resamples per point of a p_correct curve

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SimulationError(f"unknown method {self.method!r}; one of "
                                  f"{', '.join(METHODS)}")
        if self.ab_metric not in AB_METRICS:
            raise SimulationError(f"unknown A/B metric {self.ab_metric!r}; one of "
                                  f"{', '.join(AB_METRICS)}")
        if self.click_model not in CLICK_MODELS:
            raise SimulationError(f"unknown click model {self.click_model!r}; one of "
                                  f"{', '.join(CLICK_MODELS)}")
        for name in ("k", "min_pool", "draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SimulationError(f"{name} must be an int >= 1, got {value!r}")
        if self.repeats is not None and (isinstance(self.repeats, bool)
                                         or not isinstance(self.repeats, int)
                                         or self.repeats < 1):
            raise SimulationError(f"repeats must be an int >= 1, got {self.repeats!r}")


def _check_models(models: Sequence[str]) -> None:
    if len(models) < 2:
        raise SimulationError("--models needs at least two rankers")
    if len(set(models)) != len(models):
        raise SimulationError(f"a ranker is named twice in {','.join(models)}")
    for name in models:
        if name in LEARNERS or name in ("oracle", "logged"):
            continue
        learner, at, fraction = name.partition("@")
        if at and learner in LEARNERS:
            try:
                value = float(fraction)
            except ValueError:
                value = math.nan
            if 0 < value < 1:
                continue
            raise SimulationError(f"snapshot {name!r}: the fraction of the stream must be in "
                                  "(0, 1), e.g. ftrl@0.5")
        if name.startswith("oracle+"):
            try:
                noise = float(name.removeprefix("oracle+"))
            except ValueError:
                noise = math.nan
            if math.isfinite(noise) and noise >= 0:
                continue
        raise SimulationError(f"unknown ranker {name!r}: a learner ({', '.join(LEARNERS)}), "
                              "LEARNER@FRACTION (a snapshot), oracle, oracle+NOISE (e.g. "
                              "oracle+1.5) or logged")


def _pages(impressions: pl.DataFrame) -> pl.DataFrame:
    """Impressions (copies once) in page order with ``page`` and ``slot``, and the query and
    item numbers of the click model."""
    frame = (impressions.unique("impression_id", keep="first", maintain_order=True)
             .sort("ts", "request_id", "position"))
    request = frame["request_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, request[1:] != request[:-1]])
    sizes = np.diff(np.r_[starts, frame.height])
    frame = frame.with_columns(page=pl.Series(np.repeat(np.arange(starts.size), sizes)),
                               slot=pl.Series(np.arange(frame.height)
                                              - np.repeat(starts, sizes)))
    one_category = frame.group_by("page").agg(pl.col("category_id").n_unique() == 1)
    by_query = bool(one_category["category_id"].all())
    query = (pl.col("category_id") if by_query else pl.lit("")).cast(pl.Categorical)
    return frame.with_columns(query=query.to_physical().cast(pl.Int64),
                              doc=pl.col("item_id").cast(pl.Categorical).to_physical()
                              .cast(pl.Int64))


def _matrix(frame: pl.DataFrame, column: str, n: int, k: int, fill: float) -> np.ndarray:
    out = np.full((n, k), fill)
    out[frame["page"].to_numpy(), frame["slot"].to_numpy()] = frame[column].to_numpy()
    return out


def _sessions(frame: pl.DataFrame, clicked: set[str]) -> tuple[ClickSessions, int]:
    """The log as click-model sessions; pages shorter than the longest are padded with a
    document of their own (never clicked)."""
    n, k = int(frame["page"].max()) + 1, int(frame["slot"].max()) + 1
    frame = frame.with_columns(click=pl.col("impression_id").is_in(list(clicked)))
    docs = _matrix(frame, "doc", n, k, -1).astype(np.int64)
    clicks = _matrix(frame.with_columns(pl.col("click").cast(pl.Float64)), "click", n, k,
                     0.0).astype(bool)
    queries = frame.group_by("page").agg(pl.col("query").first()).sort("page")["query"]
    return ClickSessions(queries.to_numpy(), docs, clicks), k


def _scores(name: str, frame: pl.DataFrame, requests: Requests,
            outcomes: pl.DataFrame | None, rng: np.random.Generator) -> np.ndarray:
    n, k = requests.n, requests.k
    if name == "logged":
        return -_matrix(frame.with_columns(pl.col("position").cast(pl.Float64)), "position",
                        n, k, math.nan)
    if name == "oracle":
        return noisy_oracle(requests, 0.0, rng)
    if name.startswith("oracle+"):
        return noisy_oracle(requests, float(name.removeprefix("oracle+")), rng)
    assert outcomes is not None
    scored = frame.join(outcomes.select("impression_id", pl.col(f"score_{name}").alias("s")),
                        on="impression_id", how="left")
    if scored["s"].null_count():
        raise SimulationError(f"{scored['s'].null_count()} impressions have no {name} score")
    return _matrix(scored, "s", n, k, math.nan)


def _learner_scores(inp: ReplayInput, models: Sequence[str],
                    joiner_config: JoinerConfig | None,
                    learner_params: Mapping[str, Mapping[str, Any]] | None,
                    show_progress: bool) -> tuple[pl.DataFrame, int | None]:
    """One leak-free replay of ``inp``: ``impression_id`` and a ``score_<ranker>`` column
    per learner ranker (live: the score at impression time; ``LEARNER@F``: the snapshot's
    of the feature dict scored then, null for impressions before it was taken), and the
    event time of the latest snapshot (None: none)."""
    params = learner_params or {}
    live_names = [m for m in models if m in LEARNERS]
    snapshots = {m: (m.partition("@")[0], float(m.partition("@")[2]))
                 for m in models if "@" in m}
    names = list(dict.fromkeys([*live_names, *(n for n, _ in snapshots.values())]))
    learners = {n: make_learner(n, **params.get(n, {})) for n in names}
    recorder = OutcomeRecorder(tuple(names))
    frozen: dict[str, tuple[Learner, int]] = {}  # ranker -> (snapshot, event time taken)
    frozen_scores: dict[str, dict[str, float]] = {m: {} for m in snapshots}

    def score_frozen(outcome: Outcome) -> None:
        # A frozen model scores the same at release as at impression time: the outcome's
        # feature dict is the one scored then, so nothing is featurized twice.
        imp = outcome.release.impression
        for ranker, (learner, since) in frozen.items():
            if imp.ts >= since:
                frozen_scores[ranker][imp.impression_id] = learner.predict_proba_one(
                    outcome.features)

    # Snapshots read the outcomes' feature dicts, which the compiled-rows path omits.
    engine = OnlineEngine(learners, joiner_config or JoinerConfig(),
                          on_outcome=[recorder, score_frozen], compiled_rows=not snapshots)
    due = sorted((fraction * inp.n_events, ranker) for ranker, (_, fraction) in
                 snapshots.items())
    seen, taken_ts = 0, None
    try:
        with progress("replay", inp.n_events, enabled=show_progress) as ticker:
            events = iter_events(inp)
            while batch := list(islice(events, _BATCH)):
                while due and seen >= due[0][0]:
                    ranker = due.pop(0)[1]
                    name = snapshots[ranker][0]
                    clone = make_learner(name, **params.get(name, {}))
                    clone.load_state_dict(learners[name].state_dict())
                    taken_ts = batch[0].ts
                    frozen[ranker] = (clone, taken_ts)
                engine.process(batch)
                seen += len(batch)
                ticker.tick(len(batch))
            engine.finish()
    finally:
        for learner in (*learners.values(), *(clone for clone, _ in frozen.values())):
            close_learner(learner)
    scores = recorder.to_frame().select(
        "impression_id", *(pl.col(f"score_{n}") for n in live_names))
    for ranker, by_id in frozen_scores.items():
        scores = scores.join(pl.DataFrame({"impression_id": list(by_id),
                                           f"score_{ranker}": list(by_id.values())},
                                          schema={"impression_id": pl.String,
                                                  f"score_{ranker}": pl.Float64}),
                             on="impression_id", how="left")
    return scores, taken_ts


def run_interleave(folder: str | Path, models: Sequence[str], report_dir: str | Path | None,
                   config: InterleaveConfig | None = None, *,
                   joiner_config: JoinerConfig | None = None,
                   learner_params: Mapping[str, Mapping[str, Any]] | None = None,
                   show_progress: bool = True) -> dict[str, Any]:
    """Compare ``models`` on ``folder``'s requests (see the module doc); write the report
    when ``report_dir`` is set; return its document."""
    cfg = config or InterleaveConfig()
    models = list(models)
    _check_models(models)
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    inp = read_replay_input(folder)
    frame = _pages(inp.impressions)
    sessions, k_log = _sessions(frame, set(inp.clicks["impression_id"].to_list()))
    user = CLICK_MODELS[cfg.click_model]().fit(sessions)
    outcomes, snapshot_ts = None, None
    if any(m in LEARNERS or "@" in m for m in models):
        outcomes, snapshot_ts = _learner_scores(inp, models, joiner_config, learner_params,
                                                show_progress)
    truth_path = Path(folder) / "truth.parquet"
    if truth_path.exists():
        truth = pl.read_parquet(truth_path)
        if "relevance" not in truth.columns:
            raise SimulationError(f"{truth_path} has no relevance column (written by an older "
                                  "streamctr generate?)")
        frame = frame.join(truth.select("impression_id", "relevance"), on="impression_id",
                           how="left")
        source = "truth.parquet: the generator's relevance"
    else:
        alpha = user.attractiveness((sessions.queries, sessions.docs))
        frame = frame.with_columns(relevance=pl.Series(
            alpha[frame["page"].to_numpy(), frame["slot"].to_numpy()]))
        source = f"the fitted {cfg.click_model}'s attractiveness of each (query, item)"
    if snapshot_ts is not None:  # only requests the snapshots did not learn from
        later = frame.group_by("page").agg(pl.col("ts").min() >= snapshot_ts).filter("ts")
        frame = frame.filter(pl.col("page").is_in(later["page"].implode()))
        if frame.is_empty():
            raise SimulationError("no request comes after the latest snapshot")
        frame = frame.with_columns(page=pl.col("page").rank("dense").cast(pl.Int64) - 1)
    n = int(frame["page"].max()) + 1
    requests = Requests(_matrix(frame, "relevance", n, k_log, math.nan))
    k = min(cfg.k, requests.k)
    scores = {m: _scores(m, frame, requests, outcomes, rng) for m in models}
    repeats = cfg.repeats or max(1, math.ceil(cfg.min_pool / requests.n))
    pool = Requests(np.tile(requests.attractiveness, (repeats, 1)))
    pooled = {m: np.tile(s, (repeats, 1)) for m, s in scores.items()}
    method = METHODS[cfg.method]
    multileave = cfg.method == "team-draft-multileave"
    prefs_all = (simulate_interleaving(pool, [pooled[m] for m in models], method, user, rng,
                                       k=k) if multileave else None)
    pairs = []
    for i, j in combinations(range(len(models)), 2):
        a, b = models[i], models[j]
        if prefs_all is not None:
            prefs = prefs_all[:, j, i]
        else:
            prefs = simulate_interleaving(pool, [pooled[a], pooled[b]], method, user, rng, k=k)
        ab = simulate_ab(pool, pooled[a], pooled[b], user, rng, k=k, metric=cfg.ab_metric)
        pairs.append(_pair(a, b, prefs, ab, rng, cfg))
    decided = [p for p in pairs if p["truth"] != 0]
    aa = simulate_interleaving(pool, [pooled[models[0]], pooled[models[0]]], METHODS[
        "team-draft" if multileave else cfg.method], user, rng, k=k)
    doc: dict[str, Any] = {
        "folder": str(folder), "models": models, "method": cfg.method, "k": k,
        "ab_metric": cfg.ab_metric,
        "requests": requests.n, "snapshot_ts": snapshot_ts, "repeats": repeats,
        "pool": pool.n, "seed": cfg.seed,
        "ground_truth": source,
        "click_model": _click_model_summary(cfg.click_model, user, sessions),
        "pairs": pairs,
        "agreement": (agreement([int(np.sign(p["interleaving"]["mean"])) for p in decided],
                                [p["truth"] for p in decided]) if decided else None),
        "decided_pairs": len(decided),
        "aa": {"ranker": models[0], "mean": float(aa.mean()),
               "sign_test_p": sign_test(aa, rng).p_value,
               "sequential_false_positive_rate": aa_false_positive_rate(
                   aa, rng, runs=200, max_users=min(100_000, 20 * pool.n))},
        "seconds": time.perf_counter() - started,
    }
    if report_dir is not None:
        write_interleave_report(doc, report_dir)
    return doc


def _pair(a: str, b: str, prefs: np.ndarray, ab: ABPool, rng: np.random.Generator,
          cfg: InterleaveConfig) -> dict[str, Any]:
    il = sign_test(prefs, rng)
    abv = ab_test(ab.values_a, ab.values_b, rng)
    close = abs(ab.difference) <= 3 * ab.standard_error
    truth = 0 if close else int(np.sign(ab.difference))
    wins, losses = int(np.sum(prefs > 0)), int(np.sum(prefs < 0))
    out: dict[str, Any] = {
        "a": a, "b": b, "truth": truth,
        "better": None if truth == 0 else (b if truth > 0 else a),
        "interleaving": {"mean": il.estimate, "ci": [il.ci_low, il.ci_high],
                         "p_value": il.p_value, "wins_b": wins, "wins_a": losses,
                         "ties": int(prefs.size) - wins - losses,
                         "win_rate_b": wins / (wins + losses) if wins + losses else None},
        "ab": {"difference": abv.estimate, "ci": [abv.ci_low, abv.ci_high],
               "p_value": abv.p_value, "mean_a": float(ab.values_a.mean()),
               "mean_b": float(ab.values_b.mean())},
    }
    if truth != 0:
        grid = list(_USERS_GRID)
        out["p_correct"] = {
            "users": grid,
            "interleaving": [p_correct(prefs, u, truth, rng, cfg.draws) for u in grid],
            "ab": [p_correct(ab, u, truth, rng, cfg.draws) for u in grid]}
        n_il = users_needed(prefs, truth, rng, draws=cfg.draws)
        n_ab = users_needed(ab, truth, rng, draws=cfg.draws)
        out["users_needed"] = {"interleaving": n_il, "ab": n_ab,
                               "ratio": n_ab / n_il if n_il and n_ab else None}
        verdict, used = sequential_sign_test(prefs[rng.permutation(prefs.size)])
        out["sequential"] = {"verdict": verdict, "users": used,
                             "correct": verdict == truth}
    return out


def _click_model_summary(name: str, model: ClickModel, sessions: ClickSessions
                         ) -> dict[str, Any]:
    examination = np.asarray(model.examination_probabilities(), dtype=float)
    return {"name": name, "sessions": len(sessions),
            "log_likelihood": model.log_likelihood(sessions),
            "perplexity": float(model.perplexity(sessions).mean()),
            "perplexity_by_position": model.perplexity(sessions).tolist(),
            "examination": examination.reshape(-1).tolist()}


# -- the report ---------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int | np.integer):
        return f"{value:,}"
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    if abs(value) >= 1_000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _markdown(doc: Mapping[str, Any]) -> str:
    cm = doc["click_model"]
    lines = [
        f"# Interleaving ({doc['method']}) against A/B tests: {', '.join(doc['models'])}",
        "",
        f"Folder `{doc['folder']}`: {doc['requests']:,} requests, each shown "
        f"{doc['repeats']}× with fresh clicks (a pool of {doc['pool']:,}), top {doc['k']}. "
        f"Ground truth: {doc['ground_truth']}. Simulated users: {cm['name']} fitted to the "
        f"folder's log ({cm['sessions']:,} pages; log-likelihood {cm['log_likelihood']:.4f} "
        f"nats per page, perplexity {cm['perplexity']:.4f}); examination by position: "
        + ", ".join(f"{e:.3f}" for e in cm["examination"]) + ".",
        "",
        f"| pair (a vs b) | better (A/B pool) | A/B {doc['ab_metric']} per request b − a "
        "[95 % CI] | "
        "interleaving preference of b [95 % CI] | win rate of b | sign-test p | users "
        "for 95 %: interleaving | A/B | A/B ÷ interleaving | sequential verdict (users) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in doc["pairs"]:
        il, ab = p["interleaving"], p["ab"]
        need = p.get("users_needed", {})
        seq = p.get("sequential")
        seq_text = "n/a" if seq is None else (
            f"{'b' if seq['verdict'] > 0 else 'a' if seq['verdict'] < 0 else 'none'} "
            f"({seq['users']:,})")
        lines.append(
            f"| {p['a']} vs {p['b']} | {p['better'] or 'too close'} | "
            f"{_fmt(ab['difference'], 3)} [{_fmt(ab['ci'][0])}, {_fmt(ab['ci'][1])}] | "
            f"{_fmt(il['mean'])} [{_fmt(il['ci'][0])}, {_fmt(il['ci'][1])}] | "
            f"{_fmt(il['win_rate_b'])} | {_fmt(il['p_value'], 2)} | "
            f"{_fmt(need.get('interleaving'))} | {_fmt(need.get('ab'))} | "
            f"{_fmt(need.get('ratio'), 3)} | {seq_text} |")
    aa = doc["aa"]
    lines += [
        "",
        f"Agreement of interleaving's verdict with A/B's over the {doc['decided_pairs']} "
        f"pairs A/B can call: {_fmt(doc['agreement'])}. A/A ({aa['ranker']} against "
        f"itself): mean preference {aa['mean']:.4f}, sign-test p {aa['sign_test_p']:.3g}; "
        f"the sequential test names a winner in {aa['sequential_false_positive_rate']:.1%} of "
        "A/A runs (its level: 5 %).",
        "",
        "Users for 95 %: the fewest users with which the verdict names the better ranker "
        "95 % of the time (N users interleaved; N/2 per A/B arm), by bootstrap over the "
        "pool. Sequential verdict: Wald's SPRT on wins and losses in a random order of the "
        "pool (P(win) = 1/2 against 1/2 ± 0.05, level 5 %, power 80 %; none: it accepted "
        "1/2). ![p_correct](p_correct.png) ![win rates](win_rates.png)",
        "",
    ]
    return "\n".join(lines)


def _plot_p_correct(doc: Mapping[str, Any], path: Path) -> None:
    curves = [p for p in doc["pairs"] if "p_correct" in p]
    fig, axes = figure(height=4.5)
    ax = axes[0, 0]
    for index, p in enumerate(curves):
        color = f"C{index % 10}"
        users = p["p_correct"]["users"]
        ax.plot(users, p["p_correct"]["interleaving"], color=color, marker="o", markersize=3,
                label=f"{p['a']} vs {p['b']}: interleaving")
        ax.plot(users, p["p_correct"]["ab"], color=color, linestyle="--", marker="s",
                markersize=3, label=f"{p['a']} vs {p['b']}: A/B")
    ax.axhline(0.95, color="grey", linewidth=1, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("users (interleaving: N requests; A/B: N/2 per arm)")
    ax.set_ylabel("P(correct verdict)")
    ax.set_ylim(0.4, 1.01)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="x-small", loc="lower right")
    fig.savefig(path)


def _plot_win_rates(doc: Mapping[str, Any], path: Path) -> None:
    models = list(doc["models"])
    rates = np.full((len(models), len(models)), np.nan)
    for p in doc["pairs"]:
        i, j = models.index(p["a"]), models.index(p["b"])
        rate = p["interleaving"]["win_rate_b"]
        if rate is not None:
            rates[j, i], rates[i, j] = rate, 1 - rate
    fig, axes = figure(height=4 + 0.4 * len(models), width=5 + 0.4 * len(models))
    ax = axes[0, 0]
    image = ax.imshow(rates, vmin=0.0, vmax=1.0, cmap="RdBu")
    ax.set_xticks(range(len(models)), models, rotation=45, ha="right")
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel("against")
    ax.set_ylabel("ranker")
    for i in range(len(models)):
        for j in range(len(models)):
            if math.isfinite(rates[i, j]):
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="interleaving win rate (ties left out)")
    fig.savefig(path)


def write_interleave_report(doc: Mapping[str, Any], report_dir: str | Path) -> Path:
    """``report.json``, ``report.md``, ``p_correct.png`` and ``win_rates.png``."""
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(json_safe(dict(doc)), indent=2) + "\n")
    (out / "report.md").write_text(_markdown(doc))
    _plot_p_correct(doc, out / "p_correct.png")
    _plot_win_rates(doc, out / "win_rates.png")
    return out
