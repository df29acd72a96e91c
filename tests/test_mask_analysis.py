"""Mask analysis: overlap of hand-made masks, Ramanujan gaps of known graphs, inspect rows."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from anymask.errors import AnymaskError
from anymask.masks import Mask, MaskConfig, analysis, make_mask
from anymask.masks.analysis import compare, inspect_rows, ramanujan_gap, weighted_ramanujan_gap
from anymask.masks.methods import collapse_message


def bools(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


# -- overlap ------------------------------------------------------------------------------------------
def test_compare_counts_iou_and_hamming_per_layer_and_overall() -> None:
    a = Mask({"x": bools(1, 1, 0, 0), "y": bools(1, 0, 0)})
    b = Mask({"x": bools(1, 0, 1, 0), "y": bools(1, 0, 0)})
    result = compare(a, b)
    x, y = result.layers
    assert (x.name, x.iou, x.hamming, x.total, x.hamming_fraction) == ("x", 1 / 3, 2, 4, 0.5)
    assert (y.iou, y.hamming) == (1.0, 0)
    assert result.overall.iou == pytest.approx(2 / 4)  # both: 1 + 1, either: 3 + 1
    assert result.overall.hamming == 2
    assert result.overall.hamming_fraction == pytest.approx(2 / 7)


def test_compare_of_empty_masks_is_identical() -> None:
    empty = Mask({"x": bools(0, 0)})
    assert compare(empty, empty).overall.iou == 1.0


def test_compare_rejects_masks_of_different_models() -> None:
    with pytest.raises(AnymaskError, match="different weights"):
        compare(Mask({"x": bools(1)}), Mask({"y": bools(1)}))
    with pytest.raises(AnymaskError, match="shape"):
        compare(Mask({"x": bools(1, 0)}), Mask({"x": bools(1)}))


# -- spectral gaps ------------------------------------------------------------------------------------
def random_sparse(outputs: int, inputs: int, degree: int, seed: int = 0) -> torch.Tensor:
    """Each input connected to `degree` random outputs ([out, in] layout, like a Linear weight)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(inputs, outputs, dtype=torch.bool)
    for row in mask:
        row[torch.randperm(outputs, generator=g)[:degree]] = True
    return mask.T.contiguous()


def test_complete_bipartite_graph_has_the_full_bound_as_gap() -> None:
    full = torch.ones(6, 9, dtype=torch.bool)  # 9 inputs of degree 6, 6 outputs of degree 9
    assert ramanujan_gap(full) == pytest.approx(math.sqrt(5) + math.sqrt(8), abs=1e-6)
    assert weighted_ramanujan_gap(full, torch.ones(6, 9)) == pytest.approx(math.sqrt(54), abs=1e-6)


def test_random_sparse_graph_has_a_smaller_gap_than_complete() -> None:
    sparse = random_sparse(64, 64, 8)
    gap = ramanujan_gap(sparse)
    assert 0 < gap < ramanujan_gap(torch.ones(64, 64, dtype=torch.bool))
    # a random 8-regular-ish bipartite graph is near-Ramanujan: mu_hat is close to 2 sqrt(7)
    assert gap == pytest.approx(2 * math.sqrt(7) - torch.linalg.svdvals(sparse.double())[1].item(), abs=1e-6)


def test_disconnected_graph_has_a_negative_gap() -> None:
    block = torch.ones(8, 8, dtype=torch.bool)
    two_islands = torch.block_diag(block, block)  # sigma_2 = sigma_1 = 8: no expansion at all
    assert ramanujan_gap(two_islands) == pytest.approx(2 * math.sqrt(7) - 8, abs=1e-6)
    assert ramanujan_gap(two_islands) < ramanujan_gap(random_sparse(16, 16, 8))
    assert weighted_ramanujan_gap(two_islands, torch.ones(16, 16)) == pytest.approx(0, abs=1e-6)


def test_conv_layers_use_input_channels_times_kernel_as_inputs() -> None:
    conv = torch.ones(4, 2, 3, 3, dtype=torch.bool)  # 18 inputs of degree 4, 4 outputs of degree 18
    assert ramanujan_gap(conv) == pytest.approx(math.sqrt(3) + math.sqrt(17), abs=1e-6)


def test_isolated_nodes_are_dropped_before_degrees() -> None:
    full = torch.ones(6, 9, dtype=torch.bool)
    padded = torch.zeros(10, 12, dtype=torch.bool)
    padded[:6, :9] = full
    assert ramanujan_gap(padded) == pytest.approx(ramanujan_gap(full))


