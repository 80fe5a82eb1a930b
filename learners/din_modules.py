"""Neural network of the DIN learner: Deep Interest Network (Zhou et al., KDD 2018) with a
SIM-style lifelong branch (Pi et al., CIKM 2020) and a position-bias shallow tower
(Zhao et al., "Recommending What Video to Watch Next", RecSys 2019).

The online learner (``learners/din.py``) owns the ID → row mapping, the batching and the
optimiser; this module owns only tensors. Conventions shared with the learner:

* **One embedding matrix** (:attr:`DINNetwork.embedding`) holds every ID field: users,
  items, categories, context values. Row 0 is the shared *default row* of unknown or
  not-yet-admitted IDs; padding slots of the sequences may point anywhere (row 0 is the
  natural choice) since their masks remove them. When the learner reassigns a row to a new
  ID it calls :meth:`DINNetwork.reset_rows` (and should reset that row's optimiser state).
* A behaviour, and the target, embed as **item ⊕ category** (concatenation), so attention
  works on width ``2 * embedding_dim``.
* **Positions** are buckets (:func:`position_buckets`): 0 = missing / unknown, ``1..P`` =
  positions ``0..P-1``, larger positions clipped to ``P``.
* **Lifelong time gaps** are log-spaced buckets of the behaviour's age at the impression
  (:func:`time_gap_buckets`).
* The position tower is added **only in training** (``forward(batch, train_position=True)``
  on a module in ``train()`` mode); predictions (``train_position=False`` or ``eval()``)
  never include it, i.e. they are made as if the position were missing.
* Predictions should be made in ``eval()`` mode, so that :class:`Dice` uses its running
  statistics and one prediction does not depend on the rest of its batch.

Everything follows the devices of the inputs and parameters (no ``.cuda()``), and works
under ``torch.autocast(..., dtype=torch.bfloat16)``: statistics and penalties are computed
in float32 and masked fills use the dtype's own minimum.

>>> _ = torch.manual_seed(0)
>>> net = DINNetwork(n_rows=100, embedding_dim=4, n_context=2, n_dense=3)
>>> batch = DINBatch(
...     user=torch.tensor([1, 2]), item=torch.tensor([3, 4]), category=torch.tensor([5, 6]),
...     context=torch.tensor([[7, 8], [9, 0]]), position=torch.tensor([1, 0]),
...     recent_item=torch.tensor([[3, 0], [4, 4]]),
...     recent_category=torch.tensor([[5, 0], [6, 6]]),
...     recent_mask=torch.tensor([[True, False], [True, True]]),
...     lifelong_item=torch.tensor([[3], [0]]), lifelong_category=torch.tensor([[5], [0]]),
...     lifelong_gap=time_gap_buckets(torch.tensor([[60.0], [0.0]]), 16),
...     lifelong_mask=torch.tensor([[True], [False]]), dense=torch.zeros(2, 3),
... )
>>> net(batch, train_position=True).shape
torch.Size([2])
>>> net.minibatch_l2(batch).ndim
0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "EMBEDDING_INIT_STD",
    "DINBatch",
    "DINNetwork",
    "Dice",
    "LifelongInterest",
    "PositionBiasTower",
    "TargetAttention",
    "position_buckets",
    "time_gap_buckets",
]

Activation = Literal["dice", "prelu"]

# Standard deviation of the normal init of ID embeddings (construction and reset_rows), and of
# the time-gap embeddings: small, so a fresh ID starts close to "no information".
EMBEDDING_INIT_STD = 1e-2

# time_gap_buckets spreads its buckets evenly over log2(1 + age) in [0, 32): 2**32 s is about
# 136 years, so any real age falls inside, whatever the number of buckets.
_LOG2_AGE_RANGE = 32.0


def time_gap_buckets(age_s: Tensor, n_buckets: int) -> Tensor:
    """Log-spaced bucket of a behaviour's age (seconds before the impression), as int64.

    Bucket ``b`` holds ages with ``b <= log2(1 + age) * n_buckets / 32 < b + 1``, clipped to
    ``n_buckets - 1``; negative ages (clock skew) count as 0. With 16 buckets each bucket
    spans a factor of 4 in age: a few seconds up to ~2 years stay distinguishable, which is
    the range of a lifelong history. Same shape and device as ``age_s``.

    >>> time_gap_buckets(torch.tensor([0.0, 2.0, 3.0, 60.0, 86400.0, 1e12]), 16).tolist()
    [0, 0, 1, 2, 8, 15]
    """
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    log_age = torch.log2(1.0 + age_s.to(torch.float64).clamp_min(0.0))
    bucket = torch.floor(log_age * (n_buckets / _LOG2_AGE_RANGE))
    return bucket.clamp_max(n_buckets - 1).to(torch.int64)


def position_buckets(position: Tensor, n_buckets: int) -> Tensor:
    """Position bucket of :attr:`DINBatch.position`, as int64: 0 for a missing position
    (negative, e.g. -1), ``1 + min(position, n_buckets - 1)`` otherwise.

    >>> position_buckets(torch.tensor([-1, 0, 1, 31, 500]), 32).tolist()
    [0, 1, 2, 32, 32]
    """
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    position = position.to(torch.int64)
    return torch.where(position < 0, 0, position.clamp_max(n_buckets - 1) + 1)


@dataclass(frozen=True, slots=True)
class DINBatch:
    """One mini-batch of impressions as tensors (B impressions, L recent behaviours,
    K lifelong behaviours, C context fields, D dense features; C and D may be 0).

    All ``long`` tensors except ``position`` and ``lifelong_gap`` hold rows of the shared
    embedding matrix (row 0 = default row). Masks are True for a real behaviour, False for
    padding; padded slots may hold any valid row.

    Attributes:
        user: long (B,) — user row.
        item: long (B,) — target item row.
        category: long (B,) — target item's category row.
        context: long (B, C) — rows of the context field values.
        position: long (B,) — position bucket, see :func:`position_buckets`
            (0 = missing, ``1..P`` = positions ``0..P-1``, clipped to ``P``).
        recent_item: long (B, L) — item rows of the recent behaviours.
        recent_category: long (B, L) — their category rows.
        recent_mask: bool (B, L).
        lifelong_item: long (B, K) — item rows of the top-K lifelong behaviours (same
            category as the target, SIM's hard search).
        lifelong_category: long (B, K) — their category rows.
        lifelong_gap: long (B, K) — age bucket of each behaviour, see
            :func:`time_gap_buckets`.
        lifelong_mask: bool (B, K).
        dense: float (B, D) — dense numeric features, already scaled by the learner.
        recent_owner, recent_slot: long (N,) or None — the ``(row, slot)`` of each real
            recent behaviour, i.e. ``recent_mask.nonzero(as_tuple=True)``.
        l2_rows, l2_counts: long (R,) or None — the distinct embedding rows the batch reads
            (row 0 excluded) and their occurrences, for :meth:`DINNetwork.minibatch_l2`.

    The last four are an index of data-dependent size. Left None, the network computes it
    from the masks, which on a GPU reads sizes back to the host (a synchronisation per
    batch); :meth:`with_host_index` computes it where the batch is built, on the host, so
    the device never waits for it.
    """

    user: Tensor
    item: Tensor
    category: Tensor
    context: Tensor
    position: Tensor
    recent_item: Tensor
    recent_category: Tensor
    recent_mask: Tensor
    lifelong_item: Tensor
    lifelong_category: Tensor
    lifelong_gap: Tensor
    lifelong_mask: Tensor
    dense: Tensor
    recent_owner: Tensor | None = None
    recent_slot: Tensor | None = None
    l2_rows: Tensor | None = None
    l2_counts: Tensor | None = None

    def __post_init__(self) -> None:
        """Check shapes and dtypes (metadata only: no device work, no synchronisation)."""
        b = self.user.shape[0]
        for name in ("user", "item", "category", "position"):
            _check(self, name, (b,), torch.int64)
        _check(self, "context", (b, self.context.shape[-1]), torch.int64)
        for prefix in ("recent", "lifelong"):
            shape = (b, getattr(self, f"{prefix}_mask").shape[-1])
            _check(self, f"{prefix}_mask", shape, torch.bool)
            for name in ("item", "category") + (("gap",) if prefix == "lifelong" else ()):
                _check(self, f"{prefix}_{name}", shape, torch.int64)
        _check(self, "dense", (b, self.dense.shape[-1]), None)
        if not self.dense.is_floating_point():
            raise ValueError(f"DINBatch.dense must be floating point, got {self.dense.dtype}")
        for pair in (("recent_owner", "recent_slot"), ("l2_rows", "l2_counts")):
            given = [getattr(self, name) is not None for name in pair]
            if any(given) and not all(given):
                raise ValueError(f"DINBatch.{pair[0]} and {pair[1]} go together")
            if all(given):
                n = getattr(self, pair[0]).shape[0]
                for name in pair:
                    _check(self, name, (n,), torch.int64)

    def with_host_index(self, lifelong: bool = True) -> DINBatch:
        """The same batch with its index computed here (call it on host tensors, before
        the copy to the device); ``lifelong``: whether the network reads the lifelong
        behaviours (its ``use_lifelong``), so that their rows are regularised too."""
        owner, slot = self.recent_mask.nonzero(as_tuple=True)
        rows, counts = _distinct_rows(self, lifelong)
        return replace(self, recent_owner=owner, recent_slot=slot, l2_rows=rows,
                       l2_counts=counts)

    def samples(self, start: int, stop: int) -> DINBatch:
        """Impressions ``start:stop`` of the batch, without the index (it numbers the whole
        batch's behaviours; :meth:`with_host_index` makes the part's own)."""
        return DINBatch(**{field.name: getattr(self, field.name)[start:stop]
                           for field in fields(self) if field.default is MISSING})

    def to(self, device: torch.device | str, non_blocking: bool = True) -> DINBatch:
        """The same batch on ``device`` (asynchronous from pinned memory by default)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> DINBatch:
        """The same batch in page-locked host memory (needs CUDA), for fast ``to(cuda)``."""
        return self._map(Tensor.pin_memory)

    def _map(self, f: Callable[[Tensor], Tensor]) -> DINBatch:
        return DINBatch(**{field.name: None if (t := getattr(self, field.name)) is None
                           else f(t) for field in fields(self)})


def _distinct_rows(batch: DINBatch, lifelong: bool) -> tuple[Tensor, Tensor]:
    """Distinct embedding rows a forward pass reads (real behaviours only, the lifelong ones
    if ``lifelong``, row 0 excluded) and their occurrences: long (R,), long (R,)."""
    ids = [
        batch.user,
        batch.item,
        batch.category,
        batch.context.reshape(-1),
        batch.recent_item[batch.recent_mask],
        batch.recent_category[batch.recent_mask],
    ]
    if lifelong:
        ids += [
            batch.lifelong_item[batch.lifelong_mask],
            batch.lifelong_category[batch.lifelong_mask],
        ]
    all_ids = torch.cat(ids)
    return torch.unique(all_ids[all_ids != 0], return_counts=True)


def _check(batch: DINBatch, name: str, shape: tuple[int, ...], dtype: torch.dtype | None) -> None:
    """Raise ``ValueError`` unless ``batch.<name>`` has this shape (and dtype, if given)."""
    value = getattr(batch, name)
    if tuple(value.shape) != shape or (dtype is not None and value.dtype != dtype):
        want = f"{dtype} {shape}" if dtype is not None else f"{shape}"
        raise ValueError(
            f"DINBatch.{name}: expected {want}, got {value.dtype} {tuple(value.shape)}"
        )


class Dice(nn.Module):
    """Dice activation of DIN: ``f(s) = p(s) * s + (1 - p(s)) * alpha * s`` with
    ``p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))``.

    A PReLU whose rectification point follows the data: ``E`` and ``Var`` are per-feature
    batch statistics in training (batch norm without affine, biased variance) and running
    statistics in eval (momentum update with the unbiased variance, as ``nn.BatchNorm1d``).
    ``alpha`` is learned per feature, initialised to 0.

    Unlike ``nn.BatchNorm1d`` it takes an optional ``mask`` so that padded behaviours do not
    enter the statistics (padding then changes nothing, even in training), and it accepts a
    single row in training (variance 0, so ``p = 1/2``; the running statistics are only
    updated from batches of at least two real rows). Statistics are computed in float32.

    Args:
        num_features: F, the size of the last axis.
        dim: rank of the input: 2 for (N, F), 3 for (B, L, F); statistics are taken over
            every axis but the last.
        eps: added to the variance (the paper's 1e-8).
        momentum: weight of a new batch in the running statistics.

    Shapes: x (N, F) or (B, L, F); mask bool ``x.shape[:-1]`` or None → same as x.
    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(
        self, num_features: int, dim: int = 2, eps: float = 1e-8, momentum: float = 0.1
    ) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"Dice dim must be 2 or 3, got {dim}")
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        self.alpha = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.dim() != self.dim:
            raise ValueError(f"Dice(dim={self.dim}) got an input of shape {tuple(x.shape)}")
        xf = x.float()
        if self.training:
            flat = xf.reshape(-1, xf.shape[-1])
            if mask is None:
                weight = flat.new_ones(flat.shape[0], 1)
            else:
                weight = mask.reshape(-1, 1).to(flat.dtype)
            n = weight.sum()
            mean = (flat * weight).sum(0) / n.clamp_min(1.0)
            var = ((flat - mean).square() * weight).sum(0) / n.clamp_min(1.0)
            with torch.no_grad():
                rate = self.momentum * (n > 1).to(flat.dtype)
                self.running_mean.lerp_(mean, rate)
                self.running_var.lerp_(var * n / (n - 1.0).clamp_min(1.0), rate)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((xf - mean) * torch.rsqrt(var + self.eps))
        alpha = self.alpha.float()
        return (xf * (p + (1.0 - p) * alpha)).to(x.dtype)


class MLP(nn.Module):
    """Fully connected tower: ``Linear → activation`` per hidden size, then a final
    ``Linear`` to ``out_features`` without activation.

    Leading axes are flattened, so PReLU's per-channel weights apply to the last axis and
    Dice's statistics cover all rows (restricted to ``mask`` when given).

    Shapes: x (..., in_features); mask bool (...) or None → (..., out_features).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: Activation = "dice",
    ) -> None:
        super().__init__()
        if activation not in ("dice", "prelu"):
            raise ValueError(f"activation must be 'dice' or 'prelu', got {activation!r}")
        self.linears = nn.ModuleList()
        self.activations = nn.ModuleList()
        width = in_features
        for size in hidden:
            self.linears.append(nn.Linear(width, size))
            self.activations.append(Dice(size) if activation == "dice" else nn.PReLU(size))
            width = size
        self.head = nn.Linear(width, out_features)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        lead = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1])
        flat_mask = None if mask is None else mask.reshape(-1)
        for linear, act in zip(self.linears, self.activations, strict=True):
            h = linear(h)
            h = act(h, flat_mask) if isinstance(act, Dice) else act(h)
        return self.head(h).reshape(*lead, self.head.out_features)


