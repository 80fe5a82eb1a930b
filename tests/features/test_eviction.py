"""Eviction of idle keys: users, items and user × category pairs past the key TTL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from features import joinkernel as k
from features.events import Click, Impression
from features.featurize import behaviours
from features.hashing import hash_names
from features.joiner import Joiner, JoinerConfig, JoinStats
from learners import make_learner
from replay.engine import OnlineEngine
from replay.run import run_replay
from replay.synthetic import generate, write_stream

# Every key idle for 5 s is evicted: the behaviour TTL, and 25 half-lives of the counts.
CONFIG = JoinerConfig(window_ms=1_000, lifelong_ttl_ms=5_000, count_half_lives_ms=(200,),
                      recent_length=5, lifelong_top_k=3)
OFF = replace(CONFIG, key_ttl_ms=10**15)  # longer than any stream here: nothing evicted
GENERATION_MS = 1_000
FIXTURES = Path(__file__).parent / "fixtures"


def imp(iid: str, ts: int, user: str, item: str, cat: str = "c0") -> Impression:
    return Impression(iid, iid, user, item, cat, 0, ts)


def churn(generations: int, per_generation: int = 20, regulars: int = 3) -> list:
    """Users and items that live for one generation and never return, and regular users
    who come back every generation, each to one item and category of their own."""
    events: list[Impression | Click] = []
    for g in range(generations):
        for n in range(per_generation):
            ts = g * GENERATION_MS + n * (GENERATION_MS // per_generation)
            if n < regulars:
                user, item, cat = f"regular{n}", f"regular-item{n}", f"rc{n}"
            else:
                user, item, cat = f"u{g}-{n % 7}", f"i{g}-{n}", f"c{n % 4}"
            iid = f"imp{g}-{n}"
            events.append(imp(iid, ts, user, item, cat))
            if n % 2 == 0:
                events.append(Click(iid, user, ts + 30))
    return sorted(events, key=lambda e: e.ts)


def run(config: JoinerConfig, events: list, batch: int = 50, sweep_every_batch: bool = False
        ) -> tuple[Joiner, list]:
    """The joiner after ``events``, and each impression's features as plain values."""
    j = Joiner(config)
    seen = []
    for start in range(0, len(events), batch):
        result = j.push(events[start:start + batch])
        for event, row in zip(result.events, result.rows, strict=True):
            if row >= 0:
                f = j.features(int(row))
                seen.append((event.impression_id, f.recent, f.same_category,
                             f.counts.tolist()))
        if sweep_every_batch:
            j.sweep()
    return j, seen


def fresh_features(config: JoinerConfig, event: Impression) -> tuple:
    """What an impression reads from a joiner that never saw its user, item or pair."""
    j = Joiner(config)
    j.push([event])  # it waits for a newer event ...
    f = j.features(int(j.settle().rows[0]))  # ... or for the input to go idle
    return f.recent, f.same_category, f.counts.tolist()


def test_idle_user_is_evicted_after_key_ttl_and_returns_fresh():
    j = Joiner(CONFIG)
    j.push([imp("a", 0, "old", "it-a"), Click("a", "old", 50), imp("b", 100, "old", "it-b")])
    # Someone else moves event time past the TTL of every key of "old" (its newest: 100).
    j.push([imp("c", 5_200, "other", "it-c")])
    # b's feature row (its recent sequence holds it-a) was released by this push: the
    # caller may still read it, so it-a stays until the next push.
    assert j.sweep() == 3 and j.items.code("it-a") is not None
    j.push([imp("d", 5_300, "other", "it-c")])
    assert j.sweep() == 1
    assert j.users.code("old") is None and j.items.code("it-a") is None
    stats = j.stats
    assert (stats.users_evicted, stats.items_evicted, stats.pairs_evicted) == (1, 2, 1)
    assert (stats.users_live, stats.items_live, stats.pairs_live) == (1, 1, 1)
    back = imp("e", 5_400, "old", "it-a")
    result = j.push([back, imp("f", 5_500, "other", "it-c")])
    f = j.features(int(result.rows[[e.impression_id for e in result.events].index("e")]))
    assert (f.recent, f.same_category, f.counts.tolist()) == fresh_features(CONFIG, back)


def test_idle_key_reads_fresh_whether_or_not_a_sweep_ran():
    # A user and item of each of the first generations come back 7 s later, past the TTL.
    back = [imp(f"back{g}", (g + 7) * GENERATION_MS + 510, f"u{g}-3", f"i{g}-3", "c3")
            for g in range(5)]
    events = sorted(churn(12) + back, key=lambda e: e.ts)
    (swept, with_sweeps), (unswept, without) = (run(CONFIG, events, sweep_every_batch=True),
                                                run(CONFIG, events))
    assert swept.stats.users_evicted > 0 and unswept.stats.users_evicted == 0
    assert with_sweeps == without
    returned = [seen for seen in without if seen[0].startswith("back")]
    assert len(returned) == 5
    assert all(seen[1:] == ([], [], [0.0] * 6) for seen in returned)