def test_weighted_gap_uses_weight_magnitudes() -> None:
    mask = random_sparse(16, 16, 6)
    weight = torch.randn(16, 16, generator=torch.Generator().manual_seed(1))
    values = torch.linalg.svdvals((weight * mask).abs().double())
    assert weighted_ramanujan_gap(mask, weight) == pytest.approx((values[0] - values[1]).item(), abs=1e-6)
    assert weighted_ramanujan_gap(mask, weight) == weighted_ramanujan_gap(mask, -weight)


def test_gap_is_nan_when_the_graph_is_too_sparse() -> None:
    assert math.isnan(ramanujan_gap(torch.eye(5, dtype=torch.bool)))  # degree 1
    assert math.isnan(ramanujan_gap(torch.zeros(4, 4, dtype=torch.bool)))
    assert math.isnan(weighted_ramanujan_gap(torch.eye(5, dtype=torch.bool), torch.ones(5, 5)))


# -- inspect ------------------------------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)


def test_inspect_rows_report_counts_collapse_and_gaps() -> None:
    net = Tiny()
    mask = Mask(
        {
            "conv.weight": torch.ones(8, 3, 3, 3, dtype=torch.bool),
            "fc.weight": torch.zeros(4, 8, dtype=torch.bool),
        }
    )
    conv, fc = inspect_rows(mask)
    assert (conv.name, conv.shape, conv.kept, conv.total, conv.density, conv.collapsed) == (
        "conv.weight",
        (8, 3, 3, 3),
        216,
        216,
        1.0,
        False,
    )
    assert conv.gap == pytest.approx(math.sqrt(7) + math.sqrt(26), abs=1e-6)
    assert conv.weighted_gap is None
    assert fc.collapsed and fc.gap is None and "undefined" in fc.note
    conv_w, _ = inspect_rows(mask, net)
    assert conv_w.weighted_gap == pytest.approx(weighted_ramanujan_gap(mask["conv.weight"], net.conv.weight))
    assert "fc.weight" in collapse_message(mask)


def test_inspect_rows_count_the_output_channels_that_keep_a_weight() -> None:
    """A mask can keep its density yet narrow the layer: channels with no weight left are dead width."""
    conv = torch.zeros(8, 3, 3, 3, dtype=torch.bool)
    conv[[0, 2, 5], 1, 1, 1] = True  # three channels keep one weight each
    conv[5] = True  # and one keeps all of its 27
    fc = torch.zeros(4, 8, dtype=torch.bool)
    fc[3, :] = True
    mask = Mask({"conv.weight": conv, "fc.weight": fc})
    conv_row, fc_row = inspect_rows(mask)
    assert (conv_row.outputs_alive, conv_row.outputs) == (3, 8)
    assert (fc_row.outputs_alive, fc_row.outputs) == (1, 4)
    assert conv_row.positive is None  # signs need weights


def test_inspect_rows_count_the_kept_weights_that_are_positive() -> None:
    """A mask that picks weights by sign (eval-mode GraSP, docs/masks.md) shows it against ~half."""
    net = Tiny()
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor([[1.0, -1.0] * 4] * 4))
    fc = torch.zeros(4, 8, dtype=torch.bool)
    fc[:, :3] = True  # per row: +, -, + kept
    conv = torch.ones(8, 3, 3, 3, dtype=torch.bool)
    conv_row, fc_row = inspect_rows(Mask({"conv.weight": conv, "fc.weight": fc}), net)
    assert fc_row.positive == 8
    assert conv_row.positive == int((net.conv.weight > 0).sum())


def test_inspect_skips_gaps_of_huge_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analysis, "MAX_GAP_ENTRIES", 100)
    (row,) = inspect_rows(Mask({"conv.weight": torch.ones(8, 3, 3, 3, dtype=torch.bool)}))
    assert row.gap is None and "skipped" in row.note


def test_inspect_rejects_a_mask_of_another_model() -> None:
    with pytest.raises(AnymaskError, match="does not fit"):
        inspect_rows(Mask({"other.weight": bools(1)}), Tiny())


def test_magnitude_and_random_masks_overlap_about_as_chance_predicts() -> None:
    net = Tiny()
    a = make_mask(net, MaskConfig(mask_method="magnitude", sparsity=0.5))
    b = make_mask(net, MaskConfig(mask_method="random", sparsity=0.5, scope="layer"))
    overall = compare(a, b).overall
    assert 0.15 < overall.iou < 0.5  # independent halves: expected IoU 1/3
    assert compare(a, a).overall.iou == 1.0 and compare(a, a).overall.hamming == 0
