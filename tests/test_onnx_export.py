"""`anymask export RUN --format onnx`: onnxruntime gives anymask's logits on real CIFAR-10 images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from anymask.cli import main
from anymask.config import RunConfig, save_config
from anymask.deploy import ModelSpec, read_run, sparse_inference_model
from anymask.masks import MaskConfig, make_mask
from anymask.train.checkpoint import save_weights

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def trained_run(folder: Path, name: str, sparsity: float = 0.98) -> Path:
    """A finished CIFAR-10 run folder of `name` (width 1) with an ERK mask and non-trivial BatchNorm."""
    torch.manual_seed(0)
    model = ModelSpec(name, 1.0, 10, (3, 32, 32)).build()
    mask = make_mask(model, MaskConfig(mask_method="erk", sparsity=sparsity))
    mask.apply(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    folder.mkdir(parents=True)
    config = RunConfig.from_flat({"model": name, "data": "cifar10", "width": 1.0})
    save_config(config, folder / "config.json")
    mask.save(folder / "mask.safetensors")
    save_weights(model, folder / "model.safetensors")
    # a finished run: export reads only runs with a summary (an unfinished one is refused in one line)
    summary = {"config_hash": config.hash(), "model": name, "data": "cifar10", "mask_method": "erk"}
    summary |= {"sparsity": sparsity, "recipe": "default", "seed": 0, "epochs": 1, "final_test_acc": 0.1}
    summary |= {"best_test_acc": 0.1, "nonzero_weights": mask.kept(), "mask_total": mask.total()}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def cifar_images(data_dir: Path, count: int) -> torch.Tensor:
    from anymask.data import load_dataset

    images = load_dataset("cifar10", data_dir).test_x[:count].float() / 255
    return (images - torch.tensor(CIFAR_MEAN).view(1, -1, 1, 1)) / torch.tensor(CIFAR_STD).view(1, -1, 1, 1)


@pytest.mark.parametrize(("name", "count"), [("resnet20", 64), ("vgg16", 16)])
def test_onnxruntime_logits_equal_anymask_on_real_cifar10(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str], name: str, count: int
) -> None:
    runtime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    run = trained_run(tmp_path / "run", name)
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "model.onnx")]) == 0
    assert "onnxruntime's logits equal PyTorch's" in capsys.readouterr().out
    images = cifar_images(shared_data, count)
    session = runtime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"images": images.numpy()})
    model = read_run(run).model()
    with torch.no_grad():
        anymask_logits = model(images).numpy()
    sparse_logits = sparse_inference_model(model, kernel="numba")(images).numpy()
    assert np.abs(onnx_logits - anymask_logits).max() <= 1e-4
    assert np.abs(onnx_logits - sparse_logits).max() <= 1e-4
    assert (onnx_logits.argmax(1) == anymask_logits.argmax(1)).all()


def test_onnx_export_without_the_extra_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    out = tmp_path / "model.onnx"
    assert main(["export", str(tmp_path / "any-run"), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'anymask[onnx]'" in err[0] and "onnxruntime" in err[0]
    assert not out.exists()
