"""Tiny ImageNet (200 classes of 64x64 JPEGs) from the official zip layout, decoded once and cached."""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from anymask.data.base import DATASETS, ImageDataset, malformed, not_found

FOLDER = "tiny-imagenet-200"
CACHE_NAME = "anymask-cache.npz"
_SIZE = 64


def _read_wnids(root: Path) -> list[str]:
    path = root / "wnids.txt"
    if not path.is_file():
        raise not_found("tinyimagenet", path, FOLDER)
    wnids = path.read_text().split()
    if not wnids or len(set(wnids)) != len(wnids):
        raise malformed("tinyimagenet", path, "expected one distinct class id per line")
    return wnids


def _train_files(root: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        found = sorted(folder.glob("*.JPEG"))
        if not found:
            raise not_found("tinyimagenet", folder / "*.JPEG", FOLDER)
        files += found
        labels += [label] * len(found)
    return files, labels


def _val_files(root: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    """The official val split (used as our test split): images listed in val_annotations.txt."""
    path = root / "val" / "val_annotations.txt"
    if not path.is_file():
        raise not_found("tinyimagenet", path, FOLDER)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise malformed("tinyimagenet", path, f"line {line_no} is not 'filename<TAB>known wnid<TAB>...'")
        files.append(root / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    return files, labels


def _decode(files: list[Path], desc: str) -> np.ndarray:
    """uint8 [N, 3, 64, 64] from JPEG files (the official set has some grayscale ones: made RGB)."""
    out = np.empty((len(files), 3, _SIZE, _SIZE), dtype=np.uint8)
    for i, path in enumerate(tqdm(files, desc=desc, unit="img")):
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except OSError as e:  # missing file or undecodable image
            raise malformed("tinyimagenet", path, f"cannot read image: {e}") from None
        if rgb.size != (_SIZE, _SIZE):
            raise malformed("tinyimagenet", path, f"image is {rgb.size[0]}x{rgb.size[1]}, expected 64x64")
        out[i] = np.asarray(rgb).transpose(2, 0, 1)
    return out


def _load_cache(path: Path, wnids: list[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent, unreadable or built for a different class list."""
    try:
        with np.load(path) as cache:
            arrays = {k: cache[k] for k in ("train_x", "train_y", "test_x", "test_y", "wnids")}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    consistent = all(
        arrays[f"{s}_x"].dtype == np.uint8 and len(arrays[f"{s}_x"]) == len(arrays[f"{s}_y"])
        for s in ("train", "test")
    )
    return arrays if consistent and arrays["wnids"].tolist() == wnids else None


def _save_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # Temp file + os.replace: an interrupted run never leaves a truncated cache behind.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:  # e.g. a read-only shared data folder: still usable, just decoded every time
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the Tiny ImageNet cache {path}: {e}", stacklevel=2)


def _decode_all(root: Path, wnids: list[str]) -> dict[str, np.ndarray]:
    train_files, train_labels = _train_files(root, wnids)
    test_files, test_labels = _val_files(root, wnids)
    return {
        "train_x": _decode(train_files, "decoding tinyimagenet train"),
        "train_y": np.array(train_labels, dtype=np.int64),
        "test_x": _decode(test_files, "decoding tinyimagenet val"),
        "test_y": np.array(test_labels, dtype=np.int64),
        "wnids": np.array(wnids),
    }


@DATASETS.register("tinyimagenet")
def load_tinyimagenet(data_dir: Path) -> ImageDataset:
    root = data_dir / FOLDER
    wnids = _read_wnids(root)
    cache_path = root / CACHE_NAME
    arrays = _load_cache(cache_path, wnids)
    if arrays is None:
        arrays = _decode_all(root, wnids)
        _save_cache(cache_path, arrays)
    train_x = torch.from_numpy(arrays["train_x"])
    return ImageDataset(
        name="tinyimagenet",
        train_x=train_x,
        train_y=torch.from_numpy(arrays["train_y"]),
        val_x=train_x[:0].clone(),
        val_y=torch.zeros(0, dtype=torch.int64),
        test_x=torch.from_numpy(arrays["test_x"]),
        test_y=torch.from_numpy(arrays["test_y"]),
        num_classes=len(wnids),
        # Statistics and padding as in Synaptic-Flow, whose Tiny ImageNet numbers we compare against.
        mean=(0.480, 0.448, 0.397),
        std=(0.276, 0.269, 0.282),
        crop_padding=4,
        flip=True,
        class_names=wnids,
    )
