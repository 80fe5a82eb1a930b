"""Properties of the joiner over random streams and random arrival orders (hypothesis).

Each example draws a small world (few users, items, categories, so histories
overlap), impressions with clustered times (so ties happen), clicks on some of them
(inside the window, after it, exact duplicates, before their impression) and a few
orphans. A brute-force reference computes what the joiner must output; the same
stream is also delivered in a random order within the allowed lateness, in random
batches, and must give identical results.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from features.events import Click, Impression
from features.joiner import FINAL, Joiner, JoinerConfig

WINDOW = 1_000
HALF_LIFE = 2_000


@dataclass(frozen=True)
class Stream:
    events: list[Impression | Click]  # in event-time order
    lateness: int
    arrival_delays: list[int]  # per event, within the lateness
    batch_cuts: list[int]


@st.composite
def streams(draw) -> Stream:
    n_imp = draw(st.integers(1, 40))
    events: list[Impression | Click] = []
    for n in range(n_imp):
        ts = draw(st.integers(0, 60)) * 50  # coarse times: many ties
        user = f"u{draw(st.integers(0, 3))}"
        imp = Impression(f"i{n}", f"r{ts}-{user}", user, f"it{draw(st.integers(0, 5))}",
                         f"c{draw(st.integers(0, 2))}", draw(st.integers(0, 3)), ts)
        events.append(imp)
        if draw(st.booleans()):
            events.append(imp)  # exact duplicate
        kind = draw(st.sampled_from(["none", "none", "in", "in", "late", "early"]))
        if kind != "none":
            delay = {"in": st.integers(0, WINDOW), "late": st.integers(WINDOW + 1, 3 * WINDOW),
                     "early": st.integers(-500, -1)}[kind]
            click = Click(imp.impression_id, user, max(0, ts + draw(delay)))
            events.append(click)
            if draw(st.booleans()):
                events.append(click)
    for n in range(draw(st.integers(0, 2))):
        events.append(Click(f"ghost{n}", "u0", draw(st.integers(0, 3_000))))
    # Event-time order, impressions first on ties: how a sorted log would deliver them.
    events.sort(key=lambda e: (e.ts, isinstance(e, Click)))
    lateness = draw(st.sampled_from([0, 200, 1_000]))
    delays = [draw(st.integers(0, lateness)) for _ in events]
    cuts = sorted(draw(st.lists(st.integers(0, len(events)), max_size=6)))
    return Stream(events, lateness, delays, cuts)


def arrival_order(stream: Stream) -> list[list[Impression | Click]]:
    """Events reordered by time + a delay within the lateness, cut into batches."""
    order = sorted(range(len(stream.events)),
                   key=lambda i: (stream.events[i].ts + stream.arrival_delays[i], i))
    arrived = [stream.events[i] for i in order]
    bounds = [0, *stream.batch_cuts, len(arrived)]
    return [arrived[a:b] for a, b in pairwise(bounds)]


def config(lateness: int, mode: str = "wait") -> JoinerConfig:
    return JoinerConfig(window_ms=WINDOW, allowed_lateness_ms=lateness, mode=mode,
                        closed_retention_ms=10 * WINDOW, count_half_lives_ms=(HALF_LIFE,))


@dataclass
class Observed:
    finals: list[tuple[str, int, int | None, int]]
    features: dict[str, tuple]
    orphans: list[Click]
    stats: dict[str, int]


def run(joiner: Joiner, batches: list[list[Impression | Click]]) -> Observed:
    finals, features, orphans = [], {}, []
    calls = [*(lambda b=b: joiner.push(b) for b in batches), joiner.flush]
    for call in calls:  # features are read before the next call recycles their rows
        result = call()
        for event, row in zip(result.events, result.rows, strict=True):
            if row >= 0:
                f = joiner.features(int(row))
                features[event.impression_id] = (
                    sorted(f.recent), sorted(f.same_category), f.counts.tolist())
        finals += [(r.impression.impression_id, r.label, r.click_ts, r.final_ts)
                   for r in result.releases if r.kind == FINAL]
        orphans += result.orphans
    return Observed(finals, features, orphans, joiner.stats.as_dict())


@given(streams())
@settings(max_examples=150, deadline=None)
def test_every_impression_gets_exactly_one_final_sample_with_the_true_label(stream):
    observed = run(Joiner(config(stream.lateness)), arrival_order(stream))
    first = {}
    for e in stream.events:
        if isinstance(e, Impression):
            first.setdefault(e.impression_id, e)
    clicks = defaultdict(list)
    for e in stream.events:
        if isinstance(e, Click):
            clicks[e.impression_id].append(e.ts)
    assert sorted(i for i, *_ in observed.finals) == sorted(first)
    for iid, label, click_ts, final_ts in observed.finals:
        imp = first[iid]
        in_window = [t for t in clicks[iid] if 0 <= t - imp.ts <= WINDOW]
        assert label == int(bool(in_window))
        assert click_ts == (min(in_window) if in_window else None)
        assert final_ts == imp.ts + WINDOW


@given(streams())
@settings(max_examples=150, deadline=None)
def test_features_hold_exactly_the_behaviour_strictly_before_the_impression(stream):
    observed = run(Joiner(config(stream.lateness)), arrival_order(stream))
    first: dict[str, Impression] = {}
    for e in stream.events:
        if isinstance(e, Impression):
            first.setdefault(e.impression_id, e)
    # Behaviour: the first click on a known impression at or after its time (later
    # repeats are duplicates), whether inside the window or late.
    behaviours: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    clicked = set()
    for e in stream.events:
        if isinstance(e, Click) and e.impression_id in first and e.impression_id not in clicked:
            imp = first[e.impression_id]
            if e.ts >= imp.ts:
                clicked.add(e.impression_id)
                behaviours[imp.user_id].append((imp.item_id, imp.category_id, e.ts))
    for iid, imp in first.items():
        recent, same_category, counts = observed.features[iid]
        earlier = [(i, c, round((imp.ts - t) / 1000, 3)) for i, c, t in behaviours[imp.user_id]
                   if t < imp.ts]
        assert recent == sorted(earlier)
        assert all(age > 0 for *_, age in recent)
        assert same_category == sorted(b for b in earlier if b[1] == imp.category_id)
        decay = [2 ** (-(imp.ts - other.ts) / HALF_LIFE) for other in first.values()
                 if other.ts < imp.ts and other.user_id == imp.user_id]
        user_imps, user_clicks = counts[0], counts[1]
        assert math.isclose(user_imps, sum(decay), rel_tol=1e-5, abs_tol=1e-5)
        assert math.isclose(user_clicks, sum(2 ** (-(imp.ts - t) / HALF_LIFE)
                                             for *_, t in behaviours[imp.user_id]
                                             if t < imp.ts), rel_tol=1e-5, abs_tol=1e-5)


@given(streams(), st.sampled_from(["wait", "fnw"]))
@settings(max_examples=150, deadline=None)
def test_results_do_not_depend_on_arrival_order_within_the_lateness(stream, mode):
    in_order = run(Joiner(config(stream.lateness, mode)), [stream.events])
    shuffled = run(Joiner(config(stream.lateness, mode)), arrival_order(stream))
    assert shuffled.finals == in_order.finals
    assert shuffled.features == in_order.features
    assert shuffled.stats == in_order.stats
    key = lambda c: (c.impression_id, c.ts)  # noqa: E731
    assert sorted(shuffled.orphans, key=key) == sorted(in_order.orphans, key=key)

