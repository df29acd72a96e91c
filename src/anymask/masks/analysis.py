"""Looking at masks: overlap between two masks, and the Ramanujan-graph view of each layer.

Graph view (VITA-Group: Hoang et al., "Revisiting Pruning at Initialization through the Lens of Ramanujan
Graph", ICLR 2023, and "Don't just prune by magnitude! Your mask topology is a secret weapon", NeurIPS
2023, the "full-spectrum coordinate"; code github.com/VITA-Group/ramanujan-on-pai). A layer is a bipartite
graph as in their code: the left nodes are its inputs, in_channels * kh * kw for a conv (each kernel tap
is its own input) or in_features for a Linear; the right nodes are its out_channels / out_features; a kept
weight is an edge. Nodes left without any edge are dropped first. With B the (left x right) biadjacency,
the graph's adjacency [[0, B], [B^T, 0]] has eigenvalues +-sigma_i(B), so its largest eigenvalue magnitudes
are the singular values of B. Definitions implemented:

* Ramanujan gap  Delta_r = sqrt(d_left - 1) + sqrt(d_right - 1) - mu_hat, with d_left, d_right the average
  degrees of the two sides and mu_hat = sigma_2(B), the largest non-trivial eigenvalue. sqrt(c-1) + sqrt(d-1)
  is the Ramanujan bound of a (c, d)-biregular bipartite graph; for c = d it is the familiar
  2 * sqrt(d - 1). Positive: the layer is at least as well connected as a Ramanujan expander.
* Weighted spectral gap  lambda = sigma_1(|W * M|) - sigma_2(|W * M|), the same graph with the weight
  magnitudes as edge weights (the NeurIPS 2023 paper's parameter-aware axis).

Both are NaN where the authors' code skips a graph: average left degree below 3 or right degree not above
1 (a layer too sparse, or collapsed, for the bound to mean anything). Their iterative-mean variant (IMDB,
averaged over d-left-regular subgraphs) is not implemented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from anymask.errors import AnymaskError
from anymask.masks.mask import Mask

MAX_GAP_ENTRIES = 4_000_000
"""Layers with more weights than this get no gap in `inspect_rows` (the largest conv of VGG-16 / ResNet-18
has 2.4M; a gap costs one (in x out) Gram matrix and its eigenvalues)."""
MIN_LEFT_DEGREE = 3.0


# -- overlap ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Overlap:
    """How alike two masks are on one layer (or, named 'all', on the whole model)."""

    name: str
    iou: float  # |kept in both| / |kept in either|; 1.0 when neither keeps anything
    hamming: int  # positions where the two masks differ
    total: int

    @property
    def hamming_fraction(self) -> float:
        return self.hamming / self.total if self.total else 0.0


@dataclass(frozen=True)
class Comparison:
    layers: list[Overlap]
    overall: Overlap


def compare(a: Mask, b: Mask) -> Comparison:
    """Per-layer and overall IoU of the kept sets and Hamming distance of two masks of one model."""
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise AnymaskError(
            f"the masks cover different weights ('{only[0]}' is in one only); "
            "compare masks made for the same model and prunable layers"
        )
    counts = [_counts(name, a[name], b[name]) for name in a]
    layers = [_overlap(name, *c) for name, c in zip(a, counts, strict=True)]
    overall = _overlap("all", *(sum(c[i] for c in counts) for i in range(4)))
    return Comparison(layers, overall)


def _counts(name: str, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int, int, int]:
    """(intersection, union, differing, total) kept counts of one layer."""
    if x.shape != y.shape:
        raise AnymaskError(
            f"'{name}' has shape {tuple(x.shape)} in one mask and {tuple(y.shape)} in the other"
        )
    x, y = x.cpu(), y.cpu()
    both, either = int((x & y).sum()), int((x | y).sum())
    return both, either, either - both, x.numel()


def _overlap(name: str, both: int, either: int, differing: int, total: int) -> Overlap:
    return Overlap(name, both / either if either else 1.0, differing, total)


# -- spectral gaps ------------------------------------------------------------------------------------
def biadjacency(tensor: torch.Tensor) -> torch.Tensor:
    """(inputs x outputs) matrix of a Linear [out, in] or conv [out, in, kh, kw] tensor, float64."""
    return tensor.detach().cpu().reshape(tensor.shape[0], -1).T.double()


def top_singular_values(matrix: torch.Tensor, k: int = 2) -> list[float]:
    """The k largest singular values (zeros past the rank), via the smaller side's Gram matrix."""
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    values = torch.linalg.eigvalsh(gram).flip(0).clamp(min=0).sqrt().tolist()
    return (values + [0.0] * k)[:k]


