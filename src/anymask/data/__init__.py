"""Datasets: small ones as in-memory uint8 tensors with device-side batching, image folders and user
datasets streamed from disk by DataLoader workers (`StreamedDataset`)."""

from anymask.data.base import DATASET_SHAPES, DATASETS, ImageDataset
from anymask.data.batches import iterate_batches, num_batches, shuffled_train_batches
from anymask.data.download import ARCHIVES, Archive, download_and_extract
from anymask.data.load import STREAMED, check_data_name, data_options, load_dataset
from anymask.data.streamed import StreamedDataset

TrainingData = ImageDataset | StreamedDataset
"""What the trainer, the scorers and GradInit take: a dataset in memory or streamed from disk."""

__all__ = [
    "ARCHIVES",
    "DATASETS",
    "DATASET_SHAPES",
    "STREAMED",
    "Archive",
    "ImageDataset",
    "StreamedDataset",
    "TrainingData",
    "check_data_name",
    "data_options",
    "download_and_extract",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "shuffled_train_batches",
]
