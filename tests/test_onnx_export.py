"""`anymask export RUN --format onnx`: onnxruntime gives anymask's logits on real CIFAR-10 images."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anymask.cli import main
from anymask.deploy import ModelSpec, read_run, sparse_inference_model
from deploy_fixtures import trained_like, write_finished_run

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def trained_run(folder: Path, name: str, sparsity: float = 0.98) -> Path:
    """A finished CIFAR-10 run folder of `name` (width 1) with an ERK mask and non-trivial BatchNorm."""
    model, mask = trained_like(ModelSpec(name, 1.0, 10, (3, 32, 32)), sparsity)
    return write_finished_run(folder, model, mask, name, "cifar10", width=1.0)


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


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_onnx_export_without_the_extra_is_one_line(
    missing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if missing == "onnxruntime" and importlib.util.find_spec("onnx") is None:
        pytest.skip("onnx is missing too, and the message names the first package missing")
    monkeypatch.setitem(sys.modules, missing, None)  # `import <missing>` now raises ImportError
    out = tmp_path / "model.onnx"
    assert main(["export", str(tmp_path / "any-run"), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'anymask[onnx]'" in err[0] and f"'{missing}'" in err[0]
    assert not out.exists()
