"""How long each mask method takes, next to a plain implementation of the same score, in one run.

    python benchmarks/prune_speed.py [--sparsity 0.98] [--synflow-iterations 100] [--repeats 3]

ResNet-20 and VGG-16 on CPU, global scope, prune batch of 10 x classes images: real CIFAR-10 when
`../shared/data/cifar-10-batches-py` exists relative to the repository root, else synthetic images of the
same shape. "plain" is the straightforward version written the way research code usually is: scores by
`backward()` on the model itself, one `kthvalue` threshold over all weights, `score > threshold` (so ties
at the threshold are all pruned: the `exact` columns say whether the kept count hit round(d * N)). Each
cell is the median of `--repeats` runs, ours and plain alternating, so load on the machine hits both.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anymask.data import ImageDataset, iterate_batches, load_dataset
from anymask.masks import MaskConfig, make_mask, prunable_parameters
from anymask.models import create_model

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
METHODS = ("random", "er", "erk", "magnitude", "snip", "grasp", "synflow")
Plain = Callable[[nn.Module, float, torch.Tensor, torch.Tensor, int], dict[str, torch.Tensor]]


# -- data ---------------------------------------------------------------------------------------------
def dataset() -> tuple[ImageDataset, str]:
    if (SHARED_DATA / "cifar-10-batches-py").is_dir():
        return load_dataset("cifar10", SHARED_DATA), "CIFAR-10 (shared/data)"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1000, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(1000) % 10
    data = ImageDataset(
        "synthetic",
        x,
        y,
        x[:0],
        y[:0],
        x,
        y,
        10,
        (0.5,) * 3,
        (0.25,) * 3,
        4,
        True,
        [str(c) for c in range(10)],
    )
    return data, "synthetic CIFAR-shaped"


def plain_batch(data: ImageDataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n train images, normalised: what a plain script feeds its pruner."""
    return next(
        iterate_batches(
            data.train_x[:n], data.train_y[:n], n, mean=data.mean, std=data.std, shuffle=False, augment=False
        )
    )


