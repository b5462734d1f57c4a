"""Data-parallel training: the same epoch loop in several processes, gradients averaged by ``torch.distributed``.

Why DDP in one step's processes rather than Ray Train: a retrain is one KFP step,
and on a cluster that step is one pod asking for ``[pipelines] train_gpus`` GPUs
(one process per GPU, NCCL). Ray Train would run it on the serving cluster, whose
GPUs the champion and challenger hold, and add a second scheduler to the step
KFP already schedules. Here the same code runs with gloo on CPU processes.

The caller's process is rank 0: it keeps its progress callbacks and returns the
result; ``world - 1`` peers are spawned and get the job (its tensors through
shared memory). Each process takes a fixed share of every global batch, so the
averaged gradient is the single-process batch's (PyTorch DDP, Li et al., VLDB
2020); batch norm statistics are taken over the global batch too (below).
"""

from __future__ import annotations

import datetime
import queue
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from components.errors import ConfigError, TrendloopError

# A collective that waits longer than this for a peer fails (a peer stuck or never started).
TIMEOUT = datetime.timedelta(minutes=10)


class TrainingError(TrendloopError):
    """A data-parallel training process died or failed; the last finished epoch's checkpoint is kept."""


@dataclass(frozen=True)
class Peers:
    """This process's place among the training processes."""

    rank: int
    world: int

    def shard(self, total: int) -> slice:
        """The rows of a batch of ``total`` this process takes: contiguous, sizes differing by at most one."""
        size, extra = divmod(total, self.world)
        start = self.rank * size + min(self.rank, extra)
        return slice(start, start + size + (self.rank < extra))

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over every process (CPU tensors: gloo and NCCL peers alike get them back on the CPU)."""
        out = values.clone()
        if dist.get_backend() == "nccl":
            out = out.cuda()
        dist.all_reduce(out)
        return out.cpu()


def world_size(processes: int, device: torch.device) -> int:
    """How many processes train: ``processes``, or one per CUDA device where it is 0 (1 on a CPU)."""
    if processes == 0:
        return torch.cuda.device_count() if device.type == "cuda" else 1
    if device.type == "cuda" and processes > 1:
        if device.index not in (None, 0):
            raise ConfigError(f"device {device} with {processes} processes: name cuda (process k takes cuda:k)")
        if processes > torch.cuda.device_count():
            raise ConfigError(f"{processes} training processes but torch sees {torch.cuda.device_count()} GPUs")
    return processes


def device_of(device: torch.device, peers: Peers | None) -> torch.device:
    """The device a process trains on: rank k takes cuda:k; CPU processes share the CPU."""
    if peers is None or device.type != "cuda":
        return device
    return torch.device("cuda", peers.rank)


def global_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm2d normalising over the global batch: torch's SyncBatchNorm on CUDA (it
    refuses CPU tensors), GlobalBatchNorm2d elsewhere. Parameters, buffers and state-dict keys are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            swapped = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine)
            swapped.load_state_dict(child.state_dict())
            setattr(model, name, swapped)
        else:
            global_batch_norm(child, device)
    return model


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics are the mean and variance over every process's rows.

    Per-channel sums of x and x^2 and the row count are summed across processes with
    a differentiable all-reduce, so the backward pass is the single-process one too.
    Sums in float64: E[x^2] - E[x]^2 in float32 loses digits on large activations.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        wide = x.double()
        local = torch.cat([wide.sum((0, 2, 3)), (wide * wide).sum((0, 2, 3)), wide.new_tensor([x.numel() / c])])
        total = _Sum.apply(local)
        n = total[-1]
        mean = total[:c] / n
        var = total[c : 2 * c] / n - mean * mean  # biased, as batch norm normalises with
        with torch.no_grad():
            self.num_batches_tracked += 1
            factor = 1 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - factor).add_(mean.to(x.dtype), alpha=factor)
            self.running_var.mul_(1 - factor).add_((var * n / (n - 1)).to(x.dtype), alpha=factor)
        scale = (var + self.eps).rsqrt().to(x.dtype)
        y = (x - mean.to(x.dtype).view(1, c, 1, 1)) * scale.view(1, c, 1, 1)
        return y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1) if self.affine else y


class _Sum(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every process's loss depends on each
    process's rows through the global sums."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor) -> torch.Tensor:
        out = local.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


Fit = Callable[[Any, Peers | None, Any, Any], Any]


def launch(fit: Fit, job: object, world: int, device: torch.device, on_step: object, on_epoch: object) -> Any:
    """``fit(job, peers, on_step, on_epoch)`` in ``world`` processes; rank 0 (this process) returns its result.

    A peer that dies or raises ends the run with a TrainingError naming it; this
    process never waits on a dead peer, and its peers never outlive the call.
    """
    context = torch.multiprocessing.get_context("spawn")
    failures = context.SimpleQueue()
    meeting = Path(tempfile.mkdtemp(prefix="trendloop-ddp-"))
    address = f"file://{meeting / 'store'}"  # a file rendezvous: no port to pick and lose to a race
    backend = "nccl" if device.type == "cuda" else "gloo"
    threads = max(1, torch.get_num_threads() // world)  # CPU processes split the cores
    peers = [
        context.Process(target=_peer, args=(rank, world, backend, address, threads, fit, job, failures), daemon=True)
        for rank in range(1, world)
    ]
    for peer in peers:
        peer.start()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(backend, init_method=address, rank=0, world_size=world, timeout=TIMEOUT)
        return fit(job, Peers(0, world), on_step, on_epoch)
    except RuntimeError as error:  # a collective failed: find out which peer ended it
        reason = _peer_failure(peers, failures)
        if reason is None:
            raise
        raise TrainingError(f"{reason}; the checkpoint of the last finished epoch is kept") from error
    finally:
        torch.set_num_threads(before)
        if dist.is_initialized():
            dist.destroy_process_group()
        for peer in peers:
            if peer.is_alive():
                peer.terminate()
            peer.join(10)
        shutil.rmtree(meeting, ignore_errors=True)


def _peer(
    rank: int, world: int, backend: str, address: str, threads: int, fit: Fit, job: object, failures: Any
) -> None:
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(backend, init_method=address, rank=rank, world_size=world, timeout=TIMEOUT)
        fit(job, Peers(rank, world), None, None)
    except Exception as error:  # noqa: BLE001 - any failure is reported to rank 0, in one line
        failures.put((rank, f"{type(error).__name__}: {error}".splitlines()[0]))
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _peer_failure(peers: list[Any], failures: Any) -> str | None:
    """What ended a peer, in one line; None when every peer is still running."""
    world = len(peers) + 1
    said = {}
    try:
        while not failures.empty():
            rank, message = failures.get()
            said[rank] = message
    except (OSError, EOFError, queue.Empty):
        pass
    for rank, peer in enumerate(peers, 1):
        peer.join(5)  # a peer whose socket closed is exiting: give it the moment to be reaped
        if rank in said:
            return f"training process {rank} of {world} failed: {said[rank]}"
        if peer.exitcode is not None:
            how = f"signal {-peer.exitcode}" if peer.exitcode < 0 else f"exit status {peer.exitcode}"
            return f"training process {rank} of {world} died ({how})"
    return None
