"""Score-based pruning at initialisation: magnitude, SNIP, GraSP and SynFlow.

Each `*_scores` function maps prunable parameter names to one score per weight (higher = keep) and
knows nothing about ranking; `mask_from_scores` turns scores into a mask with exact counts, so every
method gets global/layer scope and deterministic ties for free.

Scoring needs gradients, batch statistics, and for SynFlow absolute (even float64) weights, all of which
would disturb the caller's model. `scoring_copy` therefore scores a private copy under a forked RNG: the
caller's weights, buffers, modes, requires_grad flags, gradients and random state are untouched by
construction, which is also how SynFlow's "restore the signs afterwards" is met exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from anymask.errors import AnymaskError
from anymask.masks.allocate import mask_from_scores
from anymask.masks.config import BN_MODES
from anymask.masks.mask import Mask
from anymask.masks.methods import METHODS, PruneContext
from anymask.models.calling import ModelCall, OutputFn, twice_differentiable

Scores = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]

PRUNE_BATCH_SIZE = 256
"""Prune images go through the network in chunks of this size (bounds memory on 100-class data)."""
GRASP_TEMPERATURE = 200.0
"""GraSP divides the logits by T = 200 before the loss (Wang et al. 2020, and Synaptic-Flow)."""


# -- shared preparation -------------------------------------------------------------------------------
@contextmanager
def scoring_copy(
    context: PruneContext, *, training: bool, dtype: torch.dtype | None = None
) -> Iterator[tuple[nn.Module, dict[str, nn.Parameter]]]:
    """A private copy of the model in the mode (and dtype) a scorer needs, and its prunable weights.

    The copy is made and used under a forked RNG, so scoring draws nothing from the caller's generators.
    """
    devices = [context.device] if context.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model = copy.deepcopy(context.model).train(training)
        if dtype is not None:
            model.to(dtype)
        params = {name: model.get_parameter(name) for name in context.params}
        prunable = {id(p) for p in params.values()}
        for param in model.parameters():
            param.grad = None
            param.requires_grad_(id(param) in prunable)
        yield model, params


def bn_training(context: PruneContext) -> bool:
    """Whether a data-dependent scorer runs BatchNorm on batch statistics (`prune_bn_mode`, with 'auto'
    the method's reference mode)."""
    mode = context.config.prune_bn_mode
    if mode not in BN_MODES:
        raise AnymaskError(f"unknown prune_bn_mode '{mode}'; use one of: {', '.join(BN_MODES)}")
    return context.config.bn_mode() == "train"


def rank(context: PruneContext, scores: Mapping[str, torch.Tensor]) -> Mask:
    """One-shot mask at the target density in the configured scope."""
    return mask_from_scores(scores, context.density, context.config.scope)


def gradients(output: torch.Tensor, params: Mapping[str, nn.Parameter], create_graph: bool = False) -> Scores:
    """d output / d param for each prunable weight (zeros for a weight the output does not use)."""
    grads = torch.autograd.grad(output, list(params.values()), create_graph=create_graph, allow_unused=True)
    pairs = zip(params.items(), grads, strict=True)
    return {name: torch.zeros_like(p) if g is None else g for (name, p), g in pairs}


def normalised(scores: Scores, norm: torch.Tensor) -> Scores:
    """Scores divided by one positive constant: same ranking, comparable scale across runs."""
    norm = norm.abs() + torch.finfo(norm.dtype).tiny
    return {name: s / norm for name, s in scores.items()}


# -- prune data ---------------------------------------------------------------------------------------
def prune_indices(
    labels: torch.Tensor, per_class: int, num_classes: int, balanced: bool, generator: torch.Generator
) -> torch.Tensor:
    """per_class x num_classes train indices, per_class of each class when `balanced`, in random order."""
    labels = labels.cpu()
    if balanced:
        by_class = [(labels == c).nonzero().squeeze(1) for c in range(num_classes)]
        picks = [idx[torch.randperm(len(idx), generator=generator)[:per_class]] for idx in by_class]
        chosen = torch.cat(picks)
    else:
        chosen = torch.randperm(len(labels), generator=generator)[: per_class * num_classes]
    return chosen[torch.randperm(len(chosen), generator=generator)]  # mixed classes in every chunk


def prune_batches(context: PruneContext, method: str) -> list[Batch]:
    """The normalised prune images of a data-dependent scorer, in chunks, on the context's device.

    From an anymask dataset: `prune_samples_per_class` images of each class (`prune_balanced`; random
    picks where a streamed dataset's labels are unknown). From any other iterable of batches: its first
    batches, up to prune_samples_per_class x classes images (classes: the width of the model's output).
    """
    from anymask.data.iterable import is_dataset

    data, config = context.data, context.config
    if data is None:
        raise AnymaskError(
            f"mask method '{method}' scores weights on training images but no dataset was given; "
            "pass data= to make_mask (a dataset or any iterable of (images, labels) batches)"
        )
    if not is_dataset(data):
        count = config.prune_samples_per_class * _output_width(context, data.first()[0])
        return [(x.to(context.device), y.to(context.device)) for x, y in data.take_images(count)]
    labels = data.split_labels("train")
    wanted = config.prune_samples_per_class * data.num_classes
    if labels is None:
        idx = torch.randperm(data.split_size("train"), generator=context.generator)[:wanted]
    else:
        idx = prune_indices(
            labels, config.prune_samples_per_class, data.num_classes, config.prune_balanced, context.generator
        )
    if len(idx) == 0:
        raise AnymaskError(f"mask method '{method}' found no training images to score with")
    batches = data.train_batches_at(idx, PRUNE_BATCH_SIZE)
    return [(x.to(context.device), y.to(context.device)) for x, y in batches]


@torch.no_grad()
def _output_width(context: PruneContext, images: torch.Tensor) -> int:
    """The number of classes, read from the model's logits on one batch (eval mode, nothing changes)."""
    if "num_classes" in context.extras:
        return int(context.extras["num_classes"])
    model = context.model
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.random.fork_rng(devices=[context.device] if context.device.type == "cuda" else []):
            logits = ModelCall.of(model, context.output_fn)(model, images[:2].to(context.device))
    finally:
        for module, mode in modes.items():
            module.training = mode
    return int(logits.shape[-1])


# -- scorers ------------------------------------------------------------------------------------------
def magnitude_scores(params: Mapping[str, torch.Tensor]) -> Scores:
    return {name: p.detach().abs() for name, p in params.items()}


def snip_scores(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    batches: list[Batch],
    output_fn: OutputFn | None = None,
) -> Scores:
    """|dL/dw * w| with the gradient summed over the batches, divided by the sum of all scores (SNIP)."""
    call = ModelCall.of(model, output_fn)
    total = dict.fromkeys(params, 0.0)
    for x, y in batches:
        for name, g in gradients(F.cross_entropy(call(model, x), y), params).items():
            total[name] = total[name] + g
    scores = {name: (total[name] * p).detach().abs() for name, p in params.items()}
    return normalised(scores, sum(s.sum() for s in scores.values()))


def grasp_scores(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    batches: list[Batch],
    temperature: float = GRASP_TEMPERATURE,
    output_fn: OutputFn | None = None,
) -> Scores:
    """(H g) * w on logits / T, by a double backward; normalised by |sum|.

    Sign convention: GraSP removes the weights whose removal least reduces gradient flow, i.e. the
    LOWEST (H g) * w. Our ranking keeps the highest scores, which prunes exactly those lowest ones, so
    the score is passed unnegated.
    """

    call = ModelCall.of(model, output_fn)

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(call(model, x) / temperature, y)

    g = dict.fromkeys(params, 0.0)
    for x, y in batches:
        for name, grad in gradients(loss(x, y), params).items():
            g[name] = g[name] + grad.detach()
    hg = dict.fromkeys(params, 0.0)
    with twice_differentiable():
        for x, y in batches:
            grads = gradients(loss(x, y), params, create_graph=True)
            g_dot = sum((grads[name] * g[name]).sum() for name in params)
            for name, h in gradients(g_dot, params).items():
                hg[name] = hg[name] + h
    scores = {name: (hg[name] * p).detach() for name, p in params.items()}
    return normalised(scores, sum(s.sum() for s in scores.values()))


def synflow_scores(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    input_shape: tuple[int, ...],
    output_fn: OutputFn | None = None,
) -> Scores:
    """|dR/dw * w| with R = sum of the logits for one all-ones input (model already made non-negative)."""
    reference = next(iter(params.values()))
    x = torch.ones((1, *input_shape), dtype=reference.dtype, device=reference.device)
    grads = gradients(ModelCall.of(model, output_fn)(model, x).sum(), params)
    return {name: (grads[name] * p).detach().abs_() for name, p in params.items()}


@torch.no_grad()
def make_nonnegative(model: nn.Module) -> None:
    """SynFlow's linearisation: every parameter and buffer replaced by its absolute value."""
    for tensor in model.state_dict(keep_vars=True).values():
        tensor.abs_()


@torch.no_grad()
def zero_pruned(params: Mapping[str, nn.Parameter], mask: Mask) -> None:
    for name, p in params.items():
        p.masked_fill_(~mask[name].to(p.device), 0)


def input_shape_of(context: PruneContext) -> tuple[int, ...]:
    if "input_shape" in context.extras:
        return tuple(context.extras["input_shape"])
    if context.data is not None:
        return tuple(context.data.input_shape)
    raise AnymaskError(
        "synflow needs the input shape: pass data= to make_mask, or extras={'input_shape': (C, H, W)}"
    )


# -- methods ------------------------------------------------------------------------------------------
@METHODS.register("magnitude")
def magnitude(context: PruneContext) -> Mask:
    """Largest |w| kept, one shot."""
    return rank(context, magnitude_scores(context.params))


@METHODS.register("snip")
def snip(context: PruneContext) -> Mask:
    """SNIP (Lee et al. 2019), BatchNorm in the `prune_bn_mode` mode (eval by default, as Synaptic-Flow)."""
    batches = prune_batches(context, "snip")
    with scoring_copy(context, training=bn_training(context)) as (model, params):
        return rank(context, snip_scores(model, params, batches, context.output_fn))


@METHODS.register("grasp")
def grasp(context: PruneContext) -> Mask:
    """GraSP (Wang et al. 2020), BatchNorm in the `prune_bn_mode` mode (train by default, as its authors)."""
    batches = prune_batches(context, "grasp")
    with scoring_copy(context, training=bn_training(context)) as (model, params):
        return rank(context, grasp_scores(model, params, batches, output_fn=context.output_fn))


@METHODS.register("synflow")
def synflow(context: PruneContext) -> Mask:
    """SynFlow (Tanaka et al. 2020): data-free, eval mode, n rounds keeping d^((k+1)/n) after round k.

    Pruned weights are zeroed in the scoring copy before each round, so they score 0 and, through
    `previous`, can never come back.
    """
    rounds = context.config.synflow_iterations
    if rounds < 1:
        raise AnymaskError(f"synflow_iterations must be at least 1, got {rounds}")
    shape = input_shape_of(context)
    dtype = torch.float64 if context.config.float64 else None
    with scoring_copy(context, training=False, dtype=dtype) as (model, params):
        make_nonnegative(model)
        mask = Mask.dense(params)
        for k in range(rounds):
            zero_pruned(params, mask)
            scores = synflow_scores(model, params, shape, context.output_fn)
            if not all(bool(s.isfinite().all()) for s in scores.values()):
                raise AnymaskError(
                    "synflow scores are not finite on this model (the all-ones input overflowed through "
                    f"its layers{' even in float64' if dtype else ''}); "
                    + ("use another mask method" if dtype else "pass --float64")
                )
            density = context.density ** ((k + 1) / rounds)
            mask = mask_from_scores(scores, density, context.config.scope, previous=mask)
    return mask
