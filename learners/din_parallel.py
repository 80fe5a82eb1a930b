"""Data-parallel optimiser steps for :class:`learners.din.DIN`: one step's forward and
backward split over several processes with torch.distributed (NCCL between GPUs, Gloo on
CPU), the learner's process keeping all learned state.

How a step runs
---------------
The learner's process is rank 0; ranks 1…N-1 are gradient workers
(:func:`main`, in a child interpreter), started by :class:`StepGroup` and holding nothing
between steps but a network of the learner's architecture (a :class:`GradientReplica`).

1. Rank 0 numbers the embedding rows the step's batch reads 0…U-1 (``touched``: sorted),
   splits the batch into N contiguous shards and sends shard k to rank k (point to point:
   a header, then one int64 and one float32 buffer).
2. It broadcasts the network's dense parameters, its buffers (Dice's running statistics)
   and the U touched embedding rows, in one float32 buffer.
3. Every rank, rank 0 included, loads them into its replica and takes the gradient of its
   shard's part of the loss: the weighted log loss summed over the shard and divided by
   the whole batch's size, plus on rank 0 alone the mini-batch L2 of the whole batch (a
   row in two shards is penalised once, as in one process).
4. One all-reduce sums the gradients — the embedding's as a dense (U, E) block — and
   averages the buffers.
5. Rank 0 writes them into the learner's network (the embedding's gradient sparse over
   the touched rows, as one process's would be) and the learner's optimisers step.

So a step is the one-process step summed in another order — equal up to float32 rounding
— except with Dice, whose statistics in training are each shard's own batch statistics
(as DDP without SyncBatchNorm): set ``activation="prelu"`` where steps must not depend on
the number of processes. The state (:meth:`DIN.state_dict`) lives on rank 0 only, so a
checkpoint does not depend on the number of processes either and restores into any.

Faults: a worker that dies or hangs makes the step raise :class:`DataParallelError` (a
dead peer is seen at once; a silent one after ``timeout_s``), not a
:class:`learners.base.LearnerError`, which callers treat as one bad sample: the step's
state on rank 0 is then half done, and the service must stop and recover from its last
checkpoint. A worker whose rank 0 dies sees its connection closed and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from learners.din_modules import DINBatch, DINNetwork

__all__ = ["DataParallelError", "GradientReplica", "StepGroup", "read_rows", "shard_loss"]

_HOST = "127.0.0.1"
_STEP, _STOP = 1, 0
_TAG_HEADER, _TAG_INTS, _TAG_FLOATS = 1, 2, 3
# cmd, touched rows U, whole-batch size, shard size B, real recent behaviours of the shard N
_HEADER = 5
_BOOL_FIELDS = ("recent_mask", "lifelong_mask", "fnw")
# Not ``-m learners.din_parallel``: the package imports this module first, and runpy warns.
_WORKER_MAIN = "import sys; from learners.din_parallel import main; sys.exit(main(sys.argv[1:]))"


class DataParallelError(RuntimeError):
    """A gradient worker failed (died, hung past the timeout, or could not start): the step
    it was part of is half applied on rank 0."""


def shard_loss(net: DINNetwork, batch: DINBatch, y: Tensor, w: Tensor, wide: Tensor,
               fnw: Tensor | None, total: int, autocast: Any) -> Tensor:
    """The weighted log loss of ``batch``'s impressions summed and divided by ``total`` (the
    whole step's batch size), a float32 scalar; ``net`` in training mode.

    ``wide`` float (B,) is the wide part's logit of each sample (0 without one); ``fnw``
    bool (B,) or None marks samples weighted by the fake-negative weight of the joint
    prediction (Ktena et al. 2019), taken without gradient from this forward pass.
    """
    with autocast:
        logits = net(batch, train_position=True).float()
    logits = logits + wide.float()
    if fnw is not None:
        p = torch.sigmoid(logits.detach())
        w = torch.where(fnw, torch.where(y > 0.5, 1.0 + p, (1.0 - p) * (1.0 + p)), w)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (bce * w).sum() / total


def read_rows(rows: np.ndarray, recent_n: np.ndarray, n_head: int, recent_length: int,
              lifelong: bool) -> tuple[np.ndarray, np.ndarray]:
    """The embedding rows a step's forward pass reads, sorted (``touched``), and ``rows``
    renumbered into it (slots it does not read — padded behaviours — hold any valid
    number).

    ``rows`` long (B, W) is the learner's row matrix: ``n_head`` target and context fields,
    then ``recent_length`` recent items and as many categories, then the lifelong items and
    categories (all read, padding included, when ``lifelong``).
    """
    at, L = n_head, recent_length
    real = np.arange(L) < recent_n[:, None]
    read = [rows[:, :at].ravel(), rows[:, at:at + L][real], rows[:, at + L:at + 2 * L][real]]
    if lifelong:
        read.append(rows[:, at + 2 * L:].ravel())
    touched = np.unique(np.concatenate(read))
    local = np.minimum(np.searchsorted(touched, rows), touched.size - 1)
    return touched, local


def _int_fields(b: int, n: int, c: int, recent: int, lifelong: int) -> dict[str, tuple[int, ...]]:
    """Shapes of a shard's integer (and boolean) tensors, in the order they travel."""
    return {"user": (b,), "item": (b,), "category": (b,), "context": (b, c), "position": (b,),
            "recent_item": (b, recent), "recent_category": (b, recent),
            "recent_mask": (b, recent), "lifelong_item": (b, lifelong),
            "lifelong_category": (b, lifelong), "lifelong_gap": (b, lifelong),
            "lifelong_mask": (b, lifelong), "recent_owner": (n,), "recent_slot": (n,),
            "fnw": (b,)}


