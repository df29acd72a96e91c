"""The training loop of `anymask train`: SGD over the batches, evaluation, checkpoints and resume.

Everything about the mask, the recipe and dynamic sparse training is a `SparseTraining`
(anymask/sparse_training.py), driven here exactly as a user's own loop drives it: `prepare` with the
optimizer, `loss` on the logits, the optimizer's step (which runs the extensions and the mask enforcer
in its hooks), then `step`. The trainer keeps the loop itself: the learning rate as a function of the
step, DDP and torch.compile, mixed precision, the cost meter, evaluation and BatchNorm recalibration, and
the checkpoint's model, optimizer and cost states.

Everything random in an epoch comes from a generator seeded by (seed, epoch) and learning rates are a
function of the step, so a run resumed from an epoch checkpoint ends with the same weights as one that
never stopped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from anymask.config import RunConfig
from anymask.data import TrainingData, num_batches, shuffled_train_batches
from anymask.errors import AnymaskError
from anymask.extensions import TrainerExtension
from anymask.flops import CostMeter
from anymask.masks import Mask, MaskEnforcer
from anymask.models.calling import ModelCall, OutputFn
from anymask.recipe import Recipe
from anymask.sparse_training import STATE_VERSION, SparseTraining
from anymask.train.distributed import World, all_sum, sync_batchnorm
from anymask.train.lr import lr_at

NAN_CHECK_EVERY = 50


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


@dataclass
class EpochStats:
    """Loss and accuracy over the global batch: every rank's images, not only this rank's share."""

    loss: float
    accuracy: float
    images: int  # trained on by all ranks together
    seconds: float


class Trainer:
    """Trains one model with one mask through a `SparseTraining` (the mask, the recipe and DST).

    sparse: the run's `SparseTraining`, not yet prepared (the trainer prepares it with its optimizer);
    None trains `mask` alone (no recipe, no extensions), as a lottery ticket's rounds do.
    mask: the mask to train (None: no mask); start_step: where training starts (a rewound ticket);
    state: a checkpoint's `state_dict()` to resume from (training then starts at `start_step`).
    The model's forward may return its logits as a tensor, a tuple, a mapping or an object with
    `logits`; `output_fn` reads them from anything else (see `anymask.models.calling`).
    """

    def __init__(
        self,
        model: nn.Module,
        data: TrainingData,
        config: RunConfig,
        *,
        mask: Mask | None = None,
        sparse: SparseTraining | None = None,
        device: torch.device | str = "cpu",
        world: World | None = None,
        epochs: int | None = None,
        output_fn: OutputFn | None = None,
        start_step: int = 0,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.data, self.config = model, data, config
        self.call = ModelCall.of(model, output_fn)
        self.train_config = config.train
        self.device = torch.device(device)
        self.world = world or World()
        self.epochs = epochs or config.train.epochs
        self.drop_last = self.world.distributed
        train_images = data.split_size("train")
        self.steps_per_epoch = num_batches(train_images, config.train.batch_size, self.drop_last)
        if self.steps_per_epoch == 0:
            raise AnymaskError(
                f"no training batches: {train_images} images with batch size {config.train.batch_size}"
            )
        self.total_steps = self.epochs * self.steps_per_epoch
        self.sparse = sparse or SparseTraining(  # the mask alone: default recipe, no extensions
            mask=mask if mask is not None else Mask(),
            epochs=self.epochs,
            steps_per_epoch=self.steps_per_epoch,
            seed=config.train.seed,
        )
        self.optimizer = self._build_optimizer(mask)
        self.cost = CostMeter()
        if state is not None:  # before prepare: no GradInit, no ghost part whose phase is over
            self.sparse.load_state_dict(self._sparse_state(state, mask, start_step))
        self.sparse.prepare(model, self.optimizer, mask=mask, start_step=start_step, cost=self.cost)
        if state is not None:
            self._load_loop_state(state)
        self.network = self._wrap(model)

    # -- what SparseTraining holds -------------------------------------------------------------------
    @property
    def recipe(self) -> Recipe:
        return self.sparse.recipe

    @property
    def enforcer(self) -> MaskEnforcer | None:
        return self.sparse.enforcer

    @property
    def extensions(self) -> list[TrainerExtension]:
        """The trainer extensions (anymask.extensions) the run's config asks for: DST, trackers."""
        return self.sparse.extensions

    @property
    def mask(self) -> Mask:
        """The mask being trained (under DST: as it is now)."""
        assert self.sparse.mask is not None
        return self.sparse.mask

    # -- set-up ------------------------------------------------------------------------------------
    def _build_optimizer(self, mask: Mask | None) -> torch.optim.Optimizer:
        c = self.train_config
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": params}]
        if c.masked_weight_decay is not None and mask is not None:  # the masked weights get their own group
            masked = {id(self.model.get_parameter(name)) for name in mask}
            groups = [
                {"params": [p for p in params if id(p) not in masked]},
                {"params": [p for p in params if id(p) in masked], "weight_decay": c.masked_weight_decay},
            ]
        # The recipe's ghost parameters join as a group of their own when SparseTraining prepares.
        return torch.optim.SGD(
            groups,
            lr=c.lr,
            momentum=c.momentum,
            nesterov=c.nesterov and c.momentum > 0,
            weight_decay=c.weight_decay,
        )

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP with global-batch BatchNorm under torchrun, so N ranks train as one process would."""
        network = model
        if self.world.distributed:
            for module in [model, *self.recipe.modules()]:  # learned ghost-skip branches have BN too
                sync_batchnorm(module)
            ids = [self.device.index] if self.device.type == "cuda" else None
            network = DistributedDataParallel(model, device_ids=ids)
        if self.train_config.compile:
            network = torch.compile(network)
        return network

    def autocast(self) -> contextlib.AbstractContextManager:
        enabled = self.train_config.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # -- training ----------------------------------------------------------------------------------
    def batches(self, epoch: int):
        c = self.train_config
        return shuffled_train_batches(
            self.data,
            c.batch_size,
            epoch_generator(c.seed, epoch),
            augment=self.config.data.augment,
            drop_last=self.drop_last,
            rank=self.world.rank,
            world_size=self.world.size,
            channels_last=c.channels_last,
        )

    def train_epoch(
        self,
        epoch: int,
        *,
        start_step: int = 0,
        end_step: int | None = None,
        on_step: Callable[[int], None] | None = None,
        progress: tqdm | None = None,
    ) -> EpochStats:
        """One epoch (or the part of it inside [start_step, end_step)); `on_step(step)` after each step."""
        self.network.train()
        end_step = self.total_steps if end_step is None else end_step
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, begin = 0, time.perf_counter()
        for index, (images, labels) in enumerate(self.batches(epoch)):
            step = epoch * self.steps_per_epoch + index
            if step < start_step:
                continue
            if step >= end_step:
                break
            loss, logits = self.train_step(images, labels, step)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
            if (index + 1) % NAN_CHECK_EVERY == 0:
                self.check_finite(loss_sum, epoch, step)
            if on_step is not None:
                on_step(step + 1)
            if progress is not None:
                progress.update(1)
        local = torch.stack([loss_sum.double(), correct.double(), loss_sum.new_tensor(seen).double()])
        totals = all_sum(local, self.world)
        if seen:
            self.check_finite(totals[0], epoch, step)
        loss_total, correct_total, images = totals.tolist()
        images = max(int(images), 1)
        return EpochStats(loss_total / images, correct_total / images, images, time.perf_counter() - begin)

    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step, as a user's loop takes it: the recipe's loss, backward, the optimizer's step
        (its hooks run the extensions, then the mask enforcer), then `SparseTraining.step`. `step` sets
        the learning rate; the recipe's and DST's schedules follow SparseTraining's own step count, which
        is `step` when the steps come in order (as `train_epoch` takes them)."""
        lr = lr_at(step, self.total_steps, self.train_config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        epoch = step // self.steps_per_epoch
        measure = self.cost.wants_measure(epoch, self.recipe.removals)
        with (
            self.cost.measuring(epoch, self.recipe.removals, len(labels))
            if measure
            else contextlib.nullcontext(),
            self.autocast(),
        ):
            logits = self.call(self.network, images)
            loss = self.sparse.loss(logits, labels)
        self.cost.add_step(len(labels) * self.world.size)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.sparse.step()
        return loss, logits

    def check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        if not torch.isfinite(loss_sum):
            raise AnymaskError(
                f"training diverged: the loss became NaN or infinite in epoch {epoch + 1} (step {step}); "
                f"lower --lr (now {self.train_config.lr}) or check the mask and data"
            )

    # -- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str = "test") -> tuple[float, float]:
        """(top-1 accuracy, mean cross-entropy) on `split` of the model as it now is (ghosts included)."""
        count = self.data.split_size(split)
        if count == 0:
            return float("nan"), float("nan")
        self.model.eval()
        loss_sum, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        batches = self.data.batches(
            split, self.train_config.eval_batch_size, channels_last=self.train_config.channels_last
        )
        for x, y in batches:
            with self.autocast():
                logits = self.call(self.model, x).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        return float(correct) / count, float(loss_sum) / count

    @contextlib.contextmanager
    def recalibrated_norms(self, epoch: int, batches: int) -> Iterator[None]:
        """BatchNorm running statistics recomputed from `batches` of epoch `epoch`'s training batches, for
        the duration of the block; the old ones come back afterwards, so training goes on unchanged.

        During the ghost phase the running statistics lag the moving blend and skips: SNIP 98% on ResNet-20
        read 21% test accuracy at epoch 6 with them and 46% with recomputed ones (docs/recipe.md).
        """
        modes = {m: m.training for root in (self.model, *self.recipe.modules()) for m in root.modules()}
        norms = [m for m in modes if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        saved = [(m.momentum, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in norms]
        try:
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a plain average over the batches
            self.model.train()
            with torch.no_grad(), self.autocast():
                for _, (x, _) in zip(range(batches), self.batches(epoch), strict=False):
                    self.call(self.model, x)
            yield
        finally:
            for norm, (momentum, buffers) in zip(norms, saved, strict=True):
                norm.momentum = momentum
                for name, value in buffers.items():
                    getattr(norm, name).copy_(value)
            for module, mode in modes.items():
                module.training = mode

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: the model, the optimizer, the cost so far and SparseTraining's recipe and
        extension states. Its mask and step are the run folder's (mask.safetensors, the epoch), so
        checkpoints keep the layout runs made before the trainer was built on SparseTraining."""
        sparse = self.sparse.state_dict()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "recipe": sparse["recipe"],
            "extensions": sparse["extensions"],
            "cost": self.cost.state_dict(),
        }

    def _sparse_state(self, state: dict[str, Any], mask: Mask | None, step: int) -> dict[str, Any]:
        """SparseTraining's state from a checkpoint: the mask training started from (DST's current one
        is in its extension state) and the step the checkpoint was written at."""
        return {
            "version": STATE_VERSION,
            "settings": self.sparse.config.read_settings(),
            "step": step,
            "mask": {name: m.detach().cpu().clone() for name, m in (mask or Mask()).items()},
            "recipe": state["recipe"],
            "extensions": state.get("extensions", {}),
        }

    def _load_loop_state(self, state: dict[str, Any]) -> None:
        """The model and optimizer states over what `prepare` left, then the pruned weights zeroed again
        (SparseTraining loaded its own state, an extension's mask included, in `prepare`)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.cost.load_state_dict(state.get("cost", {}))
        if self.enforcer is not None:
            self.enforcer.zero_weights()
