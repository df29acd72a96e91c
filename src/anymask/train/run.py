"""One run, end to end: check inputs, build data, model, mask and recipe, train, and fill the run folder.

A run folder holds `config.json` (the resolved config), `mask.safetensors`, `metrics.jsonl` (one line per
epoch), `checkpoint.pt` while the run is unfinished, and at the end `model.safetensors` (the plain
architecture: ghost parts removed; not so for `tost-official`, as its summary says) and `summary.json`,
which marks the run as finished. Trainer extensions may add files (dynamic sparse training:
`mask_start.safetensors`, and the final mask written over `mask.safetensors` at the end).
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from anymask.artifacts import damaged, first_line, read_saved_config, read_summary
from anymask.config import (
    MODEL_REVISIONS,
    RunConfig,
    check_bounds,
    load_run_config,
    save_config,
    saved_model_revision,
)
from anymask.data import TrainingData, check_data_name, data_options, load_dataset
from anymask.errors import AnymaskError
from anymask.extensions import validate_extensions
from anymask.flops import counting_macs, step_macs
from anymask.io import atomic_write_text, check_output_folder
from anymask.masks import METHODS, Mask, check_sparsity, make_mask
from anymask.masks.config import BN_MODES
from anymask.models import MODELS, create_model
from anymask.models.init import DEFAULT as DEFAULT_INIT
from anymask.models.init import INITS
from anymask.recipe import Recipe
from anymask.recipe.choices import check_recipe_choices
from anymask.sparse_training import SparseTraining
from anymask.train.checkpoint import CHECKPOINT, load_checkpoint, load_weights, save_checkpoint, save_weights
from anymask.train.distributed import (
    World,
    barrier,
    broadcast_object,
    check_device_name,
    init_world,
    resolve_device,
)
from anymask.train.lock import run_folder_lock
from anymask.train.lr import SCHEDULES
from anymask.train.summary import connectivity_summary, nonzero_count, summarize, training_cost
from anymask.train.trainer import Trainer

CONFIG, MASK, METRICS, MODEL, SUMMARY = (
    "config.json",
    "mask.safetensors",
    "metrics.jsonl",
    "model.safetensors",
    "summary.json",
)


@dataclass
class RunResult:
    out_dir: Path
    summary: dict[str, Any]
    skipped: bool = False  # the folder already held a finished run


def validate(config: RunConfig) -> None:
    """Every check that needs no data or model, so bad flags fail before anything is written."""
    import anymask.masks.catalog  # noqa: F401  (registers every mask method)

    check_bounds(config)  # every number within the range its field declares (anymask.bounds)
    check_sparsity(config.mask.sparsity)
    method = "file" if config.mask.mask_file else config.mask.mask_method
    METHODS.get(method)
    if method == "dense" and config.mask.sparsity > 0:
        raise AnymaskError(
            f"sparsity {config.mask.sparsity:g} with mask method 'dense' would train every weight; "
            "choose how to prune with --mask-method (random, er, erk, magnitude, snip, grasp, synflow, lth) "
            "or train a saved mask with --mask FILE"
        )
    MODELS.get(config.model.model)
    if config.model.init != DEFAULT_INIT:
        INITS.get(config.model.init)
    check_data_name(config.data.data)
    SCHEDULES.get(config.train.lr_schedule)
    if config.train.device != "auto":
        check_device_name(config.train.device)
    Recipe.from_config(config.recipe, config.train.epochs)  # each part checks its settings as it is built
    check_recipe_choices(config.recipe)  # and the named settings of the parts that are off
    if method == "lth":
        _check_lottery_ticket(config)
    if config.mask.mask_file and not Path(config.mask.mask_file).is_file():
        raise AnymaskError(f"mask file not found: {config.mask.mask_file}")
    if config.model.init_weights and not Path(config.model.init_weights).is_file():
        raise AnymaskError(f"init_weights file not found: {config.model.init_weights}")
    t = config.train
    if t.warmup_epochs > t.epochs:  # (each number's own range was checked with the others above)
        raise AnymaskError(
            f"invalid warmup_epochs: {t.warmup_epochs!r}; it must be between 0 and the run's {t.epochs} "
            "epochs"
        )
    if config.mask.scope not in {"global", "layer"}:
        raise AnymaskError(f"unknown scope '{config.mask.scope}'; use 'global' or 'layer'")
    if config.mask.prune_bn_mode not in BN_MODES:
        raise AnymaskError(
            f"unknown prune_bn_mode '{config.mask.prune_bn_mode}'; use one of: {', '.join(BN_MODES)}"
        )
    validate_extensions(config)  # e.g. dynamic sparse training's settings (anymask.dst)


def _check_lottery_ticket(config: RunConfig) -> None:
    """lth_rate and lth_rewind, read only when the rounds start: checked here so nothing is written first."""
    from anymask.masks.lth import round_densities
    from anymask.steps import Step

    round_densities(1 - config.mask.sparsity, config.mask.lth_rate)
    Step.parse(config.mask.lth_rewind)


def folder_state(out_dir: Path) -> str:
    """'new', 'finished', 'interrupted' (has a config, not finished) or 'foreign'."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return "new"
    if (out_dir / SUMMARY).is_file():
        return "finished"
    if (out_dir / CONFIG).is_file():
        return "interrupted"
    return "foreign"


