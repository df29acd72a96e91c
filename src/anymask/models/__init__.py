"""Model zoo: CIFAR-style ResNets, VGG-16, MobileNetV2 and a small digits CNN, all in one registry.

Importing this package registers every model; build one with ``create_model(name, ...)``.
"""

from anymask.models import cnn, mobilenet, resnet, vgg
from anymask.models.base import MODELS, Builder, GhostSite, create_model, ghost_skip_sites

__all__ = [
    "MODELS",
    "Builder",
    "GhostSite",
    "cnn",
    "create_model",
    "ghost_skip_sites",
    "mobilenet",
    "resnet",
    "vgg",
]
