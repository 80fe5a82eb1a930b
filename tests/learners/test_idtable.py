from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners.base import LearnerError
from learners.idtable import RECLAIM_SCAN, IDTable

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
SIGN = 1 << 63


def rows(table: IDTable, ids: list[int], now: int, learn: bool = True) -> list[int]:
    return table.lookup(np.array(ids, np.int64), now, learn).tolist()


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k]
        for k in a)


class Reference:
    """The table's documented semantics over dicts, with exact sighting counts."""

    def __init__(self, capacity: int, admit_after: int, ttl: int | None) -> None:
        self.capacity, self.admit_after, self.ttl = capacity, admit_after, ttl
        self.row: dict[int, int] = {}  # id -> row
        self.owner: dict[int, int] = {}  # row -> id
        self.last: dict[int, int] = {}  # row -> last seen
        self.count: dict[int, int] = {}  # id -> sightings without a row, capped
        self.next_row, self.hand = 1, 1
        self.fresh: list[int] = []
        self.stats = dict.fromkeys(
            ("admitted", "evicted", "full_misses", "lookups", "default_hits"), 0)

    def expired(self, r: int, now: int) -> bool:
        return self.ttl is not None and self.last[r] < now - self.ttl

    def allocate(self, now: int) -> int:
        if self.next_row <= self.capacity:
            self.next_row += 1
            return self.next_row - 1
        if self.ttl is None:
            return 0
        for _ in range(min(RECLAIM_SCAN, self.capacity)):
            r, self.hand = self.hand, self.hand % self.capacity + 1
            if self.expired(r, now):
                del self.row[self.owner[r]]
                self.stats["evicted"] += 1
                return r
        return 0

    def assign(self, r: int) -> None:
        self.stats["admitted"] += 1
        if r not in self.fresh:
            self.fresh.append(r)

    def lookup(self, ids: list[int], now: int, learn: bool) -> list[int]:
        out = []
        for x in ids:
            r = self.row.get(x, 0)
            live = r > 0 and not self.expired(r, now)
            if not learn:
                out.append(r if live else 0)
                continue
            self.stats["lookups"] += 1
            if r:
                if not live:
                    self.stats["evicted"] += 1
                    self.assign(r)
                self.last[r] = max(self.last[r], now)
                out.append(r)
                continue
            self.count[x] = min(self.count.get(x, 0) + 1, self.admit_after)
            r = 0
            if self.count[x] == self.admit_after:
                r = self.allocate(now)
                self.stats["full_misses"] += r == 0
            if r:
                self.row[x], self.owner[r], self.last[r] = r, x, now
                self.assign(r)
            else:
                self.stats["default_hits"] += 1
            out.append(r)
        return out

    def take_fresh_rows(self) -> list[int]:
        fresh, self.fresh = self.fresh, []
        return fresh


POOL = [0, 1, -1, 7, -7, INT64_MAX, INT64_MIN, 12345, 12345 - SIGN, 1 << 62]
calls = st.lists(st.tuples(st.lists(st.sampled_from(POOL), max_size=8),
                           st.integers(-3, 10), st.booleans()), max_size=40)


@given(capacity=st.integers(1, 5), admit_after=st.integers(1, 3),
       ttl=st.none() | st.integers(0, 12), calls=calls)
@settings(max_examples=300, deadline=None)
def test_matches_a_reference_model_over_random_streams(capacity, admit_after, ttl, calls):
    # A sketch this wide is exact for ten IDs, so the reference counts exactly.
    table = IDTable(capacity, admit_after, ttl, sketch_width=1 << 16)
    ref = Reference(capacity, admit_after, ttl)
    now = 0
    for ids, step, learn in calls:
        now = max(0, now + step)  # event time mostly advances, sometimes goes back
        assert rows(table, ids, now, learn) == ref.lookup(ids, now, learn)
        assert table.take_fresh_rows().tolist() == ref.take_fresh_rows()
        assert table.stats() == {"rows_in_use": len(ref.owner), **ref.stats}
        assert len(table) == len(ref.row) == len(ref.owner)