_INT_NAMES = tuple(_int_fields(0, 0, 0, 0, 0))


def _float_fields(b: int, d: int) -> dict[str, tuple[int, ...]]:
    return {"dense": (b, d), "y": (b,), "w": (b,), "wide": (b,)}


def _size(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(s)) for s in shapes.values())


def _unpack(flat: Tensor, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    out, at = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        value = flat[at:at + size].reshape(shape)
        out[name] = value.bool() if name in _BOOL_FIELDS else value
        at += size
    return out


def _dense_parameters(net: DINNetwork) -> list[nn.Parameter]:
    """Every parameter but the embedding, in the order both sides of a step flatten them."""
    return [p for name, p in net.named_parameters() if name != "embedding.weight"]


class GradientReplica:
    """A network of the learner's architecture that computes one shard's gradients from
    parameters loaded before each step (see the module doc).

    ``network``: :class:`learners.din_modules.DINNetwork`'s arguments but ``n_rows``;
    ``n_rows``: the most rows a step touches (the learner's rows, or fewer).
    """

    def __init__(self, network: Mapping[str, Any], n_rows: int, device: torch.device) -> None:
        self.device = device
        with torch.random.fork_rng(devices=[]):  # its initial values are never read
            self.net = DINNetwork(n_rows, **network).to(device)
        self.net.embedding.sparse = True
        self.net.train()
        self.dense = _dense_parameters(self.net)
        self.buffers = list(self.net.buffers())
        self.n_dense = sum(p.numel() for p in self.dense)
        self.n_buffers = sum(b.numel() for b in self.buffers)
        self.width = self.net.embedding.weight.shape[1]

    def load_size(self, touched: int) -> int:
        """Length of the parameter buffer for a step touching ``touched`` rows."""
        return self.n_dense + self.n_buffers + touched * self.width

    def gradient_size(self, touched: int) -> int:
        """Length of the gradient buffer: dense gradients, the (U, E) embedding block,
        the buffers, and one has-a-gradient flag per dense parameter."""
        return self.n_dense + touched * self.width + self.n_buffers + len(self.dense)

    def load(self, flat: Tensor, touched: int) -> None:
        """Parameters, buffers and the touched rows (as rows 0…U-1) from ``flat``."""
        with torch.no_grad():
            at = 0
            for t in (*self.dense, *self.buffers):
                t.copy_(flat[at:at + t.numel()].view_as(t))
                at += t.numel()
            self.net.embedding.weight[:touched] = flat[at:].view(touched, self.width)

    def gradients(self, batch: DINBatch, y: Tensor, w: Tensor, wide: Tensor, fnw: Tensor,
                  total: int, touched: int, world: int, autocast: Any,
                  l2: float = 0.0, l2_batch: DINBatch | None = None) -> Tensor:
        """The shard's part of the step as one float32 buffer to be summed over ranks
        (layout: :meth:`gradient_size`); ``l2_batch`` (rank 0): the whole batch, whose
        mini-batch L2 is added with weight ``l2``."""
        for p in self.net.parameters():
            p.grad = None
        loss = shard_loss(self.net, batch, y, w, wide, fnw, total, autocast)
        if l2_batch is not None and l2 > 0.0:
            loss = loss + l2 * self.net.minibatch_l2(l2_batch)
        loss.backward()
        out = torch.zeros(self.gradient_size(touched), device=self.device)
        at = 0
        for p in self.dense:
            if p.grad is not None:
                out[at:at + p.numel()] = p.grad.reshape(-1)
            at += p.numel()
        block = out[at:at + touched * self.width].view(touched, self.width)
        grad = self.net.embedding.weight.grad
        if grad is not None:
            grad = grad.coalesce()
            block.index_add_(0, grad.indices()[0], grad.values().float())
        at += touched * self.width
        for b in self.buffers:
            out[at:at + b.numel()] = b.reshape(-1) / world
            at += b.numel()
        out[at:] = torch.tensor([p.grad is not None for p in self.dense], dtype=torch.float32)
        return out


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _group(store: dist.Store, rank: int, world: int, device: torch.device,
           timeout: datetime.timedelta) -> Any:
    """A process group of its own (not torch's default one, so that several learners, or
    other torch.distributed users, can live in one process)."""
    if _backend(device) == "nccl":
        torch.cuda.set_device(device)
        nccl = dist.ProcessGroupNCCL.Options()
        nccl._timeout = timeout
        group = dist.ProcessGroupNCCL(store, rank, world, nccl)
        group.eager_connect_single_device(device)
        return group
    opts = dist.ProcessGroupGloo._Options()
    # Loopback: every rank runs on this host; the hostname may not resolve to it.
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=_HOST)]
    opts._timeout = timeout
    return dist.ProcessGroupGloo(store, rank, world, opts)


