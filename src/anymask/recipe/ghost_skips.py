"""Ghost skip connections (gsc): temporary shortcuts around each (conv, BN) pair of the model's blocks.

Extra shortcut paths carry signal and gradient around layers that are too sparse to carry them well
early in training. The official code adds two dense 1x1 conv + BN branches per ResNet block that are
never pruned nor removed (at 98% sparsity they outweigh the sparse network 5.5 to 1). Here a skip
takes the input of a site's entry conv and adds `s * shortcut(input)` to the output of its exit BN,
`s` ramping 1 -> 0 over the ghost phase; `remove()` takes every hook away, so the final model is the
original architecture with exactly the mask's weights.

Skips are forward hooks, not wrapper modules, so parameter names (and masks keyed by them) never
change. The default shortcut has no parameters; `gsc_mode="learned"` adds a 1x1 conv + BN branch per
site, held by the part outside the model's module tree (never pruned, never saved with the model).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from anymask.errors import AnymaskError
from anymask.recipe.base import RECIPE_PARTS, RecipeContext, check_choice
from anymask.recipe.schedules import GhostPart

MODES = ("free", "learned")


def match_size(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Average-pool `x` to spatial `size` (kernel = stride = ratio when the sizes divide)."""
    return x if x.shape[-2:] == size else F.adaptive_avg_pool2d(x, size)


def average_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Means of groups of adjacent channels: for a ratio k, output i is the mean of [i*k, (i+1)*k).

    Every input channel stays in the skip; adaptive pooling spreads non-divisible ratios evenly.
    """
    return F.adaptive_avg_pool3d(x.unsqueeze(1), (channels, *x.shape[-2:])).squeeze(1)


def unit_rms(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """`x` divided by its root mean square per sample, so a skip joins at the unit scale of a BN output.

    Unnormalised skips compound through depth: every site adds its input to a BN output, so the
    signal roughly doubles per block (at init, logits grow tens to hundreds of times in deep ResNets).
    Per-sample statistics keep evaluation independent of the batch.
    """
    return x * torch.rsqrt(x.square().mean(dim=(1, 2, 3), keepdim=True) + eps)


def free_shortcut(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The parameter-free skip from an entry input to an exit output of `shape` [B, C, H, W].

    Spatial size by average pooling, fewer channels by group means, more channels by zero-padding
    (He et al.'s option A), and unit RMS over the real channels.
    """
    x = match_size(x, shape[-2:])
    if x.shape[1] > shape[1]:
        x = average_channels(x, shape[1])
    x = unit_rms(x)
    return F.pad(x, (0, 0, 0, 0, 0, shape[1] - x.shape[1])) if x.shape[1] < shape[1] else x


def learned_branch(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv + BN whose BN scale starts at 0: the branch joins as an exact no-op and grows by learning.

    (The official code fills the conv with 1e-4, but the BN right after undoes any weight scale, so
    that init is not small; a zero BN scale is.) The conv keeps PyTorch's default init.
    """
    bn = nn.BatchNorm2d(out_channels)
    nn.init.zeros_(bn.weight)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), bn)


@RECIPE_PARTS.register("gsc")
class GhostSkips(GhostPart):
    """Skips at `anymask.models.ghost_skip_sites(model)`, scaled by `s = 1 - ramp` until removed."""

    name = "gsc"

    def __init__(self, config: Any, total_epochs: float) -> None:
        super().__init__(config, total_epochs)
        self.mode = check_choice("gsc_mode", config.gsc_mode, MODES)
        self.scale: torch.Tensor | None = None  # a tensor, so torch.compile does not recompile as it moves
        self.branches: list[nn.Sequential] = []
        self._handles: list[RemovableHandle] = []
        self._inputs: dict[int, torch.Tensor] = {}

    def sites(self, context: RecipeContext) -> list[tuple[str, str]]:
        """The model's declared sites, else the (conv, BN) pairs traced by running it once."""
        from anymask.models import ghost_skip_sites
        from anymask.models.calling import ModelCall

        shape = getattr(context.data, "input_shape", None)
        return ghost_skip_sites(context.model, shape, ModelCall.of(context.model, context.output_fn))

    def check(self, context: RecipeContext) -> str | None:
        if self.sites(context):
            return None
        modules = list(context.model.modules())
        norms = sum(isinstance(m, nn.BatchNorm2d) for m in modules)
        others = sorted({type(m).__name__ for m in modules if "Norm" in type(m).__name__} - {"BatchNorm2d"})
        found = (
            f"none of its {norms} BatchNorm2d takes a Conv2d's output directly"
            if norms
            else "it has no BatchNorm2d" + (f"; its norms: {', '.join(others)}" if others else "")
        )
        return f"ghost-skip sites, a Conv2d feeding a BatchNorm2d outside the stem and shortcuts ({found})"

    def prepare(self, context: RecipeContext) -> None:
        model = context.model
        sites = [(model.get_submodule(a), model.get_submodule(b)) for a, b in self.sites(context)]
        if not sites:
            raise AnymaskError(f"gsc needs {self.check(context)}; drop gsc from --recipe")
        self.scale = torch.ones((), device=context.device)
        for index, (entry, exit_) in enumerate(sites):
            self._handles.append(entry.register_forward_pre_hook(functools.partial(self._store, index)))
            self._handles.append(exit_.register_forward_hook(functools.partial(self._add, index)))
        if self.mode == "learned":
            memory_format = torch.channels_last if context.channels_last else torch.preserve_format
            self.branches = [
                learned_branch(_channels(entry, "in_channels"), _channels(exit_, "num_features")).to(
                    context.device, memory_format=memory_format
                )
                for entry, exit_ in sites
            ]
        self.update(context.start_epoch)

    def _store(self, index: int, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._inputs[index] = args[0]

    def _add(
        self, index: int, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        x = self._inputs.pop(index)
        if self.branches:
            branch = self.branches[index]
            branch.train(module.training)  # outside the model, so model.train()/eval() cannot reach it
            skip = branch(match_size(x, output.shape[-2:]))
        else:
            skip = free_shortcut(x, output.shape)
        return output + self.scale.to(output.dtype) * skip.to(output.dtype)

    def parameters(self) -> list[nn.Parameter]:
        return [p for branch in self.branches for p in branch.parameters()]

    def modules(self) -> list[nn.Module]:
        return list(self.branches)

    def update(self, epoch: float) -> None:
        super().update(epoch)
        if self.scale is not None:
            self.scale.fill_(1.0 - self.progress)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self.branches, self._inputs = [], [], {}
        self.progress = 1.0

    def metrics(self) -> dict[str, float]:
        return {"scale": 1.0 - self.progress}

    def state_dict(self) -> dict[str, Any]:
        return {"branches": [branch.state_dict() for branch in self.branches]} if self.branches else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.branches and "branches" in state:
            for branch, saved in zip(self.branches, state["branches"], strict=True):
                branch.load_state_dict(saved)


def _channels(module: nn.Module, attribute: str) -> int:
    if not hasattr(module, attribute):
        raise AnymaskError(
            f"gsc_mode 'learned' needs ghost-skip sites from a Conv2d to a BatchNorm2d; "
            f"{type(module).__name__} has no {attribute}"
        )
    return int(getattr(module, attribute))