def test_eviction_never_changes_features_of_live_keys():
    # Nothing observable expires in this stream: keys that go idle never come back.
    events = churn(15)
    on, with_eviction = run(CONFIG, events, batch=7, sweep_every_batch=True)
    off, without_eviction = run(OFF, events, batch=7)
    assert with_eviction == without_eviction
    assert on.stats.users_evicted > 0 and off.stats.users_evicted == 0
    assert on.stats.users_live < off.stats.users_live


def test_a_returning_key_differs_from_never_evicted_only_below_float32_rounding():
    config = JoinerConfig(window_ms=1_000, lifelong_ttl_ms=1_000, count_half_lives_ms=(200,))
    ttl = config.idle_key_ttl_ms
    assert ttl == 24 * 200
    history = [imp(f"a{n}", n * 10, "u", "it") for n in range(100)]
    back = imp("back", history[-1].ts + ttl + 1, "u", "it")  # just past the TTL
    kept = Joiner(replace(config, key_ttl_ms=10**15))
    kept.push(history)
    counts_then = kept.counters.arrays.tables[0][kept.users.code("u"), 3:].copy()
    kept.push([back])
    residue = np.asarray(kept.features(int(kept.settle().rows[0])).counts)
    assert residue.max() > 0  # never evicted: a trace is left ...
    assert (residue <= counts_then.max() * 2.0**-24).all()  # ... under float32's rounding
    evicted = Joiner(config)
    evicted.push(history)
    evicted.push([back])
    assert evicted.features(int(evicted.settle().rows[0])).counts.tolist() == [0.0] * 6


def test_freed_codes_are_reused_so_tables_stop_growing():
    j, _ = run(CONFIG, churn(200), batch=200)
    bound, tables = j.users.bound, [len(t) for t in j.counters.arrays.tables]
    assert j.stats.users_evicted > 1_000 and j.stats.items_evicted > 3_000
    more = [e for e in churn(400) if e.ts >= 200 * GENERATION_MS]
    for start in range(0, len(more), 200):
        j.push(more[start:start + 200])
    assert j.users.bound == bound and [len(t) for t in j.counters.arrays.tables] == tables
    # Live: the keys of the last 5 s (6 generations of 7 users and 17 items, and the 3
    # regulars), and at most a sweep interval (a quarter of a 4,096-row table) not swept.
    assert j.stats.users_live <= 6 * 7 + 3 + 1_024
    assert j.stats.items_live <= 6 * 17 + 3 + 1_024


def row_of(result, impression_id: str) -> int:
    return int(result.rows[[e.impression_id for e in result.events].index(impression_id)])


def test_a_reused_code_never_carries_the_old_keys_state():
    j = Joiner(CONFIG)
    j.push([imp("a", 0, "old", "it-old", "c1"), Click("a", "old", 50)])
    seen = j.push([imp("a2", 100, "old", "it-z", "c1"), imp("b", 6_000, "x", "it-x")])
    # A sequence learner's view of a2 caches the name hash of it-old under its code.
    a2 = seen.events[-1]
    assert behaviours(a2, j.features(row_of(seen, "a2"))).recent_item.tolist() == (
        hash_names(["item=it-old"]).tolist())
    j.sweep()
    assert j.users.code("old") is None and j.users.bound == 2
    # A new user takes the old user's code and the same category: a pair of its own.
    result = j.push([imp("c", 6_100, "new", "it-new", "c1"), imp("d", 6_200, "x", "it-x")])
    assert j.users.code("new") == 0 and j.items.code("it-new") in (0, 1)  # reused codes
    f = j.features(row_of(result, "c"))
    assert f.recent == [] and f.same_category == [] and f.counts.tolist() == [0.0] * 6
    # The new item's click, read back through its reused code, hashes as the new item.
    result = j.push([Click("c", "new", 6_300), imp("e", 6_400, "new", "it-y", "c1"),
                     imp("f", 6_500, "x", "it-x")])
    e = next(ev for ev in result.events if ev.impression_id == "e")
    joined = j.features(row_of(result, "e"))
    assert joined.recent == [("it-new", "c1", 0.1)]
    assert behaviours(e, joined).recent_item.tolist() == hash_names(["item=it-new"]).tolist()


def test_sweep_leaves_no_reference_to_a_freed_code():
    j, _ = run(CONFIG, churn(30), batch=40, sweep_every_batch=True)
    free_users, free_items = set(j.users.free), set(j.items.free)
    assert free_users and free_items
    store = j.store.arrays
    rows = slice(0, len(j.store))
    assert not free_users & set(store.user[rows].tolist())
    assert not free_items & set(store.item[rows].tolist())
    keys = j.arrays.pairs.entries[:, 0]
    assert not free_users & set((keys[keys >= 0] >> 32).tolist())
    free_pairs = j.arrays.free_pairs[: j.arrays.clock[k.K_FREE_PAIRS]]
    assert not set(free_pairs.tolist()) & set(j.arrays.pairs.entries[keys >= 0, 1].tolist())


