"""Datasets read from disk batch by batch: a DataLoader with workers decodes, memory is bounded by the batch.

`StreamedDataset` answers the same calls as the in-memory `ImageDataset` (`split_size`, `split_labels`,
`batches`, `train_batches_at`, `to`), so the trainer, the scorers and GradInit take either. Two kinds of
items:

- **raw** (an image folder): items are uint8 [C, H, W] images; crop, flip and normalisation are applied
  to the whole batch on the device, from the same `EpochPlan` as the in-memory path, so one generator
  gives the same batches from files as from tensors in memory (tests/test_streamed_data.py);
- **ready** (a user's `--data package.module:function`): items are the float tensors the user's own
  transforms made; anymask only orders and batches them. Each epoch's worker seed comes from the epoch
  generator, so their random transforms repeat with the seed.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from anymask.data.batches import BatchFinisher, EpochPlan, check_batch_sizes
from anymask.errors import AnymaskError

Batch = tuple[torch.Tensor, torch.Tensor]
SPLITS = ("train", "val", "test")


@dataclass
class StreamedDataset:
    """Train, validation and test splits as torch `Dataset`s of (image, label), read as they are needed."""

    name: str
    train: Dataset
    val: Dataset | None
    test: Dataset
    labels: dict[str, torch.Tensor | None]  # per split, when known without decoding (a folder's paths)
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: list[str]
    raw: bool  # uint8 items to crop, flip and normalise here; False: the user's transforms did it all
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    crop_padding: int = 0
    flip: bool = False
    workers: int = 2
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    def to(self, device: str | torch.device) -> StreamedDataset:
        """The same files, batches delivered on `device` (nothing is loaded now)."""
        return dataclasses.replace(self, device=torch.device(device))

    def split(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'; one of {SPLITS}")
        found = getattr(self, split)
        return found if found is not None else _EMPTY

    def split_size(self, split: str) -> int:
        return len(self.split(split))  # type: ignore[arg-type]

    def split_labels(self, split: str) -> torch.Tensor | None:
        """Labels known without decoding an image, else None (a user's dataset without `targets`)."""
        return self.labels.get(split)

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> Iterator[Batch]:
        """One epoch of float batches of `split` on the dataset's device, decoded by DataLoader workers."""
        dataset = self.split(split)
        check_batch_sizes(batch_size, rank, world_size)
        plan = EpochPlan.draw(
            len(dataset),  # type: ignore[arg-type]
            batch_size,
            shuffle=shuffle,
            augment=augment and self.raw,
            crop_padding=self.crop_padding,
            flip=self.flip,
            generator=generator,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        index_batches = [plan.order[lo:hi].tolist() for lo, hi in plan.bounds]
        seed = _worker_seed(generator) if not self.raw else 0
        finish = (
            BatchFinisher(plan, self.mean, self.std, self.crop_padding, channels_last, self.device)
            if self.raw
            else None
        )
        for (images, labels), (lo, hi) in zip(
            self._loader(dataset, index_batches, seed), plan.bounds, strict=True
        ):
            x = images.to(self.device, non_blocking=True)
            if finish is not None:
                x = finish(x, lo, hi)
            elif channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels.to(self.device, non_blocking=True)

    def train_batches_at(self, indices: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        """The training images at `indices`, in that order, normalised and not augmented (prune data)."""
        subset = Subset(self.train, indices.tolist())
        plan = EpochPlan.draw(len(subset), batch_size, shuffle=False, augment=False)
        finish = BatchFinisher(plan, self.mean, self.std, 0, False, self.device) if self.raw else None
        chunks = [list(range(lo, hi)) for lo, hi in plan.bounds]
        for (images, labels), (lo, hi) in zip(self._loader(subset, chunks, 0), plan.bounds, strict=True):
            x = images.to(self.device)
            yield (finish(x, lo, hi) if finish is not None else x), labels.to(self.device)

    def _loader(self, dataset: Dataset, index_batches: Sequence[list[int]], seed: int) -> DataLoader:
        # A sweep worker is a daemon process, which may not start processes: it decodes in-process.
        daemon = multiprocessing.current_process().daemon
        workers = self.workers if len(index_batches) > 1 and not daemon else 0
        return DataLoader(
            dataset,
            batch_sampler=index_batches,  # type: ignore[arg-type]
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )


def collate(items: list[tuple[Any, Any]]) -> Batch:
    """Stack (image, label) items into one batch; a one-line error for items of another form."""
    try:
        images = torch.stack([torch.as_tensor(image) for image, _ in items])
        labels = torch.tensor([int(label) for _, label in items], dtype=torch.int64)
    except (TypeError, ValueError, RuntimeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AnymaskError(
            f"cannot batch the dataset's items ({first}); each item must be (image tensor [C, H, W] of "
            "one shape, integer label)"
        ) from None
    return images, labels


def _worker_seed(generator: torch.Generator | None) -> int:
    """A seed for the workers' own random transforms, drawn last from the epoch generator."""
    if generator is None:
        return 0
    return int(torch.randint(0, 2**62, (1,), generator=generator))


class _Empty(Dataset):
    def __len__(self) -> int:
        return 0

    def __getitem__(self, index: int) -> Any:
        raise IndexError(index)


_EMPTY = _Empty()
