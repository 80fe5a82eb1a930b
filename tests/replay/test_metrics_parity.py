"""Property-based parity of ``replay.metrics`` with reference libraries.

Random inputs from hypothesis (ties, single-class requests / users / windows, weights)
checked against scikit-learn (AUC, per-user AUC, logloss), trec_eval (through
``pytrec_eval``) and ranx (NDCG). The fixed-seed cases and the hand examples are in
``test_metrics.py``; this file adds random shapes and the second and third references.

What the references do differently, and how the comparisons allow for it:

* **Score precision.** trec_eval keeps run scores as C ``float``s (float32): scores
  that differ only beyond float32 precision tie there. The scores drawn for it are
  float32 values.
* **Tied scores.** Ours keep the input order inside a request (stable sort);
  trec_eval breaks ties by docid *descending* (``strcmp``); ranx ranks by
  ``np.argsort(-score)`` in numba (quicksort, not stable: an order of its own). The
  exact parity tests use tie-free scores. With ties, docids are made to descend in input
  order, so trec_eval's order is ours; ranx is only checked to lie between the best and
  the worst tie orders.
* **Requests without a relevant item.** Their NDCG is undefined; ours leave them out
  of the mean, while both references score them 0. So the mean is compared over the
  requests with a relevant item, and the references' 0 for the others is asserted.
* **Gains.** trec_eval's ``ndcg_cut`` and ranx's ``ndcg`` (Järvelin) use the grade
  itself as the gain, our ``gain="linear"``; ranx's ``ndcg_burges`` uses ``2**rel - 1``,
  our ``gain="exp"``. trec_eval checks ``"exp"`` too, fed ``2**rel - 1`` as the grades.
* **Logloss clipping.** Ours clip the probability of the observed label to
  ``[1e-15, 1 - 1e-15]``; scikit-learn clips ``p`` itself at machine epsilon. Away
  from the bounds both are the plain mean cross-entropy; at them ours is scikit-learn's
  logloss of the clipped probabilities of the observed labels.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import pytrec_eval
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from replay.metrics import (
    MetricError,
    RollingWindow,
    auc,
    auc_over_time,
    calibration,
    gauc_details,
    logloss,
    ndcg_at_k,
)
from tests.replay.test_metrics import per_user_reference

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import ranx

FAST = settings(max_examples=30, deadline=None, database=None)
CHEAP = settings(max_examples=60, deadline=None, database=None)

TIED_SCORES = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0])  # many ties
PERCENT = st.integers(1, 99).map(lambda k: k / 100)  # ties, and away from the clipping


# --------------------------------------------------------------------------------------------
# NDCG@k against trec_eval and ranx


@st.composite
def requests(draw, *, max_grade: int, ties: bool):
    """(group, rel, p, k): up to 20 requests of 1..10 items, rows of the requests
    interleaved in a random order (groups need not be contiguous)."""
    sizes = draw(st.lists(st.integers(1, 10), min_size=1, max_size=20))
    n = sum(sizes)
    order = draw(st.permutations(range(n)))
    group = np.repeat(np.arange(len(sizes)), sizes)[list(order)]
    rel = np.array(draw(st.lists(st.integers(0, max_grade), min_size=n, max_size=n)))
    if ties:
        p = np.array(draw(st.lists(TIED_SCORES, min_size=n, max_size=n)))
    else:
        # trec_eval keeps run scores as C floats: draw float32 values, so that its ranking
        # is of the same scores (float64 ones a float32 would merge are not a tie to us).
        scores = st.floats(-1e6, 1e6, allow_nan=False, width=32)
        p = np.array(draw(st.lists(scores, min_size=n, max_size=n, unique=True)))
        assume(len(np.unique(p)) == n)  # 0.0 and -0.0 would tie
    return group, rel, p, draw(st.integers(1, 12))


def qrels_and_run(group, rel, p) -> tuple[dict, dict]:
    """TREC-style dicts, one query per request. Row ``i`` is docid ``n - 1 - i``
    (zero-padded), so docids descend in input order: trec_eval's tie order is ours."""
    n = len(group)
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for i, (g, r, s) in enumerate(zip(group, rel, p, strict=True)):
        doc = f"d{n - 1 - i:04d}"
        qrels.setdefault(f"q{g}", {})[doc] = int(r)
        run.setdefault(f"q{g}", {})[doc] = float(s)
    return qrels, run


