from __future__ import annotations

from learners import GBDTLR
from learners.checks import check_dataset
from pipeline.telemetry import ServiceMetrics


def value(metrics: ServiceMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_tree_refits_swaps_and_drifts_of_the_hybrid_are_exported_as_counters():
    hybrid = GBDTLR(n_bits=16, n_trees=5, num_leaves=8, min_data_in_leaf=10, buffer_size=400,
                    min_samples=100, refit_every=150, adopt_after=30, shadow_window=40,
                    shadow_max=80)
    xs, ys, _ = check_dataset(700)
    metrics = ServiceMetrics(["gbdt_lr"])
    for start in (0, 350):  # two publishes: counters advance by what happened in between
        hybrid.learn_many(xs[start:start + 350], ys[start:start + 350])
        metrics.publish_learners({"gbdt_lr": hybrid.stats()})
    stats = hybrid.stats()
    assert stats["swaps"] >= 2 and stats["refits"] >= 3
    refits = sum(value(metrics, "streamctr_tree_refits_total", learner="gbdt_lr", trigger=t)
                 for t in ("schedule", "drift"))
    swaps = sum(value(metrics, "streamctr_tree_swaps_total", learner="gbdt_lr", reason=r)
                for r in ("loss", "warmup"))
    assert (refits, swaps) == (stats["refits"], stats["swaps"])
    assert value(metrics, "streamctr_tree_refits_total", learner="gbdt_lr",
                 trigger="drift") == stats["drift_refits"]
    assert value(metrics, "streamctr_drift_detections_total", learner="gbdt_lr") == \
        stats["drifts"]
