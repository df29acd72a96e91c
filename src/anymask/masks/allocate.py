"""Scores -> mask with exact counts: keep exactly round(density * N) weights, ties broken by position."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from anymask.errors import AnymaskError
from anymask.masks.mask import Mask


def keep_count(total: int, density: float) -> int:
    return int(round(density * total))


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor, True at the k highest scores; among equal scores the earlier position wins."""
    flat = scores.detach().flatten().float()
    flat = torch.nan_to_num(flat, nan=float("-inf"))
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        order = torch.sort(flat, descending=True, stable=True).indices
        keep[order[:k]] = True
    return keep.view_as(scores)


def mask_from_scores(
    scores: Mapping[str, torch.Tensor], density: float, scope: str = "global", previous: Mask | None = None
) -> Mask:
    """Keep the highest-scoring weights: one ranking over all layers ('global') or per layer ('layer').

    Weights pruned in `previous` get score -inf, so they are never revived while the kept count shrinks.
    """
    scores = {name: s.detach().float().cpu() for name, s in scores.items()}
    if previous is not None:
        scores = {name: s.masked_fill(~previous[name].cpu(), float("-inf")) for name, s in scores.items()}
    if scope == "layer":
        return Mask({name: top_k(s, keep_count(s.numel(), density)) for name, s in scores.items()})
    if scope != "global":
        raise AnymaskError(f"unknown mask scope '{scope}'; use 'global' or 'layer'")
    names = list(scores)
    flat = torch.cat([scores[n].flatten() for n in names])
    keep = top_k(flat, keep_count(flat.numel(), density))
    pieces = torch.split(keep, [scores[n].numel() for n in names])
    return Mask({n: piece.view_as(scores[n]) for n, piece in zip(names, pieces, strict=True)})


def mask_from_densities(
    params: Mapping[str, torch.Tensor], densities: Mapping[str, float], generator: torch.Generator
) -> Mask:
    """Uniformly random mask with an exact kept count per layer (random, ER, ERK)."""
    mask = Mask()
    for name, param in params.items():
        n = param.numel()
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=generator)[: keep_count(n, densities[name])]] = True
        mask[name] = keep.view(param.shape)
    return mask