class TargetAttention(nn.Module):
    """DIN's local activation unit: the user's interest in the target, as a weighted sum of
    the behaviours' embeddings.

    For each behaviour ``e_b`` and the target ``e_t`` an MLP on
    ``[e_b, e_t, e_b - e_t, e_b * e_t]`` gives a scalar weight ``w_b``; the output is
    ``sum_b w_b * e_b`` over real behaviours. The weights are **not** normalised (no softmax,
    as in the paper), so the output's scale keeps the strength of the interest: two matching
    behaviours count twice one. Padding contributes exactly nothing (its keys are zeroed
    before the MLP and left out of Dice's statistics and of the sum); an all-padding row,
    or L = 0, gives the zero vector.

    Args:
        embedding_dim: E, width of query and keys.
        hidden: hidden sizes of the weight MLP (paper: 80, 40).
        activation: "dice" or "prelu".

    Shapes: query (B, E), keys (B, L, E), mask bool (B, L) → (B, E).
    """

    def __init__(
        self,
        embedding_dim: int,
        hidden: Sequence[int] = (80, 40),
        activation: Activation = "dice",
    ) -> None:
        super().__init__()
        self.weight_mlp = MLP(4 * embedding_dim, hidden, 1, activation)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        # Only real behaviours go through the MLP (gathered, then summed back per row):
        # padding costs nothing and cannot leak into Dice's statistics. (``nonzero``
        # reads the mask's count back from the device: one small sync per call.)
        owner, slot = mask.nonzero(as_tuple=True)  # (N,), (N,)
        return self.pool(query, keys[owner, slot], owner)

    def pool(self, query: Tensor, keys: Tensor, owner: Tensor) -> Tensor:
        """The same on behaviours already packed: keys (N, E) of real behaviours only,
        owner long (N,) the row of each → (B, E). Lets the caller embed only real
        behaviours (no padded lookups, no scatter in the backward pass)."""
        q = query[owner]  # (N, E)
        weight = self.weight_mlp(torch.cat([keys, q, keys - q, keys * q], dim=-1))  # (N, 1)
        out = torch.zeros(query.shape[0], keys.shape[-1], dtype=torch.promote_types(
            weight.dtype, keys.dtype), device=keys.device)
        return out.index_add_(0, owner, weight * keys)


