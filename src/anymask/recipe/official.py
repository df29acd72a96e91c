"""The official ToST code's variant as permanent parts: `smooth` activations and `dense-skips` branches.

The paper's code keeps its "ghosts" for the whole run: every ReLU is replaced by a smooth activation,
also at test time, and each ResNet BasicBlock gets two dense 1x1 conv + BN branches (conv weights
filled with 1e-4) that are trained, never pruned and never removed. anymask's `gsn` and `gsc` are the
temporary versions; these two parts reproduce the official behaviour so the two can be compared
(preset `tost-official` = smooth, dense-skips, lrsi, ls). A model trained with them is NOT the plain
architecture: its state dict has the branch keys too, and its activations are not ReLUs. The run's
`summary.json` says so (`plain_architecture: false`, `extra_parameters`, `architecture`).

The branches live in the model's module tree (submodules `dense_skip1`, `dense_skip2` of each block),
so they are trained in the model's optimizer group, wrapped by DDP with the rest of the model (their
BN synced too), rescaled by GradInit as the official code's GradInit rescales every model parameter,
saved in checkpoints and in `model.safetensors`. They are added to the block's computation by forward
hooks, so no parameter of the plain model is renamed and the mask (made on the plain model before
they exist) applies by name as ever.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from anymask.recipe.base import RECIPE_PARTS, RecipeContext, RecipePart, check_choice

# The smooth activations as modules, under the names `gsn_soft` takes (the official code's names).
SMOOTH_MODULES: dict[str, type[nn.Module]] = {
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
}
BRANCH_FILL = 1e-4
"""The official code fills each branch conv's weights with this constant (its BN then rescales them)."""
BRANCH_PREFIX = "dense_skip"


def relu_sites(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, child name) of every ReLU module of `model`, found as ghost soft neurons find them."""
    from anymask.recipe.ghost_neurons import relu_sites as ghost_neuron_sites

    return [(parent, name) for parent, name, _ in ghost_neuron_sites(model)]


@RECIPE_PARTS.register("smooth")
class SmoothActivations(RecipePart):
    """Every nn.ReLU module becomes the `gsn_soft` activation for good: in training, evaluation and the
    saved model."""

    name = "smooth"

    def __init__(self, config: Any, total_epochs: float) -> None:
        super().__init__(config, total_epochs)
        self.soft = check_choice("gsn_soft", config.gsn_soft, SMOOTH_MODULES)
        self.replaced = 0

    def check(self, context: RecipeContext) -> str | None:
        if relu_sites(context.model):
            return None
        return "ReLU activation modules to replace, and the model has none (functional relu calls cannot be)"

    def prepare(self, context: RecipeContext) -> None:
        sites = relu_sites(context.model)
        for parent, name in sites:
            setattr(parent, name, SMOOTH_MODULES[self.soft]())
        self.replaced = len(sites)

    def model_change(self) -> str:
        return f"{self.soft} instead of ReLU ({self.replaced} activations), also at test time"


def basic_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's ResNet BasicBlocks: where the official code has its skip branches."""
    from anymask.models.resnet import BasicBlock

    return [module for module in model.modules() if isinstance(module, BasicBlock)]


def dense_branch(entry: nn.Conv2d, exit_: nn.BatchNorm2d) -> nn.Sequential:
    """A 1x1 conv (the entry conv's stride, so sizes match) + BN from the entry's input to the exit's output.

    Built with `skip_init`, so creating a branch draws nothing from the global random generator.
    """
    branch = nn.utils.skip_init(
        nn.Conv2d, entry.in_channels, exit_.num_features, 1, stride=entry.stride, bias=False
    )
    with torch.no_grad():
        branch.weight.fill_(BRANCH_FILL)
    return nn.Sequential(branch, nn.BatchNorm2d(exit_.num_features))


@RECIPE_PARTS.register("dense-skips")
class DenseSkips(RecipePart):
    """Two dense branches per BasicBlock, as the official code's `conv_jump1` and `conv_jump2`.

    Branch k runs from the input of the block's k-th conv to the output of its k-th BN: the first from
    the block input (strided like conv1) to bn1, the second from conv2's input to bn2 (the official code
    adds it after the shortcut, the same sum). Never pruned (the mask predates them), never removed.
    """

    name = "dense-skips"

    def __init__(self, config: Any, total_epochs: float) -> None:
        super().__init__(config, total_epochs)
        self.branches: list[nn.Module] = []
        self._inputs: dict[int, torch.Tensor] = {}  # entry inputs waiting for their exit, by branch index

    def check(self, context: RecipeContext) -> str | None:
        if basic_blocks(context.model):
            return None
        return (
            "ResNet BasicBlocks, where the official ToST code puts its skip branches (resnet18, resnet20, "
            f"resnet32, resnet34, resnet56), and this {type(context.model).__name__} has none"
        )

    def prepare(self, context: RecipeContext) -> None:
        memory_format = torch.channels_last if context.channels_last else torch.preserve_format
        for block in basic_blocks(context.model):
            for number, (entry_name, exit_name) in enumerate(block.GHOST_PAIRS, start=1):
                entry, exit_ = block.get_submodule(entry_name), block.get_submodule(exit_name)
                branch = dense_branch(entry, exit_).to(context.device, memory_format=memory_format)
                block.add_module(f"{BRANCH_PREFIX}{number}", branch)
                self._attach(entry, exit_, branch)

    def _attach(self, entry: nn.Module, exit_: nn.Module, branch: nn.Module) -> None:
        index = len(self.branches)
        self.branches.append(branch)
        entry.register_forward_pre_hook(functools.partial(self._store, index))
        exit_.register_forward_hook(functools.partial(self._add, index, branch))

    def _store(self, index: int, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._inputs[index] = args[0]

    def _add(
        self, index: int, branch: nn.Module, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        return output + branch(self._inputs.pop(index)).to(output.dtype)

    def extra_parameters(self) -> int:
        return sum(p.numel() for branch in self.branches for p in branch.parameters())

    def model_change(self) -> str:
        return (
            f"{len(self.branches)} dense 1x1 conv + BN skip branches "
            f"({self.extra_parameters()} parameters, never pruned)"
        )
