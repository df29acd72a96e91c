"""Effective sparsity: reachability of hand-built masks, residual skips, every registry model, warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from anymask.errors import AnymaskError
from anymask.masks import Mask, MaskConfig, connectivity, make_mask
from anymask.models import MODELS, create_model


def ones(*shape: int) -> torch.Tensor:
    return torch.ones(shape, dtype=torch.bool)


def mlp() -> nn.Sequential:
    """4 -> 3 -> 3 -> 2, with BatchNorm and biases that must not count as paths."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU6(), nn.Linear(3, 2)
    )


# -- hand-built masks ---------------------------------------------------------------------------------
def test_a_cut_layer_disconnects_every_class() -> None:
    """Layer 1 feeds only hidden unit 1; layer 2 reads only hidden unit 0: every layer keeps weights,
    no path joins input and output."""
    first, second = torch.zeros(3, 4, dtype=torch.bool), torch.zeros(3, 3, dtype=torch.bool)
    first[1], second[:, 0] = True, True
    mask = Mask({"0.weight": first, "3.weight": second, "5.weight": ones(2, 3)})
    result = connectivity(mlp(), mask, (4,))
    assert not mask.collapsed_layers()
    assert (result.classes_reachable, result.num_classes) == (0, 2)
    assert [(layer.kept, layer.effective) for layer in result.layers] == [(4, 0), (3, 0), (6, 0)]
    assert result.disconnected and "0 of 2 classes" in (result.message() or "")


def test_partly_dead_weights_are_counted_exactly() -> None:
    """Hidden unit 2 of layer 1 gets no input: its outgoing weights are dead; output 1 is fed only by
    unit 0 of layer 2, which is reachable; layer-2 unit 2 feeds nothing, so its incoming weights are dead."""
    first = ones(3, 4)
    first[2] = False  # unit 2 receives nothing
    second = ones(3, 3)
    last = torch.tensor([[True, True, False], [True, False, False]])  # layer-2 unit 2 feeds nothing
    mask = Mask({"0.weight": first, "3.weight": second, "5.weight": last})
    result = connectivity(mlp(), mask, (4,))
    # layer 2: rows 0, 1 (co-reachable units) x columns 0, 1 (reachable units) = 4 of its 9
    assert [(layer.kept, layer.effective) for layer in result.layers] == [(8, 8), (9, 4), (3, 3)]
    assert result.classes_reachable == 2
    assert torch.equal(
        result.effective_mask["3.weight"], torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0]]).bool()
    )


class Residual(nn.Module):
    """stem conv -> (branch: conv_a -> conv_b) + identity skip -> max-pool -> classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.conv_a = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.conv_b = nn.Conv2d(2, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.stem(x)))
        x = self.relu(x + self.conv_b(self.relu(self.conv_a(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


def test_a_skip_keeps_the_output_reachable_when_the_branch_is_cut() -> None:
    """conv_a writes only channel 0, conv_b reads only channel 1: the branch carries nothing, but the
    identity skip still joins stem and classifier, so every class stays reachable."""
    conv_a, conv_b = torch.zeros(2, 2, 3, 3, dtype=torch.bool), torch.zeros(2, 2, 1, 1, dtype=torch.bool)
    conv_a[0], conv_b[:, 1] = True, True
    mask = Mask(
        {
            "stem.weight": ones(2, 1, 3, 3),
            "conv_a.weight": conv_a,
            "conv_b.weight": conv_b,
            "classifier.weight": ones(3, 2),
        }
    )
    result = connectivity(Residual(), mask, (1, 5, 5))
    assert result.classes_reachable == 3
    effective = {layer.name: layer.effective for layer in result.layers}
    assert effective == {"stem.weight": 18, "conv_a.weight": 0, "conv_b.weight": 0, "classifier.weight": 6}
    assert not result.disconnected  # 24 of 42 kept weights effective: above the warning floor
    # without the skip's help (stem cut too) nothing is reachable
    mask["stem.weight"] = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    assert connectivity(Residual(), mask, (1, 5, 5)).classes_reachable == 0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), density=st.floats(0.1, 0.9))
def test_effective_weights_match_boolean_path_counting(seed: int, density: float) -> None:
    """Random masks on a 4-3-3-2 MLP against reachability by boolean matrix products."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"0.weight": (3, 4), "3.weight": (3, 3), "5.weight": (2, 3)}
    mask = Mask({n: torch.rand(s, generator=g) < density for n, s in shapes.items()})
    layers = [mask[n].long() for n in shapes]
    reach = [torch.ones(4, dtype=torch.long)]
    for w in layers:
        reach.append(((w @ reach[-1]) > 0).long())
    co = [torch.ones(2, dtype=torch.long)]
    for w in reversed(layers):
        co.insert(0, ((w.T @ co[0]) > 0).long())
    expected = [w.bool() & (co[i + 1][:, None] > 0) & (reach[i][None, :] > 0) for i, w in enumerate(layers)]
    result = connectivity(mlp(), mask, (4,))
    for name, want in zip(shapes, expected, strict=True):
        assert torch.equal(result.effective_mask[name], want)
    assert result.classes_reachable == int(reach[-1].sum())


