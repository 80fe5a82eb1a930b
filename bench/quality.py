"""Learner quality: streaming replay AUC / GAUC / NE / calibration of every learner.

One leak-free replay per dataset (`streamctr replay`'s code path, `wait` mode, default
window and warm-up), all learners in the same pass: the synthetic stream, and the real
slices of `../shared/datasets` imported with `streamctr import` (Taobao UserBehavior,
MIND) when that folder exists.

Ablations ride along, registered for this process only. Two of the GBDT+LR hybrid, to set
it against its parts as He et al.'s Table 1 does (the other part, an LR on the raw
features, is ``ftrl``): ``gbdt_trees``, the hybrid's newest trees scoring alone, and
``gbdt_leaves_lr``, the paper's LR on the leaves only (``keep_raw=False``). And of DIN:
``din_deep``, the network without its wide part (the paper's DIN); ``din_no_sequences``
and ``din_deep_no_sequences``, both blind to the behaviour sequences; ``din_no_history``
and ``ftrl_no_history``, blind to them and to the feature names made of them
(``recent_category=…``, ``same_category_clicks=…``, ``recent_item_match``, the
sequence depths); ``din_serve_position``, scoring with the impression's position as
``ftrl`` does; and ``ftrl_position_missing``, FTRL scoring position-free as ``din`` does —
so each DIN comparison is made like for like.

    .venv/bin/python bench/quality.py [--learners ftrl,gbdt_lr] [--events N]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.compiled import splitmix_uniform  # noqa: E402
from features.importers import import_dataset  # noqa: E402
from learners import DIN, GBDTLR, LEARNERS, FTRLProximal  # noqa: E402
from learners.din import _without_position  # noqa: E402
from replay.run import run_replay  # noqa: E402
from replay.synthetic import generate, write_stream  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
REAL = {
    "Taobao UserBehavior slice": ("taobao", DATASETS / "taobao_userbehavior.csv"),
    "MIND small slice": ("mind", DATASETS),
}
METRICS = ("auc", "gauc", "ne", "calibration")


class TreesAlone(GBDTLR):
    """The hybrid's newest trees scoring alone; before the first trees, the raw-feature LR
    (as the hybrid itself serves then), so every learner scores the same samples."""

    def predict_proba_one(self, x: dict[str, float]) -> float:
        p = self.predict_trees_one(x)
        return super().predict_proba_one(x) if p is None else p


# Names of the feature dict derived from the user's behaviour sequences (see
# features.featurize.impression_features): blind to them, a learner knows no history.
_HISTORY_NAMES = ("same_category_clicks=", "recent_category=", "recent_item_match",
                  "num.recent_clicks", "num.same_category_clicks")


def _without_sequences(x: dict[str, float]) -> dict[str, float]:
    return dict(x)  # a plain dict: the replay's behaviour sequences left behind


def _without_history(x: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in x.items() if not k.startswith(_HISTORY_NAMES)}


def blind(cls: type, transform: Callable[[dict[str, float]], dict[str, float]]) -> type:
    """``cls`` reading every feature dict through ``transform`` (predicting, queueing and
    learning alike)."""

    class Blind(cls):
        def predict_proba_one(self, x: dict[str, float]) -> float:
            return super().predict_proba_one(transform(x))

        def learn_one(self, x: dict[str, float], y: int, w: float = 1.0) -> None:
            super().learn_one(transform(x), y, w)

        if issubclass(cls, DIN):
            def queue_predict(self, x: dict[str, float]) -> int:
                return super().queue_predict(transform(x))

            def learn_fnw_one(self, x: dict[str, float], y: int) -> None:
                super().learn_fnw_one(transform(x), y)

    Blind.__name__ = Blind.__qualname__ = f"{cls.__name__}Blind"
    return Blind


class FTRLPositionMissing(FTRLProximal):
    """FTRL scoring as the DIN learner does by default, as if the position were missing:
    it learns a tenth of the samples (DIN's position dropout) without the position names,
    and scores without them. The like-for-like baseline of the position-free score."""

    def learn_one(self, x: dict[str, float], y: int, w: float = 1.0) -> None:
        if splitmix_uniform(0, self.n_learned + self.n_skipped) < 0.1:
            x = _without_position(x)
        super().learn_one(x, y, w)

    def predict_proba_one(self, x: dict[str, float]) -> float:
        return super().predict_proba_one(_without_position(x))


ABLATIONS = {"gbdt_trees": TreesAlone,
             "gbdt_leaves_lr": functools.partial(GBDTLR, keep_raw=False),
             "din_deep": functools.partial(DIN, wide=False),
             "din_deep_no_sequences": functools.partial(blind(DIN, _without_sequences),
                                                        wide=False),
             "din_no_sequences": blind(DIN, _without_sequences),
             "din_no_history": blind(DIN, _without_history),
             "ftrl_no_history": blind(FTRLProximal, _without_history),
             "din_serve_position": functools.partial(DIN, serve_position=True),
             "ftrl_position_missing": FTRLPositionMissing}
DEFAULT_LEARNERS = (*LEARNERS, *ABLATIONS)


def measure(learners: list[str], synthetic_events: int) -> dict[str, dict]:
    """Per dataset: the replay's learner metrics, event counts and wall seconds."""
    LEARNERS.update((k, v) for k, v in ABLATIONS.items() if k in learners)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {f"synthetic, {synthetic_events:,} events": Path(tmp) / "synthetic"}
        write_stream(generate(synthetic_events, seed=0), folders[next(iter(folders))])
        for name, (dataset, source) in REAL.items():
            if source.exists():
                folders[name] = Path(tmp) / dataset
                import_dataset(dataset, source, folders[name])
        for name, folder in folders.items():
            print(f"bench: quality: {name}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            result = run_replay(folder, learners, None, show_progress=False)
            results[name] = {"learners": result.learners, "events": result.events,
                             "seconds": time.perf_counter() - start}
    return results


def markdown(results: dict[str, dict], learners: list[str]) -> list[str]:
    lines = [
        "## Learner quality: streaming replay (`bench/quality.py`)",
        "",
        "Leak-free progressive validation, one chronological pass, `wait` mode (15-minute "
        "window), the first window left out as warm-up; all learners in the same pass over "
        "identical samples. Real slices are read from `../shared/datasets` (absent on a "
        "fresh clone: then only the synthetic stream is measured).",
        "",
        "| dataset | learner | " + " | ".join(METRICS) + " | samples |",
        "|---|---|" + "---:|" * (len(METRICS) + 1),
    ]
    for name, r in results.items():
        for learner in learners:
            m = r["learners"][learner]
            values = " | ".join(f"{m[k]:.4f}" if m[k] is not None else "n/a" for k in METRICS)
            lines.append(f"| {name} | {learner} | {values} | {m['samples']:,} |")
    lines.append("")
    parts = [k for k in ("ftrl", "gbdt_trees", "gbdt_leaves_lr") if k in learners]
    if "gbdt_lr" in learners and parts:
        lines += [
            "He et al. report the hybrid's NE more than 3% below each of its parts. Relative "
            "NE of ours, (NE(other) − NE(gbdt_lr)) / NE(other), positive where the hybrid "
            "is better:",
            "",
            "| dataset | " + " | ".join(f"vs {k}" for k in parts) + " |",
            "|---|" + "---:|" * len(parts),
        ]
        for name, r in results.items():
            ne = {k: r["learners"][k]["ne"] for k in ("gbdt_lr", *parts)}
            gains = " | ".join(f"{(ne[k] - ne['gbdt_lr']) / ne[k]:+.1%}" for k in parts)
            lines.append(f"| {name} | {gains} |")
        lines += ["", *WHY, ""]
    pairs = [(a, b, why) for a, b, why in DIN_PAIRS if a in learners and b in learners]
    if pairs:
        lines += [
            "DIN like for like: AUC difference and relative NE, (NE(b) − NE(a)) / NE(b), "
            "positive where a is better:",
            "",
            "| dataset | a | b | what differs | Δ auc | NE gain |",
            "|---|---|---|---|---:|---:|",
        ]
        for name, r in results.items():
            m = r["learners"]
            for a, b, why in pairs:
                lines.append(f"| {name} | {a} | {b} | {why} | "
                             f"{m[a]['auc'] - m[b]['auc']:+.4f} | "
                             f"{(m[b]['ne'] - m[a]['ne']) / m[b]['ne']:+.1%} |")
        lines += ["", *DIN_WHY, ""]
    return lines


# What the DIN pairs say (mechanisms that hold run to run, checked by the ablations).
DIN_WHY = [
    "What these say:",
    "",
    "* **Position.** On the synthetic stream and MIND, clicks depend strongly on the "
    "position, and scoring without it costs any learner about 0.09 AUC (synthetic) "
    "and 0.015 (MIND). So DIN's position-free default score is compared with FTRL "
    "scoring position-free, and `din_serve_position` with `ftrl`. On Taobao the "
    "position does not vary, and both pairs agree.",
    "* **DIN beats FTRL** on Taobao (+0.013 AUC, 7.5% lower NE) and on MIND (+0.001 "
    "position-free, +0.007 reading the position), and ties on the synthetic stream, "
    "whose click logit is additive in what FTRL's one-hot model holds. Against FTRL "
    "without history it wins everywhere (Taobao +0.043, MIND +0.011).",
    "* **The wide part** is most of the gain over the network alone (`din_deep`): one "
    "pass gives the network one step per 1024 samples, FTRL one update per sample.",
    "* **History** (the sequences and the names made of them) is worth +0.018 AUC to "
    "DIN on Taobao. But the attention over the raw sequences adds nothing on top of "
    "the names made of them and the counting features. That holds with or without "
    "the wide part (`din_no_sequences`, `din_deep_no_sequences`), and (on Taobao) with "
    "embeddings initialised 10× larger. On these slices the user's interest in the target is "
    "already in its point-in-time user × category counts, recent categories and "
    "same-category click count. Where ground truth depends on long-term interest "
    "that those do not hold, the lifelong branch does help (tested: "
    "`test_lifelong_branch_helps_when_clicks_follow_long_term_category_interest`).",
]


DIN_PAIRS = (
    ("din", "ftrl_position_missing", "DIN vs FTRL, both scoring position-free"),
    ("din_serve_position", "ftrl", "DIN vs FTRL, both reading the position"),
    ("din", "din_no_sequences", "the network reading the behaviour sequences"),
    ("din_deep", "din_deep_no_sequences", "the same, without the wide part"),
    ("din", "din_no_history", "all history: sequences and the names made of them"),
    ("din_serve_position", "ftrl_no_history",
     "DIN vs FTRL without history, both reading the position"),
    ("din", "din_deep", "the wide part"),
)


# Why the gains differ from the paper's (mechanisms, not numbers: they hold run to run).
WHY = [
    "Why not >3% everywhere: in He et al. the trees read rich hand-made dense features "
    "(historical statistics of ads and users) and the LR read the leaves. Here the "
    "strongest signal of a CTR stream is memorised per id and per cross (user, item, "
    "user × category, item × position: millions of values) — only the LR's raw sparse "
    "features hold it — while the trees see only the joiner's counting features on a "
    "50K-sample buffer. So the paper's leaves-only LR and the trees alone lose to plain "
    "FTRL on the synthetic stream and MIND, and the hybrid keeps the raw features "
    "(`keep_raw=True`) and adds the leaves on top. The gain then depends on how much the "
    "counting features know that the ids do not:",
    "",
    "* **synthetic**: the click logit is additive in user × category affinity, item "
    "quality and context effects — close to FTRL's one-hot model — so little "
    "non-linearity is left for the leaves (a tie); the trees alone, without the per-id "
    "memorisation, are far behind.",
    "* **Taobao**: users revisit items and categories, so point-in-time user, item and "
    "user × category click counts over 1 h / 1 d / 7 d are strong and non-linear in "
    "effect; the hybrid beats both parts by 6–9% NE, as the paper reports.",
    "* **MIND**: 97% of the slice's shown items have no category and news items live for "
    "hours, so item counts are young and user × category counts mostly read "
    "\"unknown\"; the leaves add little (1–2% over the trees, 0.2% over FTRL).",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", default=",".join(DEFAULT_LEARNERS))
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    learners = args.learners.split(",")
    print("\n".join(markdown(measure(learners, args.events), learners)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