def assert_continue_alike(a: Joiner, b: Joiner, events: list) -> None:
    """The two joiners release the same samples with the same features for ``events``."""
    ra, rb = a.push(events), b.push(events)
    assert ra.releases == rb.releases
    for row_a, row_b in zip(ra.rows, rb.rows, strict=True):
        if row_a >= 0:
            fa, fb = a.features(row_a), b.features(row_b)
            assert (fa.recent, fa.same_category, fa.counts.tolist()) == (
                fb.recent, fb.same_category, fb.counts.tolist())
    assert a.flush().releases == b.flush().releases


def test_state_dict_round_trip_keeps_free_list():
    events = churn(20)
    cut = next(i for i, e in enumerate(events) if e.ts >= 12 * GENERATION_MS)
    original, _ = run(CONFIG, events[:cut], sweep_every_batch=True)
    assert original.users.free and original.items.free
    restored = Joiner(CONFIG)
    restored.load_state_dict(original.state_dict())
    assert restored.users.free == original.users.free
    assert restored.items.free == original.items.free
    assert np.array_equal(restored.arrays.free_pairs[: restored.arrays.clock[k.K_FREE_PAIRS]],
                          original.arrays.free_pairs[: original.arrays.clock[k.K_FREE_PAIRS]])
    assert_continue_alike(original, restored, events[cut:])
    assert original.users.values == restored.users.values  # the same codes were reused
    assert original.stats == restored.stats


@pytest.mark.parametrize("kwargs", [
    {"key_ttl_ms": 0},
    {"key_ttl_ms": -1},
    {"key_ttl_ms": 4_999, "lifelong_ttl_ms": 5_000, "count_half_lives_ms": (1,)},
    {"key_ttl_ms": 23 * 7 * 24 * 3_600_000},  # under 24 weeks of the 7-day half-life
])
def test_a_key_ttl_that_would_evict_observable_state_is_refused(kwargs):
    with pytest.raises(ValueError, match="key_ttl_ms must be >="):
        JoinerConfig(**kwargs)


def test_default_key_ttl_is_the_behaviour_ttl_or_24_half_lives_whichever_is_longer():
    assert JoinerConfig().idle_key_ttl_ms == 365 * 24 * 3_600_000
    assert JoinerConfig(lifelong_ttl_ms=1_000).idle_key_ttl_ms == 24 * 7 * 24 * 3_600_000
    assert JoinerConfig(key_ttl_ms=10**15).idle_key_ttl_ms == 10**15


def unflatten(npz) -> dict:
    state: dict = {}
    for key in npz.files:
        *parents, leaf = key.split("/")
        node = state
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = npz[key]
    return state


def test_a_format_2_snapshot_restores_as_a_joiner_that_evicted_nothing_yet():
    # Written by the joiner of commit 28ef0fb (format 2, before eviction) after the events
    # of churn(8) before 6 s, pushed in batches of 50, under CONFIG without key_ttl_ms.
    with np.load(FIXTURES / "joiner_format2" / "state.npz") as npz:
        state = unflatten(npz)
    assert int(state["format"]) == 2
    restored = Joiner(CONFIG)
    restored.load_state_dict(state)
    events = churn(8)
    cut = next(i for i, e in enumerate(events) if e.ts >= 6_000)
    reference, _ = run(CONFIG, events[:cut])
    assert restored.stats == reference.stats
    assert_continue_alike(reference, restored, events[cut:])


def test_a_snapshot_of_an_unknown_format_is_refused():
    state = Joiner(CONFIG).state_dict()
    state["format"] = 1
    with pytest.raises(ValueError, match="joiner snapshot format 1, expected 3"):
        Joiner(CONFIG).load_state_dict(state)


def outcomes_of(config: JoinerConfig, events: list) -> tuple[list, JoinStats]:
    learners = {"ftrl": make_learner("ftrl"), "din": make_learner("din", batch_size=32)}
    seen: list = []
    engine = OnlineEngine(learners, config, on_outcome=[seen.append])
    for start in range(0, len(events), 64):
        engine.process(events[start:start + 64])
        engine.joiner.sweep()  # as often as can be: every freed code is reused at once
    engine.finish()
    return ([(o.release.impression.impression_id, o.release.label, dict(o.scores))
             for o in seen], engine.joiner.stats)


def test_learners_score_alike_with_and_without_eviction_when_nothing_observable_expires():
    # Codes are reused many times over here; no learner may tell.
    events = churn(60)
    (on, on_stats), (off, off_stats) = outcomes_of(CONFIG, events), outcomes_of(OFF, events)
    assert on_stats.users_evicted > 300 and off_stats.users_evicted == 0
    assert on == off


def test_replay_with_eviction_equals_replay_without_on_the_synthetic_stream(tmp_path):
    write_stream(generate(20_000, seed=3), tmp_path)
    results = [run_replay(tmp_path, ["ftrl", "din"], None, joiner_config=config,
                          show_progress=False)
               for config in (JoinerConfig(), JoinerConfig(key_ttl_ms=10**15))]
    on, off = results
    assert on.outcomes.equals(off.outcomes)
    assert on.events == off.events
