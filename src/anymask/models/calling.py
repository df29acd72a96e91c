"""Calling a model: give it the images the way its forward takes them, and find the logits in its output.

Every forward pass anymask runs (the mask scorers, GradInit, training, evaluation, BatchNorm
recalibration, tracing ghost-skip sites) goes through here, so a model from another library behaves
like one from the zoo. Such models often return an output object (Hugging Face's
`ImageClassifierOutput`, whose `.logits` is what anymask needs), a tuple or a dict, and some take the
images by keyword (`pixel_values`). `ModelCall.of(model)` reads the forward's signature once; calling
it is then as cheap as calling the model.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from anymask.errors import AnymaskError

OutputFn = Callable[[Any], torch.Tensor]
"""Maps whatever a model's forward returns to its logits tensor [batch, classes]."""

IMAGE_KEYWORDS = ("pixel_values",)
"""Forward parameters that take the images by name wherever they sit in the signature (Hugging Face)."""

FIX = "return a tensor, or pass output_fn= to pick the logits (Python API) or wrap the model in your factory"


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def image_keyword(model: nn.Module) -> str | None:
    """The keyword the forward takes its images by, or None to pass them positionally.

    A Hugging Face forward names them `pixel_values`; a forward whose first parameter is keyword-only
    takes them by that name; anything else gets them as the first positional argument.
    """
    try:
        parameters = list(inspect.signature(unwrap(model).forward).parameters.values())
    except (TypeError, ValueError):  # builtins and C extensions may have no signature: call positionally
        return None
    for parameter in parameters:
        if parameter.name in IMAGE_KEYWORDS:
            return parameter.name
    first = parameters[0] if parameters else None
    return first.name if first is not None and first.kind is inspect.Parameter.KEYWORD_ONLY else None


def logits_from(output: Any) -> torch.Tensor:
    """The logits in a forward's output: a tensor, the first element of a tuple or list, or `logits`
    of a mapping or an output object. Anything else is a one-line `AnymaskError`."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):  # Hugging Face's ModelOutput is a mapping with attributes
        if "logits" in output:
            return logits_from(output["logits"])
        keys = ", ".join(map(str, list(output)[:6]))
        raise AnymaskError(
            f"the model returned a {type(output).__name__} without 'logits' (keys: {keys}); {FIX}"
        )
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    if isinstance(output, tuple | list) and output:
        return logits_from(output[0])
    raise AnymaskError(f"the model returned a {type(output).__name__}, where anymask needs its logits; {FIX}")


@dataclass(frozen=True)
class ModelCall:
    """How to call one model and read its logits: the images' keyword (None: positional) and an
    optional `output_fn` that replaces the automatic reading of the output."""

    keyword: str | None = None
    output_fn: OutputFn | None = None

    @classmethod
    def of(cls, model: nn.Module, output_fn: OutputFn | None = None) -> ModelCall:
        return cls(image_keyword(model), output_fn)

    def arguments(self, images: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return ((), {self.keyword: images}) if self.keyword else ((images,), {})

    def logits(self, output: Any) -> torch.Tensor:
        if self.output_fn is None:
            return logits_from(output)
        logits = self.output_fn(output)
        if not isinstance(logits, torch.Tensor):
            raise AnymaskError(
                f"output_fn returned a {type(logits).__name__}; it must return the logits tensor"
            )
        return logits

    def __call__(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """`model`'s logits for `images`; `model` may be the user's module or a DDP/compiled wrapper."""
        args, kwargs = self.arguments(images)
        return self.logits(model(*args, **kwargs))

    def functional(
        self, model: nn.Module, tensors: Mapping[str, torch.Tensor], images: torch.Tensor
    ) -> torch.Tensor:
        """The logits with some parameters replaced by `tensors` (torch.func.functional_call)."""
        args, kwargs = self.arguments(images)
        return self.logits(functional_call(model, dict(tensors), args, kwargs))


def twice_differentiable() -> contextlib.AbstractContextManager:
    """Scaled-dot-product attention on its math kernel, for forwards that get a double backward
    (GraSP's Hessian-gradient product, GradInit): the fused CPU and GPU kernels have no double backward,
    so a transformer (Hugging Face's ViT) would fail there. Other layers are unaffected."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: the kernels are chosen by the older global switches
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def model_logits(model: nn.Module, images: torch.Tensor, output_fn: OutputFn | None = None) -> torch.Tensor:
    """`model`'s logits for a batch of images, whatever form its forward returns them in.

    For repeated calls build `ModelCall.of(model, output_fn)` once: it reads the signature only once.
    """
    return ModelCall.of(model, output_fn)(model, images)
