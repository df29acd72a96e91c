"""Sparse CPU inference against dense PyTorch eager, both with BatchNorm folded into the convolutions.

For every model x sparsity x batch size x thread count: a registry model with an ERK mask (random
weights and BatchNorm statistics: speed does not depend on the values), turned into

- dense:  `sparse_inference_model(model, mask, kernel="dense")`: the folded, ReLU-fused graph run by
  PyTorch's own convolutions (oneDNN), i.e. dense eager with BatchNorm folded;
- sparse: `sparse_inference_model(model, mask)`: the same graph with each layer on the kernel that
  `auto` chose for it (timed on the first batch of each size; the warm-up rounds do that, and numba's
  compilation, before any timing);
- any kernels named with --kernels, forced on every layer (the candidates of docs/performance.md).

Cases are timed interleaved on the same input (_common.py); images/s = batch / median seconds, and the
speedup is the median of per-round dense/sparse ratios. Rows where sparse is slower say so. The last
line is `speedup <ratio>` for ResNet-20, batch 64, 98% sparsity, two threads.

    python benchmarks/sparse_inference.py                 # ResNet-20 rows (under 5 minutes, 2 cores)
    python benchmarks/sparse_inference.py --all           # ResNet-20, ResNet-32 and VGG-16
    python benchmarks/sparse_inference.py --kernels numba,torch-csr,scipy-csr --sparsities 0.98 --threads 1
    OMP_WAIT_POLICY=PASSIVE python benchmarks/sparse_inference.py   # on a CPU shared with other jobs
    python benchmarks/sparse_inference.py --clock cpu     # CPU seconds of this process (busy machine)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from _common import Summary, cifar_or_synthetic, interleaved, machine, paired_ratio
from torch import nn

from anymask.deploy import ModelSpec, set_num_threads, sparse_inference_model
from anymask.masks import Mask, MaskConfig, make_mask

HEADLINE = ("resnet20", 0.98, 64, 2)  # model, sparsity, batch, threads of the last line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="the whole table: resnet20, resnet32, vgg16")
    parser.add_argument("--models", default=None, help="comma list (default: resnet20, or all with --all)")
    parser.add_argument(
        "--sparsities", default="0.9,0.95,0.98,0.99", help="comma list (default: %(default)s)"
    )
    parser.add_argument("--batches", default="1,64", help="comma list (default: %(default)s)")
    parser.add_argument("--threads", default="1,2", help="comma list (default: %(default)s)")
    parser.add_argument("--mask-method", default="erk", help="mask method (default: %(default)s)")
    parser.add_argument("--kernels", default="", help="also time these kernels forced on every layer")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds per row (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: %(default)s)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this process's CPU time (steadier when other jobs share the cores; it "
        "also counts threads that spin while waiting)",
    )
    return parser.parse_args()


def masked_model(name: str, sparsity: float, method: str) -> tuple[nn.Module, Mask]:
    torch.manual_seed(0)
    model = ModelSpec(name, 1.0, 10, (3, 32, 32)).build()
    mask = make_mask(model, MaskConfig(mask_method=method, sparsity=sparsity))
    mask.apply(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval(), mask


@dataclass
class Row:
    model: str
    sparsity: float
    batch: int
    threads: int
    medians: dict[str, float]  # case -> seconds per batch
    speedup: Summary  # dense / sparse, per round
    sparse_layers: str

    def cells(self, cases: list[str]) -> str:
        rates = " | ".join(f"{self.batch / self.medians[c]:,.0f}" for c in cases)
        verdict = "" if self.speedup.median >= 1 else " (sparse slower: use dense)"
        return (
            f"| {self.model} | {self.sparsity:.0%} | {self.batch} | {self.threads} | {rates} | "
            f"**{self.speedup.median:.2f}x**{verdict} | {self.sparse_layers} |"
        )


def measure(
    name: str, sparsity: float, batch: int, threads: int, images: torch.Tensor, args: argparse.Namespace
) -> Row:
    set_num_threads(threads)
    model, mask = masked_model(name, sparsity, args.mask_method)
    x = images.repeat(-(-batch // len(images)), 1, 1, 1)[:batch].contiguous()
    modules = {"dense": sparse_inference_model(model, mask, kernel="dense")}
    modules["sparse"] = sparse_inference_model(model, mask)
    for kernel in filter(None, args.kernels.split(",")):
        modules[kernel] = sparse_inference_model(model, mask, kernel=kernel)
    modules["sparse"](x)  # auto-tunes every layer for this batch size, outside the timing
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    cases = {case: (lambda m=module: m(x)) for case, module in modules.items()}
    times = interleaved(cases, args.rounds, args.warmup, torch.device("cpu"), clock=clock)
    plan = modules["sparse"].plan(batch)
    on_sparse = sum(kernel != "dense" for kernel in plan.values())
    return Row(
        name,
        sparsity,
        batch,
        threads,
        {case: Summary.of(t).median for case, t in times.items()},
        paired_ratio(times["dense"], times["sparse"]),
        f"{on_sparse}/{len(plan)}",
    )


def main() -> None:
    args = parse_args()
    models = (
        args.models.split(",")
        if args.models
        else (["resnet20", "resnet32", "vgg16"] if args.all else ["resnet20"])
    )
    data, source = cifar_or_synthetic()
    images = ((data.test_x[:64].float() / 255) - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(
        data.std
    ).view(1, -1, 1, 1)
    cases = ["dense", "sparse", *filter(None, args.kernels.split(","))]
    print(f"# {machine(torch.device('cpu'))}; {args.clock} clock; images: {source}")
    print(f"# {args.mask_method} masks, {args.rounds} rounds after {args.warmup} warm-up; images/s per case")
    print(
        f"| model | sparsity | batch | threads | {' | '.join(cases)} | speedup | layers on sparse kernels |"
    )
    print("|---" * (6 + len(cases)) + "|")
    headline = None
    for threads in (int(t) for t in args.threads.split(",")):
        for name in models:
            for sparsity in (float(s) for s in args.sparsities.split(",")):
                for batch in (int(b) for b in args.batches.split(",")):
                    row = measure(name, sparsity, batch, threads, images, args)
                    print(row.cells(cases), flush=True)
                    if (name, sparsity, batch, threads) == HEADLINE:
                        headline = row.speedup.median
    if headline is not None:
        print(f"speedup {headline:.2f}")


if __name__ == "__main__":
    main()
