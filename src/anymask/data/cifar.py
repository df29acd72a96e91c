"""CIFAR-10 and CIFAR-100 from the official python pickles (the `*-python.tar.gz` archives)."""

from __future__ import annotations

import codecs
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anymask.data.base import DATASETS, ImageDataset, check_labels, malformed, not_found

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
_PIXELS = 3 * 32 * 32


try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

# The only globals a CIFAR batch needs: numpy arrays (rebuilt by _reconstruct from ndarray and a
# dtype), numpy scalars, and _codecs.encode, which protocol-2 pickles written by Python 3 use for bytes.
# A pickle runs code only through globals, so allowing these and nothing else makes loading safe.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("_codecs", "encode"): codecs.encode,
}


class _RefusedGlobal(Exception):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; any other global is refused before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        return _ALLOWED_GLOBALS[(module, name)]


def _read_pickle(name: str, path: Path) -> dict[str, Any]:
    # The official files are Python 2 pickles; latin1 decodes their str keys and numpy buffers alike.
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as refused:
        raise malformed(
            name,
            path,
            f"it refers to {refused}, which a CIFAR batch never holds (refused unread: it could run code)",
        ) from None
    except Exception as e:  # a truncated or foreign pickle can raise nearly any exception type
        raise malformed(
            name, path, f"cannot unpickle: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not isinstance(obj, dict):
        raise malformed(name, path, f"expected a dict, got {type(obj).__name__}")
    return obj


def _field(name: str, path: Path, obj: dict[str, Any], key: str) -> Any:
    if key not in obj:
        raise malformed(name, path, f"no '{key}' entry")
    return obj[key]


def _read_batch(name: str, path: Path, label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] from one pickled batch."""
    obj = _read_pickle(name, path)
    data = np.asarray(_field(name, path, obj, "data"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise malformed(name, path, f"'data' must be uint8 [N, {_PIXELS}], got {data.dtype} {data.shape}")
    labels = np.asarray(_field(name, path, obj, label_key))
    y = check_labels(name, path, labels, len(data), num_classes)
    # Rows are channel-major (all R, then G, then B of a 32x32 image), so this reshape is exact.
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), y


def _class_names(name: str, path: Path, key: str, num_classes: int) -> list[str]:
    names = [str(n) for n in _field(name, path, _read_pickle(name, path), key)]
    if len(names) != num_classes:
        raise malformed(name, path, f"{len(names)} entries in '{key}', expected {num_classes}")
    return names


def _require(name: str, path: Path, folder: str) -> Path:
    if not path.is_file():
        raise not_found(name, path, folder)
    return path


def _train_batches(root: Path) -> list[Path]:
    """data_batch_1..N in numeric order; any count is accepted so subsets of the official files work."""
    found = [p for p in root.glob("data_batch_*") if re.fullmatch(r"data_batch_\d+", p.name)]
    if not found:
        raise not_found("cifar10", root / "data_batch_1", CIFAR10_FOLDER)
    return sorted(found, key=lambda p: int(p.name.rsplit("_", 1)[1]))


def _cifar(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    class_names: list[str],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> ImageDataset:
    """The two CIFARs differ only in files, class count and channel statistics; no validation split."""
    train_x, train_y = train
    return ImageDataset(
        name=name,
        train_x=train_x,
        train_y=train_y,
        val_x=train_x[:0].clone(),
        val_y=torch.zeros(0, dtype=torch.int64),
        test_x=test[0],
        test_y=test[1],
        num_classes=len(class_names),
        mean=mean,
        std=std,
        crop_padding=4,
        flip=True,
        class_names=class_names,
    )


@DATASETS.register("cifar10")
def load_cifar10(data_dir: Path) -> ImageDataset:
    root = data_dir / CIFAR10_FOLDER
    parts = [_read_batch("cifar10", p, "labels", 10) for p in _train_batches(root)]
    test = _read_batch("cifar10", _require("cifar10", root / "test_batch", CIFAR10_FOLDER), "labels", 10)
    meta = _require("cifar10", root / "batches.meta", CIFAR10_FOLDER)
    train = (torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]))
    return _cifar(
        "cifar10",
        train,
        test,
        _class_names("cifar10", meta, "label_names", 10),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    )


@DATASETS.register("cifar100")
def load_cifar100(data_dir: Path) -> ImageDataset:
    root = data_dir / CIFAR100_FOLDER

    def split(file: str) -> tuple[torch.Tensor, torch.Tensor]:
        return _read_batch("cifar100", _require("cifar100", root / file, CIFAR100_FOLDER), "fine_labels", 100)

    train, test = split("train"), split("test")
    meta = _require("cifar100", root / "meta", CIFAR100_FOLDER)
    return _cifar(
        "cifar100",
        train,
        test,
        _class_names("cifar100", meta, "fine_label_names", 100),
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    )
