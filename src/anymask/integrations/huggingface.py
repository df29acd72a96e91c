"""`SparseTrainingCallback` for `transformers.Trainer`: a mask, the recipe and DST in a Hugging Face run.

    callback = SparseTrainingCallback(mask_method="snip", sparsity=0.98, recipe="tost", dst="rigl")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, callbacks=[callback])
    trainer.train()

At `on_train_begin` (the optimizer exists, the number of steps is known) the model is masked and prepared
on the training dataloader's batches (dicts with `pixel_values` and `labels` work as they are); the
ghost parameters join the optimizer's first group, so the scheduler the Trainer built still fits. The
optimizer's own step hooks run DST and keep pruned weights at exactly zero; `on_step_end` advances the
recipe; `on_train_end` leaves the plain architecture with the mask's weights.

The Trainer computes the loss itself. The recipe's label smoothing (`ls`) is not Transformers'
`label_smoothing_factor` (the paper's convention gives the other classes alpha / (C - 1)), so with `ls`
override `compute_loss` to return `callback.loss(outputs, labels)`; the callback says so in one line when
`ls` is asked for and its loss was never called.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from anymask.errors import AnymaskError
from anymask.integrations import missing_loss_message, require
from anymask.recipe.base import parse_recipe
from anymask.sparse_training import SparseTraining

_transformers = require("transformers", "huggingface")

HOW = "override the Trainer's compute_loss to return callback.loss(outputs, inputs['labels'])"


class SparseTrainingCallback(_transformers.TrainerCallback):
    """Takes `SparseTraining`'s settings (mask_method, sparsity, recipe, dst, mask=, seed, ...).

    batches: what SNIP/GraSP score and GradInit trains on; default the Trainer's training dataloader.
    """

    def __init__(
        self, *, batches: Any = None, output_fn: Any = None, mask: Any = None, **settings: Any
    ) -> None:
        self.settings, self.batches, self.output_fn, self.mask = settings, batches, output_fn, mask
        self.sparse: SparseTraining | None = None
        self._loss_called = False
        self._needs_loss = "ls" in parse_recipe(str(settings.get("recipe", "default")))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model, optimizer, loader = kwargs["model"], kwargs["optimizer"], kwargs.get("train_dataloader")
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch one
        steps = (
            max(len(loader) // args.gradient_accumulation_steps, 1) if loader is not None else state.max_steps
        )
        self.sparse = SparseTraining(
            mask=self.mask,
            epochs=state.max_steps / steps,
            steps_per_epoch=steps,
            batches=self.batches if self.batches is not None else loader,
            output_fn=self.output_fn,
            ghost_group=False,
            **{"seed": args.seed, **self.settings},
        )
        if not math.isclose(self.sparse.total_steps, state.max_steps):
            raise AnymaskError(f"cannot place {state.max_steps} steps in epochs of {steps}")
        self.sparse.prepare(model, optimizer)

    def loss(self, output: Any, labels: torch.Tensor) -> torch.Tensor:
        """The recipe's loss (label smoothing under `ls`): return it from the Trainer's compute_loss."""
        self._loss_called = True
        return self._sparse("loss").loss(output, labels)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sparse = self._sparse("on_step_end")
        if self._needs_loss and not self._loss_called:
            raise AnymaskError(missing_loss_message("the Hugging Face Trainer", HOW))
        while sparse.step_count < state.global_step:
            sparse.step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._sparse("on_train_end").finish(kwargs["model"])

    def _sparse(self, where: str) -> SparseTraining:
        if self.sparse is None:
            raise AnymaskError(f"SparseTrainingCallback.{where} before training began (on_train_begin)")
        return self.sparse
