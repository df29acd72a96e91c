"""VGG-16 with BatchNorm as Synaptic-Flow builds it for CIFAR (its `lottery_vgg.vgg16_bn`).

Thirteen 3x3 conv-BN-ReLU layers in five stages, a 2x2 max-pool after each of the first four stages,
average pooling of the last (2x2 on 32x32 inputs) map, and one Linear from 512 features; Synaptic-Flow's
Kaiming-normal fan-in initialisation on convs and the classifier. One difference that cannot change a
number: its convs carry a bias, ours do not. A bias before a BatchNorm is removed by the BN's
normalisation, so it starts at 0, gets a zero gradient and stays 0; the prunable weights are identical.
"""

from __future__ import annotations

from torch import nn

from anymask.models.base import MODELS, ConvBNReLU, Network, downsample, scaled

VGG16: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
"""Conv output channels per stage; every stage but the last ends in a 2x2 max-pool."""


class VGG(Network):
    """The first conv is the stem; every later conv (with its BN and ReLU) is one ``body`` layer.

    Max-pools that would act on a 1x1 map are left out (decided from ``input_shape``), so the same
    network runs on 8x8 digits. The network's global average pool is Synaptic-Flow's ``AvgPool2d(2)``
    on the 2x2 map a 32x32 input leaves, and still gives 512 features on other input sizes.
    """

    default_init = "kaiming_fan_in"

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
        for index, stage in enumerate(stage_widths):
            for out in stage:
                layers.append(ConvBNReLU(channels, out))
                channels = out
            if index < len(stage_widths) - 1:
                pool, size = downsample(size)
                layers += pool
        super().__init__(stem, nn.Sequential(*layers), channels, num_classes)


@MODELS.register("vgg16")
def vgg16(num_classes: int, input_shape: tuple[int, int, int], width: float) -> nn.Module:
    return VGG(VGG16, num_classes, input_shape, width)
