"""DIN learner: a Deep Interest Network (Zhou et al., KDD 2018) with a SIM-style lifelong
branch (Pi et al., CIKM 2020), trained online from the joined sample stream in mini-batches,
as the deep part of a Wide & Deep model (Cheng et al., 2016).

How it runs
-----------
* **Inputs.** The same feature dict as every learner (:func:`features.featurize.
  impression_features`), read by field: ``user=…``, ``item=…``, ``category=…``,
  ``position=…``, the context fields ``ctx.<name>=…`` and the dense ``num.*`` counting
  features, plus the impression's behaviour sequences (``x.behaviours``, a
  :class:`features.featurize.Behaviours`: the user's recent clicks and the top-K same
  category clicks of the lifelong store, with ages). The engine builds those when a learner
  says ``uses_behaviours``. A dict without them is an impression with no history. The
  network ignores crosses and other one-hot names (it learns interactions itself). The
  context fields and dense names are fixed at the first learned sample (sorted); one
  missing later reads as the default row / 0.
* **Wide part** (``wide=True``, the default). An FTRL-Proximal logistic regression over the
  whole dict (:class:`learners.ftrl.FTRLProximal`, the ``ftrl`` learner's defaults: ids,
  crosses, counting features), learned sample by sample the moment a sample arrives, as
  the ``ftrl`` learner is; the network's logit is added to its logit, and a step trains the
  network on the log loss of that sum, the wide logit of each sample being what the wide
  part said just before learning it. So the network learns what the linear model on the
  same features misses — the sequences, non-linear interactions — and starts as exactly
  nothing (its output layer at zero). Cheng et al. also train the wide part with FTRL; it
  learning per sample rather than per step is ours: one pass gives a network few steps
  (one per ``batch_size`` samples) but FTRL one update per sample, which is what keeps a
  stream's freshest memorised ids and crosses. ``wide=False`` is the paper's DIN alone.
* **IDs that live with a stream.** Every ID is the 64-bit hash of its feature name (a
  behaviour ``item=it3`` and the target ``item=it3`` share one row) mapped by an
  :class:`learners.idtable.IDTable` to a row of one embedding matrix: own rows after
  ``admit_after`` sightings in training, freed after ``ttl_ms`` unseen (event time), row 0
  for the rest. A row handed to a new ID is re-initialised, its optimiser state cleared.
  An ID trains with the row it had before the step, so the default row learns from first
  sightings — what it is asked about at prediction (see :meth:`DIN._train_buffer`).
* **Updates.** ``learn_one`` appends the sample to a buffer; every ``batch_size`` samples
  the buffer becomes one optimiser step (embeddings: sparse Adam or Adagrad over the rows
  in the batch; the rest: Adam), on the weighted log loss (FNW weights come in as sample
  weights) plus DIN's mini-batch aware L2 on the embedding rows of the batch. So the model
  changes once per ``batch_size`` samples, and ``learn_many`` is exactly a loop of
  ``learn_one`` (one buffer).
* **Prediction.** In eval mode, without the position tower (position treated as missing,
  Zhao et al.'s shallow tower is a training-time debiaser; 10% of training positions are
  dropped to missing so the network knows that case), and the wide part without its
  position names (``position=…`` and crosses with it), which the same 10% of samples learn
  without. ``serve_position=True`` scores with the impression's position in both parts
  instead — for uses where the position is fixed before the score is asked for, and for
  comparisons with learners that read it (``ftrl``, ``gbdt_lr``).
  :class:`learners.base.QueuedScoring` lets the engine queue impressions and have them
  scored in one forward pass before the next step changes the model: the same model as
  one ``predict_proba_one`` each (equal up to the rounding of batched matrix products,
  ~1e-7), at a fraction of the cost. Before the first learned sample, predictions are
  0.5; until the first step, the wide part's.
* **Device.** ``device="auto"``: CUDA when present (bfloat16 autocast, batches staged in
  pinned memory and copied asynchronously), else CPU; the same code path. The index of
  data-dependent size (packed behaviours, distinct rows) is built on the host with the
  batch (:meth:`DINBatch.with_host_index`), so our code reads nothing back from the
  device in a step; torch's sparse optimisers coalesce the embedding gradient, which does.
* **State.** :meth:`state_dict` holds numpy arrays and plain scalars / strings only: the
  network's parameters and buffers, both optimisers' moments, the ID table, the buffered
  samples and the generator state. Restoring gives identical next predictions and an
  identical continuation.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import numbers
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from features.compiled import splitmix_uniform
from features.hashing import hash_names
from features.joiner import fnw_weight
from learners.base import (
    LearnerError,
    check_float,
    check_int,
    check_state,
    good_weight,
    learn_each,
)
from learners.din_modules import DINBatch, DINNetwork, position_buckets, time_gap_buckets
from learners.din_parallel import StepGroup, read_rows, shard_loss
from learners.ftrl import FTRLProximal
from learners.idtable import IDTable

__all__ = ["DIN"]

_FORMAT = "streamctr.learners.din"
_VERSION = 2  # 2: the wide part, and the wide logit of buffered samples
_DENSE_PREFIX = "num."
_CTX_PREFIX = "ctx."
_TARGET = ("user", "item", "category")
_INT_HYPER = ("embedding_dim", "capacity", "admit_after", "batch_size", "recent_length",
              "lifelong_top_k", "lifelong_heads", "n_gap_buckets", "n_position_buckets", "seed")
_FLOAT_HYPER = ("lr", "embedding_lr", "l2", "position_dropout")
_STR_HYPER = ("optimizer", "activation", "attention_activation")
_BOOL_HYPER = ("use_lifelong", "wide", "serve_position")
# FTRL's sigmoid returns exactly 0 / 1 beyond a logit of -30 / 30: sigmoid(-30).
_SATURATED = 1.0 / (1.0 + math.exp(30.0))


def _without_position(x: Mapping[str, float]) -> dict[str, float]:
    """``x`` without the names of the position field and of crosses with it."""
    return {k: v for k, v in x.items() if "position" not in k.partition("=")[0].split("×")}


def _logit(p: float) -> float:
    """Log-odds of the wide part's probability (its sigmoid saturates at |logit| 30)."""
    p = min(max(p, _SATURATED), 1.0 - _SATURATED)
    return math.log(p / (1.0 - p))


