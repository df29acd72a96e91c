"""Ghost soft neurons (gsn): every nn.ReLU starts as a smooth activation and turns into ReLU.

A smooth activation passes gradient through negative pre-activations, which helps a sparse network
whose few weights must all learn early. The official code swaps ReLU for the smooth function for the
whole run, so its trained model is a different architecture; here each ReLU module is replaced by a
`GhostSoftNeuron` that blends `(1 - l) * soft(x) + l * relu(x)`, `l` ramping 0 -> 1 over the ghost
phase, and `remove()` puts the original nn.ReLU objects back: the trained model is the original one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anymask.errors import AnymaskError
from anymask.recipe.base import RECIPE_PARTS, RecipeContext, check_choice
from anymask.recipe.schedules import GhostPart

SOFT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "swish": F.silu,
    "mish": F.mish,
    "gelu": F.gelu,
    "softplus": F.softplus,
    "elu": F.elu,
}


class GhostSoftNeuron(nn.Module):
    """`(1 - blend) * soft(x) + blend * relu(x)`, exactly soft at blend 0 and exactly ReLU at blend 1.

    `blend` is a non-persistent buffer: it follows the model across devices, stays out of
    `state_dict` (checkpoints keep the model's keys) and, being a tensor, does not make torch.compile
    recompile each time the schedule moves.
    """

    blend: torch.Tensor

    def __init__(self, soft: str, device: torch.device | None = None) -> None:
        super().__init__()
        self.soft_name = soft
        self.soft = SOFT[soft]
        self.register_buffer("blend", torch.zeros((), device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # lerp computes start + w * (end - start) for w < 0.5 and end - (1 - w) * (end - start) above:
        # both endpoints come out exact.
        return torch.lerp(self.soft(x), F.relu(x), self.blend.to(x.dtype))

    def extra_repr(self) -> str:
        return f"soft={self.soft_name}, blend={float(self.blend):.4f}"


@RECIPE_PARTS.register("gsn")
class GhostSoftNeurons(GhostPart):
    """Replaces every nn.ReLU module of the model (functional `F.relu` calls cannot be reached)."""

    name = "gsn"

    def __init__(self, config: Any, total_epochs: float) -> None:
        super().__init__(config, total_epochs)
        self.soft = check_choice("gsn_soft", config.gsn_soft, SOFT)
        self._sites: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, child name, original ReLU)
        self._neurons: list[GhostSoftNeuron] = []

    def prepare(self, context: RecipeContext) -> None:
        self._sites = [
            (parent, name, child)
            for parent in context.model.modules()
            for name, child in parent.named_children()
            if isinstance(child, nn.ReLU)
        ]
        if not self._sites:
            raise AnymaskError(
                "gsn found no nn.ReLU modules in the model (functional relu calls cannot be replaced); "
                "drop gsn from --recipe or use nn.ReLU modules"
            )
        self._neurons = [GhostSoftNeuron(self.soft, device=context.device) for _ in self._sites]
        for (parent, name, _), neuron in zip(self._sites, self._neurons, strict=True):
            setattr(parent, name, neuron)
        self.update(context.start_epoch)

    def update(self, epoch: float) -> None:
        super().update(epoch)
        for neuron in self._neurons:
            neuron.blend.fill_(self.progress)

    def remove(self) -> None:
        for parent, name, relu in self._sites:
            setattr(parent, name, relu)
        self._sites, self._neurons = [], []
        self.progress = 1.0

    def metrics(self) -> dict[str, float]:
        return {"blend": self.progress}