@given(ids=st.lists(st.sampled_from(POOL), max_size=60), admit_after=st.integers(2, 4),
       width=st.sampled_from([1, 2, 4]), depth=st.integers(1, 3))
@settings(max_examples=200, deadline=None)
def test_a_small_sketch_admits_early_never_late(ids, admit_after, width, depth):
    table = IDTable(len(POOL), admit_after, sketch_width=width, sketch_depth=depth)
    seen: dict[int, int] = {}
    for x in ids:
        seen[x] = seen.get(x, 0) + 1
        row = rows(table, [x], 0)[0]
        if seen[x] >= admit_after:
            assert row != 0


def test_a_one_counter_sketch_admits_by_the_total_count():
    table = IDTable(10, admit_after=3, sketch_width=1, sketch_depth=1)
    assert rows(table, [5, 6, 7], 0) == [0, 0, 1]  # 7 rides on 5's and 6's sightings


def test_id_gets_own_row_only_after_admit_after_sightings():
    table = IDTable(10, admit_after=3)
    assert rows(table, [42], 0) == [0]
    assert rows(table, [42] * 5, 0, learn=False) == [0] * 5  # predictions do not count
    assert rows(table, [42, 9, 42, 42], 1) == [0, 0, 1, 1]
    assert rows(table, [9, 9], 2) == [0, 2]
    assert table.take_fresh_rows().tolist() == [1, 2]
    assert table.stats() == {"rows_in_use": 2, "admitted": 2, "evicted": 0, "full_misses": 0,
                             "lookups": 7, "default_hits": 4}


def test_admit_after_one_gives_a_row_at_first_sight():
    table = IDTable(10)
    assert rows(table, [3, 4, 3], 0) == [1, 2, 1]
    assert table.take_fresh_rows().tolist() == [1, 2]
    assert not table._sketch.any()  # the sketch is not even touched


def test_prediction_lookup_changes_nothing():
    table = IDTable(3, admit_after=2, ttl_ms=10)
    rows(table, [1, 1, 2, 2, 3], 0)
    rows(table, [2], 20)  # 1 has expired by 20, 2 is live, 3 has one sighting
    before = table.state_dict()
    twin = IDTable.from_state_dict(before)
    assert rows(table, [1, 2, 3, 4, 3, 4], 20, learn=False) == [0, 2, 0, 0, 0, 0]
    assert rows(table, [5, 1, 2], 10**6, learn=False) == [0, 0, 0]  # far future: all expired
    assert same_state(table.state_dict(), before)
    assert rows(table, [3, 1, 4], 21) == rows(twin, [3, 1, 4], 21)
    assert table.take_fresh_rows().tolist() == twin.take_fresh_rows().tolist()


def test_rows_unseen_for_ttl_are_reused_and_reported_fresh():
    table = IDTable(2, ttl_ms=10)
    assert rows(table, [100, 200], 0) == [1, 2]
    assert table.take_fresh_rows().tolist() == [1, 2]
    assert rows(table, [300], 10) == [0]  # unseen for exactly ttl_ms: not expired yet
    assert rows(table, [300], 11) == [1]  # 100's row is reclaimed
    assert rows(table, [100], 11) == [2]  # 100 lost its row; it takes 200's, also expired
    assert table.take_fresh_rows().tolist() == [1, 2]
    assert rows(table, [200, 300, 100], 12) == [0, 1, 2]
    assert table.take_fresh_rows().tolist() == []
    assert table.stats()["evicted"] == 2 and table.stats()["full_misses"] == 2


def test_expired_id_seen_again_gets_its_row_back_as_fresh():
    table = IDTable(5, admit_after=2, ttl_ms=10)
    assert rows(table, [8, 8], 0) == [0, 1]
    table.take_fresh_rows()
    assert rows(table, [8], 11, learn=False) == [0]  # expired: predictions use row 0
    assert rows(table, [8], 11) == [1]  # its sketch count stands: re-admitted at once
    assert table.take_fresh_rows().tolist() == [1]
    assert rows(table, [8], 21) == [1]
    assert table.take_fresh_rows().tolist() == []
    assert table.stats()["evicted"] == 1 and table.stats()["admitted"] == 2


