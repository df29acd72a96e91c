"""Finished run folders as ensemble members: their config, summary and model, and their test (or
validation) predictions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anymask.config import RunConfig
from anymask.data import ImageDataset, iterate_batches, load_dataset
from anymask.ensembles.combine import predict_probabilities
from anymask.errors import AnymaskError
from anymask.masks import Mask
from anymask.models import create_model
from anymask.models.factory import is_factory_name
from anymask.train.run import MASK, MODEL


@dataclass(frozen=True)
class MemberRun:
    """A finished run folder: what it trained (config, summary) and where its weights are."""

    folder: Path
    config: RunConfig
    summary: dict[str, Any]

    @property
    def weights(self) -> Path:
        return self.folder / MODEL

    def model(self, data: ImageDataset, device: torch.device | str = "cpu") -> nn.Module:
        """The run's trained model (the registry architecture with its weights), in eval mode."""
        c = self.config.model
        with torch.random.fork_rng(devices=[]):  # building draws an initialisation: leave the caller's RNG
            model = create_model(c.model, data.num_classes, data.input_shape, c.width)
        from anymask.train.checkpoint import load_weights

        load_weights(model, self.weights, MODEL)
        return model.to(device).eval()

    def mask(self, model: nn.Module) -> Mask:
        """The run's mask: its mask file, or its non-zero weights (committed small files hold no mask)."""
        if (self.folder / MASK).is_file():
            return Mask.load(self.folder / MASK, MASK)
        from anymask.ensembles.pruning import parent_mask

        return parent_mask(model, self.config.mask)


def read_member(folder: str | Path) -> MemberRun:
    """A finished run folder (`anymask.finished_run`: every file decoded by its reader), or one line
    saying what is missing or damaged."""
    from anymask.finished_run import read_finished_run

    run = read_finished_run(folder)
    assert run.config is not None and run.summary is not None
    config, summary, folder = run.config, run.summary, run.path
    if is_factory_name(config.model.model):
        raise AnymaskError(
            f"{folder} trained your model factory {config.model.model}: anymask does not import code a run "
            "folder names; build the models yourself and use anymask.ensembles.Ensemble and calibration"
        )
    if summary.get("plain_architecture") is False:
        raise AnymaskError(
            f"{folder} is a tost-official run: its model keeps parts beyond the plain architecture, which "
            "ensembles do not rebuild; use runs of another recipe"
        )
    return MemberRun(folder, config, summary)


SPLITS = ("test", "val")
"""Images an ensemble can be measured on: the test images, or the validation images its members held out."""


def evaluation_data(runs: list[MemberRun], data_dir: str | None = None, split: str = "test") -> ImageDataset:
    """The images every member is measured on: the members' dataset, which they must share, with the
    validation images they all held out (the same --val-split) when `split` is 'val'."""
    names = sorted({run.config.data.data for run in runs})
    if len(names) != 1:
        raise AnymaskError(
            f"ensemble members trained on different datasets ({', '.join(names)}); give runs of one"
        )
    if split not in SPLITS:
        raise AnymaskError(f"unknown split '{split}'; use 'test' or 'val'")
    d = runs[0].config.data
    if split == "test":
        return load_dataset(d.data, data_dir or d.data_dir, download=d.download)
    held_out = sorted({run.config.data.val_split for run in runs})
    if held_out != [d.val_split] or d.val_split == 0:
        raise AnymaskError(
            "--split val measures on the validation images the members held out: they must all have "
            f"trained with the same --val-split above 0, these have {', '.join(map(str, held_out))}"
        )
    return load_dataset(d.data, data_dir or d.data_dir, download=d.download, val_split=d.val_split)


def split_images(data: ImageDataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of `split` ('test' or 'val')."""
    return (data.val_x, data.val_y) if split == "val" else (data.test_x, data.test_y)


def split_probabilities(
    run: MemberRun,
    data: ImageDataset,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
    split: str = "test",
) -> torch.Tensor:
    """The run's softmax probabilities (float64) on the test (or validation) images, in file order."""
    return model_probabilities(run.model(data, device), run, data, device, batch_size, split)


def model_probabilities(
    model: nn.Module,
    run: MemberRun,
    data: ImageDataset,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
    split: str = "test",
) -> torch.Tensor:
    """`model`'s softmax probabilities (float64) on the split's images, fed as `run` was trained (its
    memory format); `model` is the run's own or one built from its weights (a child before tuning)."""
    images, labels = split_images(data, split)
    batches = plain_batches(images, labels, run, data, device, batch_size)
    if run.config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return predict_probabilities(model, batches)


def plain_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    run: MemberRun,
    data: ImageDataset,
    device: torch.device | str,
    batch_size: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`images` in file order, normalised as `data` says, not augmented, in the run's memory format."""
    return iterate_batches(
        images.to(device),
        labels.to(device),
        batch_size,
        mean=data.mean,
        std=data.std,
        shuffle=False,
        augment=False,
        channels_last=run.config.train.channels_last,
    )


def member_record(run: MemberRun) -> dict[str, Any]:
    """What ensemble.json says about a member besides its calibration: what it is and what it cost."""
    s = run.summary
    return {
        "folder": str(run.folder),
        "config_hash": s.get("config_hash"),
        "mask_method": s.get("mask_method"),
        "sparsity": s.get("sparsity"),
        "mask_density": s.get("mask_density"),
        "recipe": s.get("recipe"),
        "seed": s.get("seed"),
        "epochs": s.get("epochs"),
        "train_seconds": s.get("train_seconds"),
        "final_test_acc": s.get("final_test_acc"),
    }
