"""`load_dataset`: the one entry point that finds, downloads, splits and places a dataset.

The registered small datasets (`DATASETS`) load into memory; `imagefolder` (`STREAMED`) and a user's
`package.module:function` are streamed from disk by DataLoader workers (`anymask.data.streamed`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Importing the loader modules registers them in DATASETS.
from anymask.data import cifar, digits, tinyimagenet  # noqa: F401
from anymask.data.base import DATASETS, ImageDataset, not_found
from anymask.data.download import ARCHIVES, download_and_extract
from anymask.data.folder import NAME as IMAGE_FOLDER
from anymask.data.folder import load_image_folder
from anymask.data.streamed import StreamedDataset
from anymask.errors import AnymaskError
from anymask.imports import is_factory_name
from anymask.registry import Registry

# Datasets read from disk batch by batch: a loader (data_dir, **options) -> StreamedDataset.
STREAMED: Registry[Callable[..., StreamedDataset]] = Registry("dataset")
STREAMED.register(IMAGE_FOLDER)(load_image_folder)


def load_dataset(
    name: str,
    data_dir: str | Path = "data",
    *,
    download: bool = False,
    val_split: int = 0,
    train_subset: int | None = None,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    workers: int = 2,
) -> ImageDataset | StreamedDataset:
    """Load dataset `name` from `data_dir`, holding out `val_split` train images for validation.

    The validation images are the same in every run (a fixed seed, independent of the run's seed);
    `train_subset` then keeps the first N remaining train images in file order, for quick runs.
    `image_size`, `mean`, `std` and `workers` apply to the streamed datasets (imagefolder, a factory).
    """
    check_data_name(name)
    data_dir = Path(data_dir)
    if is_factory_name(name):
        from anymask.data.user import load_user_data

        user = load_user_data(name, data_dir, val_split=val_split, train_subset=train_subset, workers=workers)
        return user.to(device)
    if name in STREAMED:
        folder = STREAMED.get(name)(
            data_dir,
            val_split=val_split,
            train_subset=train_subset,
            image_size=image_size,
            mean=mean,
            std=std,
            workers=workers,
        )
        return folder.to(device)
    loader = DATASETS.get(name)
    if download and name in ARCHIVES:
        download_and_extract(ARCHIVES[name], data_dir)
    ds = loader(data_dir)
    if val_split == 0 and train_subset is None:  # skip the copy: Tiny ImageNet's train split is 1.2 GB
        return ds.to(device)
    train_idx, val_idx = _split_indices(ds.train_y, val_split, train_subset)
    ds = dataclasses.replace(
        ds,
        train_x=ds.train_x[train_idx],
        train_y=ds.train_y[train_idx],
        val_x=ds.train_x[val_idx],
        val_y=ds.train_y[val_idx],
    )
    return ds.to(device)


def check_data_name(name: str) -> None:
    """One line for a `--data` that names no dataset: not registered, not imagefolder, not a factory."""
    if is_factory_name(name) or name in STREAMED or name in DATASETS:
        return
    choices = ", ".join([*DATASETS.names(), *STREAMED.names()])
    raise AnymaskError(f"unknown dataset '{name}'; choose one of: {choices}, or package.module:function")


def data_options(config: Any) -> dict[str, Any]:
    """The `load_dataset` keyword arguments a DataConfig sets."""
    c = config
    return {
        "download": c.download,
        "val_split": c.val_split,
        "train_subset": c.train_subset,
        "image_size": c.image_size,
        "mean": c.data_mean,
        "std": c.data_std,
        "workers": c.data_workers,
    }


def check_dataset_present(name: str, data_dir: str | Path, download: bool = False) -> None:
    """A cheap look for the dataset's official folder (no file is read): one line when it is missing and
    will not be downloaded. Sweeps call it once before any run starts, instead of failing every run."""
    if name in ARCHIVES and not download:
        folder = ARCHIVES[name].folder
        if not (Path(data_dir) / folder).is_dir():
            raise not_found(name, Path(data_dir) / folder, folder)


def _split_indices(
    labels: torch.Tensor, val_split: int, train_subset: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices into the official train split, each in file order."""
    n = len(labels)
    if not 0 <= val_split < n:
        raise AnymaskError(
            f"val_split must be in 0..{n - 1} (the train split has {n} images), got {val_split}"
        )
    order = torch.from_numpy(_stratified_order(labels.numpy()))
    val, rest = order[:val_split].sort().values, order[val_split:].sort().values
    if train_subset is not None:
        if not 0 < train_subset <= len(rest):
            raise AnymaskError(
                f"train_subset must be in 1..{len(rest)} (train images left after val_split={val_split}), "
                f"got {train_subset}"
            )
        rest = rest[:train_subset]
    return rest, val


def _stratified_order(labels: np.ndarray) -> np.ndarray:
    """A fixed (seed 0) shuffle of all indices in which every prefix holds each class in proportion.

    Each index is ranked by its position among its own class in the shuffle, as a fraction of the class
    size, so taking the first k indices takes about k * class_share images of every class.
    """
    perm = np.random.default_rng(0).permutation(len(labels))
    shuffled = labels[perm]
    frac = np.empty(len(labels))
    for c in np.unique(shuffled):
        members = np.flatnonzero(shuffled == c)
        frac[members] = (np.arange(len(members)) + 0.5) / len(members)
    return perm[np.argsort(frac, kind="stable")]
