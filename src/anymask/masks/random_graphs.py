"""Data-free random masks: uniform, Erdos-Renyi (ER) and Erdos-Renyi-Kernel (ERK).

Each rule only decides per-layer densities; positions are then drawn uniformly with exact counts. With
scope 'global' the counts are apportioned so exactly round(d * N) weights survive overall (each layer
within one weight of its rule); with scope 'layer' each layer keeps round(d_l * N_l).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from anymask.masks.allocate import apportion, keep_count, mask_from_counts
from anymask.masks.mask import Mask
from anymask.masks.methods import METHODS, PruneContext


def erk_densities(
    params: Mapping[str, torch.Tensor], density: float, kernel: bool = True
) -> dict[str, float]:
    """Per-layer densities of rigl's `get_sparsities_erdos_renyi`, with overall density `density`.

    A layer of shape s gets eps * sum(s) / prod(s) (ERK), or the same on the channel dims s[:2] only (ER),
    eps chosen so the kept count matches d * N. A layer the rule would make denser than 1 is kept dense
    and eps is solved again for the rest; eps only grows when a layer turns dense, so moving every such
    layer at once ends in the same dense set as rigl's one-at-a-time loop.
    """
    raw = {name: _raw_density(tuple(p.shape), kernel) for name, p in params.items()}
    sizes = {name: p.numel() for name, p in params.items()}
    dense: set[str] = set()
    eps = 0.0
    while True:
        sparse = [name for name in params if name not in dense]
        divisor = sum(raw[name] * sizes[name] for name in sparse)
        if not sparse or divisor == 0:
            break
        eps = (density * sum(sizes.values()) - sum(sizes[name] for name in dense)) / divisor
        too_dense = {name for name in sparse if eps * raw[name] > 1}
        if not too_dense:
            break
        dense |= too_dense
    return {name: 1.0 if name in dense else eps * raw[name] for name in params}


def _raw_density(shape: tuple[int, ...], kernel: bool) -> float:
    dims = shape if kernel else shape[:2]
    return sum(dims) / math.prod(dims)


def random_mask(context: PruneContext, densities: Mapping[str, float]) -> Mask:
    """Uniform positions with the rule's densities; exact total (global scope) or per layer (layer)."""
    sizes = {name: p.numel() for name, p in context.params.items()}
    if context.config.scope == "global":
        counts = apportion(sizes, densities, keep_count(sum(sizes.values()), context.density))
    else:
        counts = {name: keep_count(n, densities[name]) for name, n in sizes.items()}
    return mask_from_counts(context.params, counts, context.generator)


@METHODS.register("random")
def random(context: PruneContext) -> Mask:
    """The same density in every layer, positions uniformly at random."""
    return random_mask(context, dict.fromkeys(context.params, context.density))


@METHODS.register("er")
def er(context: PruneContext) -> Mask:
    """Erdos-Renyi: density proportional to (fan_in + fan_out) / (fan_in * fan_out) over channels."""
    return random_mask(context, erk_densities(context.params, context.density, kernel=False))


@METHODS.register("erk")
def erk(context: PruneContext) -> Mask:
    """Erdos-Renyi-Kernel: like ER with the kernel dims counted, so 1x1 and small kernels get denser."""
    return random_mask(context, erk_densities(context.params, context.density, kernel=True))