def check_folder(out_dir: Path, config: RunConfig, resume: bool) -> str:
    state = folder_state(out_dir)
    if state == "foreign":
        raise AnymaskError(f"{out_dir} exists and is not an anymask run folder; choose another --out")
    if state == "interrupted" and not resume:
        raise AnymaskError(
            f"{out_dir} holds an unfinished run; pass --resume to continue it, or choose another --out"
        )
    if state in {"interrupted", "finished"}:
        saved = load_run_config(out_dir / CONFIG)
        revision = saved_model_revision(out_dir / CONFIG)
        if revision != MODEL_REVISIONS.get(config.model.model, 1):
            raise AnymaskError(
                f"{out_dir} holds a run of an older {config.model.model} architecture (revision {revision}); "
                "choose another --out"
            )
        if saved.hash() != config.hash():
            changed = [k for k, v in config.to_flat().items() if saved.to_flat()[k] != v]
            differ = ", ".join(changed[:5])
            raise AnymaskError(
                f"{out_dir} holds a run with a different config ({differ} differ); choose another --out"
            )
    return state


def run_experiment(
    config: RunConfig, out_dir: str | Path, *, resume: bool = False, data: TrainingData | None = None
) -> RunResult:
    """Train one run into `out_dir`; a finished folder is returned as it is, an unfinished one resumed."""
    out_dir = Path(out_dir)
    validate(config)
    check_output_folder(out_dir, beside=True)  # the folder's lock is written beside it
    world = init_world(config.train.device)
    with run_folder_lock(out_dir, enabled=world.is_main):
        state = check_folder(out_dir, config, resume)
        if state == "finished":
            return RunResult(out_dir, read_summary(out_dir / SUMMARY), skipped=True)
        try:
            return _train(config, out_dir, data, world, resuming=state == "interrupted")
        except AnymaskError:
            if state == "new" and world.is_main:
                _remove_unstarted(out_dir)
            raise


def _remove_unstarted(out_dir: Path) -> None:
    """A new run that failed before its first checkpoint leaves no folder behind: a half-made one would
    block both a corrected command ('different config') and a rerun ('unfinished run')."""
    if out_dir.is_dir() and not (out_dir / CHECKPOINT).exists():
        shutil.rmtree(out_dir, ignore_errors=True)


def _train(
    config: RunConfig, out_dir: Path, data: TrainingData | None, world: World, resuming: bool
) -> RunResult:
    device = resolve_device(config.train.device, world)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv once
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if data is None:
        data = load_data(config, world)
    data = data.to(device)
    return _Run(config, out_dir, data, device, world, resuming=resuming).execute()


def load_data(config: RunConfig, world: World) -> TrainingData:
    """The run's dataset; under torchrun rank 0 downloads it before the other ranks read the folder."""

    def load(download: bool) -> TrainingData:
        return load_dataset(
            config.data.data, config.data.data_dir, **{**data_options(config.data), "download": download}
        )

    data = load(config.data.download) if world.is_main else None
    barrier(world)
    return data if data is not None else load(download=False)


