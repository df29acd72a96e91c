"""CIFAR ResNets: kuangliu-style ResNet-18/34 and He et al.'s 6n+2 / 9n+2 networks.

Both families share the blocks and the network class and differ only in stem width, stage widths
and block counts. Shortcuts that change shape are projections (conv1x1 + BN, "option B") rather
than He et al.'s zero-padding "option A", so every weight is an ordinary Conv2d a pruner can see;
that adds a few thousand parameters to the He models (ResNet-20: 272,474 instead of 269,722).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar, Protocol

import torch
from torch import nn

from anymask.models.base import MODELS, Builder, ConvBNReLU, GhostSite, Network, conv, scaled, shortcut


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut; the stride sits on the first conv."""

    expansion: ClassVar[int] = 1
    GHOST_PAIRS: ClassVar[tuple[GhostSite, ...]] = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv(in_channels, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut(in_channels, planes, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, plus a shortcut: the block of deep CIFAR ResNets."""

    expansion: ClassVar[int] = 4
    GHOST_PAIRS: ClassVar[tuple[GhostSite, ...]] = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv(in_channels, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = conv(planes, out_channels, 1)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut(in_channels, out_channels, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


class Block(Protocol):
    """What ResNet needs from a block class."""

    expansion: ClassVar[int]

    def __call__(self, in_channels: int, planes: int, stride: int) -> nn.Module: ...


class ResNet(Network):
    """3x3 stem (no max-pool, CIFAR style), then stages ``layer1..layerN``; stage 1 keeps the
    resolution and each later stage halves it on its first block."""

    def __init__(
        self,
        block: Block,
        depths: tuple[int, ...],
        planes: tuple[int, ...],
        stem_channels: int,
        num_classes: int,
        in_channels: int,
        width: float,
    ) -> None:
        channels = scaled(stem_channels, width)
        stem = ConvBNReLU(in_channels, channels)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for index, (depth, stage_planes) in enumerate(zip(depths, planes, strict=True), start=1):
            blocks = []
            for position in range(depth):
                stride = 2 if index > 1 and position == 0 else 1
                blocks.append(block(channels, scaled(stage_planes, width), stride))
                channels = scaled(stage_planes, width) * block.expansion
            stages[f"layer{index}"] = nn.Sequential(*blocks)
        super().__init__(stem, nn.Sequential(stages), channels, num_classes)


def _kuangliu(depths: tuple[int, ...]) -> Builder:
    """ResNet-18/34 for CIFAR: 64-channel stem, stages 64/128/256/512 of BasicBlocks."""

    def build(num_classes: int, input_shape: tuple[int, int, int], width: float) -> nn.Module:
        return ResNet(BasicBlock, depths, (64, 128, 256, 512), 64, num_classes, input_shape[0], width)

    return build


def _he(block: Block, blocks_per_stage: int) -> Builder:
    """He et al.'s CIFAR ResNets: 16-channel stem, three stages of 16/32/64 planes."""

    def build(num_classes: int, input_shape: tuple[int, int, int], width: float) -> nn.Module:
        depths = (blocks_per_stage,) * 3
        return ResNet(block, depths, (16, 32, 64), 16, num_classes, input_shape[0], width)

    return build


MODELS.register("resnet18")(_kuangliu((2, 2, 2, 2)))
MODELS.register("resnet34")(_kuangliu((3, 4, 6, 3)))
MODELS.register("resnet20")(_he(BasicBlock, 3))  # 6n+2, n=3
MODELS.register("resnet32")(_he(BasicBlock, 5))  # n=5
MODELS.register("resnet56")(_he(BasicBlock, 9))  # n=9
# 9n+2 = 101 layers on the main path for n=11, plus the 3 projection shortcuts (one per stage, as
# each stage's first block changes the channel count) = 104 weighted layers.
MODELS.register("resnet104")(_he(Bottleneck, 11))
