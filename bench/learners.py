"""Learner benchmark: FTRL-Proximal against river and Vowpal Wabbit on one stream.

Every learner sees the same events, each with the same 20 hashed one-hot features (six
fields of the synthetic stream and fourteen declared crosses), in the same order, and is
timed doing predict-then-learn one event after the other (progressive validation), with
the same hyper-parameters. Rates are medians of several runs in this one process.

Also measured: negative downsampling (calibration after re-calibration), Poisson
inclusion (state saved), and the state's memory.

river and vowpalwabbit are baselines, installed by this script into the running
environment when missing (not dependencies of the package).

    .venv/bin/python bench/learners.py [--events N] [--runs R]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.hashing import batch_from_frame  # noqa: E402
from learners import FTRLProximal  # noqa: E402
from replay import metrics  # noqa: E402
from replay.synthetic import generate  # noqa: E402

FIELDS = ("user", "item", "category", "position", "device", "page")
CROSSES = (
    ("user", "category"), ("user", "device"), ("user", "page"), ("user", "position"),
    ("item", "position"), ("item", "device"), ("item", "page"), ("item", "user"),
    ("category", "device"), ("category", "page"), ("category", "position"),
    ("device", "page"), ("position", "device"), ("position", "page"),
)
HYPER = {"alpha": 0.05, "beta": 1.0, "l1": 0.0, "l2": 1.0}
N_BITS = 22
BASELINES = {"river": "river", "vowpalwabbit": "vowpalwabbit>=9.10"}


def ensure_baselines() -> None:
    """Install the baseline libraries into this interpreter's environment if missing."""
    for module, requirement in BASELINES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            print(f"bench: installing {requirement} (baseline only)", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", requirement],
                           check=True)


