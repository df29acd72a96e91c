"""Sparse-aware initialisation (sparse-init): each unit's kept weights rescaled for the inputs it keeps.

A dense initialisation sets each weight's variance for a unit that sums all its fan-in inputs; after
pruning, a unit that keeps k of its n inputs produces an output k/n times as large in variance, and the
signal fades through depth. Unit scaling (Evci et al., AAAI 2022, "Gradient flow in sparse neural
networks and how lottery tickets win"; rigl_tf2's `init_utils`) sets each output unit's weights for the
number of inputs the mask keeps. Here the model's own initialisation is kept and each output unit's
kept weights are multiplied by sqrt(n / k), which restores the variance of its output to that of the
dense unit. A unit with no kept weights stays zero. Behind a BatchNorm the output's scale is
normalised away and the change acts through the weights' norm (their effective learning rate); on
layers without one (the classifier) it changes the signal itself. The cheap alternative to GradInit:
one multiplication per weight, no data.
"""

from __future__ import annotations

import torch

from anymask.recipe.base import RECIPE_PARTS, RecipeContext, RecipePart


def unit_scales(mask: torch.Tensor) -> torch.Tensor:
    """sqrt(fan-in / kept fan-in) per output unit (dim 0), shaped to broadcast over the weight; 1 where
    a unit keeps nothing (its weights are 0 anyway)."""
    kept = mask.flatten(1).sum(1).double()
    fan_in = mask[0].numel()
    scales = torch.where(kept > 0, (fan_in / kept.clamp_min(1)).sqrt(), torch.ones_like(kept))
    return scales.float().view(-1, *([1] * (mask.dim() - 1)))


@RECIPE_PARTS.register("sparse-init")
class SparseInit(RecipePart):
    """Rescales kept weights once, after masking and before GradInit (which may rescale them again)."""

    name = "sparse-init"

    def __init__(self, config, total_epochs: float) -> None:
        super().__init__(config, total_epochs)
        self.mean_scale = 1.0

    def check(self, context: RecipeContext) -> str | None:
        if context.mask is not None and not len(context.mask):
            return "a mask (this run prunes nothing, so every unit keeps all its inputs)"
        return None

    @torch.no_grad()
    def prepare(self, context: RecipeContext) -> None:
        if context.resuming:
            return
        scales = []
        for name, mask in context.mask.items():
            weight = context.model.get_parameter(name)
            factor = unit_scales(mask).to(weight.device)
            weight.mul_(factor.to(weight.dtype))
            scales.append(factor.flatten())
        self.mean_scale = float(torch.cat(scales).mean()) if scales else 1.0

    def metrics(self) -> dict[str, float]:
        return {"mean_unit_scale": self.mean_scale}

    def state_dict(self) -> dict[str, float]:
        return {"mean_scale": self.mean_scale}

    def load_state_dict(self, state: dict) -> None:
        self.mean_scale = float(state.get("mean_scale", self.mean_scale))
