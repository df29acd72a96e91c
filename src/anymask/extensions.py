"""Trainer extensions: features that act during training without the trainer knowing them.

`SparseTraining` (anymask/sparse_training.py, which `anymask train`'s trainer and users' loops drive)
builds the extensions and calls a few hooks on each (`after_backward` each step, from its optimizer
pre-hook; `state_dict` and `load_state_dict` with its state, which the trainer's checkpoint holds); the
run pipeline (`anymask.train.run`) asks each registered kind
to check a config before anything is written and to build its extension for a run, then collects the
extensions' metrics, summary entries and files, and hands them each saved epoch and the summary
(`epoch_saved`, `summarized`: a metrics sink). A package adds a kind with
`@TRAINER_EXTENSIONS.register("name")` when it is imported; nothing in `anymask.train` imports it.
Dynamic sparse training (`anymask.dst`) and the trackers (`anymask.tracking`) are two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anymask.registry import Registry


@dataclass
class ExtensionContext:
    """What an extension may use: built after the trainer, before a checkpoint is loaded into it."""

    config: Any  # anymask.config.RunConfig
    model: nn.Module  # the plain model (not the DDP or compiled wrapper)
    mask: Any  # anymask.masks.Mask | None: the run's mask, shared with the trainer and the enforcer
    optimizer: torch.optim.Optimizer
    enforcer: Any  # anymask.masks.MaskEnforcer | None
    total_steps: int
    steps_per_epoch: int
    out_dir: Path | None = None  # the run folder on the process that writes it (rank 0), else None
    resuming: bool = False  # a checkpoint will be loaded: do not redo what the first start did
    cost: Any = None  # anymask.flops.CostMeter | None: the trainer's, for steps that cost more (RigL)


class TrainerExtension:
    """One feature that runs inside training. Defaults do nothing, so an extension overrides what it uses."""

    name: str = ""  # its key in checkpoints

    def start(self) -> None:
        """Called once when a run begins (not when it resumes), before the first step."""

    def after_backward(self, step: int, batch: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """After the backward pass of step `step` (0-based) and before the optimizer step. Gradients are
        the batch's full ones (averaged over ranks under DDP): pruned weights' are not zeroed yet.
        `batch` is None: the hook runs inside `optimizer.step()`, which does not see the batch."""

    def epoch_metrics(self, epoch: int) -> dict[str, Any]:
        """Entries for the metrics line of epoch `epoch` (0-based), just trained."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Entries for summary.json."""
        return {}

    def finish(self) -> None:
        """Called once when training ends, before summary.json marks the run finished."""

    def epoch_saved(self, history: list[dict[str, Any]]) -> None:
        """On the process that writes the run folder, after an epoch's record is in the checkpoint and
        metrics.jsonl; `history` holds every epoch's record so far. Also called once when a run resumes,
        with the epochs its checkpoint holds, so a reporting extension can send what an interrupted
        process had not (a metrics sink sees each epoch of a resumed run: it decides what is new)."""

    def summarized(self, summary: dict[str, Any]) -> None:
        """On the writing process, with the run's complete summary, just before summary.json is written."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue bit for bit (saved in every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; called after the model and optimizer states are loaded."""


class ExtensionKind:
    """A registered kind of extension: checks a config and builds an extension for the runs that ask."""

    def validate(self, config: Any) -> None:
        """Raise a one-line `AnymaskError` for bad settings (called before anything is written)."""

    def create(self, context: ExtensionContext) -> TrainerExtension | None:
        """The extension for this run, or None when the run's config does not use it."""
        return None


TRAINER_EXTENSIONS: Registry[ExtensionKind] = Registry("trainer extension")


def validate_extensions(config: Any) -> None:
    for name in TRAINER_EXTENSIONS:
        TRAINER_EXTENSIONS.get(name).validate(config)


def create_extensions(context: ExtensionContext) -> list[TrainerExtension]:
    """Every registered kind's extension for this run, in name order (a fixed order for checkpoints)."""
    built = (TRAINER_EXTENSIONS.get(name).create(context) for name in TRAINER_EXTENSIONS)
    return [extension for extension in built if extension is not None]