class LifelongInterest(nn.Module):
    """SIM's exact search unit: multi-head target attention over the top-K lifelong
    behaviours (those of the target's category) with their time gaps.

    Each behaviour ``z_k = e_k + g(gap_k)`` adds a learned embedding of its age bucket (the
    paper concatenates; adding keeps the width E and lets the gap shift both the key and the
    value). Per head ``h`` (width ``E / heads``): ``a_hk = softmax_k(q_h · k_hk / sqrt(d))``
    over real behaviours only, ``head_h = sum_k a_hk v_hk``; heads are concatenated and
    projected back to E. Unlike :class:`TargetAttention` the weights sum to 1 (the top-K
    search already selects the relevant behaviours; the softmax ranks them). Projections
    have no bias, so an all-padding row (or K = 0) yields exactly zeros, never NaN.

    Args:
        embedding_dim: E, width of query and keys; divisible by ``heads``.
        n_gap_buckets: number of time-gap buckets (see :func:`time_gap_buckets`).
        heads: number of attention heads.

    Shapes: query (B, E), keys (B, K, E), gap long (B, K), mask bool (B, K) → (B, E).
    """

    def __init__(self, embedding_dim: int, n_gap_buckets: int = 16, heads: int = 2) -> None:
        super().__init__()
        if heads < 1 or embedding_dim % heads:
            raise ValueError(f"embedding_dim {embedding_dim} is not divisible by heads {heads}")
        self.heads = heads
        self.gap_embedding = nn.Embedding(n_gap_buckets, embedding_dim)
        nn.init.normal_(self.gap_embedding.weight, std=EMBEDDING_INIT_STD)
        self.query = nn.Linear(embedding_dim, embedding_dim, bias=False)
        self.key = nn.Linear(embedding_dim, embedding_dim, bias=False)
        self.value = nn.Linear(embedding_dim, embedding_dim, bias=False)
        self.output = nn.Linear(embedding_dim, embedding_dim, bias=False)

    def forward(self, query: Tensor, keys: Tensor, gap: Tensor, mask: Tensor) -> Tensor:
        b, k, e = keys.shape
        h, d = self.heads, e // self.heads
        z = (keys + self.gap_embedding(gap)).masked_fill(~mask.unsqueeze(-1), 0)
        q = self.query(query).view(b, h, 1, d)  # (B, H, 1, d)
        key = self.key(z).view(b, k, h, d).transpose(1, 2)  # (B, H, K, d)
        value = self.value(z).view(b, k, h, d).transpose(1, 2)  # (B, H, K, d)
        scores = (q @ key.transpose(-1, -2)) / math.sqrt(d)  # (B, H, 1, K)
        real = mask.view(b, 1, 1, k)
        scores = scores.masked_fill(~real, torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores, dim=-1).masked_fill(~real, 0)
        heads = (attn.to(value.dtype) @ value).reshape(b, e)  # (B, H·d)
        return self.output(heads)