def _graph(mask_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(edges, left, right): the biadjacency without isolated nodes and the kept node indices, or None
    when the graph is too sparse for a gap."""
    edges = biadjacency(mask_tensor != 0)
    left, right = edges.sum(1).nonzero().squeeze(1), edges.sum(0).nonzero().squeeze(1)
    kept = edges.sum().item()
    if len(left) == 0 or kept / len(left) < MIN_LEFT_DEGREE or kept / len(right) <= 1:
        return None
    return edges[left][:, right], left, right


def ramanujan_gap(mask_tensor: torch.Tensor) -> float:
    """sqrt(d_left - 1) + sqrt(d_right - 1) - sigma_2 of the layer's graph (see the module docstring).

    NaN when the graph is too sparse (average left degree < 3 or right degree <= 1).
    """
    graph = _graph(mask_tensor)
    if graph is None:
        return math.nan
    edges, left, right = graph
    kept = edges.sum().item()
    mu_hat = top_singular_values(edges)[1]
    return math.sqrt(kept / len(left) - 1) + math.sqrt(kept / len(right) - 1) - mu_hat


def weighted_ramanujan_gap(mask_tensor: torch.Tensor, weight: torch.Tensor) -> float:
    """sigma_1 - sigma_2 of |weight * mask| on the layer's graph (module docstring); NaN when too sparse."""
    if weight.shape != mask_tensor.shape:
        raise AnymaskError(
            f"weight shape {tuple(weight.shape)} differs from mask shape {tuple(mask_tensor.shape)}"
        )
    graph = _graph(mask_tensor)
    if graph is None:
        return math.nan
    _, left, right = graph
    first, second = top_singular_values(biadjacency(weight * (mask_tensor != 0)).abs()[left][:, right])
    return first - second


# -- inspect ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerRow:
    """One line of `anymask inspect`: counts, collapse, and the layer's spectral gaps."""

    name: str
    shape: tuple[int, ...]
    kept: int
    total: int
    density: float
    collapsed: bool
    outputs_alive: int  # output channels (units) that keep at least one weight: the layer's width left
    outputs: int
    gap: float | None  # Ramanujan gap; None when skipped or undefined (see note)
    weighted_gap: float | None  # needs a model with weights
    positive: int | None = None  # kept weights that are positive (needs a model); a sign-blind mask: ~half
    note: str = ""


def inspect_rows(mask: Mask, model: nn.Module | None = None) -> list[LayerRow]:
    """Per-layer report of `mask`; with `model`, weighted gaps of its current weights too."""
    if model is not None:
        mask.check_fits(model)
    rows = []
    for layer in mask.layers():
        weight = None if model is None else model.get_parameter(layer.name).detach()
        gap, weighted, note = _gaps(mask[layer.name], weight)
        per_output = mask[layer.name].reshape(layer.shape[0], -1).sum(1)
        positive = None if weight is None else int(((weight > 0) & mask[layer.name]).sum())
        rows.append(
            LayerRow(
                layer.name,
                layer.shape,
                layer.kept,
                layer.total,
                layer.density,
                layer.collapsed,
                int((per_output > 0).sum()),
                layer.shape[0],
                gap,
                weighted,
                positive,
                note,
            )
        )
    return rows


def _gaps(mask_tensor: torch.Tensor, weight: torch.Tensor | None) -> tuple[float | None, float | None, str]:
    if mask_tensor.numel() > MAX_GAP_ENTRIES:
        return None, None, f"gaps skipped: {mask_tensor.numel():,} weights > {MAX_GAP_ENTRIES:,}"
    gap = ramanujan_gap(mask_tensor)
    if math.isnan(gap):
        return None, None, f"gaps undefined: average input degree < {MIN_LEFT_DEGREE:g} or output degree <= 1"
    weighted = None if weight is None else weighted_ramanujan_gap(mask_tensor, weight)
    return gap, weighted, ""