class StepGroup:
    """Rank 0's side: the gradient workers of one learner and the steps they share.

    ``devices``: one per rank, the learner's own first (``cuda:0``, ``cuda:1`` …, or
    ``cpu`` N times); ``network``: the replica's :class:`DINNetwork` arguments but
    ``n_rows``; ``timeout_s``: how long a step waits for a silent worker.
    """

    def __init__(self, devices: Sequence[torch.device], network: Mapping[str, Any],
                 n_rows: int, recent_length: int, lifelong_top_k: int,
                 cpu_threads: int | None, timeout_s: float = 120.0) -> None:
        self.world = len(devices)
        self.device = devices[0]
        self.network = dict(network)
        self.replica = GradientReplica(network, n_rows, self.device)
        timeout = datetime.timedelta(seconds=timeout_s)
        self._store = dist.TCPStore(_HOST, 0, self.world, True, timeout, wait_for_workers=False)
        # Closed by close(): they outlive this call.
        self._logs = [tempfile.TemporaryFile() for _ in devices[1:]]  # noqa: SIM115
        config = {"port": self._store.port, "world": self.world, "network": self.network,
                  "n_rows": n_rows, "recent_length": recent_length,
                  "lifelong_top_k": lifelong_top_k, "cpu_threads": cpu_threads,
                  "timeout_s": timeout_s}
        self._workers = [
            subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN,
                 json.dumps({**config, "rank": rank, "device": str(device)})],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=_child_env())
            for rank, (device, log) in enumerate(zip(devices[1:], self._logs, strict=True),
                                                 start=1)]
        # A learner dropped without close() (or the interpreter exiting) stops its workers.
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)
        try:
            self._group = _group(self._store, 0, self.world, self.device, timeout)
        except RuntimeError as e:
            for worker in self._workers:  # a failing one is usually on its way out: its why
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(5.0)
            tail = self._log_tail()
            self.close()
            raise DataParallelError(f"gradient workers did not start: {e}{tail}") from None

    def _log_tail(self) -> str:
        tails = []
        for rank, (log, worker) in enumerate(zip(self._logs, self._workers, strict=True),
                                             start=1):
            if worker.poll() is not None:
                tails.append(f"\nrank {rank} (pid {worker.pid}) exited with {worker.returncode}")
            log.seek(0)
            text = log.read().decode(errors="replace").strip()
            if text:
                tails.append(f"\nrank {rank} said: {text[-2000:]}")
        return "".join(tails)

    def step(self, net: DINNetwork, touched: np.ndarray, shards: Sequence[DINBatch],
             labels: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
             total: int, autocast: Any, l2: float, l2_batch: DINBatch) -> None:
        """Set ``net``'s gradients (and buffers) to those of the whole step (see the module
        doc). ``shards``: one host batch per rank, rows numbered into ``touched``;
        ``labels``: each shard's (y, w, wide logit, fnw) arrays; ``l2_batch``: the whole
        batch with its host index, rows numbered likewise."""
        u = int(touched.size)
        try:
            sent = []  # kept alive until sent
            for rank in range(1, self.world):
                header, ints, floats = self._payload(shards[rank], labels[rank], u, total)
                for tag, t in ((_TAG_HEADER, header), (_TAG_INTS, ints), (_TAG_FLOATS, floats)):
                    sent.append((t, self._group.send([t], rank, tag)))
            touched_t = torch.from_numpy(touched).to(self.device)
            params = self._parameters(net, touched_t)
            self._group.broadcast(params, 0).wait()
            self.replica.load(params, u)
            own = shards[0].to(self.device)
            y, w, wide, fnw = (torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
                               for a in labels[0])
            grads = self.replica.gradients(own, y, w, wide, fnw, total, u, self.world, autocast,
                                           l2, l2_batch)
            self._group.allreduce(grads).wait()
            for _, work in sent:
                work.wait()
        except RuntimeError as e:
            raise DataParallelError(f"a DIN gradient worker failed: {e}{self._log_tail()}") \
                from None
        self._apply(net, grads, touched_t)

    def _payload(self, batch: DINBatch, labels: tuple[np.ndarray, ...], touched: int,
                 total: int) -> tuple[Tensor, Tensor, Tensor]:
        assert batch.recent_owner is not None
        y, w, wide, fnw = (torch.from_numpy(np.ascontiguousarray(a)) for a in labels)
        values = [fnw if name == "fnw" else getattr(batch, name) for name in _INT_NAMES]
        ints = torch.cat([v.reshape(-1).to(torch.int64) for v in values])
        floats = torch.cat([t.reshape(-1).float() for t in (batch.dense, y, w, wide)])
        header = torch.tensor([_STEP, touched, total, batch.user.shape[0],
                               batch.recent_owner.shape[0]], dtype=torch.int64)
        return header.to(self.device), ints.to(self.device), floats.to(self.device)

    def _parameters(self, net: DINNetwork, touched: Tensor) -> Tensor:
        dense = _dense_parameters(net)
        with torch.no_grad():
            return torch.cat([*(t.reshape(-1).float() for t in (*dense, *net.buffers())),
                              net.embedding.weight[touched].reshape(-1).float()])

    def _apply(self, net: DINNetwork, grads: Tensor, touched: Tensor) -> None:
        replica = self.replica
        dense = _dense_parameters(net)
        flags = grads[-len(dense):].tolist()
        at = 0
        for p, flag in zip(dense, flags, strict=True):
            p.grad = grads[at:at + p.numel()].view_as(p).clone() if flag > 0 else None
            at += p.numel()
        weight = net.embedding.weight
        block = grads[at:at + touched.numel() * replica.width].view(-1, replica.width)
        # touched is sorted and distinct: the gradient is coalesced as built.
        weight.grad = torch.sparse_coo_tensor(touched[None], block.to(weight.dtype),
                                              weight.shape, is_coalesced=True,
                                              check_invariants=False)
        at += block.numel()
        with torch.no_grad():
            for b in net.buffers():
                b.copy_(grads[at:at + b.numel()].view_as(b))
                at += b.numel()

    def close(self) -> None:
        """Stop the workers (they finish the step they are in) and wait for them."""
        group = getattr(self, "_group", None)
        if group is not None and all(p.poll() is None for p in self._workers):
            stop = torch.tensor([_STOP, 0, 0, 0, 0], dtype=torch.int64).to(self.device)
            try:
                for rank in range(1, self.world):
                    group.send([stop], rank, _TAG_HEADER).wait()
            except RuntimeError:
                pass  # a dead worker: killed below
        self._group = None
        self._finalizer()
        for log in self._logs:
            log.close()