# -- every registry model -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS.names())
def test_a_dense_mask_is_fully_effective_on_every_model(name: str) -> None:
    """Residual additions, pooling, BatchNorm, depthwise and 1x1 convs all pass reachability both ways."""
    torch.manual_seed(0)
    shape = (1, 8, 8) if name == "cnn" else (3, 32, 32)
    net = create_model(name, 10, shape, 0.125)
    mask = Mask(
        {n: ones(*p.shape) for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1}
    )
    result = connectivity(net, mask, shape)
    assert (result.classes_reachable, result.effective) == (10, result.kept)


def test_the_model_is_left_unchanged() -> None:
    net = Residual().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    mask = Mask(
        {n: ones(*p.shape) for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1}
    )
    connectivity(net, mask, (1, 5, 5))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and net.training
    assert all(p.grad is None for p in net.parameters())


# -- make_mask warns, or fails under --strict ---------------------------------------------------------
def cut_cnn_mask(tmp_path: Path) -> tuple[nn.Module, Path]:
    """The digits CNN with a mask whose stem feeds only channel 0 and whose next conv reads only 1."""
    torch.manual_seed(0)
    net = create_model("cnn", 10, (1, 8, 8), 0.5)
    masks = {n: ones(*p.shape) for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1}
    stem, nxt = list(masks)[:2]
    masks[stem][1:] = False
    masks[nxt][:, 0] = False
    path = tmp_path / "cut.safetensors"
    Mask(masks).save(path)
    return net, path


def test_a_disconnecting_mask_warns_and_fails_under_strict(tmp_path: Path) -> None:
    net, path = cut_cnn_mask(tmp_path)
    with pytest.warns(UserWarning, match="disconnected mask: 0 of 10 classes"):
        mask = make_mask(net, MaskConfig(mask_file=str(path)), extras={"input_shape": (1, 8, 8)})
    assert not mask.collapsed_layers()
    with pytest.raises(AnymaskError, match="disconnected mask") as error:
        make_mask(net, MaskConfig(mask_file=str(path), strict=True), extras={"input_shape": (1, 8, 8)})
    assert "\n" not in str(error.value)


def test_a_connected_mask_is_silent(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = create_model("cnn", 10, (1, 8, 8), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_mask(
            net,
            MaskConfig(mask_method="random", sparsity=0.5, strict=True),
            extras={"input_shape": (1, 8, 8)},
        )


def test_a_model_that_cannot_run_on_one_image_is_skipped_with_a_warning() -> None:
    class NeedsTwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.fc(x + y)

    with pytest.warns(UserWarning, match="effective sparsity not checked"):
        make_mask(
            NeedsTwoInputs(), MaskConfig(mask_method="random", sparsity=0.5), extras={"input_shape": (4,)}
        )
