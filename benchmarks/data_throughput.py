"""Is the input pipeline ever the bottleneck? Loader images/s against the model's training images/s.

anymask has no DataLoader workers: `iterate_batches` shuffles, crops, flips and normalises uint8 images
that already sit on the training device, in the training process, between steps. Its time adds to every
step, so it must be small: the goal is a loader at least 10x faster than ResNet-20 trains (then it
costs at most ~10% of a step). Both are timed interleaved, one loader epoch against one training step
per round (see _common.py), on the same threads.

    python benchmarks/data_throughput.py
    OMP_WAIT_POLICY=PASSIVE python benchmarks/data_throughput.py   # on a CPU shared with other jobs
"""

from __future__ import annotations

import argparse

import torch
from _common import Summary, cifar_or_synthetic, interleaved, machine

from anymask.config import RunConfig
from anymask.data import ImageDataset
from anymask.models import create_model
from anymask.train import Trainer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args()


def loader_epoch(trainer: Trainer, epoch: list[int]) -> None:
    """One full epoch of augmented, normalised batches, as the trainer draws them (a new order each time)."""
    for _ in trainer.batches(epoch[0]):
        pass
    epoch[0] += 1


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    data, source = cifar_or_synthetic()
    config = RunConfig().updated({"model": args.model, "batch_size": args.batch_size, "device": "cpu"})
    torch.manual_seed(0)
    model = create_model(args.model, data.num_classes, data.input_shape).to(memory_format=torch.channels_last)
    trainer = Trainer(model, data, config, device=device)
    images, labels = next(trainer.batches(0))
    epoch = [0]
    times = interleaved(
        {
            "loader": lambda: loader_epoch(trainer, epoch),
            "model": lambda: trainer.train_step(images, labels, 0),
        },
        args.rounds,
        args.warmup,
        device,
    )
    report(args, data, source, times)


def report(args: argparse.Namespace, data: ImageDataset, source: str, times: dict[str, list[float]]) -> None:
    loader, model = Summary.of(times["loader"]), Summary.of(times["model"])
    loader_rate, model_rate = len(data.train_y) / loader.median, args.batch_size / model.median
    print(f"machine: {machine(torch.device('cpu'))}\ndata: {source}")
    print(
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up; batch {args.batch_size}, "
        f"augmentation crop {data.crop_padding} + flip {data.flip}, channels_last"
    )
    print(f"  loader: one epoch {loader.ms()} -> {loader_rate:,.0f} images/s")
    print(f"  {args.model} training step {model.ms()} -> {model_rate:,.0f} images/s")
    print(f"  the loader adds {model_rate / loader_rate:.1%} to each training step")
    print(f"ratio {loader_rate / model_rate:.1f}")


if __name__ == "__main__":
    main()
