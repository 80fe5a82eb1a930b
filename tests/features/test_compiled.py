from __future__ import annotations

import numba as nb
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from features.compiled import (
    heap_pop,
    heap_push,
    new_table,
    prefetch_row,
    ring_pop,
    ring_push,
    ring_unrolled,
    table_from_items,
    table_get,
    table_items,
    table_pop,
    table_reserve,
    table_set,
)

operations = st.lists(st.tuples(st.sampled_from(["set", "pop", "get"]),
                                st.integers(0, 40), st.integers(0, 10**6)), max_size=300)


@given(operations)
@settings(max_examples=200, deadline=None)
def test_hash_table_behaves_like_a_dict(ops):
    table, ref = new_table(16), {}
    for op, key, value in ops:
        table = table_reserve(table, 1)
        if op == "set":
            table_set(table, key, value)
            ref[key] = value
        elif op == "pop":
            assert table_pop(table, key, -1) == ref.pop(key, -1)
        else:
            assert table_get(table, key, -1) == ref.get(key, -1)
        assert table.size[0] == len(ref)
    keys, values = table_items(table)
    assert dict(zip(keys.tolist(), values.tolist(), strict=True)) == ref
    rebuilt = table_from_items(keys, values)
    assert all(table_get(rebuilt, k, -1) == v for k, v in ref.items())


def test_hash_table_spreads_keys_that_share_low_bits():
    # user << 32 | category keys differ only in their high bits across users.
    keys = (np.arange(5_000, dtype=np.int64) << 32) | 7
    table = table_from_items(keys, np.arange(5_000))
    assert [table_get(table, int(k), -1) for k in keys[:100]] == list(range(100))


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50)),
                max_size=200))
@settings(max_examples=200, deadline=None)
def test_array_heap_pops_rows_in_tuple_order(rows):
    heap = np.zeros((max(len(rows), 1), 3), np.int64)
    sizes = np.zeros(1, np.int64)
    for row in rows:
        heap_push(heap, sizes, 0, *row)
    popped = [heap_pop(heap, sizes, 0) for _ in rows]
    assert popped == sorted(rows)
    assert sizes[0] == 0


def test_ring_is_fifo_across_wraparound_and_unrolls():
    ring = np.zeros((4, 3), np.int64)
    clock = np.zeros(2, np.int64)  # head, length
    out = []
    for n in range(10):
        ring_push(ring, clock, 0, 1, n, -n, 2 * n)
        if clock[1] == 3:
            out.append(ring_pop(ring, clock, 0, 1))
    assert out == [(k, -k, 2 * k) for k in range(8)]
    assert ring_unrolled(ring, int(clock[0]), int(clock[1]), 8)[:2, 0].tolist() == [8, 9]


def test_prefetch_row_is_only_a_hint_and_changes_nothing():
    @nb.njit
    def touch_then_sum(table, rows):
        for r in rows:
            prefetch_row(table, r)
        return table.sum()

    table = np.arange(12.0).reshape(4, 3)
    assert touch_then_sum(table, np.array([3, 0, 2])) == 66.0
    assert table.tolist() == np.arange(12.0).reshape(4, 3).tolist()


def test_splitmix_draws_are_stateless_uniform_and_shared_by_scalar_and_batch_forms():
    from features.compiled import splitmix_uniform, splitmix_uniforms

    batch = splitmix_uniforms(7, 1_000, 50_000)
    assert batch[:5].tolist() == [splitmix_uniform(7, 1_000 + k) for k in range(5)]
    assert splitmix_uniforms(7, 1_003, 2).tolist() == batch[3:5].tolist()  # by counter only
    assert batch.min() >= 0.0 and batch.max() < 1.0
    assert abs(batch.mean() - 0.5) < 0.01 and abs((batch < 0.1).mean() - 0.1) < 0.01
    assert splitmix_uniforms(8, 1_000, 5).tolist() != batch[:5].tolist()
