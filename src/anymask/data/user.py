"""`--data package.module:function`: your own torch datasets, as `--model` takes your own model.

The factory is `function(data_dir) -> (train, test)` or `(train, test, num_classes)`: two torch `Dataset`s
whose items are (float image tensor [C, H, W], integer label), already transformed (augmentation and
normalisation are yours; anymask orders, batches and streams them through DataLoader workers). The number
of classes comes from the third element, else `train.classes` (as torchvision datasets have) or
`train.num_classes`. Labels for SNIP/GraSP's class-balanced picks come from `train.targets` when it
exists (else the picks are random, unbalanced).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from anymask.data.streamed import StreamedDataset
from anymask.errors import AnymaskError
from anymask.imports import import_factory, one_line

SIGNATURE = "function(data_dir) -> (train_dataset, test_dataset[, num_classes])"


def load_user_data(
    name: str, data_dir: Path, *, val_split: int = 0, train_subset: int | None = None, workers: int = 2
) -> StreamedDataset:
    factory = import_factory(name, "--data", f"a factory {SIGNATURE}")
    try:
        inspect.signature(factory).bind(str(data_dir))
    except TypeError:
        raise AnymaskError(f"--data '{name}' must take one argument: {SIGNATURE}") from None
    except ValueError:
        pass
    made = factory(str(data_dir))
    if not isinstance(made, tuple | list) or len(made) not in (2, 3):
        raise AnymaskError(f"--data '{name}' returned a {type(made).__name__}; a data factory is {SIGNATURE}")
    train, test = made[0], made[1]
    for role, dataset in (("train", train), ("test", test)):
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise AnymaskError(
                f"--data '{name}': its {role} set is a {type(dataset).__name__}, not a Dataset"
            )
    if len(train) == 0:
        raise AnymaskError(f"--data '{name}': the training set is empty")
    num_classes = _num_classes(name, train, made[2] if len(made) == 3 else None)
    image = _first_image(name, train)
    targets = _targets(train)
    train_idx, val_idx = _split(targets, len(train), val_split, train_subset)
    labels = targets if targets is not None else None
    return StreamedDataset(
        name=name,
        train=Subset(train, train_idx.tolist()),
        val=Subset(train, val_idx.tolist()) if len(val_idx) else None,
        test=test,
        labels={
            "train": labels[train_idx] if labels is not None else None,
            "val": labels[val_idx] if labels is not None and len(val_idx) else None,
            "test": _targets(test),
        },
        num_classes=num_classes,
        input_shape=tuple(image.shape),  # type: ignore[arg-type]
        class_names=[str(c) for c in getattr(train, "classes", range(num_classes))],
        raw=False,
        workers=workers,
    )


def _num_classes(name: str, train: Any, given: Any) -> int:
    for value in (given, getattr(train, "num_classes", None)):
        if isinstance(value, int) and value >= 2:
            return value
    classes = getattr(train, "classes", None)
    if classes is not None and len(classes) >= 2:
        return len(classes)
    raise AnymaskError(
        f"--data '{name}': the number of classes is unknown; return (train, test, num_classes) from the "
        "factory, or give the train set a `classes` list"
    )


def _first_image(name: str, train: Dataset) -> torch.Tensor:
    try:
        image, _ = train[0]
    except Exception as error:
        raise AnymaskError(
            f"--data '{name}': reading item 0 of its train set failed: {one_line(error)}"
        ) from None
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or not image.is_floating_point():
        kind = (
            f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        )
        raise AnymaskError(
            f"--data '{name}': items must be (float tensor [C, H, W], label), got {kind}; end its transform "
            "with a conversion to a float tensor (and your normalisation)"
        )
    return image


def _targets(dataset: Any) -> torch.Tensor | None:
    targets = getattr(dataset, "targets", None)
    if targets is None or len(targets) != len(dataset):
        return None
    return torch.as_tensor(list(targets) if not isinstance(targets, torch.Tensor) else targets).long()


def _split(
    targets: torch.Tensor | None, n: int, val_split: int, train_subset: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The in-memory datasets' stratified split where the labels are known, else a fixed shuffle."""
    from anymask.data.load import _split_indices

    labels = targets if targets is not None else torch.zeros(n, dtype=torch.int64)
    return _split_indices(labels, val_split, train_subset)
