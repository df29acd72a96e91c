"""`--data imagefolder`: your own images, one folder per class, decoded by Pillow as batches need them.

    DIR/train/<class>/*.png|jpg|jpeg|bmp|webp      the training images; class = folder name (sorted)
    DIR/val/<class>/...  (or DIR/test/<class>/...)  the evaluation images, if you have them

Without DIR/val or DIR/test, `--val-split N` holds out N training images (a stratified, fixed choice) and
the run evaluates on them. Images are resized to `--image-size` (shorter side, then a centre crop) or must
all be the size of the first one; grayscale folders train on one channel. Training batches get the
in-memory datasets' augmentation (random crop with padding image_size / 8, horizontal flip), and
normalisation uses `--data-mean` / `--data-std` or statistics computed from up to 1,000 training images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from anymask.data.streamed import StreamedDataset
from anymask.errors import AnymaskError

NAME = "imagefolder"
EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
STATISTICS_IMAGES = 1000


class FolderImages(Dataset):
    """Image files and their labels; item i is (uint8 tensor [C, H, W], label), decoded on request."""

    def __init__(self, paths: list[Path], labels: list[int], mode: str, size: int | None) -> None:
        self.paths, self.labels, self.mode, self.size = paths, labels, mode, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return decode(self.paths[index], self.mode, self.size), self.labels[index]


def decode(path: Path, mode: str, size: int | None) -> torch.Tensor:
    """One image as uint8 [C, H, W]: `mode` ('RGB' or 'L'), resized (shorter side) and centre-cropped to
    `size` x `size` when a size is given."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode != mode:  # a conversion copies the image: only when needed
                image = image.convert(mode)
            if size is not None:
                image = _resize_crop(image, size)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise AnymaskError(f"cannot read image {path}: {error}; remove or replace the file") from None
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def _resize_crop(image, size: int):  # PIL images in and out
    from PIL import Image

    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return image


def scan(root: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of a <class>/<image> folder, in sorted order; `classes` fixes the
    names (an evaluation folder must use the training folder's)."""
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    names = classes if classes is not None else found
    if classes is not None and (extra := sorted(set(found) - set(classes))):
        raise AnymaskError(
            f"{root} has classes the training folder lacks ({', '.join(extra[:3])}); "
            "every evaluation class needs a folder under train/"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        folder = root / name
        files = (
            sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS) if folder.is_dir() else []
        )
        paths += files
        labels += [label] * len(files)
    return paths, labels, names


def load_image_folder(
    data_dir: Path,
    *,
    val_split: int = 0,
    train_subset: int | None = None,
    image_size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    workers: int = 2,
) -> StreamedDataset:
    """The folder as a `StreamedDataset`: files listed now, images decoded batch by batch later."""
    from anymask.data.load import _split_indices

    train_root = data_dir / "train"
    if not train_root.is_dir():
        raise AnymaskError(
            f"imagefolder: no {train_root.resolve()}; --data-dir must hold train/<class>/<images> "
            "(and val/<class>/<images> to evaluate on)"
        )
    paths, labels, classes = scan(train_root)
    if not paths:
        raise AnymaskError(f"imagefolder: no images ({', '.join(sorted(EXTENSIONS))}) under {train_root}")
    first = _first_image(paths[0])
    mode = "L" if first.shape[0] == 1 else "RGB"
    channels = 1 if mode == "L" else 3
    size = image_size
    if size is None:
        _, h, w = first.shape
        if h != w:
            raise AnymaskError(
                f"imagefolder: {paths[0]} is {w}x{h}; pass --image-size N to resize every image to NxN"
            )
        size_fixed: int | None = None
        side = h
    else:
        size_fixed, side = size, size
    train = FolderImages(paths, labels, mode, size_fixed)
    if size_fixed is None:
        train = _SameSize(train, (channels, side, side))
    all_labels = torch.tensor(labels, dtype=torch.int64)
    eval_root = next((data_dir / n for n in ("val", "test") if (data_dir / n).is_dir()), None)
    if eval_root is None and val_split == 0:
        raise AnymaskError(
            f"imagefolder: {data_dir} has no val/ or test/ folder to evaluate on; add one, or hold out "
            "training images with --val-split N"
        )
    train_idx, val_idx = _split_indices(all_labels, val_split, train_subset)
    if eval_root is not None:
        test_paths, test_labels, _ = scan(eval_root, classes)
        test: Dataset = FolderImages(test_paths, test_labels, mode, size_fixed)
        test_y = torch.tensor(test_labels, dtype=torch.int64)
        if size_fixed is None:
            test = _SameSize(test, (channels, side, side))  # type: ignore[arg-type]
        val: Dataset | None = Subset(train, val_idx.tolist()) if len(val_idx) else None
        val_y = all_labels[val_idx] if len(val_idx) else None
    else:  # the held-out training images are what the run evaluates on
        test, test_y, val, val_y = Subset(train, val_idx.tolist()), all_labels[val_idx], None, None
    train_split = Subset(train, train_idx.tolist())
    statistics = _statistics(train_split, mean, std)
    return StreamedDataset(
        name=NAME,
        train=train_split,
        val=val,
        test=test,
        labels={"train": all_labels[train_idx], "val": val_y, "test": test_y},
        num_classes=len(classes),
        input_shape=(channels, side, side),
        class_names=classes,
        raw=True,
        mean=statistics[0],
        std=statistics[1],
        crop_padding=max(1, side // 8),  # 4 at 32x32, as CIFAR
        flip=True,
        workers=workers,
    )


def _first_image(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        mode = "L" if image.mode in {"1", "L", "I;16", "I", "F"} else "RGB"
    return decode(path, mode, None)


class _SameSize(Dataset):
    """A folder read at its own size: every image must have the first one's shape."""

    def __init__(self, images: FolderImages, shape: tuple[int, int, int]) -> None:
        self.images, self.shape = images, shape

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.images[index]
        if tuple(image.shape) != self.shape:
            raise AnymaskError(
                f"imagefolder: {self.images.paths[index]} is {image.shape[2]}x{image.shape[1]}, not "
                f"{self.shape[2]}x{self.shape[1]} as the first image; pass --image-size N to resize all"
            )
        return image, label


def _statistics(
    train: Dataset, mean: list[float] | None, std: list[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the pixels in [0, 1]: as given, or from up to 1,000 evenly spaced
    training images (a fixed choice, so the same folder always gets the same numbers)."""
    if mean is not None and std is not None:
        return tuple(mean), tuple(std)
    n = len(train)  # type: ignore[arg-type]
    picks = np.unique(np.linspace(0, n - 1, min(n, STATISTICS_IMAGES)).round().astype(int))
    # Running per-channel sums, one image at a time: the images are never all held at once.
    total = squares = None
    pixels = 0
    for i in picks:
        image = train[int(i)][0].double().flatten(1) / 255
        sums, sq = image.sum(1), image.square().sum(1)
        total, squares = (sums, sq) if total is None else (total + sums, squares + sq)
        pixels += image.shape[1]
    assert total is not None and squares is not None
    found_mean = total / pixels
    variance = (squares - pixels * found_mean.square()) / max(pixels - 1, 1)
    found_std = variance.clamp_min(1e-6).sqrt()
    return (
        tuple(found_mean.tolist()) if mean is None else tuple(mean),
        tuple(found_std.tolist()) if std is None else tuple(std),
    )
