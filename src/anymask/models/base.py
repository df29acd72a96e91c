"""What every model shares: the registry, the width rule, weight init, and ghost-skip sites.

All models follow one layout so the rest of anymask can treat them alike:
``stem -> body -> head -> pool -> classifier``. The stem is the first conv (it changes channels from
the image's), the body holds the blocks whose (conv, BN) pairs are ghost-skip sites, the head is an
optional last conv (identity otherwise), and ``classifier`` is the final Linear.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from anymask.errors import AnymaskError
from anymask.models.init import DEFAULT, INITS
from anymask.registry import Registry

Builder = Callable[[int, tuple[int, int, int], float], nn.Module]
"""``builder(num_classes, input_shape, width)``; input_shape is (channels, height, width)."""


class ModelRegistry(Registry[Builder]):
    """The zoo's builders by name; a 'package.module:function' name imports the user's factory instead."""

    def get(self, name: str) -> Builder:
        from anymask.models.factory import import_factory, is_factory_name

        if is_factory_name(name):
            return import_factory(name)
        try:
            return super().get(name)
        except AnymaskError as error:
            raise AnymaskError(f"{error}; or your own factory as package.module:function") from None


MODELS = ModelRegistry("model")

GhostSite = tuple[str, str]
"""(entry module path, exit module path) as named by ``model.named_modules()``."""


def scaled(channels: int, width: float) -> int:
    """A hidden channel count under the width multiplier; never 0, so a tiny width still builds."""
    return max(1, round(channels * width))


def conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Conv2d:
    """A bias-free conv with 'same' padding: every conv here feeds a BatchNorm, which has the bias."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        groups=groups,
        bias=False,
    )


def shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Identity (an empty Sequential) when shapes match, else a projection conv1x1 + BN."""
    if stride == 1 and in_channels == out_channels:
        return nn.Sequential()
    return nn.Sequential(conv(in_channels, out_channels, 1, stride), nn.BatchNorm2d(out_channels))


def downsample(size: int) -> tuple[list[nn.Module], int]:
    """A 2x2 max-pool and the spatial size after it, or no pool once the map is 1 pixel.

    Decided at build time from the input shape, so small inputs (digits are 8x8) run through deep
    VGG-style stacks without a pool shrinking the map to nothing, and forward stays branch-free.
    """
    if size <= 1:
        return [], size
    return [nn.MaxPool2d(2)], size // 2


class ConvBNReLU(nn.Module):
    """conv -> BN -> ReLU: the unit of stems, VGG layers, the digits CNN and the MobileNet head."""

    GHOST_PAIRS: ClassVar[tuple[GhostSite, ...]] = (("conv", "bn"),)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = conv(in_channels, out_channels, kernel_size, stride)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Network(nn.Module):
    """``stem -> body -> head -> global average pool -> classifier``, shared by every model.

    Pooling adaptively to 1x1 lets one model serve any input size. Ghost-skip sites are read from the
    ``GHOST_PAIRS`` that blocks inside ``body`` declare, so the stem and the head are never sites and
    blocks choose which of their convs qualify (projection shortcuts do not). Weights start from the
    class's ``default_init`` (a name in ``anymask.models.init.INITS``).
    """

    default_init: ClassVar[str] = "kaiming_fan_out"

    def __init__(
        self, stem: nn.Module, body: nn.Module, features: int, num_classes: int, head: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.stem = stem
        self.body = body
        self.head = head if head is not None else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(features, num_classes)
        INITS.get(self.default_init)(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.body(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))

    def ghost_skip_sites(self) -> list[GhostSite]:
        """Every (conv, BN) pair on a block's main path inside ``body``, in registration order."""
        return [
            (f"{name}.{entry}", f"{name}.{exit_}")
            for name, block in self.body.named_modules(prefix="body")
            for entry, exit_ in getattr(block, "GHOST_PAIRS", ())
        ]


def create_model(
    name: str,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    width: float = 1.0,
    init: str = DEFAULT,
) -> nn.Module:
    """Build a registered model, or one from a 'package.module:function' factory (see `models.factory`).

    ``width`` multiplies every hidden channel count (a factory decides what it means). ``init`` names an
    initialiser of ``INITS``; "default" (or the model's own default) keeps the weights the model was
    built with, any other re-initialises them after building.
    """
    from anymask.models.factory import build, is_factory_name

    builder = MODELS.get(name)
    initialise = None if init == DEFAULT else INITS.get(init)
    if is_factory_name(name):
        model = build(name, builder, *_checked(num_classes, input_shape, width))
    else:
        model = builder(*_checked(num_classes, input_shape, width))
    if initialise is not None and init != getattr(model, "default_init", None):
        initialise(model)
    return model


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _checked(
    num_classes: int, input_shape: tuple[int, int, int], width: float
) -> tuple[int, tuple[int, int, int], float]:
    """Reject bad sizes with a readable error before they become a cryptic shape error inside torch.

    Accepts numpy scalars too (shapes often come from arrays) and returns plain Python numbers.
    """
    if (
        not isinstance(width, numbers.Real)
        or isinstance(width, bool)
        or not math.isfinite(width)
        or width <= 0
    ):
        raise AnymaskError(
            f"model width must be a positive number (1.0 is the standard model), got {width!r}"
        )
    if not _is_integer(num_classes) or num_classes < 1:
        raise AnymaskError(f"num_classes must be a positive integer, got {num_classes!r}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(_is_integer(d) and d > 0 for d in shape):
        raise AnymaskError(
            f"input_shape must be three positive integers (channels, height, width), got {shape!r}"
        )
    channels, height, width_px = (int(d) for d in shape)
    return int(num_classes), (channels, height, width_px), float(width)


def ghost_skip_sites(
    model: nn.Module, input_shape: tuple[int, ...] | None = None, call: Any = None
) -> list[GhostSite]:
    """The model's own ``ghost_skip_sites()``; for a model that declares none, the (conv, BN) pairs
    traced by running it on `input_shape` images (`models.tracing`), or without an input shape those
    found in registration order. `call` is the `ModelCall` that runs the model."""
    declared = getattr(model, "ghost_skip_sites", None)
    if callable(declared):
        return list(declared())
    if input_shape is not None:
        from anymask.models.tracing import traced_ghost_skip_sites

        return traced_ghost_skip_sites(model, tuple(input_shape), call)
    return discover_ghost_skip_sites(model)


def discover_ghost_skip_sites(model: nn.Module) -> list[GhostSite]:
    """Each Conv2d paired with a BatchNorm2d that directly follows it among the leaf modules.

    Skips the stem (the first conv) and convs inside a ``shortcut``. It cannot see forward, so it
    trusts registration order to match data flow, as it does in every model here.
    """
    leaves = [(name, module) for name, module in model.named_modules() if not any(module.children())]
    stem = next((name for name, module in leaves if isinstance(module, nn.Conv2d)), None)
    return [
        (conv_name, bn_name)
        for (conv_name, conv_mod), (bn_name, bn_mod) in itertools.pairwise(leaves)
        if isinstance(conv_mod, nn.Conv2d)
        and isinstance(bn_mod, nn.BatchNorm2d)
        and conv_name != stem
        and "shortcut" not in conv_name.split(".")
    ]
