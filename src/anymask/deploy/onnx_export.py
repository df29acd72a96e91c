"""A finished run as an ONNX file: the plain trained model, for onnxruntime (or any ONNX runtime).

The file holds the registry model with the run's weights (pruned ones as zeros; BatchNorm folded into
the convolutions by the exporter), one input ``images`` (N, C, H, W) float32 and one output ``logits``,
the batch axis dynamic. It is what a deployer runs with onnxruntime, dense; `SparseInference` is the
sparse alternative (docs/performance.md compares the two). After writing, the file is run once with
onnxruntime on random images and its logits compared with PyTorch's, so a broken export is an error
here and not at deployment.

onnx and onnxruntime come with the optional extra ``pip install 'anymask[onnx]'``.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anymask.errors import AnymaskError
from anymask.io import atomic_path

EXTRA = "pip install 'anymask[onnx]'"
CHECK_TOLERANCE = 1e-4
"""Largest |onnxruntime - PyTorch| logit difference accepted after writing a file."""


@dataclass(frozen=True)
class OnnxResult:
    path: Path
    file_bytes: int
    max_difference: float  # onnxruntime vs PyTorch logits on the check batch


def _require(module: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AnymaskError(f"ONNX export needs the '{module}' package: {EXTRA}") from None


def export_onnx_model(
    model: nn.Module, input_shape: tuple[int, int, int], path: str | Path, opset: int | None = None
) -> OnnxResult:
    """Write `model` (eval mode, float32, CPU) as ONNX with a dynamic batch axis, then check it."""
    _require("onnx")
    runtime = _require("onnxruntime")
    path = Path(path)
    model = model.cpu().float().eval()
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # "legacy TorchScript-based exporter": it needs only onnx (the new one also needs onnxscript)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
        difference = _check(runtime, tmp, model, example)
    return OnnxResult(path, path.stat().st_size, difference)


def _check(runtime: object, path: Path, model: nn.Module, images: torch.Tensor) -> float:
    session = runtime.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    (got,) = session.run(["logits"], {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images).numpy()
    difference = float(np.abs(got - expected).max())
    if not difference <= CHECK_TOLERANCE:
        raise AnymaskError(
            f"the ONNX file's logits differ from PyTorch's by {difference:.2e} (more than "
            f"{CHECK_TOLERANCE:g}); nothing written: report this with your model"
        )
    return difference


def export_run_onnx(run_dir: str | Path, out: str | Path) -> OnnxResult:
    """`anymask export RUN_DIR --format onnx --out FILE`."""
    from anymask.deploy.run_folder import read_run
    from anymask.io import check_output_file

    for module in ("onnx", "onnxruntime"):  # before reading the run: the missing extra is the problem
        _require(module)
    check_output_file(out)  # where it goes can be written, before the run is read
    run = read_run(run_dir)
    return export_onnx_model(run.model(), run.spec.input_shape, out)