def test_full_table_without_expired_rows_serves_default_row():
    table = IDTable(2)
    assert rows(table, [1, 2, 3, 3], 0) == [1, 2, 0, 0]
    assert table.stats()["full_misses"] == 2 and table.stats()["default_hits"] == 2
    with_ttl = IDTable(2, ttl_ms=5)
    assert rows(with_ttl, [1, 2, 3], 0) == [1, 2, 0]
    assert rows(with_ttl, [2, 3], 5) == [2, 0]
    assert rows(with_ttl, [3], 6) == [1]  # tried again at its next sighting: 1 has expired


def test_reclaim_scans_a_bounded_number_of_rows_per_allocation():
    capacity = 3 * RECLAIM_SCAN
    table = IDTable(capacity, ttl_ms=100)
    ids = np.arange(capacity, dtype=np.int64)
    assert table.lookup(ids, 0).tolist() == list(range(1, capacity + 1))
    stale = capacity - 10  # the only row left to expire, far from the hand
    table.lookup(np.delete(ids, stale - 1), 100)
    attempts = -(-stale // RECLAIM_SCAN)
    got = [rows(table, [-5], 150)[0] for _ in range(attempts)]
    assert got == [0] * (attempts - 1) + [stale]
    assert table.stats()["full_misses"] == attempts - 1
    assert table.state_dict()["hand"] == stale + 1


def test_fresh_rows_are_listed_once_until_taken():
    table = IDTable(1, ttl_ms=0)
    assert rows(table, [1], 0) == [1]
    assert rows(table, [2], 1) == [1]  # reclaimed and reassigned before anyone took it
    assert table.take_fresh_rows().tolist() == [1]
    assert table.take_fresh_rows().tolist() == []


def test_distinct_ids_never_share_a_row():
    rng = np.random.default_rng(7)
    half = rng.integers(INT64_MIN, INT64_MAX, 30_000, dtype=np.int64, endpoint=True)
    ids = np.unique(np.concatenate([half, half ^ np.int64(INT64_MIN)]))  # sign-bit twins
    table = IDTable(len(ids))
    got = table.lookup(ids, 0)
    assert np.array_equal(np.sort(got), np.arange(1, len(ids) + 1))
    assert np.array_equal(table.lookup(ids[::-1], 1, learn=False), got[::-1])
    assert len(table) == len(ids)


def test_negative_and_extreme_int64_ids():
    low = [0, 1, 12345, INT64_MAX - 1, INT64_MAX]
    twins = [x ^ INT64_MIN for x in low]  # the same low 63 bits: -2**63, ..., -1
    table = IDTable(10, ttl_ms=3)
    assert rows(table, low, 0) == [1, 2, 3, 4, 5]
    assert rows(table, twins, 1) == [6, 7, 8, 9, 10]
    assert rows(table, twins + low, 2, learn=False) == [6, 7, 8, 9, 10, 1, 2, 3, 4, 5]
    assert table.state_dict()["row_id"].tolist() == low + twins
    assert rows(table, [-3], 5) == [1]  # 0's expired row is reclaimed; its twin keeps its own
    assert rows(table, [0, INT64_MIN, -3], 5, learn=False) == [0, 0, 1]
    assert rows(table, [INT64_MIN, 0], 5) == [6, 2]


def test_lookup_keeps_the_shape_and_takes_any_integer_dtype():
    table = IDTable(100)
    history = np.array([[5, 6, 7], [7, 5, 8]], np.int32)
    assert table.lookup(history, 0).tolist() == [[1, 2, 3], [3, 1, 4]]
    assert table.lookup(np.zeros(0, np.int64), 0).shape == (0,)
    hashes = np.array([2**64 - 1, 2**63, 5], np.uint64)  # bit for bit: -1, INT64_MIN, 5
    assert table.lookup(hashes, 0).tolist() == rows(table, [-1, INT64_MIN, 5], 0)


def test_late_events_never_move_last_seen_back():
    table = IDTable(1, ttl_ms=5)
    rows(table, [9], 100)
    rows(table, [9], 50)
    assert table.state_dict()["last_seen"].tolist() == [100]
    assert rows(table, [9], 105, learn=False) == [1]
    assert rows(table, [9], 106, learn=False) == [0]


def test_same_calls_give_same_rows():
    rng = np.random.default_rng(3)
    stream = rng.zipf(1.3, 20_000).astype(np.int64) * 7919 - 10**6
    a, b = IDTable(500, 2, 50, 1 << 8, 2), IDTable(500, 2, 50, 1 << 8, 2)
    for k in range(0, len(stream), 1000):
        assert np.array_equal(a.lookup(stream[k:k + 1000], k // 100),
                              b.lookup(stream[k:k + 1000], k // 100))
        assert np.array_equal(a.take_fresh_rows(), b.take_fresh_rows())
    assert a.stats() == b.stats() and a.stats()["evicted"] > 0


def savez_round_trip(state: dict[str, Any]) -> dict[str, Any]:
    for key, value in state.items():
        assert type(value) in (np.ndarray, int, str), (key, type(value))
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        return {k: f[k].item() if f[k].ndim == 0 else f[k] for k in f.files}


@pytest.mark.parametrize("ttl", [None, 40])
def test_state_dict_round_trip_continues_identically(ttl):
    rng = np.random.default_rng(11)
    stream = rng.zipf(1.2, 30_000).astype(np.int64) * -104729
    table = IDTable(300, 2, ttl, 1 << 10, 3)
    batches = [stream[k:k + 500] for k in range(0, len(stream), 500)]
    for k, ids in enumerate(batches[:30]):
        table.lookup(ids, 10 * k)
    table.take_fresh_rows()
    table.lookup(batches[30], 300)  # fresh rows pending at the checkpoint travel with it
    restored = IDTable.from_state_dict(savez_round_trip(table.state_dict()))
    assert same_state(restored.state_dict(), table.state_dict())
    for k, ids in enumerate(batches[31:], start=31):
        assert np.array_equal(restored.lookup(ids, 10 * k), table.lookup(ids, 10 * k))
        assert np.array_equal(restored.take_fresh_rows(), table.take_fresh_rows())
    assert restored.stats() == table.stats()
    assert same_state(restored.state_dict(), table.state_dict())


def test_state_dict_is_a_copy_detached_from_further_lookups():
    table = IDTable(4, admit_after=2, sketch_width=4, ttl_ms=1)
    state = table.state_dict()
    rows(table, [1, 1, 2], 0)
    assert state["row_id"].size == 0 and not state["sketch"].any()


def _changed(key: str, value: Any):
    return lambda d: {**d, key: value}


REFUSED = {
    "not a mapping": (lambda d: list(d), "mapping"),
    "missing key": (lambda d: {k: v for k, v in d.items() if k != "sketch"}, "lacks sketch"),
    "format": (_changed("format", "streamctr.learners.ftrl"), "format"),
    "version": (_changed("version", 2), "version"),
    "capacity": (_changed("capacity", 9), "capacity=9"),
    "admit_after": (_changed("admit_after", 3), "admit_after=3"),
    "ttl_ms": (_changed("ttl_ms", -1), "ttl_ms=-1"),
    "sketch_width": (_changed("sketch_width", 32), "sketch_width=32"),
    "sketch_depth": (_changed("sketch_depth", 3), "sketch_depth=3"),
    "hand": (_changed("hand", 0), "hand"),
    "negative counter": (_changed("evicted", -1), "evicted"),
    "float counter": (_changed("lookups", 3.0), "lookups"),
    "row_id dtype": (lambda d: {**d, "row_id": d["row_id"].astype(np.float64)}, "row_id"),
    "row_id list": (lambda d: {**d, "row_id": d["row_id"].tolist()}, "row_id"),
    "last_seen shape": (lambda d: {**d, "last_seen": d["last_seen"][:-1]}, "last_seen"),
    "sketch shape": (lambda d: {**d, "sketch": d["sketch"][:, :8]}, "sketch"),
    "sketch counters": (lambda d: {**d, "sketch": d["sketch"] + np.uint32(5)}, "sketch"),
    "too many rows": (lambda d: {**d, "row_id": np.arange(9), "last_seen": np.zeros(9, np.int64)},
                      "more than capacity"),
    "repeated id": (lambda d: {**d, "row_id": np.full_like(d["row_id"], 7)}, "two rows"),
    "negative time": (lambda d: {**d, "last_seen": d["last_seen"] - 100}, "negative"),
    "fresh out of range": (lambda d: {**d, "fresh": np.array([5], np.int64)}, "fresh"),
    "fresh repeated": (lambda d: {**d, "fresh": np.array([1, 1], np.int64)}, "fresh"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_state_dict_refuses_other_hyper_parameters_or_shapes(case):
    table = IDTable(4, admit_after=2, ttl_ms=50, sketch_width=16, sketch_depth=2)
    rows(table, [1, 1, 2, 2, 3], 0)
    good = table.state_dict()
    change, reason = REFUSED[case]
    with pytest.raises(LearnerError, match=reason):
        table.load_state_dict(change(good))
    assert same_state(table.state_dict(), good)  # nothing changed on refusal
    assert rows(table, [3], 1) == [3]


@pytest.mark.parametrize(("params", "reason"), [
    ({"capacity": 0}, "capacity"),
    ({"capacity": -3}, "capacity"),
    ({"capacity": 2.0}, "capacity must be an int"),
    ({"capacity": True}, "capacity must be an int"),
    ({"capacity": "8"}, "capacity must be an int"),
    ({"capacity": (1 << 32) + 1}, "capacity"),
    ({"admit_after": 0}, "admit_after"),
    ({"admit_after": 1 << 32}, "admit_after"),
    ({"ttl_ms": -1}, "ttl_ms"),
    ({"ttl_ms": 1.5}, "ttl_ms must be an int"),
    ({"sketch_width": 0}, "sketch_width"),
    ({"sketch_width": 1000}, "power of two"),
    ({"sketch_width": 1 << 32}, "sketch_width"),
    ({"sketch_depth": 0}, "sketch_depth"),
    ({"sketch_depth": 17}, "sketch_depth"),
])
def test_bad_hyper_parameters_raise(params, reason):
    with pytest.raises(LearnerError, match=reason):
        IDTable(**{"capacity": 8, **params})


@pytest.mark.parametrize(("ids", "now", "learn", "reason"), [
    (np.array([1.0, 2.0]), 0, True, "integer array"),
    (np.array(["a"]), 0, True, "integer array"),
    (np.array([1]), -1, True, "now_ms"),
    (np.array([1]), 1.0, True, "now_ms must be an int"),
    (np.array([1]), True, True, "now_ms must be an int"),
    (np.array([1]), 0, "yes", "learn must be a bool"),
])
def test_bad_lookup_input_raises_and_changes_nothing(ids, now, learn, reason):
    table = IDTable(8)
    before = table.state_dict()
    with pytest.raises(LearnerError, match=reason):
        table.lookup(ids, now, learn)
    assert same_state(table.state_dict(), before)


def test_from_state_dict_needs_hyper_parameters():
    with pytest.raises(LearnerError, match="hyper-parameters"):
        IDTable.from_state_dict({"format": "streamctr.learners.idtable"})


def test_repr_and_size_of_the_embedding_matrix():
    table = IDTable(8, admit_after=2, ttl_ms=60_000)
    assert repr(table) == ("IDTable(capacity=8, admit_after=2, ttl_ms=60000, "
                           "sketch_width=1048576, sketch_depth=4)")
    assert table.n_rows == 9 and len(table) == 0
