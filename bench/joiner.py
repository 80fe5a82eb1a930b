"""Joiner benchmarks: throughput against a naive reference, and behaviour-store memory.

* **Throughput.** Joiner + recent sequence + same-category search + counting features
  over the synthetic stream with 1M users, fed as encoded arrays in 64K-event
  batches (replay's fast path), median of several runs after a warm-up run (which
  also compiles the kernels). Encoding (interning ids, hashing impression ids) is
  timed separately. The baseline is :class:`NaiveJoiner` below: the same semantics
  written plainly with dicts of lists, run on a prefix of the same stream.
* **Memory.** 10M behaviours for 1M users put into a :class:`BehaviourStore` in a
  fresh process; bytes per stored behaviour and the process's peak RSS.

    .venv/bin/python bench/joiner.py            # prints a Markdown section
"""

from __future__ import annotations

import bisect
import json
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.ids import impression_keys  # noqa: E402
from features.joiner import EncodedEvents, Joiner, JoinerConfig  # noqa: E402
from replay.synthetic import SyntheticConfig, generate  # noqa: E402

BATCH = 65_536


class NaiveJoiner:
    """The reference: same join, sequences and decayed counts, plain Python containers.

    Events must come in event-time order (impressions first on ties), as replay gives
    them; it keeps every impression and behaviour in dicts of lists.
    """

    def __init__(self, config: JoinerConfig) -> None:
        self.c = config
        self.open: dict[int, list] = {}  # key -> [ts, user, item, cat, clicked]
        self.ends: deque[tuple[int, int]] = deque()  # (end, key), appended in order
        # user -> [(ts, item, cat)] kept sorted by time
        self.history: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        self.counts: dict[tuple, list[float]] = {}
        self.released = 0

    def _decayed(self, key: tuple, t: int) -> list[float]:
        row = self.counts.get(key)
        if row is None:
            return [0.0] * (2 * len(self.c.count_half_lives_ms))
        last, values = row[0], row[1:]
        return [v * 2 ** (-(t - last) / h)
                for v, h in zip(values, [h for h in self.c.count_half_lives_ms for _ in (0, 1)],
                                strict=True)]

    def _count(self, key: tuple, t: int, column: int) -> None:
        values = self._decayed(key, t)
        for h in range(len(self.c.count_half_lives_ms)):
            values[2 * h + column] += 1.0
        self.counts[key] = [t, *values]

    def impression(self, key: int, user: int, item: int, cat: int, ts: int) -> tuple:
        self._advance(ts)
        history = self.history[user]
        cut = bisect.bisect_left(history, (ts,))
        earlier = history[:cut]
        recent = earlier[-self.c.recent_length:][::-1]
        same = [b for b in reversed(earlier) if b[2] == cat][: self.c.lifelong_top_k]
        counts = [self._decayed(k, ts) for k in (("u", user), ("i", item), ("uc", user, cat))]
        for k in (("u", user), ("i", item), ("uc", user, cat)):
            self._count(k, ts, 0)
        self.open[key] = [ts, user, item, cat, False]
        self.ends.append((ts + self.c.window_ms, key))
        return recent, same, counts

    def click(self, key: int, ts: int) -> None:
        self._advance(ts)
        imp = self.open.get(key)
        if imp is None or imp[4] or ts < imp[0]:
            return
        imp[4] = ts - imp[0] <= self.c.window_ms
        _, user, item, cat, _ = imp
        bisect.insort(self.history[user], (ts, item, cat))
        for k in (("u", user), ("i", item), ("uc", user, cat)):
            self._count(k, ts, 1)

    def _advance(self, ts: int) -> None:
        while self.ends and self.ends[0][0] < ts:
            _, key = self.ends.popleft()
            self.open.pop(key, None)
            self.released += 1


