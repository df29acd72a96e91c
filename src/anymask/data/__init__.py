"""Datasets as in-memory uint8 tensors, and fast device-side batching with augmentation."""

from anymask.data.base import DATASET_SHAPES, DATASETS, ImageDataset
from anymask.data.batches import iterate_batches, num_batches, shuffled_train_batches
from anymask.data.download import ARCHIVES, Archive, download_and_extract
from anymask.data.load import load_dataset

__all__ = [
    "ARCHIVES",
    "DATASETS",
    "DATASET_SHAPES",
    "Archive",
    "ImageDataset",
    "download_and_extract",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "shuffled_train_batches",
]
