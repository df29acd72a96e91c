"""VGG-16 with BatchNorm in the CIFAR form used by SynFlow and ToST: conv stack, global pool, one Linear."""

from __future__ import annotations

from torch import nn

from anymask.models.base import MODELS, ConvBNReLU, Network, downsample, scaled

VGG16: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
"""Conv output channels per stage; every stage ends in a 2x2 max-pool."""


class VGG(Network):
    """The first conv is the stem; every later conv (with its BN and ReLU) is one ``body`` layer.

    Max-pools that would act on a 1x1 map are left out (decided from ``input_shape``), so the same
    network runs on 8x8 digits.
    """

    def __init__(
        self,
        stages: tuple[tuple[int, ...], ...],
        num_classes: int,
        input_shape: tuple[int, int, int],
        width: float,
    ) -> None:
        in_channels, height, width_px = input_shape
        stage_widths = [[scaled(c, width) for c in stage] for stage in stages]
        channels = stage_widths[0].pop(0)
        stem = ConvBNReLU(in_channels, channels)
        layers: list[nn.Module] = []
        size = min(height, width_px)
        for stage in stage_widths:
            for out in stage:
                layers.append(ConvBNReLU(channels, out))
                channels = out
            pool, size = downsample(size)
            layers += pool
        super().__init__(stem, nn.Sequential(*layers), channels, num_classes)


@MODELS.register("vgg16")
def vgg16(num_classes: int, input_shape: tuple[int, int, int], width: float) -> nn.Module:
    return VGG(VGG16, num_classes, input_shape, width)