def synthetic_events(n_events: int) -> tuple[EncodedEvents, Joiner]:
    """The 1M-user synthetic stream, encoded by a joiner's interners, in event-time order."""
    stream = generate(n_events, seed=1, config=SyntheticConfig(
        n_users=1_000_000, n_items=200_000, user_zipf=0.3, mean_gap_ms=100.0))
    joiner = Joiner(JoinerConfig())
    imp, clk = stream.impressions, stream.clicks
    kind = np.concatenate([np.zeros(imp.height, np.int8), np.ones(clk.height, np.int8)])
    ts = np.concatenate([imp["ts"].to_numpy(), clk["ts"].to_numpy()])
    key = np.concatenate([impression_keys(imp["impression_id"].to_list()),
                          impression_keys(clk["impression_id"].to_list())])
    user = joiner.users.intern_series(pl.concat([imp["user_id"], clk["user_id"]]))
    item = np.concatenate([joiner.items.intern_series(imp["item_id"]),
                           np.full(clk.height, -1, np.int32)])
    cat = np.concatenate([joiner.categories.intern_series(imp["category_id"]),
                          np.full(clk.height, -1, np.int32)])
    order = np.lexsort((kind, ts))
    encoded = EncodedEvents(kind[order], key[order], user[order].astype(np.int32),
                            item[order].astype(np.int32), cat[order].astype(np.int32),
                            ts[order])
    return encoded, joiner


def _fresh(template: Joiner, encoded: EncodedEvents) -> Joiner:
    joiner = Joiner(template.config)
    joiner.users, joiner.items, joiner.categories = (template.users, template.items,
                                                     template.categories)
    impressions = encoded.kind == 0
    pairs = np.unique(encoded.user[impressions].astype(np.int64) << 32
                      | encoded.cat[impressions]).size
    joiner.presize(len(joiner.users), len(joiner.items), pairs, BATCH)  # as replay does
    return joiner


def _run_fast(encoded: EncodedEvents, template: Joiner) -> float:
    joiner = _fresh(template, encoded)
    start = time.perf_counter()
    for a in range(0, len(encoded.ts), BATCH):
        joiner.process(EncodedEvents(*(column[a:a + BATCH] for column in encoded)))
    return time.perf_counter() - start


def _run_naive(encoded: EncodedEvents, n: int) -> float:
    naive = NaiveJoiner(JoinerConfig())
    start = time.perf_counter()
    for i in range(n):
        if encoded.kind[i] == 0:
            naive.impression(int(encoded.key[i]), int(encoded.user[i]), int(encoded.item[i]),
                             int(encoded.cat[i]), int(encoded.ts[i]))
        else:
            naive.click(int(encoded.key[i]), int(encoded.ts[i]))
    return time.perf_counter() - start


def throughput(runs: int, n_events: int, naive_events: int) -> dict[str, float]:
    started = time.perf_counter()
    encoded, template = synthetic_events(n_events)
    encode_s = time.perf_counter() - started
    _run_fast(EncodedEvents(*(c[:BATCH] for c in encoded)), template)  # compile, warm up
    fast = statistics.median(_run_fast(encoded, template) for _ in range(runs))
    naive = statistics.median(_run_naive(encoded, naive_events) for _ in range(runs))
    n = len(encoded.ts)
    return {"events": n, "users": len(template.users), "fast_eps": n / fast,
            "naive_eps": naive_events / naive, "generate_and_encode_s": encode_s}


