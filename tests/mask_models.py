"""Small models for mask tests, built once: ResNet-20 and VGG-16 for 8x8 inputs have the parameters they
have at any input size (global pooling), and data-dependent scorers run 16x faster than on 32x32."""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
from torch import nn

from anymask.data import ImageDataset
from anymask.masks import Mask, MaskConfig, make_mask
from anymask.models import create_model

SMALL = (3, 8, 8)


@functools.cache
def _built(name: str, width: float, shape: tuple[int, int, int] = SMALL) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, 10, shape, width)


def model(name: str, width: float = 1.0, shape: tuple[int, int, int] = SMALL) -> nn.Module:
    return copy.deepcopy(_built(name, width, shape))


def one_line(error: pytest.ExceptionInfo) -> bool:
    return "\n" not in str(error.value) and str(error.value) != ""


def synthetic_data(
    shape: tuple[int, int, int] = SMALL, classes: int = 10, per_class: int = 3
) -> ImageDataset:
    """Random uint8 images with balanced labels, shaped like the real thing."""
    g = torch.Generator().manual_seed(0)
    n = classes * per_class
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % classes
    empty_x, empty_y = torch.zeros((0, *shape), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return ImageDataset(
        "synthetic",
        x,
        y,
        empty_x,
        empty_y,
        x,
        y,
        classes,
        (0.5,) * shape[0],
        (0.25,) * shape[0],
        0,
        False,
        [str(c) for c in range(classes)],
    )


def quiet_make_mask(net: nn.Module, config: MaskConfig, **kwargs) -> Mask:
    """make_mask without the layer-collapse warning (expected at 99.5% for one-shot methods)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_mask(net, config, **kwargs)
