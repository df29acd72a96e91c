"""scikit-learn's 8x8 handwritten digits: a real dataset that ships with scikit-learn (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from anymask.data.base import DATASETS, ImageDataset

_TEST_PER_CLASS = 45


def _stratified_test_mask(labels: np.ndarray) -> np.ndarray:
    """45 test images per class, picked with a fixed seed so the split never changes."""
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        test[rng.permutation(np.flatnonzero(labels == c))[:_TEST_PER_CLASS]] = True
    return test


@DATASETS.register("digits")
def load_digits(data_dir: Path) -> ImageDataset:
    """`data_dir` is unused: the 1,797 images come with scikit-learn."""
    from sklearn.datasets import load_digits as sklearn_digits  # slow import, only when asked for

    raw = sklearn_digits()
    # Pixels are counts 0..16; scale to the 0..255 range every other dataset uses.
    images = np.rint(raw.images * (255 / 16)).astype(np.uint8)[:, None]
    labels = raw.target.astype(np.int64)
    test = _stratified_test_mask(labels)
    train_x = torch.from_numpy(images[~test])
    pixels = train_x.double() / 255
    return ImageDataset(
        name="digits",
        train_x=train_x,
        train_y=torch.from_numpy(labels[~test]),
        val_x=train_x[:0].clone(),
        val_y=torch.zeros(0, dtype=torch.int64),
        test_x=torch.from_numpy(images[test]),
        test_y=torch.from_numpy(labels[test]),
        num_classes=10,
        mean=(pixels.mean().item(),),
        std=(pixels.std().item(),),
        crop_padding=1,
        flip=False,  # a mirrored digit is a different (or no) digit
        class_names=[str(d) for d in range(10)],
    )
