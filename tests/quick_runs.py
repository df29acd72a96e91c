"""The small real run several test files train: a digits CNN, 256 images, two epochs, one thread."""

from __future__ import annotations

from anymask.config import RunConfig

QUICK = {
    "model": "cnn",
    "data": "digits",
    "train_subset": 256,
    "epochs": 2,
    "batch_size": 64,
    "lr": 0.05,
    "progress": False,
    "threads": 1,
    "eval_batch_size": 512,
}


def quick_config(**overrides: object) -> RunConfig:
    """QUICK with `overrides` (any flat setting) on top."""
    return RunConfig.from_flat({**QUICK, **overrides})
