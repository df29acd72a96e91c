"""Model factories no one here wrote: Hugging Face transformers' image classifiers from tiny configs.

Each is a factory as `--model foreign_models:hf_resnet` names it: `(num_classes, input_shape, width)
-> nn.Module`, built from a config (nothing is downloaded). transformers is imported inside, so this
module imports without it; the tests that use it skip when it is absent. Hidden sizes are 8 and 16
channels at width 1: tiny, so the tests stay fast.
"""

from __future__ import annotations

from torch import nn


def _sizes(width: float) -> list[int]:
    return [max(1, round(8 * width)), max(1, round(16 * width))]


def hf_resnet(num_classes: int, input_shape: tuple[int, int, int], width: float) -> nn.Module:
    """ResNetForImageClassification: conv-BN-ReLU units, BasicBlocks, a projection `shortcut`."""
    from transformers import ResNetConfig, ResNetForImageClassification

    hidden = _sizes(width)
    config = ResNetConfig(
        num_channels=input_shape[0],
        embedding_size=hidden[0],
        hidden_sizes=hidden,
        depths=[1, 1],
        layer_type="basic",
        num_labels=num_classes,
    )
    return ResNetForImageClassification(config)


def hf_vit(
    num_classes: int, input_shape: tuple[int, int, int], width: float, activation: str = "gelu"
) -> nn.Module:
    """ViTForImageClassification: patches of 4 pixels, one encoder layer, GELU (no ReLU, no BatchNorm)."""
    from transformers import ViTConfig, ViTForImageClassification

    hidden = _sizes(width)[1]
    config = ViTConfig(
        image_size=input_shape[1],
        patch_size=4,
        num_channels=input_shape[0],
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        hidden_act=activation,
        num_labels=num_classes,
    )
    return ViTForImageClassification(config)


def hf_relu_vit(num_classes: int, input_shape: tuple[int, int, int], width: float) -> nn.Module:
    """The same ViT with ReLU in its MLP: ghost soft neurons apply, ghost skips still do not."""
    return hf_vit(num_classes, input_shape, width, activation="relu")


def hf_convnext(num_classes: int, input_shape: tuple[int, int, int], width: float) -> nn.Module:
    """ConvNextForImageClassification: depthwise convs, LayerNorm, GELU, layer scale (no BatchNorm)."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(
        num_channels=input_shape[0],
        patch_size=2,
        num_stages=2,
        hidden_sizes=_sizes(width),
        depths=[1, 1],
        image_size=input_shape[1],
        num_labels=num_classes,
    )
    return ConvNextForImageClassification(config)


FACTORIES = {"resnet": hf_resnet, "vit": hf_vit, "convnext": hf_convnext}