class PositionBiasTower(nn.Module):
    """Shallow tower of position bias: a learned logit offset per position bucket.

    Added to the main logit in training only, so the main tower learns the click propensity
    free of the position the item happened to be shown at; predictions leave it out. Bucket 0
    (missing) is the reference level, fixed at exactly 0 (``padding_idx``), so "no tower" and
    "position missing" are the same prediction. Zhao et al.'s position dropout (some training
    positions replaced by the missing bucket) is the caller's: the learner draws it from its
    own seeded, restorable counter, so a restored learner drops what the original would
    have. All offsets start at 0.

    Args:
        n_buckets: P, number of real position buckets (positions 0..P-1, see
            :func:`position_buckets`).

    Shapes: position long (B,) with values in ``0..P`` → (B,) logit offsets.
    """

    def __init__(self, n_buckets: int = 32) -> None:
        super().__init__()
        self.bias = nn.Embedding(n_buckets + 1, 1, padding_idx=0)
        nn.init.zeros_(self.bias.weight)

    def forward(self, position: Tensor) -> Tensor:
        return self.bias(position).squeeze(-1)


class DINNetwork(nn.Module):
    """Deep Interest Network with a SIM lifelong branch and a position-bias tower.

    One ``nn.Embedding(n_rows, E)`` serves every ID field. With ``T = 2E`` the width of an
    item ⊕ category embedding, the output MLP reads

    ``[user (E), target item ⊕ category (T), context (C·E), recent interest (T),
    lifelong interest (T, only if use_lifelong), dense (D)]``

    where the recent interest is :class:`TargetAttention` over the recent behaviours and the
    lifelong interest :class:`LifelongInterest` over the top-K lifelong ones, both queried by
    the target. The MLP (Dice or PReLU) ends in one logit.

    Args:
        n_rows: rows of the shared embedding matrix (row 0 = default row).
        embedding_dim: E.
        n_context: C, number of context fields.
        n_dense: D, number of dense features.
        attention_hidden: hidden sizes of the recent attention's weight MLP.
        mlp_hidden: hidden sizes of the output MLP (paper: 200, 80).
        lifelong_heads: heads of the lifelong attention (must divide 2E).
        n_gap_buckets: number of lifelong time-gap buckets.
        n_position_buckets: P, number of real position buckets.
        activation: "dice" or "prelu", for the output MLP.
        attention_activation: "dice" or "prelu", for the recent attention's weight MLP
            (None: as ``activation``). It runs once per behaviour, so Dice's statistics and
            elementwise chain cost ~5x PReLU's there; the paper allows either.
        use_lifelong: False skips the lifelong branch entirely (no parameters, its batch
            fields unread), for ablations.
    """

    def __init__(
        self,
        n_rows: int,
        embedding_dim: int = 16,
        n_context: int = 0,
        n_dense: int = 0,
        attention_hidden: Sequence[int] = (80, 40),
        mlp_hidden: Sequence[int] = (200, 80),
        lifelong_heads: int = 2,
        n_gap_buckets: int = 16,
        n_position_buckets: int = 32,
        activation: Activation = "dice",
        use_lifelong: bool = True,
        attention_activation: Activation | None = None,
    ) -> None:
        super().__init__()
        if n_rows < 1:
            raise ValueError(f"n_rows must be >= 1, got {n_rows}")
        self.n_context = n_context
        self.n_dense = n_dense
        self.use_lifelong = use_lifelong
        self.embedding = nn.Embedding(n_rows, embedding_dim)
        self.reset_rows(torch.arange(n_rows))
        width = 2 * embedding_dim
        self.recent_attention = TargetAttention(width, attention_hidden,
                                                attention_activation or activation)
        self.lifelong = (
            LifelongInterest(width, n_gap_buckets, lifelong_heads) if use_lifelong else None
        )
        n_interests = 3 if use_lifelong else 2
        mlp_in = embedding_dim + n_interests * width + n_context * embedding_dim + n_dense
        self.output_mlp = MLP(mlp_in, mlp_hidden, 1, activation)
        self.position_tower = PositionBiasTower(n_position_buckets)

    def reset_rows(self, rows: Tensor, generator: torch.Generator | None = None) -> None:
        """Re-initialise embedding ``rows`` (long, any shape) to fresh draws of the
        construction init, normal(0, :data:`EMBEDDING_INIT_STD`); other rows are untouched.

        For rows the learner reassigns to new IDs; their optimiser state is the learner's
        to reset. Draws come from ``generator`` (a CPU generator: a seeded learner's
        draws are the same on every device), else from torch's global one.
        """
        weight = self.embedding.weight
        rows = rows.reshape(-1)
        with torch.no_grad():
            fresh = torch.randn(rows.shape[0], weight.shape[1], generator=generator)
            weight[rows.to(weight.device)] = (fresh * EMBEDDING_INIT_STD).to(
                weight.device, weight.dtype)

    def _item_category(self, item: Tensor, category: Tensor) -> Tensor:
        """Item ⊕ category embeddings: long (...), long (...) → (..., 2E)."""
        return torch.cat([self.embedding(item), self.embedding(category)], dim=-1)

    def forward(self, batch: DINBatch, train_position: bool) -> Tensor:
        """Click logits, float (B,).

        The position tower is added only when ``train_position`` is True **and** the module
        is in training mode: the learner trains with ``train_position=True`` and predicts
        with ``train_position=False`` (or in ``eval()``), which is exactly the logit of a
        missing position.
        """
        if batch.context.shape[1] != self.n_context or batch.dense.shape[1] != self.n_dense:
            raise ValueError(
                f"batch has {batch.context.shape[1]} context fields and "
                f"{batch.dense.shape[1]} dense features; the network was built for "
                f"{self.n_context} and {self.n_dense}"
            )
        target = self._item_category(batch.item, batch.category)  # (B, 2E)
        # Only real recent behaviours are embedded: (N, 2E) with their rows' numbers.
        if batch.recent_owner is None:
            owner, slot = batch.recent_mask.nonzero(as_tuple=True)
        else:
            owner, slot = batch.recent_owner, batch.recent_slot
        recent = self._item_category(batch.recent_item[owner, slot],
                                     batch.recent_category[owner, slot])
        parts = [
            self.embedding(batch.user),  # (B, E)
            target,
            self.embedding(batch.context).flatten(1),  # (B, C·E)
            self.recent_attention.pool(target, recent, owner),  # (B, 2E)
        ]
        if self.lifelong is not None:
            lifelong = self._item_category(batch.lifelong_item, batch.lifelong_category)
            parts.append(self.lifelong(target, lifelong, batch.lifelong_gap, batch.lifelong_mask))
        parts.append(batch.dense.to(target.dtype))
        logit = self.output_mlp(torch.cat(parts, dim=-1)).squeeze(-1)
        if train_position and self.training:
            logit = logit + self.position_tower(batch.position)
        return logit

    def minibatch_l2(self, batch: DINBatch, counts: Tensor | None = None) -> Tensor:
        """DIN's mini-batch aware regulariser, a float32 scalar: ``sum_j ||w_j||² / n_j``
        over the distinct embedding rows ``j`` the forward pass reads for this batch.

        Only rows present in the batch are penalised (the others get no gradient, so sparse
        IDs are not shrunk on every step). ``n_j`` is ``counts[j]`` when ``counts`` — float
        or long (n_rows,), best on the embedding's device, e.g. the learner's running
        occurrence counts, the paper's frequency over all samples — is given, else the
        number of occurrences of row ``j`` in this batch (all fields, real behaviours
        only); it is clamped to at least 1.
        Padded behaviours are not present; the lifelong rows count only with the branch on.

        Row 0 (the shared default row) is **excluded**: it is trained by every unknown ID,
        so it cannot overfit one of them, and its penalty would otherwise depend on how
        many IDs are not yet admitted. The learner multiplies the result by its lambda.
        The rows come from the batch's index (:meth:`DINBatch.with_host_index`) when it has
        one; else they are computed here (on a GPU, boolean indexing and ``torch.unique``
        synchronise with the host).
        """
        if batch.l2_rows is None:
            rows, in_batch = _distinct_rows(batch, self.lifelong is not None)
        else:
            rows, in_batch = batch.l2_rows, batch.l2_counts
        device = self.embedding.weight.device
        rows, in_batch = rows.to(device), in_batch.to(device)
        n = in_batch if counts is None else counts.to(rows.device)[rows]
        # Through the embedding (not weight[rows]), so a sparse embedding gets a sparse
        # gradient from the penalty too.
        norms = self.embedding(rows).float().square().sum(dim=1)
        return (norms / n.float().clamp_min(1.0)).sum()
