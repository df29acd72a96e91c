"""What the benchmarks share: interleaved timing, robust summaries, the machine, and the data.

Timings on a shared machine drift with other jobs, so cases are never timed in blocks: every round runs
each case once and each case is summarised by its median. Rounds cycle through every order of the cases,
so each case follows each other equally often: a step that runs right after a heavier one (cold caches,
freshly faulted-in memory) would otherwise bias whichever case most often comes next. Ratios are also
given per round (paired), which cancels load that changes slower than one round.

On a CPU shared with other jobs run the benchmarks with OMP_WAIT_POLICY=PASSIVE (docs/performance.md):
idle OpenMP threads then sleep instead of spinning on cores that other processes need.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from anymask.data import ImageDataset, load_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    cases: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of every case, `rounds` samples each, after `warmup` untimed rounds.

    Use a multiple of len(cases)! rounds (2 for two cases, 6 for three) for a fully balanced design.
    `clock=time.process_time` counts this process's CPU seconds instead of wall time.
    """
    names = list(cases)
    orders = list(itertools.permutations(names))
    for _ in range(warmup):
        for name in names:
            cases[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in orders[index % len(orders)]:
            begin = clock()
            cases[name]()
            synchronize(device)
            times[name].append(clock() - begin)
    return times


@dataclass(frozen=True)
class Summary:
    median: float
    low: float  # first quartile
    high: float  # third quartile

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        if len(values) < 2:
            return cls(values[0], values[0], values[0])
        low, _, high = statistics.quantiles(values, n=4)
        return cls(statistics.median(values), low, high)

    def ms(self) -> str:
        return f"{self.median * 1e3:8.1f} ms (IQR {self.low * 1e3:.1f}-{self.high * 1e3:.1f})"


def paired_ratio(numerator: list[float], denominator: list[float]) -> Summary:
    """The ratio taken round by round: a slow round slows both cases and cancels out."""
    return Summary.of([a / b for a, b in zip(numerator, denominator, strict=True)])


def machine(device: torch.device) -> str:
    """The line every figure in docs/performance.md is labelled with."""
    where = f"{os.cpu_count()}-core CPU, torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, {where}"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    wait = f", OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}" if "OMP_WAIT_POLICY" in os.environ else ""
    return f"{where}, PyTorch {torch.__version__}{load}{wait}"


def cifar_or_synthetic() -> tuple[ImageDataset, str]:
    """The real CIFAR-10 subset at ../shared/data when present, else random uint8 images of its shape."""
    if (SHARED_DATA / "cifar-10-batches-py" / "data_batch_1").is_file():
        data = load_dataset("cifar10", SHARED_DATA)
        return data, f"real CIFAR-10 subset from {SHARED_DATA} ({len(data.train_y):,} train images)"
    generator = torch.Generator().manual_seed(0)
    n = 10_000
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    data = ImageDataset(
        name="synthetic-cifar10",
        train_x=images,
        train_y=labels,
        val_x=images[:0],
        val_y=labels[:0],
        test_x=images[:500],
        test_y=labels[:500],
        num_classes=10,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        crop_padding=4,
        flip=True,
        class_names=[str(c) for c in range(10)],
    )
    return data, f"SYNTHETIC uint8 images of CIFAR-10's shape ({n:,}; {SHARED_DATA} not found)"
