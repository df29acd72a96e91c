"""What ranks under torchrun share outside DDP's own gradient sync: rank 0's tensors, and the averaged
gradients of parameters the (DDP) model does not hold. Without a process group each is a no-op."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def broadcast_from_rank_zero(model: nn.Module, outside: Sequence[nn.Module] = ()) -> None:
    """Rank 0's weights and buffers on every rank: masks, GradInit's scales and ghost branches could
    differ where each rank scored its own batches."""
    if not distributed():
        return
    for module in (model, *outside):
        for tensor in module.state_dict(keep_vars=True).values():
            dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks, in one collective: for parameters DDP does not own
    (the recipe's ghost branches are held outside the model; without this each rank trains its own)."""
    if not distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        grad.copy_(synced)