# -- plain implementations ----------------------------------------------------------------------------
def weights(model: nn.Module) -> dict[str, nn.Parameter]:
    return {
        f"{name}.weight": m.weight
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def global_threshold(scores: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = flat.numel() - int(density * flat.numel())
    threshold = flat.kthvalue(max(k, 1)).values
    return {name: s > threshold for name, s in scores.items()}


def per_layer_random(model: nn.Module, densities: dict[str, float]) -> dict[str, torch.Tensor]:
    masks = {}
    for name, w in weights(model).items():
        scores = torch.rand(w.shape).flatten()
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[torch.sort(scores, descending=True).indices[: int(densities[name] * w.numel())]] = True
        masks[name] = keep.view(w.shape)
    return masks


def plain_random(model: nn.Module, density: float, *_: object) -> dict[str, torch.Tensor]:
    return per_layer_random(model, dict.fromkeys(weights(model), density))


def plain_erk(model: nn.Module, density: float, kernel: bool) -> dict[str, torch.Tensor]:
    """rigl's loop: solve eps, move the densest layer to the dense set, repeat."""
    shapes = {n: w.shape for n, w in weights(model).items()}
    dense: set[str] = set()
    while True:
        raw = {
            n: (sum(s) / math.prod(s) if kernel else sum(s[:2]) / math.prod(s[:2]))
            for n, s in shapes.items()
            if n not in dense
        }
        rhs = sum(math.prod(s) * (density - (n in dense)) for n, s in shapes.items())
        eps = rhs / sum(raw[n] * math.prod(shapes[n]) for n in raw)
        top = max(raw.values())
        if top * eps <= 1:
            break
        dense |= {n for n, r in raw.items() if r == top}
    return per_layer_random(model, {n: 1.0 if n in dense else eps * raw[n] for n in shapes})


def plain_magnitude(model: nn.Module, density: float, *_: object) -> dict[str, torch.Tensor]:
    return global_threshold({n: w.detach().abs() for n, w in weights(model).items()}, density)


def plain_snip(model: nn.Module, density: float, x: torch.Tensor, y: torch.Tensor, _: int) -> dict:
    model = copy.deepcopy(model)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return global_threshold({n: (w.grad * w).detach().abs() for n, w in weights(model).items()}, density)


def plain_grasp(model: nn.Module, density: float, x: torch.Tensor, y: torch.Tensor, _: int) -> dict:
    model = copy.deepcopy(model)
    ws = list(weights(model).values())
    g = torch.autograd.grad(F.cross_entropy(model(x) / 200, y), ws)
    grads = torch.autograd.grad(F.cross_entropy(model(x) / 200, y), ws, create_graph=True)
    sum((a * b).sum() for a, b in zip(grads, g, strict=True)).backward()
    return global_threshold({n: (w.grad * w).detach() for n, w in weights(model).items()}, density)


def plain_synflow(model: nn.Module, density: float, x: torch.Tensor, _: torch.Tensor, rounds: int) -> dict:
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for t in model.state_dict().values():
            t.abs_()
    ws = weights(model)
    originals = {n: w.detach().clone() for n, w in ws.items()}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in ws.items()}
    ones = torch.ones((1, *x.shape[1:]))
    for k in range(rounds):
        with torch.no_grad():
            for n, w in ws.items():
                w.copy_(originals[n] * masks[n])
        model.zero_grad()
        model(ones).sum().backward()
        scores = {n: (w.grad * w).detach().abs() for n, w in ws.items()}
        masks = global_threshold(scores, density ** ((k + 1) / rounds))
    return masks


PLAIN: dict[str, Plain] = {
    "random": plain_random,
    "er": lambda m, d, *_: plain_erk(m, d, kernel=False),
    "erk": lambda m, d, *_: plain_erk(m, d, kernel=True),
    "magnitude": plain_magnitude,
    "snip": plain_snip,
    "grasp": plain_grasp,
    "synflow": plain_synflow,
}


# -- measurement --------------------------------------------------------------------------------------
def timed(fn: Callable[[], dict]) -> tuple[float, int]:
    """Seconds and kept count of one mask."""
    start = time.perf_counter()
    mask = fn()
    return time.perf_counter() - start, sum(int(m.sum()) for m in mask.values())


def row(model: nn.Module, name: str, method: str, data: ImageDataset, args: argparse.Namespace) -> str:
    """One table row: ours and plain alternating `repeats` times, medians compared."""
    x, y = plain_batch(data, 10 * data.num_classes)
    density = 1 - args.sparsity
    config = MaskConfig(
        mask_method=method, sparsity=args.sparsity, synflow_iterations=args.synflow_iterations
    )
    ours_fn = functools.partial(make_mask, model, config, data=data)
    plain_fn = functools.partial(PLAIN[method], model, density, x, y, args.synflow_iterations)
    ours, plain = zip(*[(timed(ours_fn), timed(plain_fn)) for _ in range(args.repeats)], strict=True)
    t_ours, t_plain = statistics.median(t for t, _ in ours), statistics.median(t for t, _ in plain)
    target = round(density * sum(p.numel() for p in prunable_parameters(model).values()))
    off = plain[0][1] - target
    return (
        f"| {name} | {method} | {t_ours:.3f} | {t_plain:.3f} | {t_ours / t_plain:.2f} | "
        f"{ours[0][1] == target} | {off == 0} ({off:+d}) |"
    )


def warm_up(model: nn.Module, data: ImageDataset) -> None:
    """First calls pay for imports and allocator growth; keep that out of the first row."""
    x, y = plain_batch(data, 10 * data.num_classes)
    make_mask(model, MaskConfig(mask_method="snip", sparsity=0.5), data=data)
    plain_snip(model, 0.5, x, y, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.98)
    parser.add_argument("--synflow-iterations", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg16"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # layer-collapse warnings of one-shot methods are expected here
    data, source = dataset()
    print(
        f"data: {source}; sparsity {args.sparsity}, global scope, {10 * data.num_classes} prune images, "
        f"synflow {args.synflow_iterations} iterations, median of {args.repeats}, "
        f"{torch.get_num_threads()} threads, PyTorch {torch.__version__}\n"
    )
    print("| model | method | ours (s) | plain (s) | ratio | ours exact | plain exact (kept - target) |")
    print("|---|---|---:|---:|---:|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, data.num_classes, data.input_shape)
        warm_up(model, data)
        for method in args.methods:
            print(row(model, name, method, data, args), flush=True)


if __name__ == "__main__":
    main()
