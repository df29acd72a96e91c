"""Ghost soft neurons (gsn): every ReLU module starts as a smooth activation and turns into ReLU.

A smooth activation passes gradient through negative pre-activations, which helps a sparse network
whose few weights must all learn early. The official code swaps ReLU for the smooth function for the
whole run, so its trained model is a different architecture; here each ReLU module is replaced by a
`GhostSoftNeuron` that blends `(1 - l) * soft(x) + l * relu(x)`, `l` ramping 0 -> 1 over the ghost
phase, and `remove()` puts the original ReLU objects back: the trained model is the original one.

A ReLU module is an `nn.ReLU` (or subclass), or any other module without parameters, buffers or
children whose forward returns exactly relu(x) on a probe of negative, zero and positive values: a
library's own ReLU class qualifies by what it computes, whatever its name. Functional `F.relu` calls
inside a forward cannot be reached.
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


RELU_PROBE = torch.linspace(-8.0, 8.0, 96).reshape(2, 3, 4, 4)
"""Negative, near-zero and positive values, beyond 6 too (so ReLU6 and clipped variants do not pass)."""


def computes_relu(module: nn.Module) -> bool:
    """True for nn.ReLU and for parameter-free leaf modules whose output on `RELU_PROBE` is relu's."""
    if isinstance(module, nn.ReLU):
        return True
    contents = (module.children(), module.parameters(), module.buffers())
    if any(next(iterator, None) is not None for iterator in contents):
        return False
    try:
        with torch.no_grad():
            output = module.forward(RELU_PROBE.clone())  # forward, not __call__: the user's hooks stay quiet
    except Exception:  # a module that cannot take a lone tensor is not an activation
        return False
    return isinstance(output, torch.Tensor) and torch.equal(output, F.relu(RELU_PROBE))


def relu_sites(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, child name, module) for every ReLU module of `model`, each module probed once."""
    verdicts: dict[int, bool] = {}
    sites = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if id(child) not in verdicts:
                verdicts[id(child)] = computes_relu(child)
            if verdicts[id(child)]:
                sites.append((parent, name, child))
    return sites


def describe_activations(model: nn.Module) -> str:
    """'GELUActivation x4, Tanh x1': the model's activation modules by class, for error messages."""
    counts: dict[str, int] = {}
    for module in model.modules():
        kind = type(module)
        if not any(module.children()) and (
            "activation" in kind.__module__.lower() or kind.__name__.endswith("Activation")
        ):
            counts[kind.__name__] = counts.get(kind.__name__, 0) + 1
    return ", ".join(f"{name} x{count}" for name, count in counts.items())


@RECIPE_PARTS.register("gsn")
class GhostSoftNeurons(GhostPart):
    """Replaces every ReLU module of the model (functional `F.relu` calls cannot be reached)."""

    name = "gsn"

    def __init__(self, config: Any, total_epochs: float) -> None:
        super().__init__(config, total_epochs)
        self.soft = check_choice("gsn_soft", config.gsn_soft, SOFT)
        self._sites: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, child name, original ReLU)
        self._neurons: list[GhostSoftNeuron] = []

    def check(self, context: RecipeContext) -> str | None:
        if relu_sites(context.model):
            return None
        found = describe_activations(context.model)
        return "ReLU activation modules to blend into, and the model has none (" + (
            f"its activations: {found})" if found else "functional relu calls cannot be replaced)"
        )

    def prepare(self, context: RecipeContext) -> None:
        self._sites = relu_sites(context.model)
        if not self._sites:
            raise AnymaskError(f"gsn needs {self.check(context)}; drop gsn from --recipe")
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
