"""Masks: the Mask type, which weights are prunable, mask methods, and keeping pruned weights zero."""

from anymask.masks.allocate import keep_count, mask_from_counts, mask_from_densities, mask_from_scores, top_k
from anymask.masks.analysis import compare, inspect_rows, ramanujan_gap, weighted_ramanujan_gap
from anymask.masks.config import MaskConfig
from anymask.masks.connectivity import Connectivity, LayerConnectivity, connectivity
from anymask.masks.enforce import MaskEnforcer, enforce
from anymask.masks.mask import LayerDensity, Mask
from anymask.masks.methods import METHODS, PruneContext, check_sparsity, collapse_message, make_mask
from anymask.masks.prunable import prunable_from_config, prunable_parameters

__all__ = [
    "METHODS",
    "Connectivity",
    "LayerConnectivity",
    "LayerDensity",
    "Mask",
    "MaskConfig",
    "MaskEnforcer",
    "PruneContext",
    "check_sparsity",
    "collapse_message",
    "compare",
    "connectivity",
    "enforce",
    "inspect_rows",
    "keep_count",
    "make_mask",
    "mask_from_counts",
    "mask_from_densities",
    "mask_from_scores",
    "prunable_from_config",
    "prunable_parameters",
    "ramanujan_gap",
    "top_k",
    "weighted_ramanujan_gap",
]