def stream(n_events: int, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    """Impressions of the synthetic stream as a frame of the six fields, and their labels."""
    s = generate(n_events, seed=seed)
    imps = s.impressions.sort("ts")
    clicked = imps["impression_id"].is_in(s.clicks["impression_id"].implode())
    frame = imps.select(
        pl.col("user_id").alias("user"), pl.col("item_id").alias("item"),
        pl.col("category_id").alias("category"), pl.col("position"),
        pl.col("context").struct.field("device"), pl.col("context").struct.field("page"),
    )
    return frame, clicked.to_numpy().astype(np.int8)


def feature_names(frame: pl.DataFrame) -> list[list[str]]:
    """Per event, the 20 feature names, exactly as FTRLProximal(crosses=CROSSES) names them."""
    rows = frame.select(pl.col(c).cast(pl.String) for c in FIELDS).rows()
    out = []
    for row in rows:
        value = dict(zip(FIELDS, row, strict=True))
        names = [f"{f}={value[f]}" for f in FIELDS]
        names += ["×".join(c) + "=" + "|".join(value[f] for f in c) for c in CROSSES]
        out.append(names)
    return out


def progressive(predict_learn, events, labels) -> tuple[float, np.ndarray]:
    scores = np.empty(len(labels))
    start = time.perf_counter()
    for i, (x, y) in enumerate(zip(events, labels, strict=True)):
        scores[i] = predict_learn(x, y)
    return time.perf_counter() - start, scores


def run_river(dicts, labels) -> tuple[float, np.ndarray]:
    from river import linear_model, optim

    model = linear_model.LogisticRegression(optimizer=optim.FTRLProximal(**HYPER),
                                            intercept_lr=0)

    def step(x, y):
        p = model.predict_proba_one(x).get(True, 0.0)
        model.learn_one(x, bool(y))
        return p

    return progressive(step, dicts, labels)


def river_model_bytes(dicts, labels) -> int:
    """Python memory river's model holds after learning the stream (a separate, untimed run)."""
    import tracemalloc

    from river import linear_model, optim

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    model = linear_model.LogisticRegression(optimizer=optim.FTRLProximal(**HYPER),
                                            intercept_lr=0)
    for x, y in zip(dicts, labels.tolist(), strict=True):
        model.learn_one(x, bool(y))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held


def run_vw(lines, labels) -> tuple[float, np.ndarray]:
    import vowpalwabbit

    vw = vowpalwabbit.Workspace(
        f"--ftrl --ftrl_alpha {HYPER['alpha']} --ftrl_beta {HYPER['beta']} "
        f"--l1 {HYPER['l1']} --l2 {HYPER['l2']} -b {N_BITS} --noconstant "
        "--loss_function logistic --link logistic --quiet")

    def step(line, _):
        ex = vw.parse(line)
        vw.learn(ex)  # the example's prediction is the one made before this update
        p = ex.get_simplelabel_prediction()
        vw.finish_example(ex)
        return p

    try:
        return progressive(step, lines, labels)
    finally:
        vw.finish()


def run_ours_one(dicts, labels) -> tuple[float, np.ndarray]:
    model = FTRLProximal(**HYPER, n_bits=N_BITS)

    def step(x, y):
        p = model.predict_proba_one(x)
        model.learn_one(x, y)
        return p

    return progressive(step, dicts, labels)


def run_ours_many(batch, labels, chunk: int = 65_536) -> tuple[float, np.ndarray]:
    """predict_learn_many over consecutive chunks of a frame or a pre-hashed batch."""
    model = FTRLProximal(**HYPER, n_bits=N_BITS, crosses=CROSSES)
    pieces = []
    start = time.perf_counter()
    if isinstance(batch, pl.DataFrame):
        for k in range(0, len(batch), chunk):
            pieces.append(model.predict_learn_many(batch[k:k + chunk], labels[k:k + chunk]))
    else:
        pieces.append(model.predict_learn_many(batch, labels))
    return time.perf_counter() - start, np.concatenate(pieces)


def median_run(fn, runs: int) -> tuple[float, np.ndarray]:
    results = [fn() for _ in range(runs)]
    return statistics.median(t for t, _ in results), results[0][1]


def measure(n_events: int, runs: int) -> dict:
    ensure_baselines()
    frame, labels = stream(n_events)
    n = len(labels)
    names = feature_names(frame)
    dicts = [dict.fromkeys(row, 1.0) for row in names]
    # VW's text format reserves "|", ":" and spaces: the same names with those replaced.
    table = str.maketrans({"|": "+", ":": ";", " ": "_"})
    lines = [("1" if y else "-1") + " |f " + " ".join(x.translate(table) for x in row)
             for row, y in zip(names, labels.tolist(), strict=True)]
    hashed = batch_from_frame(frame, CROSSES)
    assert (np.diff(hashed.indptr) == 20).all(), "every event has 20 features"
    run_ours_many(frame[:100], labels[:100])  # compile (or load) the kernel before timing

    rows = {}
    for name, fn in [
        ("river `LogisticRegression(optim.FTRLProximal)`", lambda: run_river(dicts, labels)),
        ("Vowpal Wabbit `--ftrl` (pyvw, one example at a time)", lambda: run_vw(lines, labels)),
        ("streamctr `learn_one` (feature dicts)", lambda: run_ours_one(dicts, labels)),
        ("streamctr `predict_learn_many` (polars frame, hashing included)",
         lambda: run_ours_many(frame, labels)),
        ("streamctr `predict_learn_many` (pre-hashed `SparseBatch`)",
         lambda: run_ours_many(hashed, labels)),
    ]:
        print(f"bench: learners: {name}", file=sys.stderr, flush=True)
        seconds, scores = median_run(fn, runs)
        rows[name] = {"eps": n / seconds, "auc": metrics.auc(labels, scores),
                      "logloss": metrics.logloss(labels, np.clip(scores, 1e-12, 1 - 1e-12))}

    sampling = {}
    for rate in (1.0, 0.5, 0.25, 0.1):
        model = FTRLProximal(**HYPER, n_bits=N_BITS, crosses=CROSSES, negative_rate=rate, seed=1)
        p = model.predict_learn_many(hashed, labels)
        late = slice(n // 2, None)
        sampling[rate] = {"learned": model.n_learned, "auc": metrics.auc(labels[late], p[late]),
                          "calibration": metrics.calibration(labels[late], p[late])}

    inclusion = {}
    for p_in in (1.0, 0.5, 0.2):
        model = FTRLProximal(**HYPER, n_bits=N_BITS, crosses=CROSSES, inclusion_p=p_in, seed=1)
        p = model.predict_learn_many(hashed, labels)
        state = model.state_dict()
        inclusion[p_in] = {"coordinates": model.n_coordinates,
                           "state_bytes": sum(v.nbytes for v in state.values()
                                              if isinstance(v, np.ndarray)),
                           "auc": metrics.auc(labels, p)}
    return {"events": n, "rows": rows, "sampling": sampling, "inclusion": inclusion,
            "table_bytes": (1 << N_BITS) * 32, "river_bytes": river_model_bytes(dicts, labels)}


def markdown(result: dict, runs: int) -> list[str]:
    rows = result["rows"]
    river = next(v for k, v in rows.items() if k.startswith("river"))
    vw = next(v for k, v in rows.items() if k.startswith("Vowpal"))
    kernel = rows["streamctr `predict_learn_many` (pre-hashed `SparseBatch`)"]
    frame = rows["streamctr `predict_learn_many` (polars frame, hashing included)"]
    lines = [
        "## FTRL-Proximal vs river and Vowpal Wabbit (`bench/learners.py`)",
        "",
        f"{result['events']:,} impressions of the synthetic stream, 20 hashed one-hot features "
        "each (6 fields + 14 crosses), predict-then-learn one event after the other, same "
        f"hyper-parameters (alpha={HYPER['alpha']}, beta={HYPER['beta']}, l1={HYPER['l1']}, "
        f"l2={HYPER['l2']}, 2^{N_BITS} slots, no intercept), median of {runs} runs in one "
        "process:",
        "",
        "| learner | events/s | × river | × VW | progressive AUC | logloss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['eps']:,.0f} | {r['eps'] / river['eps']:.1f} | "
                     f"{r['eps'] / vw['eps']:.1f} | {r['auc']:.4f} | {r['logloss']:.4f} |")
    lines += [
        "",
        f"The compiled batch path runs at **{kernel['eps'] / river['eps']:.0f}× river** and "
        f"**{kernel['eps'] / vw['eps']:.0f}× Vowpal Wabbit's binding** on pre-hashed "
        f"features ({frame['eps'] / river['eps']:.0f}× and {frame['eps'] / vw['eps']:.0f}× "
        "when it hashes the frame's strings itself); targets ≥ 100× and ≥ 20×. Its AUC "
        f"differs from river's by {abs(kernel['auc'] - river['auc']):.1e} (target < 0.002): "
        "the same algorithm, step for step. VW's FTRL differs in its hashing and update "
        "details, hence its slightly different AUC.",
        "",
        "Negative downsampling at rate r (second half of the stream, after re-calibration "
        "q = p / (p + (1 − p) / r)):",
        "",
        "| r | samples learned | AUC | calibration |",
        "|---:|---:|---:|---:|",
    ]
    for rate, r in result["sampling"].items():
        lines.append(f"| {rate} | {r['learned']:,} | {r['auc']:.4f} | {r['calibration']:.3f} |")
    lines += [
        "",
        f"Memory: our state table of 2^{N_BITS} slots × 32 bytes is "
        f"{result['table_bytes'] / 2**20:.0f} MiB allocated up front (calloc: pages become "
        "resident as features touch them), its sparse `state_dict()` below; river's model "
        f"holds {result['river_bytes'] / 2**20:.0f} MiB of Python objects after the same "
        "stream (tracemalloc), growing with every new feature.",
        "",
        "Poisson inclusion (a feature not in the model enters with probability p per "
        "sighting): coordinates holding state, the sparse `state_dict()` size, progressive "
        "AUC.",
        "",
        "| p | coordinates | state_dict | AUC |",
        "|---:|---:|---:|---:|",
    ]
    base = result["inclusion"][1.0]
    for p_in, r in result["inclusion"].items():
        saved = 1 - r["coordinates"] / base["coordinates"]
        lines.append(f"| {p_in} | {r['coordinates']:,} ({saved:.0%} saved) | "
                     f"{r['state_bytes'] / 2**20:.1f} MiB | {r['auc']:.4f} |")
    lines.append("")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print("\n".join(markdown(measure(args.events, args.runs), args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
