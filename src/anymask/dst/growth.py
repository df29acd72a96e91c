"""Growth rules: which inactive weights a mask update turns on. Each rule scores every position of one
weight tensor; the update grows the highest-scoring positions that its drop step did not keep.

A rule is `(param, generator) -> scores` registered in `GROWTH`; `--dst NAME` picks it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from anymask.errors import AnymaskError
from anymask.registry import Registry

GrowthRule = Callable[[nn.Parameter, torch.Generator], torch.Tensor]
GROWTH: Registry[GrowthRule] = Registry("dst method")
# Rules that read the full weight gradient: their update steps cost the dense weight gradient (flops.py).
DENSE_GRADIENT = frozenset({"rigl"})


@GROWTH.register("set")
def random_scores(param: nn.Parameter, generator: torch.Generator) -> torch.Tensor:
    """SET (Mocanu et al. 2018): uniform random scores. Drawn on the CPU from the run's seeded generator,
    so a seed grows the same weights on any device and on every rank."""
    return torch.rand(param.shape, generator=generator).to(param.device)


@GROWTH.register("rigl")
def gradient_scores(param: nn.Parameter, generator: torch.Generator) -> torch.Tensor:
    """RigL (Evci et al. 2020): |dense gradient| of the current batch, pruned positions included."""
    if param.grad is None:
        raise AnymaskError(
            "RigL grows by gradient but a prunable weight has none: call the update after "
            "loss.backward() and before optimizer.step() (the step's mask hook zeroes pruned gradients)"
        )
    return param.grad.detach().abs()
