"""Mask files: a saved mask works with torch.nn.utils.prune, and the `file` method reads masks and the
zeros of checkpoints of every layout, refusing another model's or width's in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn.utils import prune

from anymask.errors import AnymaskError
from anymask.masks import MaskConfig, make_mask
from mask_models import _built, model, one_line


def test_saved_mask_works_with_torch_prune(tmp_path: Path) -> None:
    net = model("resnet20")
    mask = make_mask(net, MaskConfig(mask_method="magnitude", sparsity=0.9))
    mask.save(tmp_path / "mask.pt")
    ours, theirs = model("resnet20"), model("resnet20")
    mask.apply(ours)
    for key, tensor in torch.load(tmp_path / "mask.pt").items():
        module_name = key.removesuffix(".weight_mask")
        prune.custom_from_mask(theirs.get_submodule(module_name), "weight", tensor)
    for name in mask:
        module = theirs.get_submodule(name.removesuffix(".weight"))
        assert torch.equal(module.weight, ours.get_parameter(name))
        assert not module.weight[~mask[name]].any()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_file_method_reads_a_mask_file(suffix: str, tmp_path: Path) -> None:
    net = model("resnet20")
    mask = make_mask(net, MaskConfig(mask_method="random", sparsity=0.7))
    mask.save(tmp_path / f"mask{suffix}")
    loaded = make_mask(net, MaskConfig(mask_file=str(tmp_path / f"mask{suffix}")))
    assert all(torch.equal(mask[n], loaded[n]) for n in mask)


@pytest.mark.parametrize("layout", ["flat", "state_dict", "module", "safetensors"])
def test_file_method_reads_zeros_of_a_checkpoint(layout: str, tmp_path: Path) -> None:
    net = model("resnet20")
    mask = make_mask(net, MaskConfig(mask_method="magnitude", sparsity=0.8))
    pruned = model("resnet20")
    mask.apply(pruned)
    state = {k: v.clone() for k, v in pruned.state_dict().items()}
    path = tmp_path / ("ckpt.safetensors" if layout == "safetensors" else "ckpt.pth")
    if layout == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    elif layout == "flat":
        torch.save(state, path)
    elif layout == "state_dict":
        torch.save({"state_dict": state, "epoch": 3}, path)
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = make_mask(net, MaskConfig(mask_method="file", mask_file=str(path)))
    assert all(torch.equal(mask[n], loaded[n]) for n in mask)


def test_file_method_rejects_another_models_files(tmp_path: Path) -> None:
    vgg = _built("vgg16", 0.25)
    make_mask(vgg, MaskConfig(mask_method="random", sparsity=0.5)).save(tmp_path / "vgg.safetensors")
    torch.save(vgg.state_dict(), tmp_path / "vgg.pt")
    for path in ("vgg.safetensors", "vgg.pt"):
        with pytest.raises(AnymaskError, match="does not fit the model") as error:
            make_mask(model("resnet20"), MaskConfig(mask_file=str(tmp_path / path)))
        assert one_line(error)


def test_file_method_rejects_another_widths_mask(tmp_path: Path) -> None:
    make_mask(model("resnet20", 0.5), MaskConfig(mask_method="random", sparsity=0.5)).save(tmp_path / "m.pt")
    with pytest.raises(AnymaskError, match="shape") as error:
        make_mask(model("resnet20"), MaskConfig(mask_file=str(tmp_path / "m.pt")))
    assert one_line(error)


def test_file_method_without_a_path_is_one_line() -> None:
    with pytest.raises(AnymaskError, match="--mask-file") as error:
        make_mask(model("resnet20"), MaskConfig(mask_method="file"))
    assert one_line(error)