class _Run:
    def __init__(
        self,
        config: RunConfig,
        out_dir: Path,
        data: TrainingData,
        device: torch.device,
        world: World,
        resuming: bool,
    ) -> None:
        self.config, self.out_dir, self.data, self.device, self.world = config, out_dir, data, device, world
        self.checkpoint = load_checkpoint(out_dir / CHECKPOINT) if (out_dir / CHECKPOINT).is_file() else None
        if self.checkpoint and self.checkpoint["epoch"] > config.train.epochs:
            problem = f"it is at epoch {self.checkpoint['epoch']} of a {config.train.epochs}-epoch run"
            raise damaged(out_dir / CHECKPOINT, CHECKPOINT, problem)
        self.resuming = resuming and self.checkpoint is not None
        self.progress = config.train.progress and world.is_main

    def new_model(self) -> nn.Module:
        c = self.config
        model = create_model(
            c.model.model, self.data.num_classes, self.data.input_shape, c.model.width, c.model.init
        )
        model = model.to(self.device)
        if c.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def build_mask(self, model: nn.Module) -> tuple[Mask, int]:
        """The run's mask and the step training starts from (non-zero after a lottery-ticket rewind)."""
        mask_path = self.out_dir / MASK
        if mask_path.is_file() and (self.out_dir / CONFIG).is_file():
            mask = Mask.load(mask_path, MASK)
            try:
                mask.check_fits(model)
            except AnymaskError as error:
                raise damaged(mask_path, MASK, str(error)) from None
            return mask, int(read_saved_config(self.out_dir / CONFIG).get("start_step", 0))
        lth = self.config.mask.mask_method == "lth"
        mask = None
        # A lottery ticket's rounds are training: every rank takes part, as in one DDP run, and they all
        # prune the same (synchronised) weights. Any other method runs on rank 0 alone.
        if self.world.is_main or lth:
            if lth and self.world.is_main:
                self.write_config()
            mask = make_mask(
                model,
                self.config.mask,
                data=self.data,
                device=self.device,
                seed=self.config.train.seed,
                train=self.lth_round if lth else None,
                out_dir=self.out_dir if self.world.is_main else None,
                extras={"steps_per_epoch": self.steps_per_epoch()},
            )
        mask = broadcast_object(mask, self.world)  # rank 0's, so ranks cannot disagree by a rounding
        assert isinstance(mask, Mask)
        return mask, self.rewind_step()

    def rewind_step(self) -> int:
        if self.config.mask.mask_method != "lth":
            return 0
        from anymask.steps import Step

        return Step.parse(self.config.mask.lth_rewind).iterations(self.steps_per_epoch())

    def steps_per_epoch(self) -> int:
        from anymask.data import num_batches

        return num_batches(
            self.data.split_size("train"), self.config.train.batch_size, self.world.distributed
        )

    def write_config(self, start_step: int = 0) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.out_dir / CONFIG)
        if start_step:
            saved = read_saved_config(self.out_dir / CONFIG)
            atomic_write_text(
                self.out_dir / CONFIG, json.dumps({**saved, "start_step": start_step}, indent=2)
            )

    # -- lottery ticket rounds: plain training of a copy of the model --------------------------------
    def lth_round(
        self, mask: Mask, state: dict[str, torch.Tensor], start_step: int, capture_step: int | None
    ):
        from anymask.masks.lth import TrainedRound

        model = self.new_model()
        model.load_state_dict(state)
        mask.apply(model)
        epochs = self.config.mask.lth_epochs or self.config.train.epochs
        trainer = Trainer(
            model,
            self.data,
            self.config,
            mask=mask,
            device=self.device,
            world=self.world,
            epochs=epochs,
            start_step=start_step,
        )
        captured: dict[str, dict[str, torch.Tensor]] = {}

        def capture(step: int) -> None:
            if step == capture_step:
                captured["state"] = copy.deepcopy(model.state_dict())

        first_epoch = start_step // trainer.steps_per_epoch
        bar = tqdm(
            total=trainer.total_steps - start_step,
            desc=f"lth round {mask.sparsity():.3f}",
            disable=not self.progress,
            leave=False,
        )
        for epoch in range(first_epoch, epochs):
            trainer.train_epoch(epoch, start_step=start_step, on_step=capture, progress=bar)
        bar.close()
        accuracy, _ = trainer.evaluate("test")
        return TrainedRound(
            state=copy.deepcopy(model.state_dict()), captured=captured.get("state"), test_acc=accuracy
        )

    # -- the run ---------------------------------------------------------------------------------------
    def execute(self) -> RunResult:
        torch.manual_seed(self.config.train.seed)
        model = self.new_model()
        if self.config.model.init_weights:  # a trained parent's weights, say: the mask is made on them
            load_weights(model, self.config.model.init_weights)
        sparse = self.sparse_training()
        # A recipe part the model cannot take (gsn on a ViT) fails here, before any file is written.
        sparse.check(model)
        mask, start_step = self.build_mask(model)
        if self.world.is_main and not self.resuming:
            self.write_config(start_step)
            mask.save(self.out_dir / MASK)
        barrier(self.world)
        history: list[dict[str, Any]] = []
        state = None
        if self.resuming:
            history, state = self.checkpoint["history"], self.checkpoint["trainer"]
            start_step = self.checkpoint["epoch"] * self.steps_per_epoch()
        began = time.perf_counter()
        with counting_macs() as prepare_counts:  # the set-up's forwards: GradInit's
            try:
                trainer = Trainer(
                    model,
                    self.data,
                    self.config,
                    mask=mask,
                    sparse=sparse,
                    device=self.device,
                    world=self.world,
                    start_step=start_step,
                    state=state,
                )
            except AnymaskError:
                raise
            except (
                Exception
            ) as error:  # resuming: whatever the state's decoding raises, the checkpoint is the cause
                if state is None:
                    raise
                problem = f"its state does not fit this run ({first_line(error)})"
                raise damaged(self.out_dir / CHECKPOINT, CHECKPOINT, problem) from None
        if not self.resuming:  # a resumed run reads the set-up's cost from its checkpoint
            trainer.cost.prepare_macs = step_macs(prepare_counts)
            trainer.cost.prepare_seconds = time.perf_counter() - began
        if self.resuming and self.world.is_main:  # a kill between checkpoint and metrics: one epoch short
            self.write_metrics(history)
            self.epoch_saved(trainer, history)
        self.train(trainer, history, start_step)
        sparse.finish()  # ghosts gone (if any were left), the final mask written by DST
        return self.finish(trainer, trainer.mask, history)  # under DST: the final mask

    def sparse_training(self) -> SparseTraining:
        """The run's mask, recipe and DST, as a user's loop would hold them (anymask.sparse_training)."""
        return SparseTraining(
            config=self.config,
            epochs=self.config.train.epochs,
            steps_per_epoch=self.steps_per_epoch(),
            batches=self.data,
            out_dir=self.out_dir if self.world.is_main else None,
            channels_last=self.config.train.channels_last,
        )

    def train(self, trainer: Trainer, history: list[dict[str, Any]], start_step: int) -> None:
        c = self.config.train
        bar = tqdm(
            total=trainer.total_steps,
            initial=start_step,
            disable=not self.progress,
            desc=f"{self.config.model.model} {self.config.mask.mask_method} {self.config.mask.sparsity:g}",
        )
        for epoch in range(start_step // trainer.steps_per_epoch, c.epochs):
            # The recipe's schedules now stand at the epoch's end (SparseTraining.step): the model is
            # evaluated as it will train on, ghost parts whose phase ended already gone.
            stats = trainer.train_epoch(epoch, start_step=start_step, progress=bar)
            record = self.epoch_record(trainer, epoch, stats)
            history.append(record)
            bar.set_postfix(loss=f"{stats.loss:.3f}", test=f"{record['test_acc']:.4f}")
            if self.world.is_main:
                save_checkpoint(
                    self.out_dir / CHECKPOINT,
                    {"epoch": epoch + 1, "trainer": trainer.state_dict(), "history": history},
                )
                self.write_metrics(history)
                self.epoch_saved(trainer, history)
            barrier(self.world)
        bar.close()

    def epoch_saved(self, trainer: Trainer, history: list[dict[str, Any]]) -> None:
        for extension in trainer.extensions:
            extension.epoch_saved(history)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """metrics.jsonl from the history the checkpoint holds, so the two can never disagree."""
        atomic_write_text(self.out_dir / METRICS, "".join(json.dumps(r) + "\n" for r in history))

    def epoch_record(self, trainer: Trainer, epoch: int, stats: Any) -> dict[str, Any]:
        d = self.data
        ghost_phase = trainer.recipe.in_ghost_phase(float(epoch + 1))
        recalibrate = self.config.train.bn_recalibration_batches if ghost_phase else 0
        with trainer.recalibrated_norms(epoch, recalibrate) if recalibrate else contextlib.nullcontext():
            test_acc, test_loss = trainer.evaluate("test")
            if d.split_size("val"):
                val_acc, val_loss = trainer.evaluate("val")
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "train_loss": stats.loss,
            "train_acc": stats.accuracy,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "seconds": stats.seconds,
            "images_per_s": stats.images / max(stats.seconds, 1e-9),
            "nonzero": nonzero_count(trainer.model, trainer.mask),
            "ghost_phase": ghost_phase,
        }
        if recalibrate:
            record["bn_recalibrated"] = True
        if d.split_size("val"):
            record["val_acc"], record["val_loss"] = val_acc, val_loss
        record.update(trainer.recipe.metrics())
        for extension in trainer.extensions:
            record.update(extension.epoch_metrics(epoch))
        return record

    def finish(self, trainer: Trainer, mask: Mask, history: list[dict[str, Any]]) -> RunResult:
        # Permanent parts (tost-official) leave a model that is not the plain architecture: say so.
        architecture = trainer.recipe.architecture()
        summary = {**summarize(self.config, mask, history, trainer.model), **architecture}
        summary.update(trainer.recipe.summary())
        with torch.random.fork_rng(devices=[]):
            plain = self.new_model()
        if self.world.is_main:  # of the plain architecture: permanent parts (tost-official) add paths
            summary.update(connectivity_summary(plain, mask, self.data.input_shape))
        summary.update(training_cost(trainer, plain, mask, self.data.input_shape))
        for extension in trainer.extensions:
            summary.update(extension.summary())
        if self.world.is_main:
            for extension in trainer.extensions:
                extension.summarized(summary)
            save_weights(trainer.model, self.out_dir / MODEL, architecture.get("architecture"))
            atomic_write_text(self.out_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
            (self.out_dir / CHECKPOINT).unlink(missing_ok=True)
        barrier(self.world)
        return RunResult(self.out_dir, summary)
