"""Ghost weights (gw): the pruned weights start alive, are brought to zero over the ghost phase, and are cut.

A dense start trains more weights early, when a sparse network learns slowest; bringing the extra
weights to zero gradually hands what they learned over to the kept weights before they leave (the idea
of the "dual lottery ticket" squeeze, Bai et al., ICLR 2022). During the ghost phase every masked weight
trains; at its end the weights outside the mask and their optimizer state are set to exactly zero and
the mask is enforced from then on. The run's records keep how much weight norm was still outside the
mask at that moment (`gw/outside_fraction_at_cut`, `gw/outside_norm_at_cut`).

`gw_form` says how they reach zero:

- `fade` (default): before each step the weights outside the mask are rescaled to carry the factor
  `1 - r` of the ghost schedule, so they reach zero on a fixed smooth schedule whatever the gradients do.
- `absolute`: a penalty `lambda(t) * sum ||w * (1 - m)||^2`, lambda rising on the ghost schedule to
  `gw_lambda` (the plain squeeze).
- `relative`: a penalty on each output unit's share of its squared norm outside the mask,
  `lambda(t) * sum_u ||w_u * (1 - m_u)||^2 / ||w_u||^2`, which a unit's scale does not change.

Why a form matters: behind a BatchNorm a unit's output ignores the scale of its weights and its
effective learning rate grows as 1/||w||^2. The plain squeeze shrinks a 98%-pruned unit's norm several
-fold in a few steps once lambda is large, and the kept weights are thrown about (a calibration fell
8-25 points behind the default mid-run). The relative penalty cannot shrink a unit but is weak while
most of the norm lies outside the mask; the fade shrinks each unit on the schedule's smooth path and
reaches the default protocol's norm only at the cut. docs/recipe.md has the calibration of the three.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anymask.errors import AnymaskError
from anymask.recipe.base import RECIPE_PARTS, RecipeContext, check_choice
from anymask.recipe.schedules import GhostPart

FORMS = ("fade", "relative", "absolute")


def outside_share(weight: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """Per output unit (dim 0): squared norm outside the mask over the unit's squared norm."""
    squares = weight.pow(2).flatten(1)
    return (squares * outside.flatten(1)).sum(1) / squares.sum(1).clamp_min(1e-12)


@RECIPE_PARTS.register("gw")
class GhostWeights(GhostPart):
    """Every masked weight alive until the ghost end, squeezed out of the mask, then cut exactly."""

    name = "gw"

    def __init__(self, config: Any, total_epochs: float) -> None:
        super().__init__(config, total_epochs)
        self.form = check_choice("gw_form", config.gw_form, FORMS)
        if not (config.gw_lambda >= 0 and config.gw_lambda < float("inf")):
            raise AnymaskError(f"gw_lambda must be a finite number >= 0, got {config.gw_lambda}")
        self.weights: list[nn.Parameter] = []
        self.outside: list[torch.Tensor] = []  # 1 where the mask prunes, per weight
        self.mask: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.enforcer: Any = None
        self.cut = False
        self.at_cut: dict[str, float] = {}
        self.level = 1.0  # fade: the factor the weights outside the mask carry now

    def check(self, context: RecipeContext) -> str | None:
        if context.mask is not None and not len(context.mask):
            return "a mask to squeeze into (this run prunes nothing)"
        if context.config.dst.dst != "none":
            return "a fixed mask, and dynamic sparse training moves it (drop gw or --dst)"
        return None

    def prepare(self, context: RecipeContext) -> None:
        self.mask = context.mask
        self.weights = [context.model.get_parameter(name) for name in context.mask]
        self.outside = [
            (~context.mask[name]).to(p.device, p.dtype)
            for name, p in zip(context.mask, self.weights, strict=True)
        ]
        if not context.resuming and context.initial_weights is not None:
            with torch.no_grad():  # pruning zeroed them: they start from their initial values
                for name, weight in zip(context.mask, self.weights, strict=True):
                    initial = context.initial_weights[name].to(weight.device, weight.dtype)
                    weight.copy_(torch.where(context.mask[name].to(weight.device), weight, initial))
        self.update(context.start_epoch)

    def enforced_mask(self, mask: Any) -> Any:
        from anymask.masks import Mask

        return Mask({name: torch.ones_like(tensor) for name, tensor in mask.items()})

    def bind(self, optimizer: torch.optim.Optimizer, enforcer: Any) -> None:
        self.optimizer, self.enforcer = optimizer, enforcer

    def update(self, epoch: float) -> None:
        super().update(epoch)
        if self.form == "fade" and not self.cut and self.weights:
            self.fade_to(1.0 - self.progress)

    @torch.no_grad()
    def fade_to(self, level: float) -> None:
        """Multiply the weights outside the mask by level / (the level they carry now): on the schedule
        they reach exactly zero at the ghost end, whatever the gradients did in between."""
        if level == self.level or self.level == 0:
            return
        factor = level / self.level
        for weight, outside in zip(self.weights, self.outside, strict=True):
            weight.mul_(1 - outside * (1 - factor))
        self.level = level

    def strength(self) -> float:
        return 0.0 if self.form == "fade" else self.config.gw_lambda * self.progress

    def penalty(self) -> torch.Tensor | None:
        if self.cut or not self.weights or self.strength() == 0:
            return None
        if self.form == "relative":
            total = sum(outside_share(w, o).sum() for w, o in zip(self.weights, self.outside, strict=True))
        else:
            total = sum((w * o).pow(2).sum() for w, o in zip(self.weights, self.outside, strict=True))
        return self.strength() * total

    @torch.no_grad()
    def outside_norms(self) -> dict[str, float]:
        """Squared weight norm outside the mask: its square root and its share of the masked weights'."""
        outside = sum(float((w * o).pow(2).sum()) for w, o in zip(self.weights, self.outside, strict=True))
        total = sum(float(w.pow(2).sum()) for w in self.weights)
        return {"outside_norm": outside**0.5, "outside_fraction": outside / max(total, 1e-12)}

    @torch.no_grad()
    def remove(self) -> None:
        """The cut: weights outside the mask and their optimizer state to exactly zero, the mask enforced."""
        if self.cut or not self.weights:
            self.cut = True
            return
        self.at_cut = self.outside_norms()
        if self.optimizer is not None:
            for weight, outside in zip(self.weights, self.outside, strict=True):
                for value in self.optimizer.state.get(weight, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                        value.mul_(1 - outside)  # momentum (or Adam's moments) of pruned weights
        if self.enforcer is not None:
            self.enforcer.set_mask(self.mask)  # zeroes the pruned weights and keeps them zero
        else:
            for weight, outside in zip(self.weights, self.outside, strict=True):
                weight.mul_(1 - outside)
        self.cut, self.progress = True, 1.0

    def metrics(self) -> dict[str, float]:
        if self.cut:
            return {f"{key}_at_cut": value for key, value in self.at_cut.items()}
        knob = {"level": self.level} if self.form == "fade" else {"lambda": self.strength()}
        return {**knob, **self.outside_norms()}

    def summary(self) -> dict[str, Any]:
        return {f"gw_{key}_at_cut": value for key, value in self.at_cut.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"cut": self.cut, "at_cut": self.at_cut, "level": self.level}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.at_cut = dict(state.get("at_cut", {}))
        self.level = float(state.get("level", 1.0))
