"""File size of `anymask export` against the dense model.safetensors a finished run writes.

For each model and sparsity: a registry model with a mask applied (ERK and uniform random), its weights
written as a run writes them (`save_weights`) and exported (`export_model`); sizes in bytes, BatchNorm
and biases included. Sizes depend on the mask (positions) and not on the trained values (float32
either way), so random weights give the sizes a trained run would.

    python benchmarks/export_size.py                       # ResNet-20
    python benchmarks/export_size.py --models resnet20,resnet32,vgg16
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from anymask.deploy import ModelSpec, export_model
from anymask.masks import MaskConfig, make_mask
from anymask.train.checkpoint import save_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20")
    parser.add_argument("--sparsities", default="0.9,0.95,0.98,0.99")
    parser.add_argument("--methods", default="erk,random")
    args = parser.parse_args()
    print("| model | mask | sparsity | model.safetensors | export | smaller by |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            spec = ModelSpec(name, 1.0, 10, (3, 32, 32))
            for method in args.methods.split(","):
                for sparsity in (float(s) for s in args.sparsities.split(",")):
                    torch.manual_seed(0)
                    model = spec.build()
                    mask = make_mask(model, MaskConfig(mask_method=method, sparsity=sparsity))
                    mask.apply(model)
                    dense = Path(folder) / "model.safetensors"
                    save_weights(model, dense)
                    result = export_model(model, Path(folder) / "export.safetensors", mask, spec)
                    size = dense.stat().st_size
                    print(
                        f"| {name} | {method} | {sparsity:.0%} | {size:,} | {result.file_bytes:,} | "
                        f"{size / result.file_bytes:.1f}x |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
