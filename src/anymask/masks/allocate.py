"""Scores -> mask with exact counts: keep exactly round(density * N) weights, ties broken by position.

Every method ends here, so exactness lives in one place. Synaptic-Flow's `kthvalue` then `score <= threshold`
prunes all weights tied at the threshold and can miss the target badly (all-equal scores prune everything);
here the threshold is found the same way, in O(N), but only as many tied weights as needed are kept, the
earliest positions first, so the count is exact and the result does not depend on the sort algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from anymask.errors import AnymaskError
from anymask.masks.mask import Mask

SCOPES = ("global", "layer")


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise AnymaskError(f"unknown mask scope '{scope}'; use 'global' or 'layer'")


def keep_count(total: int, density: float) -> int:
    return round(density * total)


def rankable(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One flat CPU copy of the scores, NaN ranked lowest; float64 stays float64 (SynFlow's tiny scores)."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    flat = torch.cat([t.detach().flatten().cpu().to(dtype) for t in tensors])
    return flat.nan_to_num_(nan=-math.inf, posinf=math.inf, neginf=-math.inf)


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor, True at the k highest scores; among equal scores the earlier position wins."""
    return _top_k(rankable([scores]), k).view(scores.shape)


def _top_k(flat: torch.Tensor, k: int) -> torch.Tensor:
    """`top_k` of a flat tensor already made rankable."""
    n = flat.numel()
    if not 0 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} scores")
    if k == n:
        return torch.ones(n, dtype=torch.bool)
    if k == 0:
        return torch.zeros(n, dtype=torch.bool)
    threshold = flat.kthvalue(n - k + 1).values  # the k-th highest score
    keep = flat > threshold
    ties = (flat == threshold).nonzero().squeeze(1)
    keep[ties[: k - int(keep.count_nonzero())]] = True
    return keep


def mask_from_scores(
    scores: Mapping[str, torch.Tensor], density: float, scope: str = "global", previous: Mask | None = None
) -> Mask:
    """Keep the highest-scoring weights: one ranking over all layers ('global') or per layer ('layer').

    Weights pruned in `previous` rank below every kept one and the count may not exceed what `previous`
    keeps, so iterative methods (SynFlow, lottery ticket) never revive a pruned weight.
    """
    check_scope(scope)
    names = list(scores)
    mask = Mask()
    for group in [[name] for name in names] if scope == "layer" else [names]:
        flat = rankable([scores[name] for name in group])
        k = keep_count(flat.numel(), density)
        if previous is not None:
            alive = torch.cat([previous[name].flatten().cpu() for name in group])
            _check_no_revival(k, int(alive.count_nonzero()), group)
            flat.masked_fill_(~alive, -math.inf)
        pieces = _top_k(flat, k).split([scores[name].numel() for name in group])
        for name, piece in zip(group, pieces, strict=True):
            mask[name] = piece.view(scores[name].shape)
    return mask


def _check_no_revival(k: int, available: int, names: list[str]) -> None:
    """Asking for more weights than the previous mask keeps would revive pruned ones: a caller's bug."""
    if k > available:
        where = names[0] if len(names) == 1 else f"{len(names)} layers"
        raise ValueError(
            f"cannot keep {k} weights of {where}: the previous mask keeps only {available} "
            "and pruned weights are never revived"
        )


def apportion(sizes: Mapping[str, int], densities: Mapping[str, float], total: int) -> dict[str, int]:
    """Integer kept counts, each floor or ceil of density * size, summing to exactly `total`.

    Largest-remainder rounding (ties to the earlier layer): ER/ERK then keep exactly round(d * N) weights
    overall while every layer stays within one weight of its formula density.
    """
    exact = {name: min(max(densities[name], 0.0), 1.0) * sizes[name] for name in sizes}
    counts = {name: math.floor(value) for name, value in exact.items()}
    open_layers = [name for name in sizes if counts[name] < sizes[name]]
    by_remainder = sorted(open_layers, key=lambda name: counts[name] - exact[name])  # stable: earlier first
    for name in by_remainder[: max(total - sum(counts.values()), 0)]:
        counts[name] += 1
    return counts


def mask_from_counts(
    params: Mapping[str, torch.Tensor], counts: Mapping[str, int], generator: torch.Generator
) -> Mask:
    """Uniformly random positions with an exact kept count per layer (random, ER, ERK)."""
    mask = Mask()
    for name, param in params.items():
        n = param.numel()
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=generator)[: counts[name]]] = True
        mask[name] = keep.view(param.shape)
    return mask


def mask_from_densities(
    params: Mapping[str, torch.Tensor], densities: Mapping[str, float], generator: torch.Generator
) -> Mask:
    """Uniformly random mask keeping round(density * N) weights in every layer."""
    counts = {name: keep_count(p.numel(), densities[name]) for name, p in params.items()}
    return mask_from_counts(params, counts, generator)
