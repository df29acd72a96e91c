"""Batches straight from uint8 tensors on the device: shuffling, crop/flip augmentation, DDP sharding.

All random draws come from a CPU generator, one epoch at a time, for the global batch: the same seed gives
the same batches on CPU or GPU, on 1 or N ranks, and a resumed run that restores the generator replays
the epoch exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from anymask.errors import AnymaskError

if TYPE_CHECKING:
    from anymask.data.base import ImageDataset


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """How many (global) batches one epoch over `n` samples yields."""
    if batch_size <= 0:
        raise AnymaskError(f"batch size must be positive, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    shuffle: bool,
    augment: bool,
    crop_padding: int = 0,
    flip: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of normalized float32 (images, labels) batches on the device of `images`.

    `batch_size` is the global batch; rank `rank` of `world_size` gets its contiguous share of each one.
    With world_size > 1 use drop_last=True so every rank gets an equal, non-empty share.
    """
    _check_args(images, labels, batch_size, rank, world_size)
    device = images.device
    plan = EpochPlan.draw(
        len(images),
        batch_size,
        shuffle=shuffle,
        augment=augment,
        crop_padding=crop_padding,
        flip=flip,
        generator=generator,
        drop_last=drop_last,
        rank=rank,
        world_size=world_size,
    )
    # One copy to the device per epoch, then slices: no host-to-device transfer inside the loop.
    order = plan.order.to(device)
    finish = BatchFinisher(plan, mean, std, crop_padding, channels_last, device)
    for lo, hi in plan.bounds:
        idx = order[lo:hi]
        yield finish(images[idx], lo, hi), labels[idx]


@dataclass
class EpochPlan:
    """Everything random in one epoch, drawn up front in a fixed order for all n samples, and this rank's
    [lo, hi) positions of each batch in `order`. The in-memory and the streamed paths share it, so the
    same generator gives the same batches from tensors in memory and from files on disk."""

    order: torch.Tensor  # [n] sample indices, CPU
    augmentation: tuple[torch.Tensor, torch.Tensor] | None  # per-position crop offsets and flips, CPU
    bounds: list[tuple[int, int]]

    @classmethod
    def draw(
        cls,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        crop_padding: int = 0,
        flip: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> EpochPlan:
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        aug = (
            _draw_augmentation(n, crop_padding, flip, generator)
            if augment and (crop_padding or flip)
            else None
        )
        bounds = [
            _share(b * batch_size, min((b + 1) * batch_size, n), rank, world_size)
            for b in range(num_batches(n, batch_size, drop_last))
        ]
        return cls(order, aug, bounds)


class BatchFinisher:
    """Turns the uint8 images at plan positions [lo, hi) into the float batch: crop, flip, normalise."""

    def __init__(
        self,
        plan: EpochPlan,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int,
        channels_last: bool,
        device: torch.device,
    ) -> None:
        self.augmentation = (
            tuple(t.to(device) for t in plan.augmentation) if plan.augmentation is not None else None
        )
        self.padding, self.channels_last = crop_padding, channels_last
        self.shift = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        self.scale = 1 / (torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255)

    def __call__(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        if self.augmentation is not None:
            offsets, flips = self.augmentation
            x = _crop_flip(x, offsets[lo:hi], flips[lo:hi], self.padding)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # Normalizing after the crop makes the zero padding come out as (0 - mean) / std, like torchvision.
        return x.float().sub_(self.shift).mul_(self.scale)


def _share(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """Bounds of rank `rank`'s contiguous part of positions [start, stop), split as `tensor_split` does."""
    size, extra = divmod(stop - start, world_size)
    lo = start + rank * size + min(rank, extra)
    return lo, lo + size + (rank < extra)


def _check_args(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, rank: int, world_size: int
) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or len(labels) != len(images):
        raise ValueError(
            f"expected uint8 images [N, C, H, W] and N labels, got {images.dtype} {tuple(images.shape)} "
            f"and {len(labels)} labels"
        )
    check_batch_sizes(batch_size, rank, world_size)


def check_batch_sizes(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size <= 0 or batch_size % world_size:
        raise AnymaskError(
            f"batch size {batch_size} must be a positive multiple of the number of processes ({world_size}); "
            "change --batch-size or the process count"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")


def _draw_augmentation(
    n: int, padding: int, flip: bool, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets (top, left) in [0, 2 * padding] and flip decisions, drawn on CPU."""
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return offsets, flips


def _crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch and horizontal flip, as two batched gathers.

    offsets[i] = (top, left) of sample i's window in the padded image; a flip just reverses the column
    indices of that window, so crop and flip together cost one pass over the pixels per axis.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[:, 1:]  # [B, W]
    rows = torch.arange(h, device=x.device) + offsets[:, :1]  # [B, H]
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, padded.shape[3]))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def shuffled_train_batches(
    data: ImageDataset,
    batch_size: int,
    generator: torch.Generator,
    *,
    augment: bool = True,
    **options: object,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches of the training split with the dataset's own crop and flip (in memory or
    streamed from disk: any dataset with a `batches` method)."""
    return data.batches("train", batch_size, shuffle=True, augment=augment, generator=generator, **options)  # type: ignore[arg-type]
