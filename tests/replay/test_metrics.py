from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from replay.metrics import (
    GAUCResult,
    MetricError,
    RollingWindow,
    auc,
    auc_over_time,
    calibration,
    calibration_buckets,
    gauc,
    gauc_details,
    logloss,
    ndcg_at_k,
    normalized_entropy,
)

LOG2_3 = math.log2(3)


def random_case(seed: int, n: int = 5_000, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    p = rng.random(n)
    if ties:
        p = np.round(p, 1)  # about 11 distinct scores: heavy ties
    return rng, y, p


# --------------------------------------------------------------------------------------------
# AUC


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_auc_equals_sklearn_on_random_data(seed, ties):
    _, y, p = random_case(seed, ties=ties)
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_auc_with_sample_weights_equals_sklearn(seed, ties):
    rng, y, p = random_case(seed, ties=ties)
    w = rng.exponential(size=len(y))
    w[::17] = 0.0  # zero weights are allowed
    assert auc(y, p, sample_weight=w) == pytest.approx(
        roc_auc_score(y, p, sample_weight=w), abs=1e-12
    )


def test_auc_integer_weights_equal_repeated_rows():
    rng, y, p = random_case(7, n=300, ties=True)
    w = rng.integers(1, 4, len(y))
    assert auc(y, p, sample_weight=w) == pytest.approx(
        auc(np.repeat(y, w), np.repeat(p, w)), abs=1e-12
    )


def test_auc_counts_tied_pairs_as_one_half():
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert auc([0, 1, 0, 1], [0.1, 0.9, 0.4, 0.4]) == 0.875


def test_auc_is_rank_based_so_any_real_score_works():
    y = [0, 1, 0, 1]
    assert auc(y, [-3.0, 2.0, 0.0, 7.5]) == auc(y, [0.1, 0.6, 0.5, 0.9]) == 1.0


@pytest.mark.parametrize("scale", [1.999, 5.0, 1e300])  # the packed-key sort, and argsort
def test_auc_of_negative_tied_and_signed_zero_scores_equals_sklearn(scale):
    rng = np.random.default_rng(7)
    y = (rng.random(5_000) < 0.3).astype(np.int8)
    p = np.round(rng.uniform(-1, 1, 5_000), 2) * scale
    p[:50] = -0.0  # ties with 0.0, as sklearn's comparison has it
    p[50:100] = 0.0
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_auc_accepts_lists_bools_and_polars_series_and_returns_a_python_float():
    _, y, p = random_case(3, n=200)
    expected = roc_auc_score(y, p)
    for yy, pp in [
        (y.tolist(), p.tolist()),
        (y.astype(bool), p),
        (pl.Series(y), pl.Series(p)),
        (pl.Series(y.astype(bool)), pl.Series(p.astype(np.float32)).cast(pl.Float64)),
    ]:
        value = auc(yy, pp)
        assert type(value) is float
        assert value == pytest.approx(expected, abs=1e-12)


def test_auc_of_a_single_class_raises():
    with pytest.raises(MetricError, match="one class"):
        auc([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(MetricError, match="one class"):
        auc([0, 0], [0.2, 0.5])


def test_auc_raises_when_a_class_has_zero_weight():
    with pytest.raises(MetricError, match="zero weight"):
        auc([0, 1, 1], [0.2, 0.5, 0.9], sample_weight=[0.0, 1.0, 1.0])


def test_auc_rejects_negative_or_non_finite_weights():
    with pytest.raises(MetricError, match="non-negative"):
        auc([0, 1], [0.2, 0.5], sample_weight=[1.0, -1.0])
    with pytest.raises(MetricError, match="finite"):
        auc([0, 1], [0.2, 0.5], sample_weight=[1.0, math.inf])


def test_auc_rejects_weights_of_another_length():
    with pytest.raises(MetricError, match="differ in length"):
        auc([0, 1], [0.2, 0.5], sample_weight=[1.0])


# --------------------------------------------------------------------------------------------
# GAUC


def test_gauc_weights_users_by_impressions_and_skips_and_counts_single_class_users():
    group = ["a", "a", "a", "b", "b", "c", "c", "d"]
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    p = [0.8, 0.3, 0.8, 0.6, 0.2, 0.5, 0.4, 0.9]
    # a: the positive beats 0.3 and ties 0.8 → (1 + 1/2) / 2 = 0.75 over 3 impressions.
    # b: the positive is below the negative → 0 over 2 impressions.
    # c (only clicks) and d (no click) are skipped.
    expected = (3 * 0.75 + 2 * 0.0) / 5
    assert gauc(group, y, p) == pytest.approx(expected, abs=1e-15)
    assert gauc_details(group, y, p) == GAUCResult(
        value=pytest.approx(expected, abs=1e-15), groups_used=2, groups_skipped=2
    )
    # Not the plain mean of the per-user AUCs.
    assert gauc(group, y, p) != pytest.approx((0.75 + 0.0) / 2)


def test_gauc_result_is_frozen():
    result = gauc_details([1, 1], [0, 1], [0.1, 0.2])
    assert result == GAUCResult(1.0, 1, 0)
    with pytest.raises(AttributeError):
        result.value = 0.5  # type: ignore[misc]


def per_user_reference(group, y, p, weighting="impressions") -> tuple[float, int, int]:
    num = den = 0.0
    used = skipped = 0
    for g in np.unique(group):
        mask = group == g
        if 0 < y[mask].sum() < mask.sum():
            weight = mask.sum() if weighting == "impressions" else y[mask].sum()
            num += weight * roc_auc_score(y[mask], p[mask])
            den += weight
            used += 1
        else:
            skipped += 1
    return num / den, used, skipped


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ties", [False, True])
def test_gauc_equals_per_user_sklearn_auc_on_random_data(seed, ties):
    rng, y, p = random_case(seed, n=3_000, ties=ties)
    group = rng.integers(0, 300, len(y))
    expected, used, skipped = per_user_reference(group, y, p)
    result = gauc_details(group, y, p)
    assert result.value == pytest.approx(expected, abs=1e-12)
    assert (result.groups_used, result.groups_skipped) == (used, skipped)
    assert skipped > 0  # the case does exercise skipping


@pytest.mark.parametrize("ties", [False, True])
def test_click_weighted_gauc_equals_recboles_definition_on_random_data(ties):
    # RecBole's GAUC: per-user AUC weighted by the user's positive samples.
    rng, y, p = random_case(5, n=3_000, ties=ties)
    group = rng.integers(0, 300, len(y))
    expected, used, skipped = per_user_reference(group, y, p, weighting="clicks")
    result = gauc_details(group, y, p, weighting="clicks")
    assert result.value == pytest.approx(expected, abs=1e-12)
    assert (result.groups_used, result.groups_skipped) == (used, skipped)
    assert result.value != pytest.approx(gauc(group, y, p), abs=1e-6)
    with pytest.raises(MetricError, match="weighting"):
        gauc(group, y, p, weighting="users")


def test_gauc_accepts_string_groups_and_polars_series():
    rng, y, p = random_case(11, n=1_000, ties=True)
    codes = rng.integers(0, 50, len(y))
    names = np.array([f"user-{c}" for c in codes], dtype=object)
    expected = gauc(codes, y, p)
    assert gauc(names, y, p) == pytest.approx(expected, abs=1e-15)
    assert gauc(pl.Series(names.tolist()), pl.Series(y), pl.Series(p)) == pytest.approx(
        expected, abs=1e-15
    )


def test_gauc_treats_none_as_a_group_of_its_own():
    assert gauc(pl.Series(["a", None, "a", None]), [1, 1, 0, 0], [0.9, 0.1, 0.2, 0.3]) == 0.5


def test_gauc_raises_when_every_user_has_a_single_class():
    with pytest.raises(MetricError, match="all 2 groups have a single class"):
        gauc(["a", "a", "b"], [1, 1, 0], [0.1, 0.2, 0.3])


# --------------------------------------------------------------------------------------------
# Logloss, normalized entropy, calibration


@pytest.mark.parametrize("seed", range(3))
def test_logloss_equals_sklearn(seed):
    rng, y, _ = random_case(seed)
    p = rng.uniform(0.01, 0.99, len(y))
    assert logloss(y, p) == pytest.approx(log_loss(y, p), abs=1e-12)


def test_logloss_clips_probabilities_at_1e_15():
    assert logloss([1, 0], [0.0, 1.0]) == pytest.approx(-math.log(1e-15), rel=1e-12)
    assert logloss([0, 1], [0.0, 1.0]) == pytest.approx(1e-15, rel=0.2)  # -log(1 - 1e-15)


def test_logloss_of_a_single_class_is_defined():
    assert logloss([1, 1], [0.5, 0.5]) == pytest.approx(math.log(2))


def test_normalized_entropy_of_predicting_the_base_rate_is_one():
    _, y, _ = random_case(5)
    p = np.full(len(y), y.mean())
    assert normalized_entropy(y, p) == pytest.approx(1.0, abs=1e-12)


def test_normalized_entropy_is_logloss_over_background_entropy():
    rng, y, _ = random_case(6)
    p = np.clip(0.6 * y + 0.2 + rng.normal(0, 0.1, len(y)), 0.01, 0.99)
    ctr = y.mean()
    background = -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))
    ne = normalized_entropy(y, p)
    assert ne == pytest.approx(log_loss(y, p) / background, abs=1e-12)
    assert ne < 1.0  # an informative predictor beats the base rate


@pytest.mark.parametrize("y", [[0, 0, 0], [1, 1]])
def test_normalized_entropy_raises_when_background_ctr_is_0_or_1(y):
    with pytest.raises(MetricError, match="background CTR"):
        normalized_entropy(y, [0.5] * len(y))


def test_calibration_is_mean_prediction_over_observed_rate():
    assert calibration([1, 0, 0, 0], [0.25] * 4) == 1.0
    assert calibration([1, 0, 0, 0], [0.5] * 4) == 2.0
    assert calibration([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.2]) == pytest.approx(0.4)


def test_calibration_raises_without_positives():
    with pytest.raises(MetricError, match="no positive"):
        calibration([0, 0], [0.1, 0.2])


# --------------------------------------------------------------------------------------------
# NDCG@k

NDCG_GROUP = ["r1"] * 4
NDCG_REL = [1, 3, 0, 2]
NDCG_P = [0.9, 0.7, 0.5, 0.3]  # ranking by p keeps the input order


def test_ndcg_linear_gain_hand_example_with_k_smaller_than_the_list():
    # Ranked relevances 1, 3, 0 | 2; ideal 3, 2, 1 | 0.
    expected = (1 + 3 / LOG2_3 + 0 / 2) / (3 + 2 / LOG2_3 + 1 / 2)
    assert ndcg_at_k(NDCG_GROUP, NDCG_REL, NDCG_P, k=3) == pytest.approx(expected, abs=1e-15)


def test_ndcg_exp_gain_hand_example():
    # Gains 2^rel - 1: ranked 1, 7, 0 | 3; ideal 7, 3, 1 | 0.
    expected = (1 + 7 / LOG2_3 + 0 / 2) / (7 + 3 / LOG2_3 + 1 / 2)
    value = ndcg_at_k(NDCG_GROUP, NDCG_REL, NDCG_P, k=3, gain="exp")
    assert value == pytest.approx(expected, abs=1e-15)


def test_ndcg_with_k_at_least_the_list_length_uses_every_item():
    expected = (1 + 3 / LOG2_3 + 0 / 2 + 2 / math.log2(5)) / (3 + 2 / LOG2_3 + 1 / 2)
    assert ndcg_at_k(NDCG_GROUP, NDCG_REL, NDCG_P, k=4) == pytest.approx(expected, abs=1e-15)
    assert ndcg_at_k(NDCG_GROUP, NDCG_REL, NDCG_P, k=100) == pytest.approx(expected, abs=1e-15)


def test_ndcg_exp_and_linear_gains_agree_on_click_labels():
    group = [1, 1, 1, 2, 2]
    y = [0, 1, 1, 1, 0]
    p = [0.9, 0.2, 0.5, 0.1, 0.3]
    assert ndcg_at_k(group, y, p, 2) == ndcg_at_k(group, y, p, 2, gain="exp")


def test_ndcg_skips_groups_without_a_relevant_item():
    group = ["a", "a", "b", "b", "c", "c"]
    y = [0, 1, 1, 0, 0, 0]
    p = [0.9, 0.1, 0.8, 0.2, 0.5, 0.4]
    # a: 1/log2(3); b: 1; c has no relevant item and is left out of the mean (not a 0).
    expected = (1 / LOG2_3 + 1.0) / 2
    assert ndcg_at_k(group, y, p, k=2) == pytest.approx(expected, abs=1e-15)


def test_ndcg_breaks_score_ties_by_input_order():
    assert ndcg_at_k([7, 7], [0, 1], [0.5, 0.5], k=1) == 0.0
    assert ndcg_at_k([7, 7], [1, 0], [0.5, 0.5], k=1) == 1.0


def test_ndcg_groups_need_not_be_contiguous():
    interleaved = ndcg_at_k(["a", "b", "a", "b"], [1, 0, 0, 1], [0.2, 0.9, 0.8, 0.1], k=2)
    contiguous = ndcg_at_k(["a", "a", "b", "b"], [1, 0, 0, 1], [0.2, 0.8, 0.9, 0.1], k=2)
    assert interleaved == contiguous == pytest.approx(1 / LOG2_3)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_ndcg_equals_sklearn_on_random_requests(k):
    rng = np.random.default_rng(k)
    n_requests, n_items = 200, 8
    rel = rng.integers(0, 4, (n_requests, n_items))
    rel[:, 0] = np.maximum(rel[:, 0], 1)  # every request has a relevant item
    scores = rng.random((n_requests, n_items))  # continuous: no ties
    group = np.repeat(np.arange(n_requests), n_items)
    value = ndcg_at_k(group, rel.ravel(), scores.ravel(), k)
    assert value == pytest.approx(ndcg_score(rel, scores, k=k), abs=1e-12)


def test_ndcg_raises_when_no_group_has_a_relevant_item():
    with pytest.raises(MetricError, match="none of the 2 groups"):
        ndcg_at_k([1, 2], [0, 0], [0.3, 0.4], k=1)


@pytest.mark.parametrize("k", [0, -1, 2.0, True, "3"])
def test_ndcg_rejects_a_k_that_is_not_a_positive_integer(k):
    with pytest.raises(MetricError, match="k must be a positive integer"):
        ndcg_at_k([1, 1], [0, 1], [0.3, 0.4], k=k)


def test_ndcg_rejects_an_unknown_gain():
    with pytest.raises(MetricError, match="gain must be"):
        ndcg_at_k([1, 1], [0, 1], [0.3, 0.4], k=1, gain="log")  # type: ignore[arg-type]


@pytest.mark.parametrize("rel", [[-1, 1], [math.nan, 1]])
def test_ndcg_rejects_negative_or_nan_relevance(rel):
    with pytest.raises(MetricError, match="relevance"):
        ndcg_at_k([1, 1], rel, [0.3, 0.4], k=1)


# --------------------------------------------------------------------------------------------
# Input validation shared by every metric

BINARY_METRICS = {
    "auc": auc,
    "gauc": lambda y, p: gauc(np.zeros(len(y), dtype=int), y, p),
    "logloss": logloss,
    "normalized_entropy": normalized_entropy,
    "calibration": calibration,
    "ndcg_at_k": lambda y, p: ndcg_at_k(np.zeros(len(y), dtype=int), y, p, 3),
}
PROBABILITY_METRICS = ["logloss", "normalized_entropy", "calibration"]


@pytest.mark.parametrize("name", BINARY_METRICS)
def test_every_metric_rejects_inputs_of_different_lengths(name):
    with pytest.raises(MetricError, match="differ in length"):
        BINARY_METRICS[name]([0, 1, 1], [0.2, 0.3])


@pytest.mark.parametrize("name", BINARY_METRICS)
def test_every_metric_rejects_empty_input(name):
    with pytest.raises(MetricError, match="empty input"):
        BINARY_METRICS[name]([], [])


@pytest.mark.parametrize("name", BINARY_METRICS)
def test_every_metric_rejects_nan_scores(name):
    with pytest.raises(MetricError, match="NaN"):
        BINARY_METRICS[name]([0, 1, 1], [0.2, math.nan, 0.5])


@pytest.mark.parametrize("name", [n for n in BINARY_METRICS if n != "ndcg_at_k"])
@pytest.mark.parametrize("label", [2, -1, 0.5])
def test_binary_metrics_reject_labels_outside_0_1(name, label):
    with pytest.raises(MetricError, match="labels y must be 0 or 1"):
        BINARY_METRICS[name]([0, 1, label], [0.2, 0.4, 0.5])


@pytest.mark.parametrize("name", [n for n in BINARY_METRICS if n != "ndcg_at_k"])
def test_binary_metrics_reject_non_numeric_labels(name):
    with pytest.raises(MetricError, match="numeric"):
        BINARY_METRICS[name](["yes", "no"], [0.2, 0.4])


@pytest.mark.parametrize("name", PROBABILITY_METRICS)
@pytest.mark.parametrize("bad", [-0.1, 1.5, math.inf])
def test_probability_metrics_reject_p_outside_0_1(name, bad):
    with pytest.raises(MetricError, match=r"in \[0, 1\]"):
        BINARY_METRICS[name]([0, 1, 1], [0.2, bad, 0.5])


@pytest.mark.parametrize("name", BINARY_METRICS)
def test_every_metric_rejects_two_dimensional_input(name):
    with pytest.raises(MetricError, match="one-dimensional"):
        BINARY_METRICS[name]([[0, 1], [1, 0]], [[0.2, 0.3], [0.4, 0.5]])


def test_metric_errors_are_value_errors_with_one_line_messages():
    with pytest.raises(ValueError) as info:
        logloss([0, 1], [0.5])
    assert isinstance(info.value, MetricError)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# RollingWindow


def test_rolling_window_evicts_the_oldest_samples():
    _, y, p = random_case(21, n=500, ties=True)
    window = RollingWindow(100)
    for i, (label, score) in enumerate(zip(y, p, strict=True)):
        window.add(int(label), float(score))
        assert len(window) == min(i + 1, 100)
        if i in (150, 499):
            recent_y, recent_p = y[i - 99 : i + 1], p[i - 99 : i + 1]
            assert window.auc() == pytest.approx(auc(recent_y, recent_p), abs=1e-12)
            assert window.logloss() == pytest.approx(logloss(recent_y, recent_p), abs=1e-12)


def test_rolling_window_add_many_wraps_around_and_keeps_the_last_size_pairs():
    _, y, p = random_case(22, n=1_000)
    window = RollingWindow(64)
    chunks = [10, 50, 3, 64, 1, 200, 40]
    start = 0
    for size in chunks:
        window.add_many(y[start : start + size], p[start : start + size])
        start += size
        first = max(0, start - 64)
        assert len(window) == start - first
        assert window.logloss() == pytest.approx(logloss(y[first:start], p[first:start]))
        if 0 < y[first:start].sum() < start - first:
            assert window.auc() == pytest.approx(auc(y[first:start], p[first:start]))


def test_rolling_window_eviction_changes_the_auc():
    window = RollingWindow(2)
    window.add_many([1, 0], [0.9, 0.1])
    assert window.auc() == 1.0
    window.add(1, 0.05)  # evicts (1, 0.9)
    assert window.auc() == 0.0


def test_rolling_window_metrics_are_nan_when_empty_or_single_class():
    window = RollingWindow(3)
    assert len(window) == 0
    assert math.isnan(window.auc())
    assert math.isnan(window.logloss())
    window.add_many([1, 1], [0.5, 0.8])
    assert math.isnan(window.auc())
    assert window.logloss() == pytest.approx(logloss([1, 1], [0.5, 0.8]))
    window.add_many([], [])
    assert len(window) == 2


def test_rolling_window_rejects_invalid_input():
    window = RollingWindow(3)
    with pytest.raises(MetricError):
        window.add(2, 0.5)
    with pytest.raises(MetricError):
        window.add(1, math.nan)
    with pytest.raises(MetricError):
        window.add(0, 1.5)
    with pytest.raises(MetricError):
        window.add_many([0, 1], [0.5])
    assert len(window) == 0


@pytest.mark.parametrize("size", [0, -5, 2.5, True])
def test_rolling_window_size_must_be_a_positive_integer(size):
    with pytest.raises(ValueError, match="positive integer"):
        RollingWindow(size)


@pytest.mark.parametrize("spacing", ["uniform", "quantile"])
def test_calibration_buckets_partition_the_rows_and_average_to_the_overall_figures(spacing):
    rng = np.random.default_rng(3)
    p = rng.beta(1, 20, 20_000)  # CTR-like scores, crowded near 0
    y = (rng.random(p.size) < p).astype(int)
    buckets = calibration_buckets(y, p, n_buckets=10, spacing=spacing)
    counts = np.array([b.count for b in buckets])
    assert counts.sum() == p.size
    assert np.dot(counts, [b.mean_predicted for b in buckets]) / p.size == pytest.approx(p.mean())
    assert np.dot(counts, [b.observed for b in buckets]) / p.size == pytest.approx(y.mean())
    for b in buckets:
        inside = (p >= b.low) & ((p < b.high) | (b.high == 1.0))
        assert b.count == inside.sum()
        assert b.mean_predicted == pytest.approx(p[inside].mean())
        assert b.observed == pytest.approx(y[inside].mean())
    if spacing == "quantile":  # about equal counts, where uniform crowds the first bucket
        assert len(buckets) == 10 and counts.min() > 0.9 * p.size / 10
    else:
        assert counts[0] > 0.8 * p.size


def test_calibration_buckets_leave_out_empty_buckets_and_take_a_score_of_one():
    buckets = calibration_buckets([0, 1, 1], [0.05, 1.0, 1.0], n_buckets=4, spacing="uniform")
    assert [(b.low, b.high, b.count, b.observed) for b in buckets] == [
        (0.0, 0.25, 1, 0.0), (0.75, 1.0, 2, 1.0)]


def test_calibration_buckets_of_one_repeated_score_are_one_bucket():
    # An untrained model scores everything alike: quantile edges then all coincide.
    buckets = calibration_buckets([0, 1, 0, 0], [0.5] * 4)
    assert [(b.low, b.high, b.count, b.observed) for b in buckets] == [(0.5, 1.0, 4, 0.25)]


@pytest.mark.parametrize("kwargs, match", [
    ({"n_buckets": 0}, "n_buckets"), ({"n_buckets": True}, "n_buckets"),
    ({"spacing": "log"}, "spacing"),
])
def test_calibration_buckets_reject_bad_arguments(kwargs, match):
    with pytest.raises(MetricError, match=match):
        calibration_buckets([0, 1], [0.2, 0.4], **kwargs)
    with pytest.raises(MetricError, match="probabilities"):
        calibration_buckets([0, 1], [0.2, 1.4])


@pytest.mark.parametrize("ties", [False, True])
def test_auc_over_time_is_sklearns_exact_auc_of_each_bucket(ties):
    rng, y, p = random_case(8, n=4_000, ties=ties)
    ts = np.sort(rng.integers(0, 3_600_000, len(y)))  # an hour in milliseconds
    ts[-3:] = [3_600_005, 3_600_006, 3_600_007]  # a bucket of three rows ...
    y[-3:] = 1  # ... all clicks: its AUC is undefined
    buckets = auc_over_time(ts, y, p, width=60_000)
    assert [b.start for b in buckets] == sorted({int(t) // 60_000 * 60_000 for t in ts})
    assert sum(b.count for b in buckets) == len(y)
    for b in buckets:
        inside = (ts >= b.start) & (ts < b.start + 60_000)
        assert (b.count, b.clicks) == (inside.sum(), y[inside].sum())
        if 0 < b.clicks < b.count:
            assert b.auc == pytest.approx(roc_auc_score(y[inside], p[inside]), abs=1e-12)
        else:
            assert math.isnan(b.auc)
    assert any(math.isnan(b.auc) for b in buckets)


@pytest.mark.parametrize("ts, width, match", [
    ([0.5, 1.5], 10, "integers"), ([0, 1], 0, "width"), ([0, 1], 2.5, "width"),
    ([0], 10, "length"),
])
def test_auc_over_time_rejects_bad_input(ts, width, match):
    with pytest.raises(MetricError, match=match):
        auc_over_time(ts, [0, 1], [0.2, 0.4], width)
