"""Mask methods: a registry of functions `method(context) -> Mask`, and `make_mask`, the entry point.

A score-based method computes one score per weight and leaves the ranking to `mask_from_scores`, so
global/layer scope, exact counts and tie-breaking live in one place. The methods themselves live in
`random_graphs` (random, er, erk), `scoring` (magnitude, snip, grasp, synflow), `lth` and `file`;
`catalog` imports them all.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from anymask.data.iterable import as_data
from anymask.errors import AnymaskError
from anymask.masks.allocate import check_scope
from anymask.masks.config import MaskConfig
from anymask.masks.connectivity import connectivity
from anymask.masks.mask import Mask
from anymask.masks.prunable import prunable_from_config
from anymask.registry import Registry


@dataclass
class PruneContext:
    """Everything a mask method may use."""

    model: nn.Module  # at initialisation, on `device`
    params: dict[str, nn.Parameter]  # the prunable weights, by name
    config: MaskConfig
    generator: torch.Generator  # CPU generator seeded with the mask seed
    device: torch.device
    data: Any = None  # an anymask dataset or a data.iterable.BatchIterable, for data-dependent methods
    train: Callable[..., Any] | None = None  # lottery ticket: trains a masked model (see masks/lth.py)
    out_dir: Any = None  # where iterative methods log their rounds (Path or None)
    extras: dict[str, Any] = field(default_factory=dict)
    output_fn: Callable[[Any], torch.Tensor] | None = None  # reads logits from the model's output

    @property
    def density(self) -> float:
        return 1.0 - self.config.sparsity


MaskMethod = Callable[[PruneContext], Mask]
METHODS: Registry[MaskMethod] = Registry("mask method")


@METHODS.register("dense")
def dense(context: PruneContext) -> Mask:
    return Mask.dense(context.params)


def check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise AnymaskError(
            f"sparsity {sparsity} is outside [0, 1): it is the fraction of weights pruned, "
            "e.g. --sparsity 0.95 keeps 5%"
        )


def collapse_message(mask: Mask) -> str | None:
    """One line naming the layers left with no weights (layer collapse), or None when there are none."""
    collapsed = mask.collapsed_layers()
    if not collapsed:
        return None
    return (
        f"layer collapse: {len(collapsed)} layer(s) have no weights left ({', '.join(collapsed[:4])}"
        f"{', ...' if len(collapsed) > 4 else ''}); the network cannot learn through them. Try "
        "--scope layer, a lower sparsity, or synflow"
    )


def report_collapse(mask: Mask, strict: bool) -> None:
    """Every method's mask passes here: warn about layer collapse, or fail under `strict`."""
    message = collapse_message(mask)
    if message is None:
        return
    if strict:
        raise AnymaskError(message)
    warnings.warn(message, stacklevel=2)


def report_connectivity(
    model: nn.Module,
    mask: Mask,
    input_shape: tuple[int, ...] | None,
    strict: bool,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
) -> None:
    """Warn (or fail under `strict`) when the mask leaves a class unreachable or most kept weights on no
    input-output path; a model that cannot be run on one image is skipped with a warning."""
    if input_shape is None or mask.kept() == mask.total():
        return
    try:
        message = connectivity(model, mask, input_shape, output_fn).message()
    except Exception as error:  # a user's model may not run on a plain image: say so, do not fail
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        warnings.warn(
            f"effective sparsity not checked: the model did not run on one image ({reason})", stacklevel=3
        )
        return
    if message is None:
        return
    if strict:
        raise AnymaskError(message)
    warnings.warn(message, stacklevel=3)


def known_input_shape(data: Any, extras: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The (C, H, W) of one input, from extras["input_shape"] or the dataset, if either is given."""
    if "input_shape" in extras:
        return tuple(extras["input_shape"])
    shape = getattr(data, "input_shape", None)
    return None if shape is None else tuple(shape)


def make_mask(
    model: nn.Module,
    config: MaskConfig,
    *,
    data: Any = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    train: Callable[..., Any] | None = None,
    out_dir: Any = None,
    extras: Mapping[str, Any] | None = None,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
) -> Mask:
    """Build the mask `config` asks for, on `model` at its current weights.

    The model's weights, buffers, train/eval mode, requires_grad flags and gradients are left as they
    were, except for `lth`: it loads the rewind-point weights, from which the run trains the ticket.
    `extras` passes method-specific facts from the trainer (lth reads "steps_per_epoch"). Layer
    collapse, and with an input shape (from `data` or extras["input_shape"]) a mask that disconnects
    the network (`anymask.masks.connectivity`), warn, or fail when `config.strict`. The scorers read the
    model's logits from a tensor, a tuple, a mapping or an object with `logits`; `output_fn` reads them
    from anything else (see `anymask.models.calling`).
    """
    import anymask.masks.catalog  # noqa: F401  (registers every method)

    check_sparsity(config.sparsity)
    check_scope(config.scope)
    data = as_data(data)  # any iterable of batches works too; its first batch gives the input shape
    method_name = "file" if config.mask_file else config.mask_method
    method = METHODS.get(method_name)
    generator = torch.Generator().manual_seed(seed if config.mask_seed is None else config.mask_seed)
    params = prunable_from_config(model, config)
    context = PruneContext(
        model,
        params,
        config,
        generator,
        torch.device(device),
        data,
        train,
        out_dir,
        dict(extras or {}),
        output_fn=output_fn,
    )
    mask = method(context)
    mask.check_fits(model)
    report_collapse(mask, config.strict)
    if not mask.collapsed_layers():  # a collapsed layer was just reported: no second warning
        shape = known_input_shape(data, context.extras)
        report_connectivity(model, mask, shape, config.strict, output_fn)
    return mask
