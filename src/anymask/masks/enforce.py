"""Keep pruned weights exactly zero through training, with any torch optimizer.

Gradients of pruned weights are zeroed before each optimizer step, so momentum buffers and adaptive
moments never see them, and the weights are multiplied by the mask after each step, so weight decay or
any other update cannot revive them. Both are one fused `_foreach_mul_` per step.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from anymask.errors import AnymaskError
from anymask.masks.mask import Mask


class MaskEnforcer:
    """Binds a mask to a model (and optionally an optimizer) and keeps pruned weights at zero."""

    def __init__(self, model: nn.Module, mask: Mask, optimizer: torch.optim.Optimizer | None = None) -> None:
        mask.check_fits(model)
        self.names = list(mask)
        self.params = [model.get_parameter(name) for name in mask]
        # factors share each weight's layout (channels_last too): _foreach_mul_ stays on its fast path
        pairs = zip(mask, self.params, strict=True)
        self.factors = [torch.empty_like(p).copy_(mask[name]) for name, p in pairs]
        self._handles: list[RemovableHandle] = []
        self.zero_weights()
        if optimizer is not None:
            self.attach(optimizer)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self._handles.append(optimizer.register_step_pre_hook(lambda *_: self.zero_gradients()))
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.zero_weights()))

    @torch.no_grad()
    def zero_weights(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.factors)

    @torch.no_grad()
    def zero_gradients(self) -> None:
        pairs = [(p.grad, f) for p, f in zip(self.params, self.factors, strict=True) if p.grad is not None]
        if pairs:
            grads, factors = zip(*pairs, strict=True)
            torch._foreach_mul_(list(grads), list(factors))

    @torch.no_grad()
    def set_mask(self, mask: Mask) -> None:
        """Enforce `mask` from now on: the same layers, other weights (dynamic sparse training)."""
        if list(mask) != self.names:
            raise AnymaskError("set_mask needs a mask over the same layers, in the same order")
        for factor, name in zip(self.factors, self.names, strict=True):
            factor.copy_(mask[name])
        self.zero_weights()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def enforce(model: nn.Module, mask: Mask, optimizer: torch.optim.Optimizer | None = None) -> MaskEnforcer:
    """Apply `mask` to `model` now and, given an optimizer, after every step. Returns a removable handle."""
    return MaskEnforcer(model, mask, optimizer)
