"""A small CNN for the 8x8 ``digits`` data: cheap enough that a CPU epoch takes a fraction of a second."""

from __future__ import annotations

from torch import nn

from anymask.models.base import MODELS, ConvBNReLU, Network, downsample, scaled


class SmallCNN(Network):
    """conv32 stem, conv64, 2x2 max-pool, conv64, global average pool, Linear.

    Three 3x3 convs give a receptive field covering most of an 8x8 digit; the single pool halves
    the cost of the last conv. Both body convs are ghost-skip sites.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], width: float) -> None:
        in_channels, height, width_px = input_shape
        narrow, wide = scaled(32, width), scaled(64, width)
        pool, _ = downsample(min(height, width_px))
        body = nn.Sequential(ConvBNReLU(narrow, wide), *pool, ConvBNReLU(wide, wide))
        super().__init__(ConvBNReLU(in_channels, narrow), body, wide, num_classes)


@MODELS.register("cnn")
def cnn(num_classes: int, input_shape: tuple[int, int, int], width: float) -> nn.Module:
    return SmallCNN(num_classes, input_shape, width)
