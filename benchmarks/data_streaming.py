"""Streamed image folder against the in-memory path, on the same images: loader images/s.

The CIFAR-10 training images (../shared/data, else synthetic ones of its shape) are written once as PNG
files into an image folder; one epoch of augmented, normalised batches is then drawn from the tensors in
memory (`iterate_batches`) and from the files (`--data imagefolder`: Pillow decoding in DataLoader
workers), interleaved round by round (see _common.py). Both give the same batches from the same
generator (tests/test_streamed_data.py); this measures what streaming costs per image.

    python benchmarks/data_streaming.py                  # workers 2, batch 128
    OMP_WAIT_POLICY=PASSIVE python benchmarks/data_streaming.py --workers 0 2 4
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import Summary, cifar_or_synthetic, interleaved, machine
from PIL import Image

from anymask.data import ImageDataset, load_dataset, shuffled_train_batches


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="DataLoader workers to time")
    parser.add_argument("--images", type=int, default=None, help="use the first N training images")
    parser.add_argument(
        "--folder", type=Path, default=None, help="where to write the PNGs (default: a temp dir)"
    )
    return parser.parse_args()


def write_folder(data: ImageDataset, root: Path, count: int) -> None:
    """root/train/<class>/<index>.png for the first `count` images, and a small val/ (a folder needs one)."""
    for split, images, labels in (
        ("train", data.train_x[:count], data.train_y[:count]),
        ("val", data.test_x[:100], data.test_y[:100]),
    ):
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / data.class_names[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{index:06d}.png")


def epoch(data, batch_size: int, seed: list[int]) -> None:
    for _ in shuffled_train_batches(data, batch_size, torch.Generator().manual_seed(seed[0])):
        pass
    seed[0] += 1


def main() -> None:
    args = parse_args()
    data, source = cifar_or_synthetic()
    count = min(args.images or len(data.train_y), len(data.train_y))
    with tempfile.TemporaryDirectory() as temporary:
        root = args.folder or Path(temporary)
        if not (root / "train").is_dir():
            write_folder(data, root, count)
        cases = {}
        for workers in args.workers:
            streamed = load_dataset(
                "imagefolder", root, workers=workers, mean=list(data.mean), std=list(data.std)
            )
            cases[f"streamed, {workers} workers"] = (streamed, [0])
        # The in-memory path over the same images, in the folder's order (class by class).
        memory_source = load_dataset("imagefolder", root, workers=0, mean=list(data.mean), std=list(data.std))
        images, labels = zip(
            *(memory_source.train[i] for i in range(memory_source.split_size("train"))), strict=True
        )
        memory = ImageDataset(
            "memory",
            torch.stack(images),
            torch.tensor(labels),
            data.val_x,
            data.val_y,
            data.test_x,
            data.test_y,
            data.num_classes,
            data.mean,
            data.std,
            data.crop_padding,
            data.flip,
            data.class_names,
        )
        cases["in memory"] = (memory, [0])
        times = interleaved(
            {name: (lambda d=d, s=s: epoch(d, args.batch_size, s)) for name, (d, s) in cases.items()},
            args.rounds,
            args.warmup,
            torch.device("cpu"),
        )
    print(f"machine: {machine(torch.device('cpu'))}\ndata: {source}, {count:,} images as PNG files")
    print(
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up; batch {args.batch_size}, crop + flip"
    )
    rates = {}
    for name, values in times.items():
        summary = Summary.of(values)
        rates[name] = count / summary.median
        print(f"  {name:22s} one epoch {summary.ms()} -> {rates[name]:,.0f} images/s")
    for name, rate in rates.items():
        if name != "in memory":
            print(f"ratio in-memory/{name}: {rates['in memory'] / rate:.1f}")


if __name__ == "__main__":
    main()
