"""What dynamic sparse training costs: a run's training time with `--dst set|rigl` at the defaults
against the same run with a static mask.

Between updates a DST step is the static step plus one integer comparison, so the whole cost is in the
update steps. Three steps of the same model, mask and batch are timed side by side (interleaved, see
_common.py), all through anymask's `Trainer.train_step` with the mask enforced:

- static: an ordinary step;
- set / rigl: an update step (step 100, the first update), the mask update included.

RigL needs no extra backward here: PyTorch computes every weight's gradient anyway, and the update reads
it before the step's mask hook zeroes the pruned entries. The update alone is also timed in isolation
(steadier than a difference of two step medians). Over a run the extra time is the number of updates
times one update; the printed run ratio is

    1 + updates x update time / (run steps x static step time)

for the run the config describes (default: ResNet-20 on the CIFAR-10 subset, 30 epochs, batch 128:
2,370 steps, 17 updates). The last line printed is `ratio <rigl run ratio>` (the goal: at most 1.05).

    python benchmarks/dst_overhead.py                         # ResNet-20, CPU, 6 rounds (short)
    python benchmarks/dst_overhead.py --rounds 12 --device cuda
    OMP_WAIT_POLICY=PASSIVE python benchmarks/dst_overhead.py  # on a CPU shared with other jobs
"""

from __future__ import annotations

import argparse
import copy

import torch
from _common import Summary, cifar_or_synthetic, interleaved, machine, paired_ratio

from anymask.config import RunConfig
from anymask.data import ImageDataset, num_batches
from anymask.masks import MaskConfig, make_mask
from anymask.models import create_model
from anymask.sparse_training import SparseTraining
from anymask.train import Trainer

METHODS = ("set", "rigl")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--updates", type=int, default=10, help="isolated update timings per method")
    parser.add_argument("--epochs", type=int, default=30, help="length of the run the ratio is for")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args()


def trainer_with(method: str, base: torch.nn.Module, data: ImageDataset, config: RunConfig) -> Trainer:
    """A trainer for a copy of `base` with an ERK mask, and DST `method` attached ('none': static)."""
    model = copy.deepcopy(base)
    mask = make_mask(model, MaskConfig(mask_method="erk", sparsity=config.mask.sparsity), seed=0)
    config = config.updated({"dst": method, "mask_method": "erk"})
    sparse = SparseTraining(  # DST as `anymask train` runs it: an extension of SparseTraining
        config=config,
        epochs=config.train.epochs,
        steps_per_epoch=num_batches(data.split_size("train"), config.train.batch_size, False),
        batches=data,
    )
    return Trainer(model, data, config, mask=mask, sparse=sparse, device=config.train.device)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data, source = cifar_or_synthetic()
    data = data.to(device)
    config = RunConfig().updated(
        {
            "model": args.model,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "device": str(device),
            "mask_method": "erk",
            "sparsity": args.sparsity,
        }
    )
    torch.manual_seed(0)
    base = create_model(args.model, data.num_classes, data.input_shape).to(
        device, memory_format=torch.channels_last
    )
    trainers = {name: trainer_with(name, base, data, config) for name in ("none", *METHODS)}
    images, labels = next(trainers["none"].batches(0))
    first_update = config.dst.dst_interval
    for trainer in trainers.values():  # momentum buffers exist before any timed update
        trainer.train_step(images, labels, 0)
    cases = {
        "static": lambda: trainers["none"].train_step(images, labels, first_update),
        **{m: (lambda m=m: trainers[m].train_step(images, labels, first_update)) for m in METHODS},
    }
    times = interleaved(cases, args.rounds, args.warmup, device)
    static = Summary.of(times["static"])
    schedule = trainers["rigl"].extensions[0].updater.schedule
    updates, steps = len(schedule.update_steps()), trainers["rigl"].total_steps
    print(f"machine: {machine(device)}\ndata: {source}")
    print(
        f"{args.model}, ERK {args.sparsity}, batch {args.batch_size}, {args.rounds} rounds after "
        f"{args.warmup} warm-up; the run: {steps} steps, {updates} updates (dst defaults)"
    )
    print(f"  static step       {static.ms()}")
    ratios = {}
    for method in METHODS:
        step = Summary.of(times[method])
        paired = paired_ratio(times[method], times["static"]).median
        updater = trainers[method].extensions[0].updater
        alone = Summary.of(
            interleaved({"u": lambda u=updater: u.update(first_update)}, args.updates, 1, device)["u"]
        )
        ratios[method] = 1 + updates * alone.median / (steps * static.median)
        print(
            f"  {method:5} update step {step.ms()}  /static {step.median / static.median:.3f} "
            f"(paired {paired:.3f})"
        )
        print(
            f"        update alone {alone.ms()} = {alone.median / static.median:.1%} of a step; "
            f"over the run: ratio {ratios[method]:.4f}"
        )
    print(f"ratio {ratios['rigl']:.4f}")


if __name__ == "__main__":
    main()
