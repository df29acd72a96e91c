"""`SparseTrainingCallback` for `lightning.Trainer`: a mask, the recipe and DST in a LightningModule.

    callback = SparseTrainingCallback(mask_method="snip", sparsity=0.98, recipe="tost", dst="rigl")
    trainer = lightning.Trainer(max_epochs=30, callbacks=[callback])
    trainer.fit(module, train_loader)

In `training_step`, compute the loss with `callback.loss(logits, labels)` when the recipe has `ls`
(label smoothing) or to follow any recipe loss; a plain cross-entropy works for the other parts, and the
callback says so in one line when `ls` is asked for and its loss was never called.

At `on_train_start` (the optimizer exists, the length of training is known) the LightningModule is
masked and prepared on the training dataloader's batches (SNIP/GraSP scoring, GradInit); the ghost
parameters join the first optimizer's first group, so the scheduler Lightning already built still fits.
Lightning computes gradients inside `optimizer.step(closure)`, so the pre-step work (DST, pruned
gradients zeroed) runs from `on_before_optimizer_step`, after the backward pass. Under DDP every rank
takes rank 0's mask, weights and ghost branches, and ghost gradients are averaged across ranks. Resuming
from a Lightning checkpoint works from checkpoints saved after the ghost phase (before it, the
optimizer's first group holds ghost parameters that a new run has not made yet).
"""

from __future__ import annotations

from typing import Any

import torch

from anymask.errors import AnymaskError
from anymask.integrations import missing_loss_message, require
from anymask.recipe.base import parse_recipe
from anymask.sparse_training import SparseTraining

_lightning = require("lightning.pytorch", "lightning")

HOW = "return callback.loss(logits, labels) from training_step"


class SparseTrainingCallback(_lightning.Callback):
    """Takes `SparseTraining`'s settings (mask_method, sparsity, recipe, dst, mask=, seed, ...).

    batches: what SNIP/GraSP score and GradInit trains on; default the trainer's training dataloader.
    """

    def __init__(
        self, *, batches: Any = None, output_fn: Any = None, mask: Any = None, **settings: Any
    ) -> None:
        self.settings, self.batches, self.output_fn, self.mask = settings, batches, output_fn, mask
        self.sparse: SparseTraining | None = None
        self._saved_state: dict[str, Any] | None = None
        self._loss_called = False
        self._needs_loss = "ls" in parse_recipe(str(settings.get("recipe", "default")))

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if len(trainer.optimizers) != 1:
            count = len(trainer.optimizers)
            raise AnymaskError(
                f"SparseTrainingCallback takes one optimizer; configure_optimizers gave {count}"
            )
        steps = max(int(trainer.num_training_batches) // trainer.accumulate_grad_batches, 1)
        self.sparse = SparseTraining(
            mask=self.mask,
            epochs=trainer.max_epochs,
            steps_per_epoch=steps,
            batches=self.batches if self.batches is not None else trainer.train_dataloader,
            output_fn=self.output_fn,
            ghost_group=False,
            optimizer_hooks=False,
            **self.settings,
        )
        if self._saved_state is not None:
            self.sparse.load_state_dict(self._saved_state)
        self.sparse.prepare(pl_module, trainer.optimizers[0])

    def loss(self, output: Any, labels: torch.Tensor) -> torch.Tensor:
        """The recipe's loss (label smoothing under `ls`): return it from `training_step`."""
        self._loss_called = True
        return self._sparse("loss").loss(output, labels)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self._sparse("on_before_optimizer_step").before_optimizer_step()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        sparse = self._sparse("on_train_batch_end")
        if self._needs_loss and not self._loss_called:
            raise AnymaskError(missing_loss_message("the LightningModule", HOW))
        while sparse.step_count < trainer.global_step:  # an optimizer step happened (not every batch
            sparse.step()  # under gradient accumulation)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._sparse("on_train_end").finish(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"sparse": self.sparse.state_dict()} if self.sparse is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved_state = state_dict.get("sparse")

    def _sparse(self, where: str) -> SparseTraining:
        if self.sparse is None:
            raise AnymaskError(f"SparseTrainingCallback.{where} before training started (on_train_start)")
        return self.sparse
