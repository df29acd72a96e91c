"""The Mask type, exact random masks, enforcement through training, and mask files."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from anymask.errors import AnymaskError
from anymask.masks import Mask, MaskConfig, enforce, keep_count, make_mask, prunable_parameters
from anymask.models import create_model
from conftest import cached_model

MODELS = ["cnn", "resnet20", "vgg16", "mobilenetv2"]


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(MODELS),
    sparsity=st.floats(min_value=0.0, max_value=0.999, allow_nan=False),
    seed=st.integers(0, 2**31 - 1),
    scope=st.sampled_from(["global", "layer"]),
)
def test_random_mask_keeps_exact_count(name: str, sparsity: float, seed: int, scope: str) -> None:
    """Layer scope: round(d * n) in every layer. Global: round(d * N) overall, each layer within one."""
    model = cached_model(name, 0.25)
    mask = make_mask(model, MaskConfig(mask_method="random", sparsity=sparsity, scope=scope), seed=seed)
    assert list(mask) == list(prunable_parameters(model))
    density = 1 - sparsity
    for layer in mask.layers():
        if scope == "layer":
            assert layer.kept == keep_count(layer.total, density)
        else:
            assert abs(layer.kept - density * layer.total) <= 1
    if scope == "global":
        assert mask.kept() == keep_count(mask.total(), density)


def test_random_mask_is_seeded() -> None:
    model = cached_model("resnet20", 0.25)
    config = MaskConfig(mask_method="random", sparsity=0.9)
    a, b, c = (make_mask(model, config, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_prunable_switches() -> None:
    model = cached_model("resnet20", 0.25)
    names = set(prunable_parameters(model))
    assert "stem.conv.weight" in names and "classifier.weight" in names
    assert any("shortcut" in n for n in names)
    kept = prunable_parameters(model, first_conv=False, classifier=False, shortcuts=False)
    assert not {"stem.conv.weight", "classifier.weight"} & set(kept)
    assert not any("shortcut" in n for n in kept)
    assert all(n.endswith(".weight") for n in names)
    assert not any("bn" in n or "norm" in n for n in names)


def test_mask_rejects_invalid_entries() -> None:
    with pytest.raises(AnymaskError, match="other than 0 and 1"):
        Mask({"w": torch.tensor([0.0, 0.5])})
    with pytest.raises(AnymaskError, match="non-empty"):
        Mask({"": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(AnymaskError, match="must be a tensor"):
        Mask({"w": [1, 0]})  # type: ignore[dict-item]
    assert Mask({"w": torch.tensor([0.0, 1.0])})["w"].dtype == torch.bool


@pytest.mark.parametrize("nesterov", [False, True])
def test_pruned_weights_stay_exactly_zero_through_sgd(nesterov: bool) -> None:
    torch.manual_seed(0)
    model = create_model("cnn", 10, (1, 8, 8))
    mask = make_mask(model, MaskConfig(mask_method="random", sparsity=0.9), seed=0)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.5, momentum=0.9, nesterov=nesterov, weight_decay=5e-3
    )
    enforce(model, mask, optimizer)
    for _ in range(5):
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    for name, keep in mask.items():
        param = model.get_parameter(name)
        assert torch.all(param[~keep] == 0)
        assert torch.all(param.grad[~keep] == 0)
        assert torch.all(optimizer.state[param]["momentum_buffer"][~keep] == 0)
        assert int(param.count_nonzero()) == int(keep.sum())  # kept weights are really trained


def test_enforcement_holds_for_adamw() -> None:
    torch.manual_seed(0)
    model = create_model("cnn", 10, (1, 8, 8))
    mask = make_mask(model, MaskConfig(mask_method="random", sparsity=0.5), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    handle = enforce(model, mask, optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 1, 8, 8)).sum().backward()
        optimizer.step()
    assert all(torch.all(model.get_parameter(n)[~k] == 0) for n, k in mask.items())
    handle.remove()
    optimizer.zero_grad()
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    optimizer.step()  # without enforcement, pruned weights move again
    assert not all(torch.all(model.get_parameter(n)[~k] == 0) for n, k in mask.items())


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_mask_file_round_trip(tmp_path, suffix: str) -> None:
    model = cached_model("resnet20", 0.25)
    mask = make_mask(model, MaskConfig(mask_method="random", sparsity=0.8), seed=3)
    path = tmp_path / f"mask{suffix}"
    mask.save(path)
    loaded = Mask.load(path)
    assert list(loaded) == list(mask)
    assert all(torch.equal(loaded[n], mask[n]) and loaded[n].dtype == torch.bool for n in mask)
    raw = torch.load(path) if suffix == ".pt" else __import__("safetensors.torch").torch.load_file(path)
    assert all(key.endswith(".weight_mask") for key in raw)  # torch.nn.utils.prune naming


def test_mask_for_another_model_is_refused(tmp_path) -> None:
    mask = make_mask(cached_model("resnet20", 0.25), MaskConfig(mask_method="random", sparsity=0.5))
    with pytest.raises(AnymaskError, match="does not fit the model") as error:
        mask.check_fits(cached_model("vgg16", 0.25))
    assert "\n" not in str(error.value)
    wider = create_model("resnet20", 10, (3, 32, 32), 0.5)
    with pytest.raises(AnymaskError, match="shape"):
        mask.apply(wider)


def test_corrupt_and_wrong_files_are_refused(tmp_path) -> None:
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"not a safetensors file at all")
    with pytest.raises(AnymaskError, match="corrupt"):
        Mask.load(corrupt)
    with pytest.raises(AnymaskError, match="not found"):
        Mask.load(tmp_path / "missing.pt")
    no_masks = tmp_path / "weights.pt"
    torch.save({"a.weight": torch.ones(2)}, no_masks)
    with pytest.raises(AnymaskError, match="weight_mask"):
        Mask.load(no_masks)
    with pytest.raises(AnymaskError, match=r"\.safetensors or \.pt"):
        Mask({"a": torch.ones(1)}).save(tmp_path / "mask.npy")
    assert not list(tmp_path.glob(".*tmp"))  # no half-written file left behind


def test_apply_zeroes_only_pruned_weights() -> None:
    model = copy.deepcopy(cached_model("cnn", 1.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = make_mask(model, MaskConfig(mask_method="random", sparsity=0.7), seed=1)
    mask.apply(model)
    for name, param in model.named_parameters():
        if name in mask:
            assert torch.equal(param, before[name] * mask[name])
        else:
            assert torch.equal(param, before[name])
