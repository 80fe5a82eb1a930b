"""Event-time join of clicks to impressions, with behaviour sequences and counting features.

The one joiner of replay and service. An impression opens an attribution window
``[ts, ts + window_ms]``; a click on it inside the window makes it a positive. When
the watermark (newest event time seen minus ``allowed_lateness_ms``) passes the
window's end, the sample's label is final and it is released (``FINAL``).

Events are processed in event-time order, not arrival order: an event waits until
the watermark passes it, then all due events are taken in (time, impressions
first, impression key) order. So results do not depend on arrival order or on how
events are batched, as long as each event arrives within the allowed lateness;
one that arrives later is processed at once, as a late event.

Delayed-feedback modes (``JoinerConfig.mode``):

* ``wait`` — learners train on ``FINAL`` releases: correct labels, every sample
  delayed by the window. Positives are not released at click time: a learner would
  then see a window of clicks before their non-clicks and be biased upwards.
* ``fnw`` — fake negative weighting (Ktena et al., RecSys 2019): a negative is
  released at impression time (``FNW_NEGATIVE``) and a positive again when the
  click joins (``FNW_POSITIVE``); learners weight them (:func:`fnw_weight`) so the
  optimum is still the true click probability. ``FINAL`` releases still come at
  window end and are what evaluation uses.

Everything that does not join is counted, never dropped silently: duplicate
impressions (the first wins) and duplicate clicks; *late* clicks (after the
window, while the impression is remembered — ``closed_retention_ms`` past its
window); clicks whose impression has not arrived are *held* until it does or the
watermark passes ``click.ts + window_ms``, then they are *orphans*, handed back to
the caller for its dead-letter queue.

Features of an impression, computed at its event time from behaviour strictly
before it: the user's ``recent_length`` most recent clicks (item, category, age),
the ``lifelong_top_k`` most recent clicks in the impression's category (a SIM hard
search over a store capped per user and by a TTL), and decayed impression/click
counts of the user, the item and the user × category pair
(:mod:`features.counting`). A click is behaviour at its own event time, whether it
joined in time or late.

Per-key state (the interned user and item codes, their counters and the user ×
category pairs') is evicted once a key has been idle for ``key_ttl_ms`` of event time
(see :class:`JoinerConfig`), so memory is bounded by the keys active within the TTL,
not by every key ever seen. Freed codes are reused; a key that comes back starts fresh.

>>> from features.events import Click, Impression
>>> j = Joiner(JoinerConfig(window_ms=1_000))
>>> j.push([Impression("i1", "r1", "u1", "it1", "c1", 0, ts=0),
...         Click("i1", "u1", ts=900),
...         Impression("i2", "r2", "u1", "it2", "c1", 0, ts=1_500)]).releases
[Release(FINAL i1 label=1 at 1000, event -1)]
>>> result = j.push([Impression("i3", "r3", "u1", "it3", "c1", 0, ts=1_600)])
>>> [e.impression_id for e in result.events]  # i3 waits: nothing newer has been seen
['i2']
>>> j.features(result.rows[0]).recent
[('it1', 'c1', 0.6)]
>>> [(r.impression.impression_id, r.label) for r in j.flush().releases]
[('i2', 0), ('i3', 0)]
>>> j.stats.clicks_joined, j.stats.samples_positive, j.stats.samples_negative
(1, 1, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple

import msgspec
import numpy as np

from features import joinkernel as k
from features.compiled import (
    new_table,
    ring_unrolled,
    table_from_items,
    table_items,
    table_reserve,
)
from features.counting import Counters, counter_names
from features.events import Click, Impression, decode_click, decode_impression, encode_event
from features.ids import Interner, impression_key, impression_keys
from features.store import BehaviourStore

__all__ = [
    "FINAL",
    "FNW_NEGATIVE",
    "FNW_POSITIVE",
    "JoinResult",
    "JoinStats",
    "JoinedFeatures",
    "Joiner",
    "JoinerConfig",
    "Release",
    "fnw_weight",
]

FINAL, FNW_NEGATIVE, FNW_POSITIVE = k.FINAL, k.FNW_NEGATIVE, k.FNW_POSITIVE
_KIND_NAMES = {FINAL: "FINAL", FNW_NEGATIVE: "FNW_NEGATIVE", FNW_POSITIVE: "FNW_POSITIVE"}
HOUR_MS = 3_600_000
SNAPSHOT_FORMAT = 3  # 3: key eviction (free lists, key TTL); 2 is still read
# A key may be evicted once its counts have decayed by 2**-24 (24 half-lives of the
# longest half-life): the counting features are float32, whose 24-bit significand makes
# that less than half a unit in the last place of the count itself.
NEGLIGIBLE_HALF_LIVES = 24
_TABLES = ("index", "pairs", "held")  # JoinArrays fields that are hash tables


@dataclass(frozen=True, slots=True)
class JoinerConfig:
    """Hyper-parameters of the join and of the features (times in milliseconds).

    ``key_ttl_ms``: a user, item or user × category pair idle that long in event time
    (the watermark minus its newest impression or click) is evicted: its code is
    freed for reuse and it starts fresh if it comes back. A key may only go when
    nothing observable is left of it, so the TTL must be at least
    :attr:`min_key_ttl_ms`: the behaviour TTL (``lifelong_ttl_ms``: no stored click
    of it can still be read) and 24 of the longest count half-life (its decayed counts
    are below 2**-24 of what they were, under float32's rounding). ``None``, the
    default, is that minimum: a year with the defaults (the behaviour TTL; 24 weeks of
    the 7-day half-life is shorter), so memory is bounded by the keys of the last year.
    A larger TTL keeps keys longer; one longer than the stream keeps every key.
    """

    window_ms: int = 15 * 60 * 1000
    allowed_lateness_ms: int = 0
    closed_retention_ms: int | None = None  # None: one more window length
    mode: Literal["wait", "fnw"] = "wait"
    recent_length: int = 50
    lifelong_top_k: int = 32
    lifelong_cap: int = 10_000
    lifelong_ttl_ms: int = 365 * 24 * HOUR_MS
    count_half_lives_ms: tuple[int, ...] = (HOUR_MS, 24 * HOUR_MS, 7 * 24 * HOUR_MS)
    key_ttl_ms: int | None = None  # None: min_key_ttl_ms

    def __post_init__(self) -> None:
        positive = {"window_ms": self.window_ms, "recent_length": self.recent_length,
                    "lifelong_top_k": self.lifelong_top_k, "lifelong_cap": self.lifelong_cap,
                    "lifelong_ttl_ms": self.lifelong_ttl_ms}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.allowed_lateness_ms < 0:
            raise ValueError(f"allowed_lateness_ms must be >= 0, got {self.allowed_lateness_ms}")
        if self.closed_retention_ms is not None and self.closed_retention_ms < 0:
            raise ValueError(f"closed_retention_ms must be >= 0, got {self.closed_retention_ms}")
        if self.mode not in ("wait", "fnw"):
            raise ValueError(f"mode must be 'wait' or 'fnw', got {self.mode!r}")
        if not self.count_half_lives_ms or min(self.count_half_lives_ms) <= 0:
            raise ValueError(f"count_half_lives_ms must be positive, got "
                             f"{self.count_half_lives_ms}")
        if self.key_ttl_ms is not None and self.key_ttl_ms < self.min_key_ttl_ms:
            raise ValueError(
                f"key_ttl_ms must be >= {self.min_key_ttl_ms} (lifelong_ttl_ms, and "
                f"{NEGLIGIBLE_HALF_LIVES} times the longest of count_half_lives_ms: evicting "
                f"sooner would drop readable behaviour or counts), got {self.key_ttl_ms}")

    @property
    def min_key_ttl_ms(self) -> int:
        """The shortest key TTL after which nothing observable is left of an idle key."""
        return max(self.lifelong_ttl_ms,
                   NEGLIGIBLE_HALF_LIVES * max(self.count_half_lives_ms))

    @property
    def idle_key_ttl_ms(self) -> int:
        """The key TTL in force: ``key_ttl_ms``, or its default."""
        return self.min_key_ttl_ms if self.key_ttl_ms is None else self.key_ttl_ms

    @property
    def retention_ms(self) -> int:
        return self.window_ms if self.closed_retention_ms is None else self.closed_retention_ms

    def vector(self) -> np.ndarray:
        """The configuration as the kernel reads it."""
        return np.array([self.window_ms, self.allowed_lateness_ms, self.retention_ms,
                         k.MODE_FNW if self.mode == "fnw" else k.MODE_WAIT,
                         self.recent_length, self.lifelong_top_k, self.lifelong_cap,
                         self.lifelong_ttl_ms, self.idle_key_ttl_ms], np.int64)


def fnw_weight(label: int, p: float) -> float:
    """Fake negative weighting (Ktena et al. 2019): ``1 + p`` and ``(1 - p)(1 + p)``.

    Positives get ``1 + p``, negatives ``(1 - p)(1 + p)``.

    ``p`` is the learner's current prediction (not differentiated through): with
    every positive also shown once as a negative, these weights make the weighted
    log loss minimal at the true click probability.
    """
    return 1.0 + p if label else (1.0 - p) * (1.0 + p)


@dataclass(slots=True)
class JoinStats:
    """Counters of everything the joiner saw, and of the keys it evicted, plus the keys it
    holds now (``*_live``, gauges); exported by the service, written to reports."""

    impressions: int = 0
    duplicate_impressions: int = 0
    clicks: int = 0
    clicks_joined: int = 0
    duplicate_clicks: int = 0
    late_clicks: int = 0
    orphan_clicks: int = 0
    samples_positive: int = 0
    samples_negative: int = 0
    behaviours: int = 0
    users_evicted: int = 0
    items_evicted: int = 0
    pairs_evicted: int = 0  # user × category pairs
    users_live: int = 0
    items_live: int = 0
    pairs_live: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Release(msgspec.Struct, frozen=True, gc=False):
    """A sample the caller must act on: learn it, evaluate it, or both (see the module doc).

    ``event`` is the index, in the pushed batch, of the event during which it was
    released (-1: by a flush or an advance); ``phase`` 0 means before that event took
    effect (a window closed by its time), 1 after it (an FNW negative of the impression
    itself). ``row`` is the impression's feature row, valid until the next push.
    """

    kind: int
    impression: Impression
    row: int
    label: int
    click_ts: int | None
    final_ts: int
    event: int
    phase: int

    def __repr__(self) -> str:
        return (f"Release({_KIND_NAMES[self.kind]} {self.impression.impression_id} "
                f"label={self.label} at {self.final_ts}, event {self.event})")


@dataclass(frozen=True)
class JoinResult:
    """What a call processed: the events in processing order, each one's status and
    feature row (for a new impression, else -1), the releases in order, the orphans, and
    the events' codes (``codes.user`` … aligned with ``events``)."""

    events: list[Impression | Click]
    status: np.ndarray
    rows: np.ndarray
    releases: list[Release]
    orphans: list[Click]
    codes: EncodedEvents
    # The releases' event, phase, row, label and final_ts, as arrays (releases' order).
    release_columns: ReleaseColumns


class ReleaseColumns(NamedTuple):
    event: np.ndarray  # int64
    phase: np.ndarray  # int8
    row: np.ndarray  # int64
    label: np.ndarray  # int8
    final_ts: np.ndarray  # int64


class EncodedEvents(NamedTuple):
    kind: np.ndarray  # int8
    key: np.ndarray  # int64
    user: np.ndarray  # int32
    item: np.ndarray  # int32 (-1 for clicks)
    cat: np.ndarray  # int32 (-1 for clicks)
    ts: np.ndarray  # int64


@dataclass(frozen=True)
class JoinedFeatures:
    """The joiner's features of one impression, as of its event time (codes and decoded)."""

    recent_item: np.ndarray  # int32 (n,) item codes, newest first
    recent_cat: np.ndarray
    recent_age_s: np.ndarray  # float32 (n,)
    topk_item: np.ndarray  # same-category behaviours, newest first
    topk_cat: np.ndarray
    topk_age_s: np.ndarray
    counts: np.ndarray  # float32 (F,), named by Joiner.count_names
    _joiner: Joiner

    @property
    def recent(self) -> list[tuple[str, str, float]]:
        """(item, category, age in seconds) of the recent sequence."""
        return self._decode(self.recent_item, self.recent_cat, self.recent_age_s)

    @property
    def same_category(self) -> list[tuple[str, str, float]]:
        return self._decode(self.topk_item, self.topk_cat, self.topk_age_s)

    def recently_clicked(self, item_id: str) -> bool:
        """Whether the item is in the recent sequence."""
        code = self._joiner.items.code(item_id)
        return code is not None and bool((self.recent_item == code).any())

    def categories_of_recent(self) -> list[str]:
        """Distinct categories of the recent sequence, newest first."""
        value = self._joiner.categories.value
        return [value(c) for c in dict.fromkeys(self.recent_cat.tolist())]

    def _decode(self, items, cats, ages) -> list[tuple[str, str, float]]:
        j = self._joiner
        return [(j.items.value(int(i)), j.categories.value(int(c)), round(float(a), 3))
                for i, c, a in zip(items, cats, ages, strict=True)]


class Joiner:
    """Owner of the joiner's state; :meth:`push` runs events through the compiled kernel."""

    def __init__(self, config: JoinerConfig | None = None) -> None:
        self.config = config or JoinerConfig()
        self.users, self.items, self.categories = Interner(), Interner(), Interner()
        self.store = BehaviourStore(self.config.lifelong_cap, self.config.lifelong_ttl_ms)
        self.counters = Counters(self.config.count_half_lives_ms)
        self.count_names = counter_names(self.config.count_half_lives_ms)
        self._layout = k.feature_layout(self.config.recent_length, self.config.lifelong_top_k,
                                        len(self.count_names))
        self.arrays = self._new_arrays(slots=1024, rows=1024)
        self._impressions: list[Impression | None] = [None] * 1024  # by feature row
        self._held: dict[int, Click] = {}  # originals of held clicks, by impression key
        # Events not yet due (newer than the newest time seen minus the allowed lateness).
        self._no_events = EncodedEvents(np.empty(0, np.int8), np.empty(0, np.int64),
                                        np.empty(0, np.int32), np.empty(0, np.int32),
                                        np.empty(0, np.int32), np.empty(0, np.int64))
        self._waiting = self._no_events
        self._waiting_events: list[Impression | Click] = []
        self._max_seen = -1
        self._out: k.BatchOutput | None = None
        self._sweep_at = self._next_sweep()

    # -- the public surface -------------------------------------------------------------

    def push(self, events: Sequence[Impression | Click]) -> JoinResult:
        """Join a batch of events given in arrival order.

        Events are processed once no event within the allowed lateness can still come
        before them: everything older than the newest event time seen minus
        ``allowed_lateness_ms``, in (time, impressions first, impression key) order;
        the rest waits for a later push, :meth:`advance` or :meth:`flush`. The result
        lists the events processed by this call, in the order they were processed.
        """
        encoded = self.encode(events)
        if encoded.ts.size:
            self._max_seen = max(self._max_seen, int(encoded.ts.max()))
        bound = self._max_seen - self.config.allowed_lateness_ms
        due, due_events = self._take_due(encoded, list(events), bound)
        return self._run(due, due_events, until=bound, final=False)

    def advance(self, ts: int) -> JoinResult:
        """Event time is now ``ts`` (an idle stream's clock): process and close what is due."""
        self._max_seen = max(self._max_seen, ts)
        bound = self._max_seen - self.config.allowed_lateness_ms
        due, due_events = self._take_due(self._no_events, [], bound)
        return self._run(due, due_events, until=bound, final=False)

    def settle(self) -> JoinResult:
        """The input is idle: also process the events *at* the watermark.

        They otherwise wait for a newer event, so that simultaneous events are taken
        together in a fixed order; when no newer event is coming soon (a live stream
        that caught up), waiting would only delay them.
        """
        bound = self._max_seen - self.config.allowed_lateness_ms
        due, due_events = self._take_due(self._no_events, [], bound + 1)
        return self._run(due, due_events, until=bound, final=False)

    @property
    def waiting(self) -> int:
        """Events received but not yet due."""
        return int(self._waiting.ts.size)

    def flush(self) -> JoinResult:
        """End of input: process what waits, close every window, give up on held clicks."""
        due, due_events = self._take_due(self._no_events, [], None)
        return self._run(due, due_events, until=-1, final=True)

    def process(self, encoded: EncodedEvents) -> tuple[k.BatchOutput, EncodedEvents]:
        """The array-only form of :meth:`push` (no event objects, no releases decoded).

        Returns the kernel's output (valid until the next call: its buffers are reused;
        ``counts`` says how many releases and orphans it holds) and the events it
        processed, in that order. Codes must come from this joiner's interners. Codes
        interned ahead for later batches stay valid (a key never processed is never
        evicted) unless their key was processed and then idle for longer than the key TTL:
        a sweep after a call may evict it and give its code to another key.
        """
        if encoded.ts.size:
            self._max_seen = max(self._max_seen, int(encoded.ts.max()))
        bound = self._max_seen - self.config.allowed_lateness_ms
        due, _ = self._take_due(encoded, None, bound)
        return self._kernel(due, until=bound, final=False), due

    def features(self, row: int) -> JoinedFeatures:
        """Features of the impression at feature row ``row`` (valid until the next push)."""
        f, ff = self.arrays.features[row], self.arrays.features_f[row]
        recent_at, topk_at, _ = self._layout
        n, m = f[k.F_RECENT_LEN], f[k.F_TOPK_LEN]
        recent = slice(recent_at, recent_at + 3 * n)
        topk = slice(topk_at, topk_at + 3 * m)
        return JoinedFeatures(f[recent][0::3], f[recent][1::3], ff[recent][2::3],
                              f[topk][0::3], f[topk][1::3], ff[topk][2::3],
                              ff[k.F_COUNTS:recent_at], self)

    def impression(self, row: int) -> Impression:
        """The open impression at feature row ``row``."""
        imp = self._impressions[row]
        if imp is None:
            raise KeyError(f"no open impression at feature row {row}")
        return imp

    @property
    def stats(self) -> JoinStats:
        users, items, pairs = self._live_keys()
        return JoinStats(*(int(v) for v in self.arrays.stats), users_live=users,
                         items_live=items, pairs_live=pairs)

    @property
    def open_windows(self) -> int:
        return int(self.arrays.clock[k.K_ENDS] + self.arrays.clock[k.K_LATE_ENDS])

    @property
    def held_clicks(self) -> int:
        return int(self.arrays.held.size[0])

    def pending_clicks(self) -> list[Click]:
        """Clicks taken in but not settled yet: waiting to be due, or held for an impression
        not seen yet (these become orphans at their expiry)."""
        return [*(e for e in self._waiting_events if type(e) is Click), *self._held.values()]

    @property
    def watermark(self) -> int:
        return int(self.arrays.clock[k.K_WATERMARK])

    # -- encoded (array) path: what replay's fast path and the benchmark drive -----------

    def encode(self, events: Sequence[Impression | Click]) -> EncodedEvents:
        """Intern ids and hash impression ids of a batch of event structs.

        A click's user is not interned (its code is -1): the kernel joins a click by its
        impression key and takes the user from the impression, so a user seen only in
        clicks that never join would hold a code it never uses.
        """
        n = len(events)
        key = impression_keys([e.impression_id for e in events])
        ts = np.fromiter([e.ts for e in events], np.int64, n)
        is_impression = np.fromiter([type(e) is Impression for e in events], bool, n)
        kind = np.where(is_impression, k.IMPRESSION, k.CLICK).astype(np.int8)
        at = np.flatnonzero(is_impression)
        impressions: list[Impression] = [events[i] for i in at.tolist()]  # type: ignore[misc]
        user = np.full(n, -1, np.int32)
        item = np.full(n, -1, np.int32)
        cat = np.full(n, -1, np.int32)
        user[at] = self.users.intern_many([e.user_id for e in impressions])
        item[at] = self.items.intern_many([e.item_id for e in impressions])
        cat[at] = self.categories.intern_many([e.category_id for e in impressions])
        return EncodedEvents(kind, key, user, item, cat, ts)

    def presize(self, users: int, items: int, pairs: int, batch: int) -> None:
        """Allocate up front for an input of this many distinct users, items and (user,
        category) pairs, pushed in batches of at most ``batch`` events.

        Optional: state grows as needed, but growing a table of millions of rows copies
        it; a replay knows its input and saves those copies. (Before each batch the
        joiner makes room for every impression in it to be a new pair, hence ``batch``.)
        """
        pairs += batch
        self.arrays = self.arrays._replace(pairs=table_reserve(self.arrays.pairs, pairs))
        self.store.reserve(0, users, pairs, int(self.arrays.clock[k.K_MAX_TS]))
        self.counters.reserve(users, items, pairs)

    # -- snapshots ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """All join state as arrays and strings (no pickle): see ``docs/joiner-state.md``."""
        a = self.arrays
        state: dict[str, Any] = {"format": SNAPSHOT_FORMAT, "config": a.cfg.copy(),
                                 "half_lives_ms": np.asarray(self.config.count_half_lives_ms)}
        for name in k.JoinArrays._fields:
            value = getattr(a, name)
            if name in _TABLES:
                # In key order: the slot order follows how the table grew, i.e. how the
                # input happened to be batched; the snapshot holds the content only.
                keys, values = table_items(value)
                order = np.argsort(keys, kind="stable")
                state[f"{name}_keys"], state[f"{name}_values"] = keys[order], values[order]
            elif name not in ("cfg", "features_f"):
                state[name] = value.copy()
        for name in ("users", "items", "categories"):
            interner = getattr(self, name)
            state[name] = np.array(interner.values, dtype=str)
            state[f"{name}_free"] = np.array(interner.free, np.int64)
        open_rows = [r for r, imp in enumerate(self._impressions) if imp is not None]
        state["open_rows"] = np.array(open_rows, np.int64)
        state["open_impressions"] = np.array(
            [encode_event(self._impressions[r]).decode() for r in open_rows], dtype=str)
        state["held_clicks"] = np.array([encode_event(c).decode() for c in self._held.values()],
                                        dtype=str)
        state["waiting_events"] = np.array(
            [encode_event(e).decode() for e in self._waiting_events], dtype=str)
        state["waiting_kinds"] = self._waiting.kind.copy()
        state["max_seen"] = np.array(self._max_seen, np.int64)
        state["store"] = self.store.state_dict()
        state["counters"] = self.counters.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a snapshot taken by :meth:`state_dict` with the same configuration
        (or one of format 2, taken before keys were evicted)."""
        fmt = int(state.get("format", -1))
        if fmt == 2:
            state = self._from_format_2(state)
        elif fmt != SNAPSHOT_FORMAT:
            raise ValueError(f"joiner snapshot format {state.get('format')!r}, "
                             f"expected {SNAPSHOT_FORMAT} (or 2)")
        if not np.array_equal(state["config"], self.config.vector()) or not np.array_equal(
                state["half_lives_ms"], np.asarray(self.config.count_half_lives_ms)):
            raise ValueError("joiner snapshot was taken with another configuration")
        fields: dict[str, Any] = {"cfg": self.config.vector()}
        for name in k.JoinArrays._fields:
            if name in _TABLES:
                fields[name] = table_from_items(state[f"{name}_keys"], state[f"{name}_values"])
            elif name not in ("cfg", "features_f"):
                fields[name] = np.array(state[name])
        fields["features_f"] = fields["features"].view(np.float32)
        self.arrays = k.JoinArrays(**fields)
        for name in ("users", "items", "categories"):
            setattr(self, name, Interner.restore([str(v) for v in state[name]],
                                                 state[f"{name}_free"].tolist()))
        self._impressions = [None] * len(self.arrays.features)
        for row, raw in zip(state["open_rows"], state["open_impressions"], strict=True):
            self._impressions[int(row)] = decode_impression(str(raw))
        self._held = {}
        for raw in state["held_clicks"]:
            held = decode_click(str(raw))
            self._held[impression_key(held.impression_id)] = held
        self.store = BehaviourStore.from_state_dict(state["store"])
        self.counters = Counters.from_state_dict(state["counters"])
        self._max_seen = int(state["max_seen"])
        self._waiting_events = [
            decode_impression(str(raw)) if kind == k.IMPRESSION else decode_click(str(raw))
            for raw, kind in zip(state["waiting_events"], state["waiting_kinds"], strict=True)]
        # Re-encoding interns nothing new: every waiting id was interned on arrival (and
        # the sweep keeps the codes of waiting events).
        self._waiting = self.encode(self._waiting_events)
        self._sweep_at = self._next_sweep()

    def _from_format_2(self, state: dict[str, Any]) -> dict[str, Any]:
        """A format-2 snapshot as format 3: one with no key evicted yet, valid under any
        key TTL (format 2 had none)."""
        state = dict(state)
        state["config"] = np.append(state["config"], self.config.idle_key_ttl_ms)
        state["clock"] = np.append(state["clock"], 0)  # no free pair ids
        state["stats"] = np.append(state["stats"], np.zeros(3, np.int64))  # none evicted
        state["free_pairs"] = np.zeros(0, np.int64)
        for name in ("users", "items", "categories"):
            state[f"{name}_free"] = np.zeros(0, np.int64)
        return state

    # -- eviction of idle keys --------------------------------------------------------

    def sweep(self) -> int:
        """Evict every user, item and user × category pair idle for longer than the key TTL
        (in event time: the watermark minus its newest update); return how many.

        The joiner sweeps by itself after a batch once some kind of key has a quarter of
        its table's size more live keys than after the last sweep, so a sweep's cost (a
        pass over the key tables and the behaviour store) is amortised over that many new
        keys. What a key reads never depends on when a sweep ran: the kernel already
        treats an idle key as new (:mod:`features.counting`). Kept whatever their idle
        time: keys of impressions still remembered, of feature rows the caller may still
        read and of waiting events, and keys interned but never processed.
        """
        a, c = self.arrays, self.counters
        now = int(a.clock[k.K_MAX_TS])
        before = now - self.config.idle_key_ttl_ms
        idle = [c.idle(kind, before) for kind in range(3)]
        evicted = 0
        if any(codes.size for codes in idle):
            evicted = self._evict(now, *idle)
        self._sweep_at = self._next_sweep()
        return evicted

    def _evict(self, now: int, users: np.ndarray, items: np.ndarray, pairs: np.ndarray
               ) -> int:
        a = self.arrays
        in_use = self._codes_in_use()
        users, items, pairs = (np.setdiff1d(codes, used)
                               for codes, used in zip((users, items, pairs), in_use,
                                                      strict=True))
        keys, values = table_items(a.pairs)
        # An evicted user's pairs go too, so a new user given its code cannot find them
        # (they are idle anyway: a pair is updated only together with its user).
        gone = np.isin(values, pairs) | np.isin(keys >> 32, users)
        pairs = values[gone]
        # Rows past the behaviour TTL are all that is left of these keys in the store:
        # drop them, so no row refers to a code that will be reused.
        self.store.reclaim(now)
        self.store.forget(users, pairs)
        for kind, codes in enumerate((users, items, pairs)):
            self.counters.clear(kind, codes)
        free_pairs = np.concatenate([a.free_pairs[: a.clock[k.K_FREE_PAIRS]], pairs])
        a.clock[k.K_FREE_PAIRS] = free_pairs.size
        a.stats[k.S_USERS_EVICTED] += users.size
        a.stats[k.S_ITEMS_EVICTED] += items.size
        a.stats[k.S_PAIRS_EVICTED] += pairs.size
        self.arrays = a._replace(
            pairs=table_from_items(keys[~gone], values[~gone], len(a.pairs.entries)),
            free_pairs=free_pairs)
        self.users.release(users.tolist())
        self.items.release(items.tolist())
        return int(users.size + items.size + pairs.size)

    def _codes_in_use(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Users, items and pairs the joiner still refers to whatever their idle time: those
        of remembered impressions (a late click is behaviour of their user, item and pair),
        the items in the feature rows the caller may still read, and waiting events'."""
        a = self.arrays
        _, slot_ids = table_items(a.index)
        slots = a.slots[slot_ids]
        rows = slots[:, k.SL_ROW]
        rows = np.concatenate([rows[rows >= 0], a.pending_rows[: a.clock[k.K_PENDING_ROWS]]])
        f = a.features[rows]
        items = [slots[:, k.SL_ITEM], self._waiting.item]
        for length, at, n in ((k.F_RECENT_LEN, self._layout[0], self.config.recent_length),
                              (k.F_TOPK_LEN, self._layout[1], self.config.lifelong_top_k)):
            sequence = f[:, at:at + 3 * n:3]
            items.append(sequence[np.arange(n) < f[:, length, None]])
        return (np.concatenate([slots[:, k.SL_USER], self._waiting.user]),
                np.concatenate(items), slots[:, k.SL_PAIR])

    def _live_keys(self) -> tuple[int, int, int]:
        clock = self.arrays.clock
        return (len(self.users), len(self.items),
                int(clock[k.K_PAIRS] - clock[k.K_FREE_PAIRS]))

    def _next_sweep(self) -> tuple[int, ...]:
        """Live key counts at which the next sweep is due: a quarter of each table's size
        more than now (so a sweep that finds nothing idle is not repeated at once)."""
        return tuple(live + len(table) // 4
                     for live, table in zip(self._live_keys(), self.counters.arrays.tables,
                                            strict=True))

    # -- internals ------------------------------------------------------------------------

    def _take_due(
        self, new: EncodedEvents, new_events: list[Impression | Click] | None, bound: int | None
    ) -> tuple[EncodedEvents, list[Impression | Click]]:
        """Merge ``new`` into the waiting events; take those older than ``bound`` (all: None)."""
        waiting = EncodedEvents(*(np.concatenate([w, n]) for w, n in zip(self._waiting, new,
                                                                        strict=True)))
        waiting_events = self._waiting_events + (new_events or [])
        due = (np.ones(waiting.ts.size, bool) if bound is None else waiting.ts < bound)
        picked = np.flatnonzero(due)
        order = picked[k.event_order(waiting.ts[picked], waiting.kind[picked],
                                     waiting.key[picked])]
        rest = np.flatnonzero(~due)
        self._waiting = EncodedEvents(*(column[rest] for column in waiting))
        if new_events is None:
            return EncodedEvents(*(column[order] for column in waiting)), []
        self._waiting_events = [waiting_events[i] for i in rest]
        return (EncodedEvents(*(column[order] for column in waiting)),
                [waiting_events[i] for i in order])

    def _kernel(self, e: EncodedEvents, until: int, final: bool) -> k.BatchOutput:
        if e.ts.size:
            # The compiled code does not check bounds: codes must come from our interners.
            for codes, interner in ((e.user, self.users), (e.item, self.items),
                                    (e.cat, self.categories)):
                if codes.max() >= interner.bound or codes.min() < -1:
                    raise ValueError("encoded events hold codes this joiner never interned")
        n_imp = int(np.count_nonzero(e.kind == k.IMPRESSION))
        self._reserve(n_imp, len(e.kind))
        out = self._output(len(e.kind))
        k.process_batch(self.arrays, self.store.arrays, self.counters.arrays,
                        e.kind, e.key, e.user, e.item, e.cat, e.ts, out, until, final)
        if any(n >= at for n, at in zip(self._live_keys(), self._sweep_at, strict=True)):
            self.sweep()
        return out

    def _run(self, due: EncodedEvents, events: list[Impression | Click], until: int,
             final: bool) -> JoinResult:
        out = self._kernel(due, until, final)
        n = len(events)
        status, rows = out.status[:n], out.row[:n]
        impressions = self._impressions
        new = np.flatnonzero((status == k.IMP_NEW) | (status == k.IMP_NEW_JOINED_HELD))
        for i, row in zip(new.tolist(), rows[new].tolist(), strict=True):
            impressions[row] = events[i]  # type: ignore[assignment]
        for i in np.flatnonzero(status == k.CLICK_HELD).tolist():
            self._held[int(due.key[i])] = events[i]  # type: ignore[assignment]
        result = self._result(out, events, due)  # may hand back held clicks as orphans
        for key in due.key[status == k.IMP_NEW_JOINED_HELD].tolist():
            self._held.pop(key, None)
        return result

    def _result(self, out: k.BatchOutput, events: Sequence[Impression | Click],
                codes: EncodedEvents) -> JoinResult:
        n_rel, n_orph = int(out.counts[0]), int(out.counts[1])
        impressions = self._impressions
        releases = []
        columns = ReleaseColumns(*(column[:n_rel].copy() for column in (
            out.rel_event, out.rel_phase, out.rel_row, out.rel_label, out.rel_final_ts)))
        for kind, row, label, click_ts, final_ts, event, phase in zip(
                out.rel_kind[:n_rel].tolist(), columns.row.tolist(), columns.label.tolist(),
                out.rel_click_ts[:n_rel].tolist(), columns.final_ts.tolist(),
                columns.event.tolist(), columns.phase.tolist(), strict=True):
            releases.append(Release(kind, impressions[row], row, label,  # type: ignore[arg-type]
                                    None if click_ts < 0 else click_ts, final_ts, event, phase))
            if kind == FINAL:
                impressions[row] = None  # the row is recycled at the next push
        orphans = []
        for o in range(n_orph):
            event = int(out.orphan_event[o])
            key = int(out.orphan_key[o])
            orphans.append(events[event] if event >= 0 else self._held.pop(key))
        n = len(events)
        return JoinResult(list(events), out.status[:n].copy(), out.row[:n].copy(), releases,
                          orphans, codes, columns)  # type: ignore[arg-type]

    def _output(self, batch: int) -> k.BatchOutput:
        """Output buffers for a batch, reused while large enough: fresh ones each batch
        would cost page faults on every call. Valid until the next call."""
        releases = self.open_windows + 3 * batch + 1
        orphans = self.held_clicks + batch + 1
        out = self._out
        if out is None or len(out.status) < batch or len(out.rel_event) < releases or \
                len(out.orphan_key) < orphans:
            batch, releases, orphans = (max(batch, 1024), 2 * releases, 2 * orphans)
            out = self._out = k.BatchOutput(
                status=np.zeros(batch, np.int8), row=np.full(batch, -1, np.int64),
                rel_event=np.empty(releases, np.int64), rel_phase=np.empty(releases, np.int8),
                rel_kind=np.empty(releases, np.int8), rel_row=np.empty(releases, np.int64),
                rel_label=np.empty(releases, np.int8),
                rel_click_ts=np.empty(releases, np.int64),
                rel_final_ts=np.empty(releases, np.int64),
                orphan_key=np.empty(orphans, np.int64), orphan_event=np.empty(orphans, np.int64),
                counts=np.zeros(2, np.int64))
        return out

    def _reserve(self, impressions: int, events: int) -> None:
        a = self.arrays
        free_slots = int(a.clock[k.K_FREE_SLOTS])
        free_rows = int(a.clock[k.K_FREE_ROWS] + a.clock[k.K_PENDING_ROWS])
        if free_slots < impressions:
            self._grow_slots(len(a.slots) + max(impressions, len(a.slots) // 2))
        if free_rows < impressions:
            self._grow_rows(len(a.features) + max(impressions, len(a.features) // 2))
        a = self.arrays
        held_needed = int(a.clock[k.K_HELD_EXPIRIES]) + events
        if held_needed > len(a.held_expiries):
            grow = max(held_needed, len(a.held_expiries) * 3 // 2) - len(a.held_expiries)
            self.arrays = a._replace(held_expiries=np.concatenate(
                [a.held_expiries, np.zeros((grow, 3), np.int64)]))
        now = int(self.arrays.clock[k.K_MAX_TS])
        self.arrays = self.arrays._replace(index=table_reserve(self.arrays.index, impressions),
                                           pairs=table_reserve(self.arrays.pairs, impressions),
                                           held=table_reserve(self.arrays.held,
                                                              events - impressions))
        pairs = int(self.arrays.clock[k.K_PAIRS]) + impressions
        self.store.reserve(events + self.held_clicks, self.users.bound, pairs, now)
        self.counters.reserve(self.users.bound, self.items.bound, pairs)

    def _new_arrays(self, slots: int, rows: int) -> k.JoinArrays:
        c = self.config
        features = np.zeros((rows, self._layout[2]), np.int32)
        return k.JoinArrays(
            cfg=c.vector(),
            clock=np.array([-1, -1, slots, rows, 0, 0, 0, 0, 0, 0, 0, 0, 0], np.int64),
            stats=np.zeros(len(k.STAT_NAMES), np.int64),
            slots=self._free_slot_rows(slots),
            free_slots=np.arange(slots - 1, -1, -1, dtype=np.int64),
            free_rows=np.arange(rows - 1, -1, -1, dtype=np.int64),
            pending_rows=np.zeros(rows, np.int64),
            index=new_table(2 * slots), pairs=new_table(), free_pairs=np.zeros(0, np.int64),
            ends=np.zeros((slots, 3), np.int64),
            late_ends=np.zeros((slots, 3), np.int64), expiries=np.zeros((slots, 3), np.int64),
            held=new_table(),
            held_expiries=np.zeros((1024, 3), np.int64),
            features=features, features_f=features.view(np.float32),
        )

    def _grow_slots(self, slots: int) -> None:
        a = self.arrays
        old = len(a.slots)
        extra = slots - old
        grown = {"slots": np.concatenate([a.slots, self._free_slot_rows(extra)])}
        free = int(a.clock[k.K_FREE_SLOTS])
        free_slots = np.empty(slots, np.int64)
        free_slots[:free] = a.free_slots[:free]
        free_slots[free:free + extra] = np.arange(slots - 1, old - 1, -1)
        a.clock[k.K_FREE_SLOTS] = free + extra
        # A slot sits in at most one of the queues at a time: each can hold every slot.
        rings = {name: ring_unrolled(getattr(a, name), int(a.clock[head]), int(a.clock[size]),
                                     slots)
                 for name, head, size in (("ends", k.K_ENDS_HEAD, k.K_ENDS),
                                          ("expiries", k.K_EXPIRIES_HEAD, k.K_EXPIRIES))}
        a.clock[k.K_ENDS_HEAD] = a.clock[k.K_EXPIRIES_HEAD] = 0
        late = np.concatenate([a.late_ends, np.zeros((extra, 3), np.int64)])
        self.arrays = a._replace(free_slots=free_slots, late_ends=late, **grown, **rings)

    @staticmethod
    def _free_slot_rows(n: int) -> np.ndarray:
        rows = np.zeros((n, 8), np.int64)
        rows[:, k.SL_CLICK_TS] = k.NO_CLICK
        rows[:, k.SL_ROW] = -1
        return rows

    def _grow_rows(self, rows: int) -> None:
        a = self.arrays
        old = len(a.features)
        extra = rows - old
        features = np.concatenate([a.features, np.zeros((extra, a.features.shape[1]), np.int32)])
        grown = {"features": features, "features_f": features.view(np.float32)}
        free = int(a.clock[k.K_FREE_ROWS])
        free_rows = np.empty(rows, np.int64)
        free_rows[:free] = a.free_rows[:free]
        free_rows[free:free + extra] = np.arange(rows - 1, old - 1, -1)
        pending = np.zeros(rows, np.int64)
        pending[:old] = a.pending_rows
        a.clock[k.K_FREE_ROWS] = free + extra
        self.arrays = a._replace(free_rows=free_rows, pending_rows=pending, **grown)
        self._impressions.extend([None] * extra)
