"""The in-memory dataset type every loader returns, and the registry of loaders."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anymask.errors import AnymaskError
from anymask.registry import Registry

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ImageDataset:
    """A whole image-classification dataset held as uint8 tensors (small enough for memory by design).

    Images are uint8 [N, C, H, W] and labels int64 [N]; `iterate_batches` turns them into normalized
    float batches on whatever device the tensors live on, so no DataLoader workers are needed.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool
    class_names: list[str]

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(
                    f"{self.name}: {split}_x must be uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"{self.name}: {split}_y must be int64 [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}"
                )
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return (c, h, w)

    # -- the dataset interface the trainer, the scorers and GradInit use (shared with StreamedDataset) --
    def split_size(self, split: str) -> int:
        """Images in split 'train', 'val' or 'test'."""
        return len(self.split_labels(split))

    def split_labels(self, split: str) -> torch.Tensor:
        """The split's labels (int64), known without reading an image."""
        return getattr(self, f"{split}_y")

    def batches(self, split: str, batch_size: int, **options: Any) -> Iterator[Batch]:
        """One epoch of normalised float batches of `split` on the dataset's device (`iterate_batches`'
        options: shuffle, augment, generator, drop_last, rank, world_size, channels_last)."""
        from anymask.data.batches import iterate_batches

        options.setdefault("shuffle", False)
        options.setdefault("augment", False)
        return iterate_batches(
            getattr(self, f"{split}_x"),
            getattr(self, f"{split}_y"),
            batch_size,
            mean=self.mean,
            std=self.std,
            crop_padding=self.crop_padding,
            flip=self.flip,
            **options,
        )

    def train_batches_at(self, indices: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        """The training images at `indices`, in that order, normalised and not augmented (prune data)."""
        from anymask.data.batches import iterate_batches

        idx = indices.to(self.train_x.device)
        return iterate_batches(
            self.train_x[idx],
            self.train_y[idx],
            batch_size,
            mean=self.mean,
            std=self.std,
            shuffle=False,
            augment=False,
        )

    def to(self, device: str | torch.device) -> ImageDataset:
        """A copy with every tensor on `device` (images stay uint8: 4x less memory than float)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


# A loader reads the full official train and test splits from the data folder (val left empty).
Loader = Callable[[Path], ImageDataset]
DATASETS: Registry[Loader] = Registry("dataset")

# Image shape and number of classes of each registered dataset, so a model is rebuilt without loading
# its data: `inspect --model` and `export` run where the data is not on disk (the shape also decides
# where VGG-style models keep their pools).
DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "digits": ((1, 8, 8), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "tinyimagenet": ((3, 64, 64), 200),
}


def not_found(name: str, expected: Path, folder: str) -> AnymaskError:
    """The one-line error for a dataset whose files are missing: where we looked and how to fix it."""
    return AnymaskError(
        f"{name} not found: expected {expected.resolve()}; pass --data-dir pointing at the folder that "
        f"contains {folder}, or --download"
    )


def malformed(name: str, path: Path, detail: str) -> AnymaskError:
    """The one-line error for a dataset file that exists but is not in the official format."""
    return AnymaskError(
        f"{name}: {path} is malformed ({detail}); replace it with the official file "
        f"(delete {path.parent} and pass --download)"
    )


def check_labels(name: str, path: Path, labels: np.ndarray, count: int, num_classes: int) -> torch.Tensor:
    """Validated int64 label tensor: `count` labels, each in [0, num_classes)."""
    if labels.shape != (count,):
        raise malformed(name, path, f"{labels.size} labels for {count} images")
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        raise malformed(name, path, f"labels outside 0..{num_classes - 1}")
    return torch.from_numpy(labels.astype(np.int64))