def _store_memory_child(n: int, users: int) -> None:
    """In a fresh process: fill a store with ``n`` behaviours; print sizes as JSON.

    Inputs are made a million at a time so that the peak RSS is the store's, not the
    benchmark's: user by a Zipf law, the user's k-th favourite of 8 categories by a
    geometric law (pair id = user * 8 + k), random items, increasing times.
    """
    import numba as nb

    from features.store import BehaviourStore, store_add

    @nb.njit
    def fill(s, user, item, cat, pair, ts):
        for i in range(user.size):
            store_add(s, user[i], item[i], cat[i], pair[i], ts[i])

    rss_start = _rss()
    store = BehaviourStore(cap=10_000, ttl_ms=365 * 86_400_000, capacity=n, users=users)
    rng = np.random.default_rng(0)
    chunk = 1_000_000
    pair_ids = np.full(users * 8, -1, np.int32)  # dense ids in first-seen order, as the joiner
    n_pairs = 0
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        user = (rng.zipf(1.3, m) % users).astype(np.int32)
        k = np.minimum(rng.geometric(0.4, m) - 1, 7)
        sparse = user.astype(np.int64) * 8 + k
        new = np.unique(sparse[pair_ids[sparse] < 0])
        pair_ids[new] = np.arange(n_pairs, n_pairs + new.size, dtype=np.int32)
        n_pairs += new.size
        pair = pair_ids[sparse]
        cat = ((user.astype(np.int64) * 7 + k) % 1_000).astype(np.int32)
        item = rng.integers(0, 1_000_000, m).astype(np.int32)
        ts = start + np.arange(m, dtype=np.int64)
        store.reserve(m, users, n_pairs, int(ts[-1]))
        fill(store.arrays, user, item, cat, pair, ts)
    a = store.arrays
    per_row = sum(getattr(a, name).itemsize for name in
                  ("user", "item", "cat", "ts", "prev_user", "prev_uc", "seq"))
    index_bytes = a.users.nbytes + 4 * n_pairs  # pair heads in use (the array grows x2)
    print(json.dumps({"behaviours": len(store), "bytes_per_row": per_row,
                      "bytes_per_behaviour": (per_row * len(store) + index_bytes) / len(store),
                      "pairs": n_pairs, "rss_start": rss_start, "peak_rss": _peak_rss()}))


def _peak_rss() -> int:
    """Peak resident set size of this process, in bytes (Linux VmHWM: unlike
    ru_maxrss it does not carry over the parent's peak across fork and exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss() -> int:
    """Resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def store_memory(n: int = 10_000_000, users: int = 1_000_000) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--store-memory", str(n), str(users)],
        capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(t: dict[str, float], m: dict[str, float], runs: int) -> list[str]:
    gib = 1024 ** 3
    return [
        "## Joiner: join + recent sequence + same-category search + counting features",
        "",
        f"Synthetic stream of a 1,000,000-user world: {t['events']:,} events, {t['users']:,} "
        "distinct users in them, encoded arrays in "
        f"{BATCH:,}-event batches (replay's fast path), median of {runs} runs after a "
        "warm-up run, one core:",
        "",
        "| implementation | events/s |",
        "|---|---:|",
        f"| `features.joiner.Joiner` (compiled kernel) | **{t['fast_eps']:,.0f}** |",
        f"| naive dict-of-lists Python reference (`bench/joiner.py`, same semantics) | "
        f"{t['naive_eps']:,.0f} |",
        "",
        f"Ratio: **{t['fast_eps'] / t['naive_eps']:.0f}×** the reference. Target: ≥ 500K "
        "events/s. Generating and encoding the stream (interning ids, hashing impression "
        f"ids) took {t['generate_and_encode_s']:.1f} s and is not counted.",
        "",
        "## Behaviour store memory",
        "",
        f"{m['behaviours']:,} behaviours of {1_000_000:,} users ({m['pairs']:,} "
        "user × category pairs) in a `BehaviourStore`, in a fresh process "
        "(`bench/joiner.py --store-memory`):",
        "",
        f"* {m['bytes_per_row']} bytes per stored behaviour in the rows, "
        f"**{m['bytes_per_behaviour']:.1f} bytes** with the per-user and per-pair list heads "
        "(target ≤ 40);",
        f"* peak RSS of the process **{m['peak_rss'] / gib:.2f} GiB** (target < 1 GiB), "
        f"{m['rss_start'] / gib:.2f} GiB of it the interpreter and libraries before the "
        "store existed.",
        "",
    ]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--store-memory":
        _store_memory_child(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    runs = 3
    print("\n".join(markdown(throughput(runs, 10_000_000, 200_000), store_memory(), runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
