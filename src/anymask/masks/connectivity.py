"""Effective sparsity: which kept weights lie on a path from the input to an output.

A mask can leave every layer some weights (no layer collapse) and still cut the network in two: the
kept weights of one layer may feed only channels that the next layer's kept weights ignore. Such a
network trains to chance. Following Vysogorets and Kempe ("Connectivity matters: neural network pruning
through the lens of effective sparsity", 2021), a kept weight is *effective* when it lies on at least one
path of kept weights from some input pixel to some output; the rest are dead weight.

How it is computed, on any model that runs on one image: a private float64 copy is made positive-linear
(every Conv/Linear weight replaced by its 0/1 mask, or by ones when the mask does not cover it, biases
zeroed, activations, normalisations and dropout replaced by the identity, max-pools by average pools of
the same window, every other parameter and buffer made non-negative). A unit then carries a positive
value on an all-ones input exactly when a path of kept weights joins it to the input (reachability), and
d sum(output) / d unit is positive exactly when a path joins it to an output (co-reachability): residual
additions, concatenations, pooling, depthwise and 1x1 convolutions need no special case. A weight is
effective when mask * d sum(output) / d weight > 0. To stay far from overflow in deep networks every
Conv/Linear output is binarised to "reached or not" on the way forward, and its gradient on the way back.

Limits: activations, pools and norms written as functions inside `forward` (F.relu6, F.max_pool2d,
F.layer_norm) are not replaced; F.relu and F.max_pool2d of non-negative values still give the right
reachability, but a clipping or centring function can hide a path.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from anymask.masks.mask import Mask
from anymask.models.calling import OutputFn, model_logits

EFFECTIVE_FLOOR = 0.5
"""`make_mask` warns when fewer than this fraction of the kept weights are effective."""

_ACTIVATION_MODULE = "torch.nn.modules.activation"
_NORMS_AND_DROPOUT = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.dropout._DropoutNd,
)
_MAX_POOLS = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
_ADAPTIVE_MAX_POOLS = {
    nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d,
}
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class LayerConnectivity:
    """One masked layer: weights kept by the mask, and those of them on an input-output path."""

    name: str
    kept: int
    effective: int
    total: int

    @property
    def nominal_density(self) -> float:
        return self.kept / self.total

    @property
    def effective_density(self) -> float:
        return self.effective / self.total


@dataclass(frozen=True)
class Connectivity:
    """Effective sparsity of a mask on a model, per layer and overall, and the outputs still reachable."""

    layers: tuple[LayerConnectivity, ...]
    classes_reachable: int
    num_classes: int
    effective_mask: Mask

    @property
    def kept(self) -> int:
        return sum(layer.kept for layer in self.layers)

    @property
    def effective(self) -> int:
        return sum(layer.effective for layer in self.layers)

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def nominal_density(self) -> float:
        return self.kept / self.total if self.total else 1.0

    @property
    def effective_density(self) -> float:
        return self.effective / self.total if self.total else 1.0

    @property
    def disconnected(self) -> bool:
        """Some class cannot be reached, or most kept weights are on no input-output path."""
        return self.classes_reachable < self.num_classes or self.effective < EFFECTIVE_FLOOR * self.kept

    def message(self) -> str | None:
        """One line describing the disconnection, or None when the mask keeps the network connected."""
        if not self.disconnected:
            return None
        return (
            f"disconnected mask: {self.classes_reachable} of {self.num_classes} classes reachable from the "
            f"input; {self.effective:,} of {self.kept:,} kept weights lie on an input-output path "
            f"(effective density {self.effective_density:.2e}, nominal {self.nominal_density:.2e}). "
            "The network cannot learn what it cannot reach: try a lower sparsity, --scope layer, or synflow"
        )

    def summary(self) -> dict[str, Any]:
        """The numbers a run keeps in summary.json."""
        return {
            "mask_effective_kept": self.effective,
            "mask_effective_density": self.effective_density,
            "mask_classes_reachable": self.classes_reachable,
            "mask_disconnected": self.disconnected,
        }


def connectivity(
    model: nn.Module, mask: Mask, input_shape: tuple[int, ...], output_fn: OutputFn | None = None
) -> Connectivity:
    """Effective sparsity of `mask` on `model` for inputs of `input_shape` (C, H, W), no batch dimension.

    The model is called as the trainer calls it (`anymask.models.calling`: images by keyword where its
    forward asks for one, logits read from any common output form or by `output_fn`). The model is not
    changed. Raises whatever the model's forward raises on a (1, *input_shape) input.
    """
    mask.check_fits(model)
    probe = positive_linear_copy(model, mask)
    params = {name: probe.get_parameter(name) for name in mask}
    x = torch.ones((1, *input_shape), dtype=torch.float64)
    with _binarised_outputs(probe):
        output = model_logits(probe, x, output_fn)
        reached = output.detach().reshape(output.shape[0], output.shape[1], -1).amax(dim=(0, 2)) > 0
        grads = torch.autograd.grad(output.sum(), list(params.values()), allow_unused=True)
    effective = Mask(
        {
            name: torch.zeros_like(mask[name]) if g is None else mask[name].cpu() & (g * params[name] > 0)
            for name, g in zip(params, grads, strict=True)
        }
    )
    layers = tuple(
        LayerConnectivity(
            name, int(mask[name].count_nonzero()), int(effective[name].count_nonzero()), t.numel()
        )
        for name, t in mask.items()
    )
    return Connectivity(layers, int(reached.sum()), int(reached.numel()), effective)


# -- the positive-linear copy -------------------------------------------------------------------------
@torch.no_grad()
def positive_linear_copy(model: nn.Module, mask: Mask) -> nn.Module:
    """A float64 CPU copy whose forward on non-negative inputs computes reachability (module docstring)."""
    probe = copy.deepcopy(model).cpu().double().eval()
    _replace_modules(probe)
    covered = set(mask)
    for module_name, module in probe.named_modules():
        if isinstance(module, _WEIGHTED):
            name = f"{module_name}.weight" if module_name else "weight"
            edges = mask[name] if name in covered else torch.ones(module.weight.shape, dtype=torch.bool)
            module.weight.copy_(edges.to(torch.float64))
            if module.bias is not None:
                module.bias.zero_()  # a bias alone is not a path from the input
    edges = {id(m.weight) for m in probe.modules() if isinstance(m, _WEIGHTED)}
    scored = {id(probe.get_parameter(name)) for name in mask}
    for param in probe.parameters():
        if id(param) not in edges:
            param.abs_()
        param.requires_grad_(id(param) in scored)
        param.grad = None
    for buffer in probe.buffers():
        if buffer.is_floating_point():
            buffer.abs_()
    return probe


def _replace_modules(model: nn.Module) -> None:
    """Activations, normalisations and dropout -> identity; max-pools -> average pools of the same window."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            replacement = _replacement(child)
            if replacement is not None:
                setattr(parent, child_name, replacement)


def _replacement(module: nn.Module) -> nn.Module | None:
    kind = type(module)
    if kind in _MAX_POOLS and module.dilation in (1, (1,), (1, 1), (1, 1, 1)):
        return _MAX_POOLS[kind](module.kernel_size, module.stride, module.padding, module.ceil_mode)
    if kind in _ADAPTIVE_MAX_POOLS:
        return _ADAPTIVE_MAX_POOLS[kind](module.output_size)
    if isinstance(module, _NORMS_AND_DROPOUT):
        return nn.Identity()
    is_activation = type(module).__module__ == _ACTIVATION_MODULE and not isinstance(
        module, nn.MultiheadAttention | nn.Softmax2d
    )
    return nn.Identity() if is_activation else None


class _Binarise(torch.autograd.Function):
    """Forward: 1 where a unit is reached, else 0. Backward: the same for the incoming gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return (grad > 0).to(grad.dtype)


@contextmanager
def _binarised_outputs(model: nn.Module) -> Iterator[None]:
    """Every Conv/Linear output of `model` binarised (both ways) while inside the `with` block."""
    handles = [m.register_forward_hook(_binarise_hook) for m in model.modules() if isinstance(m, _WEIGHTED)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _binarise_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return _Binarise.apply(output)
