"""DIN network modules: attention semantics, padding, Dice statistics, position tower,
mini-batch aware L2, row resets, devices / autocast, and learning a sequence-dependent task."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from learners.din_modules import (
    EMBEDDING_INIT_STD,
    Dice,
    DINBatch,
    DINNetwork,
    LifelongInterest,
    TargetAttention,
    position_buckets,
    time_gap_buckets,
)
from replay.metrics import auc


@pytest.fixture(autouse=True)
def _one_thread_seeded() -> None:
    """Deterministic, and light on the shared 2-core machine."""
    torch.set_num_threads(1)
    torch.manual_seed(0)


def make_batch(
    b: int = 6, length: int = 5, k: int = 4, c: int = 2, d: int = 3, n_rows: int = 50
) -> DINBatch:
    """A random batch with some padding in both sequences (row 0 = default row)."""
    recent_mask = torch.rand(b, length) < 0.7
    lifelong_mask = torch.rand(b, k) < 0.7
    return DINBatch(
        user=torch.randint(0, n_rows, (b,)),
        item=torch.randint(0, n_rows, (b,)),
        category=torch.randint(0, n_rows, (b,)),
        context=torch.randint(0, n_rows, (b, c)),
        position=torch.randint(0, 33, (b,)),
        recent_item=torch.randint(0, n_rows, (b, length)),
        recent_category=torch.randint(0, n_rows, (b, length)),
        recent_mask=recent_mask,
        lifelong_item=torch.randint(0, n_rows, (b, k)),
        lifelong_category=torch.randint(0, n_rows, (b, k)),
        lifelong_gap=torch.randint(0, 16, (b, k)),
        lifelong_mask=lifelong_mask,
        dense=torch.randn(b, d),
    )


def small_net(**kwargs: object) -> DINNetwork:
    params: dict[str, object] = {
        "n_rows": 50,
        "embedding_dim": 4,
        "n_context": 2,
        "n_dense": 3,
        "attention_hidden": (8, 4),
        "mlp_hidden": (16, 8),
    }
    params.update(kwargs)
    return DINNetwork(**params)  # type: ignore[arg-type]


@pytest.mark.parametrize("train", [True, False])
def test_target_attention_ignores_padding_exactly(train: bool) -> None:
    att = TargetAttention(6, hidden=(8, 4)).train(train)
    query, keys = torch.randn(4, 6), torch.randn(4, 5, 6)
    mask = torch.tensor([[True, True, False, False, False]] * 3 + [[True] * 5])
    keys.requires_grad_(True)
    out = att(query, keys, mask)
    changed = torch.where(mask.unsqueeze(-1), keys.detach(), torch.randn(4, 5, 6) * 100)
    # Padding does not even enter Dice's batch statistics, so training mode is exact too.
    assert torch.equal(att(query, changed, mask), out)
    out.sum().backward()
    assert torch.all(keys.grad[~mask] == 0)
    assert torch.any(keys.grad[mask] != 0)


def test_target_attention_weights_are_not_normalised() -> None:
    att = TargetAttention(6, hidden=(8, 4)).eval()
    query, behaviour = torch.randn(1, 6), torch.randn(1, 1, 6)
    keys = behaviour.expand(1, 2, 6)
    once = att(query, keys, torch.tensor([[True, False]]))
    twice = att(query, keys, torch.tensor([[True, True]]))
    assert once.abs().sum() > 0
    torch.testing.assert_close(twice, 2 * once)


def test_lifelong_attention_is_a_softmax_over_real_behaviours() -> None:
    lifelong = LifelongInterest(6, n_gap_buckets=16, heads=3)
    query, behaviour = torch.randn(1, 6), torch.randn(1, 1, 6)
    keys, gap = behaviour.expand(1, 2, 6), torch.tensor([[3, 3]])
    once = lifelong(query, keys, gap, torch.tensor([[True, False]]))
    twice = lifelong(query, keys, gap, torch.tensor([[True, True]]))
    torch.testing.assert_close(twice, once)  # duplicates share the weight: sums to one


def test_lifelong_ignores_padding_and_uses_time_gaps() -> None:
    lifelong = LifelongInterest(8, heads=2)
    query, keys = torch.randn(3, 8), torch.randn(3, 4, 8)
    gap = torch.randint(0, 16, (3, 4))
    mask = torch.tensor([[True, False, True, False], [True] * 4, [False, True, False, False]])
    out = lifelong(query, keys, gap, mask)
    keys2 = torch.where(mask.unsqueeze(-1), keys, torch.randn(3, 4, 8) * 1e3)
    gap2 = torch.where(mask, gap, (gap + 5) % 16)
    assert torch.equal(lifelong(query, keys2, gap2, mask), out)
    assert not torch.allclose(lifelong(query, keys, (gap + 1) % 16, mask), out)


def test_all_padding_gives_zero_interest_without_nan() -> None:
    query, keys = torch.randn(2, 8), torch.randn(2, 3, 8)
    mask, gap = torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.long)
    for train in (True, False):
        recent = TargetAttention(8, hidden=(8, 4)).train(train)(query, keys, mask)
        lifelong = LifelongInterest(8).train(train)(query, keys, gap, mask)
        assert torch.equal(recent, torch.zeros(2, 8))
        assert torch.equal(lifelong, torch.zeros(2, 8))
    # Also with no behaviours at all (L = K = 0).
    empty_keys, empty_mask = torch.randn(2, 0, 8), torch.zeros(2, 0, dtype=torch.bool)
    assert torch.equal(TargetAttention(8)(query, empty_keys, empty_mask), torch.zeros(2, 8))
    empty_gap = torch.zeros(2, 0, dtype=torch.long)
    out = LifelongInterest(8)(query, empty_keys, empty_gap, empty_mask)
    assert torch.equal(out, torch.zeros(2, 8))


def test_network_with_all_padding_sequences_is_finite_with_gradients() -> None:
    net = small_net().train()
    batch = dataclasses.replace(
        make_batch(),
        recent_mask=torch.zeros(6, 5, dtype=torch.bool),
        lifelong_mask=torch.zeros(6, 4, dtype=torch.bool),
    )
    logit = net(batch, train_position=True)
    logit.sum().backward()
    assert torch.isfinite(logit).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_lifelong_branch_off_ignores_lifelong_inputs() -> None:
    net = small_net(use_lifelong=False).eval()
    assert net.lifelong is None
    assert not any(name.startswith("lifelong") for name, _ in net.named_parameters())
    batch = make_batch()
    other = dataclasses.replace(
        batch,
        lifelong_item=torch.randint(0, 50, (6, 4)),
        lifelong_category=torch.randint(0, 50, (6, 4)),
        lifelong_gap=torch.randint(0, 16, (6, 4)),
        lifelong_mask=~batch.lifelong_mask,
    )
    assert torch.equal(net(other, False), net(batch, False))
    assert torch.equal(net.minibatch_l2(other), net.minibatch_l2(batch))
    # With the branch on, the same change matters.
    net_on = small_net().eval()
    assert not torch.equal(net_on(other, False), net_on(batch, False))


def test_position_tower_adds_nothing_at_prediction() -> None:
    net = small_net()
    with torch.no_grad():
        net.position_tower.bias.weight[1:] = torch.randn(32, 1)
    batch = make_batch()
    missing = dataclasses.replace(batch, position=torch.zeros(6, dtype=torch.long))
    net.eval()
    predicted = net(batch, train_position=True)
    assert torch.equal(net(batch, train_position=False), predicted)
    assert torch.equal(net(missing, train_position=True), predicted)
    net.train()
    without = net(batch, train_position=False)
    assert torch.equal(net(missing, train_position=True), without)  # missing bucket is 0
    with_tower = net(batch, train_position=True)
    expected = net.position_tower.bias.weight[batch.position, 0]
    torch.testing.assert_close(with_tower - without, expected)


def test_position_and_time_gap_buckets() -> None:
    assert position_buckets(torch.tensor([-1, 0, 5, 31, 32, 10_000]), 32).tolist() == [
        0,
        1,
        6,
        32,
        32,
        32,
    ]
    ages = torch.tensor([-5.0, 0.0, 1.0, 3.0, 15.0, 3600.0, 86400.0 * 365, 1e15])
    buckets = time_gap_buckets(ages, 16)
    assert buckets.dtype == torch.int64
    assert buckets.tolist() == [0, 0, 0, 1, 2, 5, 12, 15]
    assert torch.all(buckets.diff() >= 0)
    # 32 buckets are exact log2 buckets of (1 + age).
    assert time_gap_buckets(torch.tensor([0.0, 1.0, 2.0, 3.0, 7.0]), 32).tolist() == [
        0,
        1,
        1,
        2,
        3,
    ]


def test_dice_uses_batch_statistics_in_training_and_running_in_eval() -> None:
    dice = Dice(3, momentum=0.1)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.0, 0.5, -0.25]))
    x = torch.randn(64, 3) * 2 + 1
    alpha = dice.alpha.detach()

    def reference(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid((x - mean) / torch.sqrt(var + 1e-8))
        return p * x + (1 - p) * alpha * x

    out = dice.train()(x)
    batch_mean, batch_var = x.mean(0), x.var(0, unbiased=False)
    torch.testing.assert_close(out, reference(batch_mean, batch_var))
    torch.testing.assert_close(dice.running_mean, 0.1 * batch_mean)
    torch.testing.assert_close(dice.running_var, 0.9 + 0.1 * x.var(0, unbiased=True))
    torch.testing.assert_close(dice.eval()(x), reference(dice.running_mean, dice.running_var))
    assert not torch.allclose(dice(x), out)
    # A masked row stays out of the statistics; a single training row works (p = 1/2).
    dice.train()
    masked = dice(torch.cat([x, torch.full((1, 3), 1e6)]), torch.arange(65) < 64)
    torch.testing.assert_close(masked[:64], out)
    running = dice.running_mean.clone()
    one = torch.tensor([[2.0, 2.0, 2.0]])
    torch.testing.assert_close(dice(one), 0.5 * one + 0.5 * alpha * one)
    assert torch.equal(dice.running_mean, running)  # one row does not update the stats


def test_dice_accepts_sequences_and_checks_rank() -> None:
    dice = Dice(4, dim=3)
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(dice(x), Dice(4)(x.reshape(10, 4)).reshape(2, 5, 4))
    with pytest.raises(ValueError, match="dim=3"):
        dice(torch.randn(3, 4))


def test_minibatch_l2_covers_only_rows_in_batch_scaled_by_frequency() -> None:
    net = small_net(n_context=1, n_dense=0)
    batch = DINBatch(
        user=torch.tensor([1, 1]),
        item=torch.tensor([2, 3]),
        category=torch.tensor([4, 4]),
        context=torch.tensor([[5], [0]]),
        position=torch.tensor([0, 3]),
        recent_item=torch.tensor([[2, 9], [6, 0]]),
        recent_category=torch.tensor([[4, 10], [4, 0]]),
        recent_mask=torch.tensor([[True, False], [True, False]]),
        lifelong_item=torch.tensor([[7], [11]]),
        lifelong_category=torch.tensor([[4], [12]]),
        lifelong_gap=torch.tensor([[1], [2]]),
        lifelong_mask=torch.tensor([[True], [False]]),
        dense=torch.zeros(2, 0),
    )
    # Occurrences over all fields, real behaviours only, row 0 excluded:
    # 1: user ×2; 2: item + recent; 3: item; 4: category ×2 + recent ×2 + lifelong; 5, 6, 7.
    n = {1: 2, 2: 2, 3: 1, 4: 5, 5: 1, 6: 1, 7: 1}
    w = net.embedding.weight.detach()
    expected = sum(w[j].square().sum() / n_j for j, n_j in n.items())
    penalty = net.minibatch_l2(batch)
    assert penalty.shape == ()
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    touched = net.embedding.weight.grad.abs().sum(1).nonzero().flatten().tolist()
    assert touched == sorted(n)  # padded 9, 10, 11, 12 and default row 0 untouched
    # Given counts (e.g. global frequencies) replace the in-batch ones.
    counts = torch.arange(50) + 1
    expected = sum(w[j].square().sum() / (j + 1) for j in n)
    torch.testing.assert_close(net.minibatch_l2(batch, counts), expected)


def test_reset_rows_reinitialises_only_those_rows() -> None:
    net = small_net(n_rows=3000, embedding_dim=16)
    with torch.no_grad():
        net.embedding.weight.fill_(5.0)
    rows = torch.arange(1, 3000, 2)
    net.reset_rows(rows)
    weight = net.embedding.weight.detach()
    kept = torch.ones(3000, dtype=torch.bool)
    kept[rows] = False
    assert torch.all(weight[kept] == 5.0)
    fresh = weight[rows]
    assert abs(fresh.mean().item()) < 5e-4
    assert fresh.std().item() == pytest.approx(EMBEDDING_INIT_STD, rel=0.05)
    assert net.embedding.weight.grad is None and net.embedding.weight.requires_grad


def test_batch_checks_shapes_and_dtypes() -> None:
    batch = make_batch()
    with pytest.raises(ValueError, match="recent_mask"):
        dataclasses.replace(batch, recent_mask=batch.recent_mask.long())
    with pytest.raises(ValueError, match="lifelong_gap"):
        dataclasses.replace(batch, lifelong_gap=batch.lifelong_gap[:, :2])
    with pytest.raises(ValueError, match="dense"):
        dataclasses.replace(batch, dense=batch.dense.long())
    with pytest.raises(ValueError, match="context fields"):
        small_net(n_context=3)(batch, False)


def test_a_host_index_gives_the_same_logits_and_penalty_as_the_masks() -> None:
    net = small_net().eval()
    batch = make_batch()
    indexed = batch.with_host_index()
    owner, slot = batch.recent_mask.nonzero(as_tuple=True)
    assert torch.equal(indexed.recent_owner, owner) and torch.equal(indexed.recent_slot, slot)
    assert 0 not in indexed.l2_rows.tolist()
    assert torch.equal(net(indexed, False), net(batch, False))
    assert torch.equal(net.minibatch_l2(indexed), net.minibatch_l2(batch))
    # Without the lifelong branch its rows are neither read nor regularised.
    off = small_net(use_lifelong=False)
    assert torch.equal(off.minibatch_l2(batch.with_host_index(lifelong=False)),
                       off.minibatch_l2(batch))
    assert indexed.l2_rows.numel() > batch.with_host_index(lifelong=False).l2_rows.numel()


def test_a_half_given_or_misshaped_host_index_is_refused() -> None:
    indexed = make_batch().with_host_index()
    with pytest.raises(ValueError, match="go together"):
        dataclasses.replace(indexed, recent_slot=None)
    with pytest.raises(ValueError, match="l2_counts"):
        dataclasses.replace(indexed, l2_counts=indexed.l2_counts[:-1])


def test_batch_to_and_pin_memory() -> None:
    batch = make_batch().with_host_index()
    moved = batch.to("cpu")
    for field in dataclasses.fields(DINBatch):
        assert torch.equal(getattr(moved, field.name), getattr(batch, field.name))
    if torch.cuda.is_available():
        pinned = batch.pin_memory()
        assert all(getattr(pinned, f.name).is_pinned() for f in dataclasses.fields(DINBatch))
        on_gpu = pinned.to("cuda", non_blocking=True)
        assert on_gpu.recent_mask.device.type == "cuda"
        torch.testing.assert_close(on_gpu.to("cpu", non_blocking=False).dense, batch.dense)


@pytest.mark.parametrize("activation", ["dice", "prelu"])
@pytest.mark.parametrize(("length", "k"), [(5, 4), (1, 1), (0, 0)])
def test_network_shapes_for_a_single_impression(activation: str, length: int, k: int) -> None:
    net = small_net(activation=activation)
    batch = make_batch(b=1, length=length, k=k)
    for train in (True, False):
        logit = net.train(train)(batch, train_position=train)
        assert logit.shape == (1,)
        assert torch.isfinite(logit).all()
    logit = net.train()(make_batch(b=7, length=length, k=k), train_position=True)
    assert logit.shape == (7,)
    logit.sum().backward()


def _autocast_step(device: str) -> None:
    net = small_net().to(device).train()
    batch = make_batch(b=16).to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        logit = net(batch, train_position=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logit.float(), torch.ones_like(logit, dtype=torch.float32)
        ) + 1e-3 * net.minibatch_l2(batch)
    loss.backward()
    assert logit.shape == (16,) and torch.isfinite(logit.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    empty = dataclasses.replace(
        batch,
        recent_mask=torch.zeros_like(batch.recent_mask),
        lifelong_mask=torch.zeros_like(batch.lifelong_mask),
    )
    with torch.autocast(device, dtype=torch.bfloat16), torch.no_grad():
        assert torch.isfinite(net.eval()(empty, train_position=False).float()).all()


def test_network_runs_under_bfloat16_autocast_on_cpu() -> None:
    _autocast_step("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_network_runs_on_cuda_under_bfloat16_autocast() -> None:
    _autocast_step("cuda")


def test_network_learns_a_sequence_dependent_target() -> None:
    """Label 1 iff the target's category appears among the real recent behaviours: only the
    attention over the sequence can tell (items, users and context carry no signal)."""
    n_categories, n_items, length = 8, 40, 4
    item_category = torch.arange(n_items) % n_categories
    item_row = 1 + torch.arange(n_items)  # rows 1..40 items, 41..48 categories
    category_row = 1 + n_items + torch.arange(n_categories)

    def sample(b: int) -> tuple[DINBatch, torch.Tensor]:
        items = torch.randint(0, n_items, (b, length))
        mask = torch.arange(length) < torch.randint(1, length + 1, (b, 1))
        # Half the targets from a seen category, half uniform (mostly unseen).
        pick = torch.randint(0, length, (b,)).clamp_max(mask.sum(1) - 1)
        from_seq = items[torch.arange(b), pick]
        target = torch.where(torch.rand(b) < 0.5, from_seq, torch.randint(0, n_items, (b,)))
        same = item_category[items] == item_category[target].unsqueeze(1)
        label = (same & mask).any(dim=1).float()
        batch = DINBatch(
            user=torch.zeros(b, dtype=torch.long),
            item=item_row[target],
            category=category_row[item_category[target]],
            context=torch.zeros(b, 0, dtype=torch.long),
            position=torch.zeros(b, dtype=torch.long),
            recent_item=item_row[items],
            recent_category=category_row[item_category[items]],
            recent_mask=mask,
            lifelong_item=torch.zeros(b, 1, dtype=torch.long),
            lifelong_category=torch.zeros(b, 1, dtype=torch.long),
            lifelong_gap=torch.zeros(b, 1, dtype=torch.long),
            lifelong_mask=torch.zeros(b, 1, dtype=torch.bool),
            dense=torch.zeros(b, 0),
        )
        return batch, label

    net = DINNetwork(
        n_rows=1 + n_items + n_categories,
        embedding_dim=8,
        attention_hidden=(16, 8),
        mlp_hidden=(32, 16),
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(300):
        batch, label = sample(128)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(batch, True), label)
        optimiser.zero_grad()
        (loss + 1e-4 * net.minibatch_l2(batch)).backward()
        optimiser.step()
    test_batch, test_label = sample(2000)
    with torch.no_grad():
        score = net.eval()(test_batch, False)
    assert 0.3 < test_label.mean().item() < 0.7
    assert auc(test_label.numpy(), score.numpy()) > 0.9