def trec_eval_ndcg(qrels: dict, run: dict, k: int) -> dict[str, float]:
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{k}"})
    return {q: m[f"ndcg_cut_{k}"] for q, m in evaluator.evaluate(run).items()}


def ranx_ndcg(qrels: dict, run: dict, k: int) -> dict[str, dict[str, float]]:
    """Per query, ranx's ``ndcg`` (linear gain) and ``ndcg_burges`` (exp gain): one call."""
    ranx_run = ranx.Run(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's type-safety warning on the hashed docids
        ranx.evaluate(ranx.Qrels(qrels), ranx_run, [f"ndcg@{k}", f"ndcg_burges@{k}"],
                      threads=1)
    return {"linear": dict(ranx_run.scores[f"ndcg@{k}"]),
            "exp": dict(ranx_run.scores[f"ndcg_burges@{k}"])}


def mean_over(per_query: dict[str, float], queries: list[str]) -> float:
    return float(np.mean([per_query[q] for q in queries]))


@FAST
@given(data=st.data())
@pytest.mark.parametrize("max_grade", [1, 4], ids=["clicks", "graded"])
def test_ndcg_equals_pytrec_eval_and_ranx_on_random_requests(data, max_grade):
    group, rel, p, k = data.draw(requests(max_grade=max_grade, ties=False))
    qrels, run = qrels_and_run(group, rel, p)
    exp_qrels = {q: {d: 2**r - 1 for d, r in docs.items()} for q, docs in qrels.items()}
    trec = {"linear": trec_eval_ndcg(qrels, run, k), "exp": trec_eval_ndcg(exp_qrels, run, k)}
    rx = ranx_ndcg(qrels, run, k)

    relevant = [q for q, docs in qrels.items() if max(docs.values()) > 0]
    for gain in ("linear", "exp"):
        # The references score a request without a relevant item 0; ours skip it.
        for q in set(qrels) - set(relevant):
            assert trec[gain][q] == rx[gain][q] == 0.0
        if not relevant:
            with pytest.raises(MetricError, match="none of the"):
                ndcg_at_k(group, rel, p, k, gain=gain)
            continue
        ours = ndcg_at_k(group, rel, p, k, gain=gain)
        assert ours == pytest.approx(mean_over(trec[gain], relevant), abs=1e-9)
        assert ours == pytest.approx(mean_over(rx[gain], relevant), abs=1e-9)


@FAST
@given(data=st.data())
@pytest.mark.parametrize("max_grade", [1, 3], ids=["clicks", "graded"])
def test_ndcg_with_tied_scores_equals_pytrec_eval_when_docids_descend_in_input_order(
        data, max_grade):
    group, rel, p, k = data.draw(requests(max_grade=max_grade, ties=True))
    assume(rel.any())
    qrels, run = qrels_and_run(group, rel, p)
    relevant = [q for q, docs in qrels.items() if max(docs.values()) > 0]
    ours = ndcg_at_k(group, rel, p, k)
    assert ours == pytest.approx(mean_over(trec_eval_ndcg(qrels, run, k), relevant), abs=1e-9)


def test_trec_eval_breaks_ties_by_docid_descending_where_ours_keep_input_order():
    # Two tied items, the relevant one second in the input: ours rank it second.
    assert ndcg_at_k([7, 7], [0, 1], [0.5, 0.5], k=1) == 0.0
    run = {"q": {"a": 0.5, "b": 0.5}}
    # Docids descending in input order ("b" then "a"): trec_eval agrees with ours.
    assert trec_eval_ndcg({"q": {"b": 0, "a": 1}}, {"q": {"b": 0.5, "a": 0.5}}, 1) == {"q": 0.0}
    # Ascending ("a" then "b"): trec_eval ranks "b", the relevant one, first.
    assert trec_eval_ndcg({"q": {"a": 0, "b": 1}}, run, 1) == {"q": 1.0}


@FAST
@given(data=st.data())
def test_ranx_with_tied_scores_lies_between_the_worst_and_best_tie_orders(data):
    group, rel, p, k = data.draw(requests(max_grade=3, ties=True))
    qrels, run = qrels_and_run(group, rel, p)
    rx = ranx_ndcg(qrels, run, k)
    for g in np.unique(group):
        rows = group == g
        if not rel[rows].any():
            continue
        r, s = rel[rows], p[rows]
        best, worst = np.lexsort((-r, -s)), np.lexsort((r, -s))  # ties: relevant first / last
        for gain in ("linear", "exp"):
            hi = ndcg_at_k(np.zeros(len(r)), r[best], s[best], k, gain=gain)
            lo = ndcg_at_k(np.zeros(len(r)), r[worst], s[worst], k, gain=gain)
            assert lo - 1e-12 <= rx[gain][f"q{g}"] <= hi + 1e-12
            # Ours in the input order is one of the tie orders too.
            assert lo - 1e-12 <= ndcg_at_k(np.zeros(len(r)), r, s, k, gain=gain) <= hi + 1e-12


# --------------------------------------------------------------------------------------------
# AUC, GAUC, logloss, calibration against scikit-learn


@st.composite
def labelled(draw, *, scores=TIED_SCORES, min_size: int = 1, max_size: int = 80):
    n = draw(st.integers(min_size, max_size))
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    p = np.array(draw(st.lists(scores, min_size=n, max_size=n)))
    return y, p


ANY_SCORES = st.one_of(TIED_SCORES, st.floats(-1e3, 1e3, allow_nan=False))
WEIGHTS = st.one_of(st.just(0.0), st.integers(1, 5).map(float), st.floats(1e-3, 1e3))


@CHEAP
@given(case=labelled(scores=ANY_SCORES, min_size=2))
def test_auc_equals_sklearn_on_random_data_with_ties(case):
    y, p = case
    assume(0 < y.sum() < len(y))
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


@CHEAP
@given(case=labelled(min_size=2), data=st.data())
def test_auc_with_sample_weights_equals_sklearn_or_raises_when_a_class_weighs_nothing(
        case, data):
    y, p = case
    assume(0 < y.sum() < len(y))
    w = np.array(data.draw(st.lists(WEIGHTS, min_size=len(y), max_size=len(y))))
    if w[y == 1].sum() == 0 or w[y == 0].sum() == 0:
        with pytest.raises(MetricError, match="zero weight"):
            auc(y, p, sample_weight=w)
    else:
        assert auc(y, p, sample_weight=w) == pytest.approx(
            roc_auc_score(y, p, sample_weight=w), abs=1e-12)


@CHEAP
@given(n=st.integers(1, 50), label=st.integers(0, 1), data=st.data())
def test_auc_of_a_single_class_raises_where_sklearn_gives_nan(n, label, data):
    y = np.full(n, label)
    p = np.array(data.draw(st.lists(ANY_SCORES, min_size=n, max_size=n)))
    with pytest.raises(MetricError, match="one class"):
        auc(y, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning
        try:
            reference = roc_auc_score(y, p)  # scikit-learn >= 1.8: nan and a warning
        except ValueError:
            reference = math.nan  # older scikit-learn raised
    assert math.isnan(reference)


@CHEAP
@given(case=labelled(max_size=120), data=st.data())
@pytest.mark.parametrize("weighting", ["impressions", "clicks"])
def test_gauc_equals_per_user_sklearn_auc_with_single_class_users(case, data, weighting):
    y, p = case
    group = np.array(data.draw(st.lists(st.integers(0, 6), min_size=len(y), max_size=len(y))))
    users_with_both = [g for g in np.unique(group) if 0 < y[group == g].sum() < (group == g).sum()]
    if not users_with_both:
        with pytest.raises(MetricError, match="single class"):
            gauc_details(group, y, p, weighting)
        return
    expected, used, skipped = per_user_reference(group, y, p, weighting)
    result = gauc_details(group, y, p, weighting)
    assert result.value == pytest.approx(expected, abs=1e-12)
    assert (result.groups_used, result.groups_skipped) == (used, skipped)


@CHEAP
@given(case=labelled(scores=st.floats(1e-12, 1 - 1e-12), max_size=100))
def test_logloss_equals_sklearn_away_from_the_clipping_bounds(case):
    y, p = case
    assert logloss(y, p) == pytest.approx(log_loss(y, p, labels=[0, 1]), abs=1e-12)


BOUNDS = st.sampled_from([0.0, 1e-300, 1e-16, 1e-15, 0.5, 1 - 1e-15, 1 - 1e-16, 1.0])


@CHEAP
@given(case=labelled(scores=st.one_of(BOUNDS, st.floats(0, 1)), max_size=100))
def test_logloss_is_sklearns_of_the_observed_labels_probability_clipped_to_1e_15(case):
    y, p = case
    observed = np.clip(np.where(y == 1, p, 1 - p), 1e-15, 1 - 1e-15)
    expected = log_loss(np.ones(len(y)), observed, labels=[0, 1])  # inside sklearn's clip
    assert logloss(y, p) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@CHEAP
@given(case=labelled(scores=st.floats(0, 1), max_size=100))
def test_calibration_is_mean_prediction_over_mean_label_or_raises_without_clicks(case):
    y, p = case
    if y.sum() == 0:
        with pytest.raises(MetricError, match="no positive"):
            calibration(y, p)
    else:
        assert calibration(y, p) == pytest.approx(p.mean() / y.mean(), rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------------------------
# Rolling window and AUC over time


@FAST  # the slowest here: two scikit-learn calls per chunk
@given(size=st.integers(1, 30), case=labelled(scores=PERCENT, max_size=120), data=st.data())
def test_rolling_window_equals_sklearn_on_the_last_n_pairs_after_every_chunk(size, case, data):
    y, p = case
    window = RollingWindow(size)
    start = 0
    while start < len(y):
        stop = min(len(y), start + data.draw(st.integers(1, 2 * size + 10), label="chunk"))
        if data.draw(st.booleans(), label="add_many"):
            window.add_many(y[start:stop], p[start:stop])
        else:
            for label, score in zip(y[start:stop], p[start:stop], strict=True):
                window.add(int(label), float(score))
        start = stop
        last_y, last_p = y[max(0, stop - size):stop], p[max(0, stop - size):stop]
        assert len(window) == len(last_y)
        assert window.logloss() == pytest.approx(log_loss(last_y, last_p, labels=[0, 1]),
                                                 abs=1e-12)
        if 0 < last_y.sum() < len(last_y):
            assert window.auc() == pytest.approx(roc_auc_score(last_y, last_p), abs=1e-12)
        else:
            assert math.isnan(window.auc())


@CHEAP
@given(case=labelled(max_size=150), width=st.integers(1, 50_000), data=st.data())
def test_auc_over_time_buckets_equal_sklearn_per_bucket(case, width, data):
    y, p = case
    ts = np.array(data.draw(st.lists(st.integers(-100_000, 100_000), min_size=len(y),
                                     max_size=len(y))), dtype=np.int64)  # unsorted, negative
    buckets = auc_over_time(ts, y, p, width)
    assert [b.start for b in buckets] == sorted({math.floor(t / width) * width for t in ts})
    for b in buckets:
        inside = (ts >= b.start) & (ts < b.start + width)
        assert (b.count, b.clicks) == (inside.sum(), y[inside].sum())
        if 0 < b.clicks < b.count:
            assert b.auc == pytest.approx(roc_auc_score(y[inside], p[inside]), abs=1e-12)
        else:
            assert math.isnan(b.auc)