class _Samples:
    """Encoded impressions in host arrays (the mini-batch being filled, or a queue).

    Per sample: ``ids`` int64 (3 + C + 2L + 2K) name hashes — user, item, category, the
    context fields, recent items, recent categories, lifelong items, lifelong categories —
    with ``present`` bool of the same shape (False: missing field or padding: row 0, no
    lookup); ``recent_n``, ``lifelong_n`` sequence lengths; ``lifelong_age_s`` float32 (K);
    ``position`` int64 (-1 missing); ``dense`` float32 (D); ``ts_ms``; ``y``; ``w``; ``fnw``
    (the weight is the fake-negative weight of the model's prediction at the step);
    ``wide`` float64, the wide part's logit when the sample was learned or queued (0
    without a wide part).
    """

    FIELDS = ("ids", "present", "recent_n", "lifelong_n", "lifelong_age_s", "position", "dense",
              "ts_ms", "y", "w", "fnw", "wide")

    def __init__(self, size: int, width: int, k: int, d: int) -> None:
        self.ids = np.zeros((size, width), np.int64)
        self.present = np.zeros((size, width), bool)
        self.recent_n = np.zeros(size, np.int64)
        self.lifelong_n = np.zeros(size, np.int64)
        self.lifelong_age_s = np.zeros((size, k), np.float32)
        self.position = np.zeros(size, np.int64)
        self.dense = np.zeros((size, d), np.float32)
        self.ts_ms = np.zeros(size, np.int64)
        self.y = np.zeros(size, np.float32)
        self.w = np.zeros(size, np.float32)
        self.fnw = np.zeros(size, bool)  # weight from the model's own prediction (FNW)
        self.wide = np.zeros(size)  # the wide part's logit when the sample was encoded
        self.n = 0

    def state(self) -> dict[str, Any]:
        return {name: getattr(self, name)[: self.n].copy() for name in self.FIELDS}

    def load(self, d: Mapping[str, Any]) -> None:
        n = int(np.asarray(d["y"]).shape[0])
        if n > self.y.shape[0]:
            raise LearnerError(f"state dict holds {n} buffered samples, more than a batch")
        for name in self.FIELDS:
            target = getattr(self, name)
            value = np.asarray(d[name])
            if value.shape[1:] != target.shape[1:] or value.shape[0] != n:
                raise LearnerError(f"state dict buffer {name} has shape {value.shape}")
            target[:n] = value
        self.n = n


