"""What a mask costs per training step: anymask's masked step against a plain dense PyTorch step.

Three steps of the same model on the same batch, timed interleaved (see _common.py):

- dense:  plain PyTorch, forward + cross-entropy + backward + SGD (momentum 0.9, weight decay 5e-4);
- masked: anymask's `Trainer.train_step` with a 98% random mask, enforced as in training by the
  MaskEnforcer hooks on the optimizer (the same SGD settings);
- ghost:  the same with the recipe's ghost phase on (`gsn,gsc`: soft neurons and ghost skips).

The masked step still runs dense kernels (zeros are multiplied like any weight), so the goal is that
the mask adds nothing measurable: masked/dense at most 1.03. The last line printed is
`ratio <masked/dense median>` for ResNet-20 on CPU.

With --compile the masked and ghost steps run compiled, as under `anymask train --compile`, while
dense stays eager: the ratios then show what compiling buys (compilation happens in the warm-up).

    python benchmarks/step_overhead.py                      # ResNet-20 and ResNet-18, CPU (+ CUDA)
    python benchmarks/step_overhead.py --devices cuda --models resnet18 --rounds 60
    python benchmarks/step_overhead.py --models resnet20 --rounds 60
    OMP_WAIT_POLICY=PASSIVE python benchmarks/step_overhead.py   # on a CPU shared with other jobs
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import Summary, cifar_or_synthetic, interleaved, machine, paired_ratio
from torch import nn

from anymask.config import RunConfig
from anymask.data import ImageDataset, num_batches
from anymask.masks import MaskConfig, MaskEnforcer, make_mask
from anymask.models import create_model
from anymask.sparse_training import SparseTraining
from anymask.train import Trainer

HEAVY = {"resnet18"}  # about 10x ResNet-20's step on CPU: fewer rounds there (--heavy-rounds)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20,resnet18", help="comma list (default: %(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=30, help="timed rounds per model (default: %(default)s)"
    )
    parser.add_argument(
        "--heavy-rounds",
        type=int,
        default=6,
        help="rounds for ResNet-18 on CPU, after 1 warm-up round (default: %(default)s)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.98)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--devices",
        default="cpu,cuda",
        help="comma list; cuda is skipped where there is none (default: %(default)s)",
    )
    parser.add_argument("--compile", action="store_true", help="compile the masked and ghost steps")
    return parser.parse_args()


def plain_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor, amp: bool
) -> None:
    """The textbook PyTorch step, with the autocast the trainer uses on the same device."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(images).float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def step_cases(
    name: str, data: ImageDataset, device: torch.device, args: argparse.Namespace
) -> tuple[dict[str, Callable[[], object]], MaskEnforcer]:
    """dense / masked / ghost steps on copies of one initialised model and one augmented batch.

    Also returns the masked step's enforcer, whose hooks are the whole difference from dense.
    """
    config = RunConfig().updated(
        {"model": name, "batch_size": args.batch_size, "device": str(device), "compile": args.compile}
    )
    c = config.train
    torch.manual_seed(0)
    base = create_model(name, data.num_classes, data.input_shape)
    base = base.to(device, memory_format=torch.channels_last)
    mask = make_mask(base, MaskConfig(mask_method="random", sparsity=args.sparsity), seed=0)
    dense = copy.deepcopy(base)
    optimizer = torch.optim.SGD(dense.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    masked = Trainer(copy.deepcopy(base), data, config, mask=mask, device=device)
    ghost_model = copy.deepcopy(base)
    sparse = SparseTraining(
        config=config.updated({"recipe": "gsn,gsc"}),
        epochs=c.epochs,
        steps_per_epoch=num_batches(data.split_size("train"), c.batch_size, False),
        batches=data,
        channels_last=c.channels_last,
    )
    ghost = Trainer(ghost_model, data, config, mask=mask, sparse=sparse, device=device)
    images, labels = next(masked.batches(0))
    amp = c.amp and device.type == "cuda"
    cases = {  # step 0 of 10 epochs: well inside the ghost phase (its first quarter)
        "dense": lambda: plain_step(dense, optimizer, images, labels, amp),
        "masked": lambda: masked.train_step(images, labels, 0),
        "ghost": lambda: ghost.train_step(images, labels, 0),
    }
    assert masked.enforcer is not None
    return cases, masked.enforcer


def hook_seconds(enforcer: MaskEnforcer, device: torch.device, calls: int = 200) -> float:
    """Median time of the two enforcement hooks of one step (gradients, then weights), in isolation.

    Far steadier than the difference of two noisy step medians, and it is all the mask adds.
    """

    def hooks() -> None:
        enforcer.zero_gradients()
        enforcer.zero_weights()

    return Summary.of(interleaved({"hooks": hooks}, calls, warmup=5, device=device)["hooks"]).median


def measure(name: str, data: ImageDataset, device: torch.device, args: argparse.Namespace) -> float:
    """Print one model's three medians and ratios; return masked/dense of the medians."""
    heavy = name in HEAVY and device.type == "cpu"
    rounds, warmup = (args.heavy_rounds, 1) if heavy else (args.rounds, args.warmup)
    cases, enforcer = step_cases(name, data, device, args)
    times = interleaved(cases, rounds, warmup, device)
    dense, masked, ghost = (Summary.of(times[k]) for k in ("dense", "masked", "ghost"))
    ratio = masked.median / dense.median
    print(f"{name} on {device}, batch {args.batch_size}, {rounds} rounds after {warmup} warm-up:")
    print(f"  dense  {dense.ms()}")
    print(
        f"  masked {masked.ms()}  masked/dense {ratio:.3f} "
        f"(paired {paired_ratio(times['masked'], times['dense']).median:.3f})"
    )
    print(
        f"  ghost  {ghost.ms()}  ghost/dense  {ghost.median / dense.median:.3f} "
        f"(paired {paired_ratio(times['ghost'], times['dense']).median:.3f})"
    )
    hooks = hook_seconds(enforcer, device)
    share = hooks / dense.median
    print(f"  mask hooks alone {hooks * 1e3:.3f} ms per step = {share:.2%} of dense", flush=True)
    return ratio


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.devices.split(",")
    devices = [torch.device(d) for d in names if not d.startswith("cuda") or torch.cuda.is_available()]
    if not devices:
        raise SystemExit(f"none of the devices {args.devices} is available here")
    data, source = cifar_or_synthetic()
    print(
        f"machine: {machine(devices[-1])}\ndata: {source}\nmask: random, sparsity {args.sparsity}"
        f"{'; masked and ghost steps compiled' if args.compile else ''}"
    )
    ratios = {}
    for device in devices:
        placed = data.to(device)
        for name in args.models.split(","):
            ratios[name, device.type] = measure(name, placed, device, args)
    if ("resnet20", "cpu") in ratios:
        print(f"ratio {ratios['resnet20', 'cpu']:.3f}")


if __name__ == "__main__":
    main()