def _stop_workers(workers: Sequence[subprocess.Popen], wait_s: float = 10.0) -> None:
    for p in workers:
        try:
            p.wait(wait_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _child_env() -> dict[str, str]:
    """The environment with this process's import path, so ``-m learners.din_parallel``
    finds the package wherever the learner was imported from."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _work(config: Mapping[str, Any]) -> None:
    """A gradient worker's loop: a step per header, until the stop header."""
    if config["cpu_threads"] is not None:
        torch.set_num_threads(int(config["cpu_threads"]))
    device = torch.device(config["device"])
    rank, world = int(config["rank"]), int(config["world"])
    timeout = datetime.timedelta(seconds=float(config["timeout_s"]))
    store = dist.TCPStore(_HOST, int(config["port"]), world, False, timeout)
    group = _group(store, rank, world, device, timeout)
    network = config["network"]
    replica = GradientReplica(network, int(config["n_rows"]), device)
    n_context, n_dense = int(network["n_context"]), int(network["n_dense"])
    recent, lifelong = int(config["recent_length"]), int(config["lifelong_top_k"])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    header = torch.zeros(_HEADER, dtype=torch.int64, device=device)
    while True:
        group.recv([header], 0, _TAG_HEADER).wait()
        cmd, touched, total, b, n = header.tolist()
        if cmd == _STOP:
            return
        int_shapes = _int_fields(b, n, n_context, recent, lifelong)
        float_shapes = _float_fields(b, n_dense)
        ints = torch.empty(_size(int_shapes), dtype=torch.int64, device=device)
        floats = torch.empty(_size(float_shapes), dtype=torch.float32, device=device)
        group.recv([ints], 0, _TAG_INTS).wait()
        group.recv([floats], 0, _TAG_FLOATS).wait()
        params = torch.empty(replica.load_size(touched), device=device)
        group.broadcast(params, 0).wait()
        replica.load(params, touched)
        fields = {**_unpack(ints, int_shapes), **_unpack(floats, float_shapes)}
        y, w, wide, fnw = (fields.pop(k) for k in ("y", "w", "wide", "fnw"))
        grads = replica.gradients(DINBatch(**fields), y, w, wide, fnw, total, touched, world,
                                  autocast)
        group.allreduce(grads).wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A DIN gradient worker (started by StepGroup).")
    parser.add_argument("config", help="JSON: rank, world, store port, device, network …")
    _work(json.loads(parser.parse_args(argv).config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