class DIN:
    """Deep Interest Network with a lifelong branch, trained online in mini-batches.

    Parameters
    ----------
    embedding_dim
        Width of every ID embedding (behaviours and the target: item ⊕ category, twice it).
    capacity, admit_after, ttl_ms
        The ID table: own rows (besides the shared default row 0), sightings before an ID
        gets one, and event-time milliseconds unseen before it is freed (None: never).
    batch_size
        Samples per optimiser step.
    optimizer, lr, embedding_lr
        ``"adam"`` (sparse Adam for the embedding rows) or ``"adagrad"`` for the embeddings,
        Adam for the rest; learning rates (``embedding_lr`` None: ``lr``). One pass over a
        stream leaves few steps (one per batch), so the defaults are larger than the
        epoch-trained DIN's 1e-3: on 100K synthetic events (90 steps of 1024) AUC 0.507 at
        1e-3, 0.59 at 1e-2, 0.614 at 3e-3 with embeddings at 0.03.
    l2
        Weight of the mini-batch aware L2 on the embedding rows of each batch.
    recent_length, lifelong_top_k
        Behaviours read (at most; the joiner may provide fewer).
    attention_hidden, mlp_hidden, lifelong_heads, n_gap_buckets, n_position_buckets,
    position_dropout, activation, use_lifelong, attention_activation
        Of :class:`learners.din_modules.DINNetwork`; ``use_lifelong=False`` drops the SIM
        branch (an ablation). The output MLP uses Dice, the per-behaviour attention MLP
        PReLU by default: Dice there made a step on 50-long sequences ~3x slower (it runs
        on every behaviour of the batch) for AUC 0.6145 against 0.6138 on 100K synthetic
        events.
    wide
        Add the wide part (see the module doc); False: the network alone.
    serve_position
        Score with the impression's position (tower and the wide part's position names);
        False: as if it were missing (the position-debiased score).
    device
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` …
    cpu_threads
        torch's intra-op threads while this learner computes on CPU (restored after each
        call); None leaves torch's setting. On the 2-vCPU machines we measure on, one
        thread ran the network 5-15× faster than two (OpenMP barriers on shared vCPUs);
        raise it on hosts with real cores to spare.
    data_parallel
        Processes each optimiser step is split over (torch.distributed,
        :mod:`learners.din_parallel`): on CUDA one GPU each, from the learner's device
        on (``cuda:0``, ``cuda:1`` … with NCCL), on CPU as many CPU processes (Gloo). The
        state stays in this process; 1 (the default) computes the step here. Not a
        hyper-parameter of the model: a state restores into any number of processes, and
        steps are the same up to float32 rounding, except that Dice's training statistics
        are then each process's share of the batch. Call :meth:`close` to stop the workers
        (they are stopped when the learner is collected, at the latest).
    seed
        Network initialisation, re-initialised rows and position dropout.

    >>> model = DIN(embedding_dim=4, capacity=64, batch_size=2, mlp_hidden=(8,),
    ...             attention_hidden=(8,))
    >>> x = {"user=u1": 1.0, "item=i1": 1.0, "category=c1": 1.0, "position=0": 1.0}
    >>> model.predict_proba_one(x)  # nothing learned yet
    0.5
    >>> model.learn_one(x, 1); model.learn_one(x, 1)  # a full batch: one step
    >>> model.stats()["steps"], 0.0 < model.predict_proba_one(x) < 1.0
    (1, True)
    """

    uses_behaviours = True  # the engine attaches the behaviour sequences to x

    def __init__(
        self,
        embedding_dim: int = 16,
        capacity: int = 1 << 18,
        admit_after: int = 2,
        ttl_ms: int | None = 30 * 24 * 3600 * 1000,
        batch_size: int = 1024,
        optimizer: str = "adam",
        lr: float = 3e-3,
        embedding_lr: float | None = 0.03,
        l2: float = 1e-6,
        recent_length: int = 50,
        lifelong_top_k: int = 32,
        attention_hidden: Sequence[int] = (80, 40),
        mlp_hidden: Sequence[int] = (200, 80),
        lifelong_heads: int = 2,
        n_gap_buckets: int = 16,
        n_position_buckets: int = 32,
        position_dropout: float = 0.1,
        activation: str = "dice",
        use_lifelong: bool = True,
        attention_activation: str = "prelu",
        wide: bool = True,
        serve_position: bool = False,
        device: str = "auto",
        cpu_threads: int | None = 1,
        data_parallel: int = 1,
        seed: int = 0,
    ) -> None:
        self.embedding_dim = check_int("embedding_dim", embedding_dim, 1)
        self.capacity = check_int("capacity", capacity, 1)
        self.admit_after = check_int("admit_after", admit_after, 1)
        self.ttl_ms = None if ttl_ms is None else check_int("ttl_ms", ttl_ms, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        if optimizer not in ("adam", "adagrad"):
            raise LearnerError(f"optimizer must be 'adam' or 'adagrad', got {optimizer!r}")
        self.optimizer = optimizer
        self.lr = check_float("lr", lr, 0.0, strict=True)
        self.embedding_lr = self.lr if embedding_lr is None else check_float(
            "embedding_lr", embedding_lr, 0.0, strict=True)
        self.l2 = check_float("l2", l2, 0.0, strict=False)
        self.recent_length = check_int("recent_length", recent_length, 1)
        self.lifelong_top_k = check_int("lifelong_top_k", lifelong_top_k, 1)
        self.attention_hidden = self._layers("attention_hidden", attention_hidden)
        self.mlp_hidden = self._layers("mlp_hidden", mlp_hidden)
        self.lifelong_heads = check_int("lifelong_heads", lifelong_heads, 1)
        if (2 * self.embedding_dim) % self.lifelong_heads:
            raise LearnerError(f"lifelong_heads ({lifelong_heads}) must divide "
                               f"2 * embedding_dim ({2 * self.embedding_dim})")
        self.n_gap_buckets = check_int("n_gap_buckets", n_gap_buckets, 1)
        self.n_position_buckets = check_int("n_position_buckets", n_position_buckets, 1)
        self.position_dropout = check_float("position_dropout", position_dropout, 0.0,
                                            strict=False)
        if self.position_dropout >= 1.0:
            raise LearnerError(f"position_dropout must be < 1, got {position_dropout!r}")
        if activation not in ("dice", "prelu"):
            raise LearnerError(f"activation must be 'dice' or 'prelu', got {activation!r}")
        self.activation = activation
        if attention_activation not in ("dice", "prelu"):
            raise LearnerError(f"attention_activation must be 'dice' or 'prelu', got "
                               f"{attention_activation!r}")
        self.attention_activation = attention_activation
        if not isinstance(use_lifelong, bool):
            raise LearnerError(f"use_lifelong must be a bool, got {use_lifelong!r}")
        self.use_lifelong = use_lifelong
        for name, flag in (("wide", wide), ("serve_position", serve_position)):
            if not isinstance(flag, bool):
                raise LearnerError(f"{name} must be a bool, got {flag!r}")
        self.wide, self.serve_position = wide, serve_position
        if not isinstance(device, str):
            raise LearnerError(f"device must be a str, got {device!r}")
        try:
            self._device = torch.device(
                ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        except RuntimeError as e:
            raise LearnerError(f"device {device!r}: {e}") from None
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise LearnerError(f"device {device!r}: CUDA is not available")
        self.device = device
        self.cpu_threads = None if cpu_threads is None else check_int("cpu_threads",
                                                                      cpu_threads, 1)
        self.data_parallel = check_int("data_parallel", data_parallel, 1)
        if self.data_parallel > self.batch_size:
            raise LearnerError(f"data_parallel ({data_parallel}) must not exceed batch_size "
                               f"({batch_size}): every process takes a part of each batch")
        if self._device.type == "cuda" and self.data_parallel > torch.cuda.device_count():
            raise LearnerError(f"data_parallel={data_parallel} on CUDA needs as many GPUs; "
                               f"{torch.cuda.device_count()} visible")
        self.seed = check_int("seed", seed, 0)
        # The gradient workers of data-parallel steps: not learned state (started at the
        # first step, kept across load_state_dict, restarted if the network changes shape).
        self._step_group: StepGroup | None = None
        self._reset()

    @staticmethod
    def _layers(name: str, sizes: Any) -> tuple[int, ...]:
        if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence) or not sizes:
            raise LearnerError(f"{name} must be a non-empty sequence of ints, got {sizes!r}")
        return tuple(check_int(f"{name} entries", s, 1) for s in sizes)

    # -- the learned state --------------------------------------------------------------

    def _reset(self) -> None:
        self.n_learned = 0
        self.n_steps = 0
        # Host wall time in optimiser steps, for the service's metrics; not state (a restored
        # learner counts from 0). On a GPU it ends when the step is queued, not done.
        self._step_seconds = 0.0
        self.ids = IDTable(self.capacity, admit_after=self.admit_after, ttl_ms=self.ttl_ms)
        self._context: list[str] | None = None  # context fields, fixed at the first sample
        self._dense: list[str] | None = None
        self._net: DINNetwork | None = None
        self._wide = FTRLProximal() if self.wide else None
        self._opt_embedding: torch.optim.Optimizer | None = None
        self._opt_dense: torch.optim.Optimizer | None = None
        self._generator = torch.Generator().manual_seed(self.seed)
        self._buffer: _Samples | None = None
        self._queue: _Samples | None = None
        self._queue_tickets: list[int] = []
        self._scored: dict[int, float] = {}
        self._next_ticket = 0

    def _build(self, context: list[str], dense: list[str]) -> None:
        """Network, optimisers and buffers for these context fields and dense names."""
        self._context, self._dense = context, dense
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = DINNetwork(self.capacity + 1, **self._network_args())
        net.embedding.sparse = True  # sparse gradients: a step touches only the batch's rows
        if self.wide:
            # The deep part starts as exactly nothing on top of the wide part's logit.
            nn.init.zeros_(net.output_mlp.head.weight)
            nn.init.zeros_(net.output_mlp.head.bias)
        self._net = net.to(self._device)
        embedding = [self._net.embedding.weight]
        rest = [p for n, p in self._net.named_parameters() if n != "embedding.weight"]
        self._opt_embedding = (
            torch.optim.SparseAdam(embedding, lr=self.embedding_lr) if self.optimizer == "adam"
            else torch.optim.Adagrad(embedding, lr=self.embedding_lr))
        self._opt_dense = torch.optim.Adam(rest, lr=self.lr)
        self._buffer = self._new_samples(self.batch_size)
        self._queue = self._new_samples(64)

    def _network_args(self) -> dict[str, Any]:
        """:class:`DINNetwork`'s arguments but ``n_rows``, JSON-serialisable (for the
        data-parallel workers too)."""
        assert self._context is not None and self._dense is not None
        return {"embedding_dim": self.embedding_dim, "n_context": len(self._context),
                "n_dense": len(self._dense), "attention_hidden": list(self.attention_hidden),
                "mlp_hidden": list(self.mlp_hidden), "lifelong_heads": self.lifelong_heads,
                "n_gap_buckets": self.n_gap_buckets,
                "n_position_buckets": self.n_position_buckets, "activation": self.activation,
                "use_lifelong": self.use_lifelong,
                "attention_activation": self.attention_activation}

    def _new_samples(self, size: int) -> _Samples:
        assert self._context is not None and self._dense is not None
        return _Samples(size, self._width, self.lifelong_top_k, len(self._dense))

    @property
    def _width(self) -> int:
        assert self._context is not None
        return 3 + len(self._context) + 2 * self.recent_length + 2 * self.lifelong_top_k

    def __repr__(self) -> str:
        return (f"DIN(embedding_dim={self.embedding_dim}, capacity={self.capacity}, "
                f"batch_size={self.batch_size}, optimizer={self.optimizer!r}, lr={self.lr}, "
                f"use_lifelong={self.use_lifelong}, wide={self.wide}, "
                f"serve_position={self.serve_position}, device={self.device!r})")

    # -- encoding -----------------------------------------------------------------------

    def _encode(self, x: Any, into: _Samples, y: int = 0, w: float = 1.0,
                fnw: bool = False) -> None:
        """Write ``x`` as the next sample of ``into`` (validated first: nothing written on
        bad input)."""
        position, names = self._check(x)
        assert self._context is not None and self._dense is not None
        L, K = self.recent_length, self.lifelong_top_k
        row = into.n
        ids, present = into.ids[row], into.present[row]
        ids[:] = 0
        present[:] = False
        head = [names.get(f) for f in _TARGET] + [names.get(c) for c in self._context]
        have = [j for j, name in enumerate(head) if name is not None]
        ids[have] = hash_names(head[j] for j in have)
        present[have] = True
        at = len(head)
        b = getattr(x, "behaviours", None)
        n_recent = n_life = 0
        ts = into.ts_ms[row - 1] if row else 0
        if b is not None:
            n_recent = min(len(b.recent_item), L)
            n_life = min(len(b.lifelong_item), K)
            ids[at:at + n_recent] = b.recent_item[:n_recent]
            ids[at + L:at + L + n_recent] = b.recent_category[:n_recent]
            present[at:at + n_recent] = present[at + L:at + L + n_recent] = True
            life = at + 2 * L
            ids[life:life + n_life] = b.lifelong_item[:n_life]
            ids[life + K:life + K + n_life] = b.lifelong_category[:n_life]
            present[life:life + n_life] = present[life + K:life + K + n_life] = True
            into.lifelong_age_s[row, :n_life] = b.lifelong_age_s[:n_life]
            ts = b.ts_ms
        into.lifelong_age_s[row, n_life:] = 0.0
        into.recent_n[row], into.lifelong_n[row] = n_recent, n_life
        into.position[row] = position
        get = x.get
        into.dense[row] = [get(name, 0.0) for name in self._dense]
        into.ts_ms[row] = ts
        into.y[row], into.w[row], into.fnw[row], into.wide[row] = y, w, fnw, 0.0
        into.n = row + 1

    def _rows(self, s: _Samples, learn: bool) -> np.ndarray:
        """Embedding rows of the first ``s.n`` samples' ids (0 where not present)."""
        n = s.n
        present = s.present[:n]
        rows = np.zeros((n, s.ids.shape[1]), np.int64)
        rows[present] = self.ids.lookup(s.ids[:n][present], int(s.ts_ms[:n].max()), learn=learn)
        return rows

    def _batch(self, s: _Samples, rows: np.ndarray, positions: np.ndarray,
               training: bool, on_device: bool = True) -> DINBatch:
        """The tensors of the first ``s.n`` samples (on the learner's device, or the host);
        for ``training``, with the host-built index (a prediction reads its scores back
        from the device anyway).

        Sequences keep their full padded length whatever the batch holds, so a sample's
        score never depends on which others share its batch (the recent attention skips
        padding anyway; the lifelong one is a masked softmax over K slots)."""
        assert self._context is not None
        n, L, K = s.n, self.recent_length, self.lifelong_top_k
        at = 3 + len(self._context)
        life = at + 2 * L
        tensors = {
            "user": rows[:, 0], "item": rows[:, 1], "category": rows[:, 2],
            "context": rows[:, 3:at],
            "position": positions,
            "recent_item": rows[:, at:at + L], "recent_category": rows[:, at + L:life],
            "recent_mask": np.arange(L) < s.recent_n[:n, None],
            "lifelong_item": rows[:, life:life + K],
            "lifelong_category": rows[:, life + K:life + 2 * K],
            "lifelong_gap": time_gap_buckets(torch.from_numpy(s.lifelong_age_s[:n]),
                                             self.n_gap_buckets).numpy(),
            "lifelong_mask": np.arange(K) < s.lifelong_n[:n, None],
            "dense": s.dense[:n],
        }
        batch = DINBatch(**{k: torch.from_numpy(np.ascontiguousarray(v))
                            for k, v in tensors.items()})
        if training:
            batch = batch.with_host_index(self.use_lifelong)
        if on_device and self._device.type == "cuda":
            return batch.pin_memory().to(self._device, non_blocking=True)
        return batch

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        if self.cpu_threads is None or self._device.type != "cpu":
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _autocast(self) -> Any:
        return torch.autocast(self._device.type, dtype=torch.bfloat16,
                              enabled=self._device.type == "cuda")

    # -- prediction ---------------------------------------------------------------------

    def _forward_scores(self, s: _Samples) -> np.ndarray:
        """Click probabilities of the first ``s.n`` samples of ``s`` (no state change)."""
        assert self._net is not None
        rows = self._rows(s, learn=False)
        positions = position_buckets(torch.from_numpy(
            s.position[:s.n] if self.serve_position else np.full(s.n, -1)),
            self.n_position_buckets)
        batch = self._batch(s, rows, positions.numpy(), training=False)
        self._net.eval()
        with self._threads(), torch.no_grad(), self._autocast():
            logits = self._net(batch, train_position=False)
            if self.serve_position:
                logits = logits + self._net.position_tower(batch.position)
        deep = logits.float().cpu().numpy().astype(np.float64)
        return 1.0 / (1.0 + np.exp(-(deep + s.wide[:s.n])))

    def _scratch(self, x: Any) -> _Samples:
        s = self._new_samples(1)
        self._encode(x, s)
        s.wide[0] = self._wide_logit(x)
        return s

    def _wide_logit(self, x: Any) -> float:
        """The wide part's logit for ``x`` now (0 without one); ``x`` already checked."""
        if self._wide is None:
            return 0.0
        return _logit(self._wide.predict_proba_one(
            x if self.serve_position else _without_position(x)))

    def predict_proba_one(self, x: dict[str, float]) -> float:
        """Click probability of ``x`` with the current model; changes nothing."""
        if self._net is None:
            self._check(x)
            return 0.5
        return float(self._forward_scores(self._scratch(x))[0])

    def predict_proba_many(self, batch: Sequence[dict[str, float]]) -> np.ndarray:
        """``predict_proba_one`` of each sample, exactly (one forward pass each: a batched
        pass rounds differently; the engine's fast path is :meth:`queue_predict`)."""
        out = np.empty(len(batch))
        for k, x in enumerate(batch):
            try:
                out[k] = self.predict_proba_one(x)
            except LearnerError as e:
                raise LearnerError(f"sample {k}: {e}") from None
        return out

    @staticmethod
    def _check(x: Any) -> tuple[int, dict[str, str]]:
        """Validate a feature dict, in the one pass over it that also reads it: its position
        (-1 when it has none) and, per field of its ``field=value`` names with a non-zero
        value, that name."""
        if not isinstance(x, Mapping):
            raise LearnerError(f"features must be a dict, got {type(x).__name__}")
        position = -1
        names: dict[str, str] = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise LearnerError(f"feature names must be str, got {k!r}")
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise LearnerError(f"feature {k!r} has a non-finite or non-numeric value {v!r}")
            field, eq, value = k.partition("=")
            if not eq:
                continue
            if field == "position":
                try:
                    position = int(value)
                except ValueError:
                    raise LearnerError(f"feature {k!r}: the position is not an int") from None
            elif v != 0.0:
                names[field] = k
        return position, names

    # QueuedScoring: the engine's way of scoring impressions in batches.

    def queue_predict(self, x: dict[str, float]) -> int:
        """Queue ``x`` for scoring with the current model; returns its ticket."""
        ticket = self._next_ticket
        if self._net is None:
            self._check(x)
            self._scored[ticket] = 0.5
        else:
            q = self._queue
            assert q is not None
            if q.n == q.y.shape[0]:
                self._queue = q = self._grown(q)
            self._encode(x, q)
            q.wide[q.n - 1] = self._wide_logit(x)
            self._queue_tickets.append(ticket)
        self._next_ticket += 1
        return ticket

    def _grown(self, q: _Samples) -> _Samples:
        bigger = self._new_samples(2 * q.y.shape[0])
        bigger.load(q.state())
        return bigger

    def queued_score(self, ticket: int) -> float:
        """The score of a queued impression (read once)."""
        if ticket not in self._scored:
            self._score_queue()
        try:
            return self._scored.pop(ticket)
        except KeyError:
            raise LearnerError(f"no queued score for ticket {ticket}") from None

    def _score_queue(self) -> None:
        q = self._queue
        if q is None or q.n == 0:
            return
        scores = self._forward_scores(q)
        self._scored.update(zip(self._queue_tickets, scores.tolist(), strict=True))
        self._queue_tickets = []
        q.n = 0

    # -- learning -----------------------------------------------------------------------

    def learn_one(self, x: dict[str, float], y: int, w: float = 1.0) -> None:
        """Buffer one sample (validated first); a full buffer is one optimiser step."""
        self._learn(x, y, w, fnw=False)

    def learn_fnw_one(self, x: dict[str, float], y: int) -> None:
        """Buffer one sample of the ``fnw`` delayed-feedback mode: its weight is the fake
        negative weight (Ktena et al. 2019, :func:`features.joiner.fnw_weight`) of the
        model's own prediction, taken (without gradient) from the step's forward pass —
        the current belief at training time, as in the paper, at no extra pass."""
        self._learn(x, y, 1.0, fnw=True)

    def _learn(self, x: dict[str, float], y: int, w: float, fnw: bool) -> None:
        if isinstance(y, bool) or y not in (0, 1):
            raise LearnerError(f"label must be 0 or 1, got {y!r}")
        if not good_weight(w):
            raise LearnerError(f"sample weight must be finite and >= 0, got {w!r}")
        if self._net is None:  # the first sample fixes the context fields and dense names
            _, names = self._check(x)
            self._build(sorted(f for f in names if f.startswith(_CTX_PREFIX)),
                        sorted(k for k in x if k.startswith(_DENSE_PREFIX)))
        buffer = self._buffer
        assert buffer is not None
        self._encode(x, buffer, int(y), float(w), fnw)
        # Position dropout (Zhao et al.): the sample trains as if its position were missing,
        # in both parts; drawn from the sample's number, so restarts draw the same.
        dropped = splitmix_uniform(self.seed, self.n_learned) < self.position_dropout
        if dropped:
            buffer.position[buffer.n - 1] = -1
        if self._wide is not None:
            xw = _without_position(x) if dropped else x
            try:
                # The wide part learns now, sample by sample, as the FTRL learner does; in
                # fnw mode with the weight of its own prediction (the deep part's comes
                # from the joint prediction at the step).
                ww = fnw_weight(int(y), self._wide.predict_proba_one(xw)) if fnw else float(w)
                buffer.wide[buffer.n - 1] = _logit(self._wide.predict_learn_one(xw, int(y), ww))
            except LearnerError:
                buffer.n -= 1  # an overflowing score: the sample is learned by neither part
                raise
        self.n_learned += 1
        if buffer.n == self.batch_size:
            self._step()

    def learn_many(self, batch: Sequence[dict[str, float]], y: Sequence[int] | np.ndarray,
                   w: Sequence[float] | np.ndarray | None = None) -> None:
        """Exactly ``learn_one`` on each sample in order (labels and weights checked first)."""
        learn_each(self, batch, y, w)

    def _step(self) -> None:
        """One optimiser step on the buffered samples."""
        self._score_queue()  # queued impressions are scored by the model of their time
        with self._threads():
            self._train_buffer()

    def _train_buffer(self) -> None:
        started = time.perf_counter()
        net, buffer = self._net, self._buffer
        assert net is not None and buffer is not None
        rows = self._rows(buffer, learn=True)
        fresh = self.ids.take_fresh_rows()
        if fresh.size:
            self._reinitialise(torch.from_numpy(fresh))
            # An ID given its row by this step trains the default row once more: it had
            # no row when its samples were scored, so the default row learns the click
            # rate of first sightings, what predictions of new IDs ask of it. (Trained by
            # the IDs still unadmitted after a step instead — the rare ones — it read as
            # their rate to every new ID: on MIND, whose news items are new all the time,
            # calibration 1.84 and AUC 0.633, against 1.10 and 0.654 this way.)
            assigned = np.zeros(self.capacity + 1, bool)
            assigned[fresh] = True
            rows[assigned[rows]] = 0
        n = buffer.n
        buckets = position_buckets(torch.from_numpy(buffer.position[:n]),
                                   self.n_position_buckets).numpy()
        if self.n_steps == 0 and not self.wide:
            # The output bias starts at the first batch's log-odds: a single pass has no
            # steps to spare walking it from 0 (p = 0.5) to a CTR of a few percent.
            rate = float(np.clip(np.average(buffer.y[:n], weights=buffer.w[:n])
                                 if buffer.w[:n].sum() > 0 else 0.5, 1e-3, 1 - 1e-3))
            with torch.no_grad():
                net.output_mlp.head.bias.fill_(math.log(rate / (1.0 - rate)))
        assert self._opt_embedding is not None and self._opt_dense is not None
        self._opt_embedding.zero_grad(set_to_none=True)
        self._opt_dense.zero_grad(set_to_none=True)
        if self.data_parallel == 1:
            self._gradients_here(net, buffer, rows, buckets)
        else:
            self._gradients_in_parallel(net, buffer, rows, buckets)
        self._opt_embedding.step()
        self._opt_dense.step()
        self.n_steps += 1
        buffer.n = 0
        self._step_seconds += time.perf_counter() - started

    def _gradients_here(self, net: DINNetwork, buffer: _Samples, rows: np.ndarray,
                        buckets: np.ndarray) -> None:
        """The step's gradients, computed in this process."""
        n = buffer.n
        batch = self._batch(buffer, rows, buckets, training=True)
        y, w, wide = (torch.from_numpy(a).to(self._device, non_blocking=True)
                      for a in (buffer.y[:n], buffer.w[:n], buffer.wide[:n]))
        fnw = (torch.from_numpy(buffer.fnw[:n].copy()).to(self._device)
               if buffer.fnw[:n].any() else None)
        net.train()
        loss = shard_loss(net, batch, y, w, wide, fnw, n, self._autocast())
        if self.l2 > 0.0:
            loss = loss + self.l2 * net.minibatch_l2(batch)
        loss.backward()

    def _gradients_in_parallel(self, net: DINNetwork, buffer: _Samples, rows: np.ndarray,
                               buckets: np.ndarray) -> None:
        """The step's gradients, its batch split over ``data_parallel`` processes."""
        assert self._context is not None
        n = buffer.n
        touched, local = read_rows(rows[:n], buffer.recent_n[:n], 3 + len(self._context),
                                   self.recent_length, self.use_lifelong)
        whole = self._batch(buffer, local, buckets, training=True, on_device=False)
        bounds = [n * k // self.data_parallel for k in range(self.data_parallel + 1)]
        parts = list(itertools.pairwise(bounds))
        shards = [whole.samples(a, b).with_host_index(self.use_lifelong) for a, b in parts]
        labels = [(buffer.y[a:b], buffer.w[a:b], buffer.wide[a:b], buffer.fnw[a:b])
                  for a, b in parts]
        self._workers().step(net, touched, shards, labels, n, self._autocast(), self.l2, whole)

    def _workers(self) -> StepGroup:
        """The gradient workers for this network, started on first use."""
        network = self._network_args()
        group = self._step_group
        if group is not None and group.network != network:
            group.close()  # the network changed shape (a state of other fields restored)
            group = None
        if group is None:
            assert self._context is not None
            if self._device.type == "cuda":
                first, count = self._device.index or 0, torch.cuda.device_count()
                devices = [torch.device("cuda", (first + k) % count)
                           for k in range(self.data_parallel)]
            else:
                devices = [self._device] * self.data_parallel
            group = self._step_group = StepGroup(
                devices, network, min(self.capacity + 1, self.batch_size * self._width),
                self.recent_length, self.lifelong_top_k, self.cpu_threads)
        return group

    def close(self) -> None:
        """Stop the data-parallel gradient workers, if any (a later step starts them
        again); the learned state is untouched."""
        if self._step_group is not None:
            self._step_group.close()
            self._step_group = None

    def _reinitialise(self, rows: torch.Tensor) -> None:
        """Fresh embeddings and cleared optimiser moments for rows handed to new IDs."""
        assert self._net is not None and self._opt_embedding is not None
        self._net.reset_rows(rows, generator=self._generator)
        state = self._opt_embedding.state.get(self._net.embedding.weight)
        if state:
            on = rows.to(self._device)
            for key in ("exp_avg", "exp_avg_sq", "sum"):
                if key in state:
                    state[key][on] = 0.0

    # -- introspection ------------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        """Samples learned, optimiser steps and their seconds, samples buffered, and the ID
        table's counters."""
        buffered = 0 if self._buffer is None else self._buffer.n
        return {"samples": self.n_learned, "steps": self.n_steps,
                "step_seconds": self._step_seconds, "buffered": buffered,
                **{f"ids_{k}": v for k, v in self.ids.stats().items()}}

    # -- state --------------------------------------------------------------------------

    def _hyper(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in
                               (*_INT_HYPER, *_FLOAT_HYPER, *_STR_HYPER, *_BOOL_HYPER)}
        out["ttl_ms"] = -1 if self.ttl_ms is None else self.ttl_ms
        out["attention_hidden"] = np.array(self.attention_hidden, np.int64)
        out["mlp_hidden"] = np.array(self.mlp_hidden, np.int64)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Format, version, hyper-parameters, counters, the network, both optimisers' state,
        the ID table, buffered samples and the generator: arrays, scalars and strings."""
        d: dict[str, Any] = {"format": _FORMAT, "version": _VERSION, **self._hyper(),
                             "n_learned": self.n_learned, "n_steps": self.n_steps,
                             "ids": self.ids.state_dict(),
                             "generator": self._generator.get_state().numpy().copy(),
                             "built": self._net is not None}
        if self._net is None:
            return d
        assert self._buffer is not None and self._context is not None
        assert self._dense is not None
        d["context"] = np.array(self._context, dtype=str)
        d["dense"] = np.array(self._dense, dtype=str)
        d["net"] = {k.replace(".", ":"): v.detach().float().cpu().numpy().copy()
                    if v.is_floating_point() else v.detach().cpu().numpy().copy()
                    for k, v in self._net.state_dict().items()}
        d["opt_embedding"] = self._optimizer_state(self._opt_embedding)
        d["opt_dense"] = self._optimizer_state(self._opt_dense)
        d["buffer"] = self._buffer.state()
        if self._wide is not None:
            d["wide_part"] = self._wide.state_dict()
        return d

    @staticmethod
    def _optimizer_state(opt: torch.optim.Optimizer | None) -> dict[str, Any]:
        assert opt is not None
        # "<param>:<key>" for tensors, "<param>:<key>:plain" for Python numbers (SparseAdam
        # counts steps in an int, Adam in a float32 tensor: each must come back as it was).
        out: dict[str, Any] = {}
        for i, entry in opt.state_dict()["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    out[f"{i}:{key}"] = value.detach().cpu().numpy().copy()
                else:
                    out[f"{i}:{key}:plain"] = value
        return out

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Replace the learned state with ``d``; :class:`LearnerError` (and nothing changed)
        if it is not a DIN state of this version and these hyper-parameters."""
        check_state(d, _FORMAT, _VERSION, ("n_learned", "n_steps", "ids", "generator", "built"),
                    self._hyper())
        staged = DIN.__new__(DIN)
        staged.__dict__.update(self.__dict__)
        staged._reset()
        try:
            staged._restore(d)
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise LearnerError(f"state dict does not fit this learner: {e}") from None
        self._score_queue()  # tickets already taken are the old model's
        scored, next_ticket = self._scored, self._next_ticket
        self.__dict__.update(staged.__dict__)
        self._scored, self._next_ticket = scored, next_ticket

    def _restore(self, d: Mapping[str, Any]) -> None:
        self.n_learned = check_int("n_learned", d["n_learned"], 0)
        self.n_steps = check_int("n_steps", d["n_steps"], 0)
        self.ids = IDTable.from_state_dict(d["ids"])
        if (self.ids.capacity, self.ids.admit_after) != (self.capacity, self.admit_after):
            raise ValueError("the ID table has other hyper-parameters")
        self._generator.set_state(torch.from_numpy(np.asarray(d["generator"], np.uint8)))
        if not d["built"]:
            return
        self._build(*([str(c) for c in np.asarray(d[k]).reshape(-1).tolist()]
                      for k in ("context", "dense")))
        assert self._net is not None and self._buffer is not None
        own = self._net.state_dict()
        tensors = {k.replace(":", "."): torch.from_numpy(np.asarray(v))
                   for k, v in d["net"].items()}
        if set(tensors) != set(own):
            raise ValueError("the network's parameters differ")
        self._net.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})
        self._load_optimizer(self._opt_embedding, d.get("opt_embedding", {}))
        self._load_optimizer(self._opt_dense, d.get("opt_dense", {}))
        self._buffer.load(d["buffer"])
        if self._wide is not None:
            self._wide.load_state_dict(d["wide_part"])

    def _load_optimizer(self, opt: torch.optim.Optimizer | None, flat: Mapping[str, Any]) -> None:
        assert opt is not None
        state: dict[int, dict[str, Any]] = {}
        for key, value in flat.items():
            index, name, *plain = key.split(":")
            if plain:
                restored: Any = value.item() if isinstance(value, np.ndarray) else value
            elif np.ndim(value) == 0:  # a checkpoint hands 0-d arrays back as scalars
                restored = torch.tensor(float(value), dtype=torch.float32)
            else:
                restored = torch.from_numpy(np.array(value))
            state.setdefault(int(index), {})[name] = restored
        template = opt.state_dict()
        opt.load_state_dict({"state": state, "param_groups": template["param_groups"]})
