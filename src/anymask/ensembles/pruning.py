"""Children's masks: anti-random pairs (Whitaker & Whitley, 2022) and copies of a parent pruned by a mask.

An anti-random pair splits what the parent keeps: in every layer the first child keeps a uniformly random
half of the parent's kept weights (rounded down) and the second child keeps exactly the rest. The two
masks are disjoint and together are the parent's mask, so the pair sees every weight the parent had and
no weight twice. A dense parent's "mask" keeps every prunable weight.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from anymask.errors import AnymaskError
from anymask.masks import Mask, MaskConfig, prunable_from_config

ANTI_RANDOM = "anti-random"


def anti_random_pair(parent: Mask, generator: torch.Generator) -> tuple[Mask, Mask]:
    """Two masks that split `parent`'s kept weights in half in every layer: disjoint, union = `parent`."""
    first, second = Mask(), Mask()
    for name, kept in parent.items():
        flat = kept.reshape(-1).cpu().bool()
        positions = flat.nonzero().squeeze(1)
        chosen = positions[torch.randperm(len(positions), generator=generator)[: len(positions) // 2]]
        half = torch.zeros_like(flat)
        half[chosen] = True
        first[name] = half.view(kept.shape)
        second[name] = (flat & ~half).view(kept.shape)
    return first, second


def anti_random_masks(parent: Mask, children: int, seed: int = 0) -> list[Mask]:
    """`children` masks (an even number) as anti-random pairs: masks 2k and 2k+1 are complements within
    `parent`; each pair has its own generator (seed, k), so adding pairs never changes earlier ones."""
    if children < 2 or children % 2:
        raise AnymaskError(
            f"anti-random children come in pairs of exact complements: --children must be even and at "
            f"least 2, got {children}"
        )
    masks: list[Mask] = []
    for pair in range(children // 2):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + pair)
        masks.extend(anti_random_pair(parent, generator))
    return masks


def anti_random_within(kept: Mask, prunable: set[str], children: int, seed: int = 0) -> list[Mask]:
    """Anti-random children of a parent that keeps `kept`, splitting only the `prunable` layers: the other
    layers stay as the parent has them in every child (a classifier the children's config does not prune
    stays dense, as prune-and-tune's code leaves the last layer whole)."""
    split = Mask({name: mask for name, mask in kept.items() if name in prunable})
    if not split:
        raise AnymaskError(
            "the children's settings prune none of the parent's layers: there is nothing to split"
        )
    halves = anti_random_masks(split, children, seed)
    return [Mask({name: half[name] if name in half else kept[name] for name in kept}) for half in halves]


def parent_mask(model: nn.Module, config: MaskConfig | None = None) -> Mask:
    """What a trained model keeps: its non-zero prunable weights (a dense model keeps all of them).

    `config` says which weights are prunable (first conv, classifier, shortcuts); defaults as anymask's.
    """
    params = prunable_from_config(model, config or MaskConfig())
    if not params:
        raise AnymaskError("the model has no prunable weights (Conv2d or Linear): there is nothing to split")
    return Mask({name: (p.detach() != 0).cpu() for name, p in params.items()})


def pruned_child(parent: nn.Module, mask: Mask) -> nn.Module:
    """A copy of `parent` with `mask` applied (pruned weights exactly 0); the parent is left unchanged.
    Keep them at 0 while tuning with `anymask.masks.enforce(child, mask, optimizer)`."""
    child = copy.deepcopy(parent)
    mask.apply(child)
    return child
