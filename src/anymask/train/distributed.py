"""Multi-process training under `torchrun`: the process group, global BatchNorm and gradient sync.

A single process is a world of size 1 and every helper here is then a no-op, so the training loop has
one code path. Under DDP each rank trains on its contiguous share of every global batch; for the result
to equal a single-process run with the same global batch, two things DDP does not do on its own are done
here: BatchNorm statistics are computed over the global batch (`sync_batchnorm`), and gradients of the
recipe's ghost parameters, which live outside the model DDP wraps, are averaged (`average_gradients`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from anymask import collectives
from anymask.errors import AnymaskError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: str = "auto") -> World:
    """Join the process group torchrun describes in the environment.

    nccl when the run's device is a GPU, gloo otherwise (so `--device cpu` works on a GPU machine too).
    Each GPU rank binds its own device first: object collectives (the mask broadcast) and barriers
    place their tensors on the current device, and without it every rank would use GPU 0.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), size)
    if not dist.is_initialized():
        on_gpu = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
        if on_gpu:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if on_gpu else "gloo")
    return world


def check_device_name(name: str) -> torch.device:
    """The device a name such as 'cpu' or 'cuda:1' means, or one line for a name that is none."""
    try:
        return torch.device(name)
    except RuntimeError:
        raise AnymaskError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None


def resolve_device(name: str, world: World) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            index = world.local_rank if world.distributed else torch.cuda.current_device()
            return torch.device("cuda", index)
        return torch.device("cpu")
    device = check_device_name(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AnymaskError("device 'cuda' asked for but no CUDA GPU is available; use --device cpu or auto")
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def broadcast_object(obj: object, world: World) -> object:
    """Rank 0's object on every rank (used for the mask, computed once)."""
    if not world.distributed:
        return obj
    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """`values` summed over ranks (a copy), for epoch metrics that must describe the global batch."""
    total = values.clone()
    if world.distributed:
        dist.all_reduce(total)
    return total


def average_gradients(params: Sequence[nn.Parameter], world: World) -> None:
    """Each gradient replaced by its mean over the world's ranks (`anymask.collectives.average_gradients`)."""
    if world.distributed:
        collectives.average_gradients(params)


# -- BatchNorm over the global batch ------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is again a sum over ranks (the gradient of a sum every rank sees)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


def statistics_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half-precision activations (as the native BN kernels), else the input's own."""
    return torch.promote_types(x.dtype, torch.float32)


@torch.compiler.disable
def global_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel (mean, biased variance) of `x` [N, C, H, W] over every rank's batch, and the count.

    Each rank's (count, mean, variance) goes into its own row of a table that one all-reduce fills in;
    the rows are then combined exactly (Chan et al.), which stays accurate where E[x^2] - E[x]^2 would
    cancel. Differentiable: gradients flow back to every rank's activations, as in one big batch.
    The count stays a tensor so that a GPU never waits for it.
    """
    var, mean = torch.var_mean(x.to(statistics_dtype(x)), dim=(0, 2, 3), correction=0)
    count = x.numel() // x.shape[1]
    table = mean.new_zeros(dist.get_world_size(), 2 * len(mean) + 1)
    table[dist.get_rank()] = torch.cat([mean, var, mean.new_full((1,), count)])
    table = _AllReduceSum.apply(table)
    counts, means, variances = table[:, -1:], *table[:, :-1].chunk(2, dim=1)
    total = counts.sum()
    global_mean = (counts * means).sum(0) / total
    global_var = (counts * (variances + (means - global_mean).square())).sum(0) / total
    return global_mean, global_var, total


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of all ranks, on any device.

    torch.nn.SyncBatchNorm (PyTorch 2.13) refuses CPU tensors, so gloo runs could not use it; it is
    also not a BatchNorm2d, which code that finds BN layers by type (ghost-skip sites, GradInit)
    relies on. Outside distributed training, or in eval mode, this is exactly nn.BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        mean, var, count = global_moments(x)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        y = x.to(scale.dtype) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """As nn.BatchNorm2d: momentum (or cumulative) averages, unbiased variance of the whole batch."""
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var * count / (count - 1).clamp(min=1), factor)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """Make every nn.BatchNorm2d of `model` a SyncBatchNorm2d, in place.

    The modules keep their identity, parameters, buffers, state-dict keys and hooks (ghost skips hook
    BN outputs), so this may run after the recipe has been installed.
    """
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = SyncBatchNorm2d
    return model
