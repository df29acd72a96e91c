"""MobileNetV2 for 32x32 inputs (kuangliu's CIFAR variant: stride-1 stem, the 24-channel stage
unstrided), with plain ReLU as in that variant."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from anymask.models.base import MODELS, ConvBNReLU, GhostSite, Network, conv, scaled, shortcut

STAGES: tuple[tuple[int, int, int, int], ...] = (
    # (expansion, out channels, blocks, stride of the first block)
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 in ImageNet MobileNetV2
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedBottleneck(nn.Module):
    """1x1 expand, 3x3 depthwise (strided), 1x1 linear projection; no residual (strided blocks)."""

    GHOST_PAIRS: ClassVar[tuple[GhostSite, ...]] = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.conv1 = conv(in_channels, hidden, 1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(hidden, hidden, 3, stride, groups=hidden)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU()
        self.conv3 = conv(hidden, out_channels, 1)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def main_path(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main_path(x)


class ResidualInvertedBottleneck(InvertedBottleneck):
    """A stride-1 block with a residual: identity when channels match, else a 1x1 conv + BN
    ``shortcut`` (kuangliu's choice). A separate class keeps forward free of branches."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int) -> None:
        super().__init__(in_channels, out_channels, expansion, stride=1)
        self.shortcut = shortcut(in_channels, out_channels, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main_path(x) + self.shortcut(x)


def inverted_bottleneck(in_channels: int, out_channels: int, expansion: int, stride: int) -> nn.Module:
    if stride == 1:
        return ResidualInvertedBottleneck(in_channels, out_channels, expansion)
    return InvertedBottleneck(in_channels, out_channels, expansion, stride)


class MobileNetV2(Network):
    """3x3 stem to 32 channels, 17 inverted bottlenecks, 1x1 head conv to 1280, pool, Linear.

    The head conv is not a ghost-skip site: like the stem it sits outside the blocks.
    """

    def __init__(self, num_classes: int, in_channels: int, width: float) -> None:
        channels = scaled(32, width)
        stem = ConvBNReLU(in_channels, channels)
        blocks = []
        for expansion, out, count, first_stride in STAGES:
            for position in range(count):
                stride = first_stride if position == 0 else 1
                blocks.append(inverted_bottleneck(channels, scaled(out, width), expansion, stride))
                channels = scaled(out, width)
        features = scaled(1280, width)
        head = ConvBNReLU(channels, features, kernel_size=1)
        super().__init__(stem, nn.Sequential(*blocks), features, num_classes, head=head)


@MODELS.register("mobilenetv2")
def mobilenetv2(num_classes: int, input_shape: tuple[int, int, int], width: float) -> nn.Module:
    return MobileNetV2(num_classes, input_shape[0], width)
