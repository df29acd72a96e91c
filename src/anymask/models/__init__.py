"""Model zoo: CIFAR-style ResNets, VGG-16, MobileNetV2 and a small digits CNN, all in one registry.

Importing this package registers every model; build one with ``create_model(name, ...)``, or from your
own factory with ``create_model("package.module:function", ...)``. ``model_logits`` calls any model
(the zoo's or another library's) and returns its logits.
"""

from anymask.models import cnn, mobilenet, resnet, vgg
from anymask.models.base import MODELS, Builder, GhostSite, create_model, ghost_skip_sites
from anymask.models.calling import ModelCall, OutputFn, model_logits

__all__ = [
    "MODELS",
    "Builder",
    "GhostSite",
    "ModelCall",
    "OutputFn",
    "cnn",
    "create_model",
    "ghost_skip_sites",
    "mobilenet",
    "model_logits",
    "resnet",
    "vgg",
]
