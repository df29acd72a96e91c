"""anymask's masks next to Synaptic-Flow's pruners on the same VGG-16 weights and the same images.

    python benchmarks/reference_masks.py --synaptic-flow PATH [--sparsities 0.9 0.99]
        [--methods magnitude snip grasp synflow] [--synflow-iterations 100] [--data-dir DIR]

PATH is a checkout of github.com/ganguli-lab/Synaptic-Flow (its `Models`, `Layers`, `Pruners`, `Utils`
and `prune.py` are imported from there; nothing of it is part of anymask). anymask's `vgg16` (seed 0,
its default init) is built for CIFAR-10 and its weights are copied into Synaptic-Flow's
`lottery_vgg.vgg16_bn` (whose convs have a zero bias more). SNIP and GraSP score the same 10 x 10
class-balanced CIFAR-10 training images in both (the prune images anymask draws with mask seed 0);
Synaptic-Flow's pruners run through its own `prune_loop` (eval mode, global scope, exponential schedule,
one round for one-shot methods). anymask's SNIP and GraSP run in both `prune_bn_mode`s.

Printed, as markdown: per layer, the density of each mask, the IoU of anymask's mask with the reference's
(same BN mode), and the effective density (weights on an input-output path); per mask, kept against the
target and the classes reachable.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from anymask.data import load_dataset
from anymask.masks import Mask, MaskConfig, connectivity, make_mask
from anymask.masks.analysis import compare
from anymask.masks.methods import PruneContext
from anymask.masks.prunable import prunable_from_config
from anymask.masks.scoring import prune_batches
from anymask.models import create_model

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)
REFERENCE_PRUNERS = {"magnitude": "Mag", "snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow"}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--synaptic-flow", type=Path, required=True, help="a Synaptic-Flow checkout")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.99])
    parser.add_argument("--methods", nargs="+", default=list(REFERENCE_PRUNERS))
    parser.add_argument("--synflow-iterations", type=int, default=100)
    return parser.parse_args()


def reference_model(ours: nn.Module, path: Path) -> nn.Module:
    """Synaptic-Flow's vgg16_bn holding our weights (its conv biases stay at their initial 0)."""
    sys.path.insert(0, str(path))
    from Layers import layers
    from Models import lottery_vgg

    theirs = lottery_vgg.vgg16_bn(SHAPE, 10)
    pairs = [
        (nn.Conv2d, layers.Conv2d, ("weight",)),
        (nn.BatchNorm2d, layers.BatchNorm2d, ("weight", "bias", "running_mean", "running_var")),
        (nn.Linear, layers.Linear, ("weight", "bias")),
    ]
    with torch.no_grad():
        for our_type, their_type, names in pairs:
            mine = [m for m in ours.modules() if type(m) is our_type]
            other = [m for m in theirs.modules() if type(m) is their_type]
            assert len(mine) == len(other), (our_type, len(mine), len(other))
            for a, b in zip(mine, other, strict=True):
                for name in names:
                    getattr(b, name).copy_(getattr(a, name))
    return theirs


def reference_mask(
    theirs: nn.Module, method: str, density: float, batches: list, names: list[str], rounds: int, train: bool
) -> Mask:
    """Synaptic-Flow's mask, through its own prune_loop, named like ours (same layer order)."""
    from prune import prune_loop
    from Pruners import pruners
    from Utils import generator

    model = copy.deepcopy(theirs)
    masked = list(generator.masked_parameters(model, False, False, False))
    pruner = getattr(pruners, REFERENCE_PRUNERS[method])(masked)
    epochs = rounds if method == "synflow" else 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune_loop(
            model,
            nn.CrossEntropyLoss(),
            pruner,
            batches,
            torch.device("cpu"),
            density,
            "exponential",
            "global",
            epochs,
            train_mode=train,
        )
    return Mask({name: mask.detach().clone() for name, (mask, _) in zip(names, masked, strict=True)})


def our_mask(model: nn.Module, method: str, sparsity: float, data, rounds: int, bn_mode: str) -> Mask:
    config = MaskConfig(
        mask_method=method, sparsity=sparsity, synflow_iterations=rounds, prune_bn_mode=bn_mode
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_mask(model, config, data=data, seed=0)


def summary_line(label: str, mask: Mask, model: nn.Module, sparsity: float) -> str:
    links = connectivity(model, mask, SHAPE)
    target = round((1 - sparsity) * mask.total())
    return (
        f"| {label} | {mask.kept():,} | {mask.kept() - target:+d} | {links.effective_density:.5f} | "
        f"{links.classes_reachable} of {links.num_classes} |"
    )


def main() -> None:
    args = arguments()
    torch.manual_seed(0)
    ours = create_model("vgg16", 10, SHAPE)
    theirs = reference_model(ours, args.synaptic_flow.resolve())
    data = load_dataset("cifar10", args.data_dir)
    config = MaskConfig(mask_method="snip")
    params = prunable_from_config(ours, config)
    names = list(params)
    context = PruneContext(ours, params, config, torch.Generator().manual_seed(0), torch.device("cpu"), data)
    batches = prune_batches(context, "snip")  # the images anymask's SNIP and GraSP score
    print(f"vgg16 (seed 0, default init), {sum(len(x) for x, _ in batches)} CIFAR-10 prune images\n")
    for sparsity in args.sparsities:
        density = 1 - sparsity
        masks: dict[str, Mask] = {}
        for method in args.methods:
            modes = ["eval", "train"] if method in ("snip", "grasp") else ["eval"]
            for mode in modes:
                suffix = f" ({mode})" if len(modes) > 1 else ""
                masks[f"ours {method}{suffix}"] = our_mask(
                    ours, method, sparsity, data, args.synflow_iterations, mode
                )
                masks[f"ref {method}{suffix}"] = reference_mask(
                    theirs, method, density, batches, names, args.synflow_iterations, mode == "train"
                )
                print(f"done: {method}{suffix} at {sparsity}", file=sys.stderr, flush=True)
        print(f"## sparsity {sparsity}\n")
        print("| mask | kept | kept - target | effective density | classes reachable |")
        print("|---|---:|---:|---:|---|")
        for label, mask in masks.items():
            print(summary_line(label, mask, ours, sparsity))
        labels = [label for label in masks if label.startswith("ours")]
        print("\nPer-layer density, ours / reference, and IoU of the two masks:\n")
        print("| layer | " + " | ".join(label.removeprefix("ours ") for label in labels) + " |")
        print("|---|" + "---:|" * len(labels))
        overlaps = {label: compare(masks[label], masks[label.replace("ours", "ref", 1)]) for label in labels}
        for index, name in enumerate(names):
            cells = []
            for label in labels:
                a, b = masks[label][name], masks[label.replace("ours", "ref", 1)][name]
                iou = overlaps[label].layers[index].iou
                cells.append(f"{a.float().mean():.4f} / {b.float().mean():.4f} ({iou:.2f})")
            print(f"| {name.removesuffix('.weight')} | " + " | ".join(cells) + " |")
        print(
            "| all (IoU) | " + " | ".join(f"{overlaps[label].overall.iou:.3f}" for label in labels) + " |\n"
        )


if __name__ == "__main__":
    main()
