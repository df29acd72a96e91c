"""Weight initialisations, by name (`--init`): each model has a default, any can be asked for.

Every initialiser draws from the global RNG in module order, so a fixed `torch.manual_seed` gives
identical weights.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from anymask.registry import Registry

Initialiser = Callable[[nn.Module], None]
INITS: Registry[Initialiser] = Registry("init")

DEFAULT = "default"
"""The `init` value that means: the model's own default (`Network.default_init`)."""


def _unit_batchnorms(module: nn.Module) -> None:
    if isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@INITS.register("kaiming_fan_out")
def kaiming_fan_out(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs, unit BatchNorms, PyTorch's default Linear (ResNet recipes)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        _unit_batchnorms(module)


@INITS.register("kaiming_fan_in")
def kaiming_fan_in(model: nn.Module) -> None:
    """Synaptic-Flow's: Kaiming-normal (fan_in, gain sqrt 2) convs and Linears, zero biases, unit BNs.

    Magnitude pruning at initialisation reproduces Synaptic-Flow's published densities only with it.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        _unit_batchnorms(module)
