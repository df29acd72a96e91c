"""Distillation from a dense teacher (kd): the student also learns the teacher's softened outputs.

Standard logit distillation (Hinton et al., 2015): the loss is `(1 - kd_weight) * hard + kd_weight *
T^2 * KL(softmax(teacher / T) || softmax(student / T))`, where `hard` is the loss the rest of the recipe
asks for (cross-entropy, or label smoothing's) and T is `kd_temperature`. The teacher is a finished run
of a network trained on the same data (`--teacher RUN_FOLDER`, or a model.safetensors file of the
student's architecture); it sees each training batch exactly as the student does (same crops and
flips), in eval mode and without gradients. The student ends with exactly its mask's weights: the
teacher is never part of the trained model. Its own training cost is recorded in the run's summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from anymask.errors import AnymaskError
from anymask.flops import BACKWARD_FACTOR, FLOPS_PER_MAC, forward_macs
from anymask.models.calling import ModelCall
from anymask.recipe.base import RECIPE_PARTS, RecipeContext, RecipePart

MODEL_FILE = "model.safetensors"


def teacher_paths(teacher: str) -> tuple[Path, Path | None]:
    """(weights file, run folder or None) of a `--teacher` value; one line when it names nothing usable."""
    path = Path(teacher)
    if path.is_dir():
        weights = path / MODEL_FILE
        if not (path / "summary.json").is_file() or not weights.is_file():
            raise AnymaskError(
                f"--teacher {teacher} is not a finished run folder (no summary.json or {MODEL_FILE}); "
                "finish its training first or name another run"
            )
        return weights, path
    if path.is_file() and path.suffix == ".safetensors":
        return path, None
    raise AnymaskError(
        f"--teacher {teacher} is neither a run folder nor a .safetensors model file; name a finished run"
    )


def load_teacher(teacher: str, context: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher network in eval mode on the run's device, and what is known of its training."""
    from anymask.finished_run import read_teacher
    from anymask.models import create_model

    teacher_paths(teacher)
    run = read_teacher(teacher)  # every file decoded by its reader: damage is one line naming it
    folder, student = run.folder, context.config
    config = run.config or student
    _check_same_data(teacher, config, student)
    model_name, width = config.model.model, config.model.width
    with torch.random.fork_rng(devices=[]):  # building it must not move the student's random stream
        model = create_model(model_name, context.data.num_classes, context.data.input_shape, width)
    try:
        model.load_state_dict(run.state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0][:160]
        raise AnymaskError(
            f"--teacher {teacher} does not load into {model_name} for {student.data.data} "
            f"({context.data.num_classes} classes): {first}; name a teacher trained on the same data"
        ) from None
    model = model.to(context.device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    record = _teacher_record(folder, run.summary)
    if folder is not None and "teacher_train_flops" not in record:  # a run from before costs were counted
        examples = config.train.epochs * context.data.split_size("train")
        example = torch.zeros((1, *context.data.input_shape), device=context.device)
        macs = forward_macs(model, example, ModelCall.of(model, context.output_fn))
        record["teacher_train_flops"] = FLOPS_PER_MAC * BACKWARD_FACTOR * macs * examples
        record["teacher_train_flops_counted"] = "estimated: dense forward x 3 per training image"
    return model, record


def _check_same_data(teacher: str, config: Any, student: Any) -> None:
    if config.data.data != student.data.data:
        raise AnymaskError(
            f"--teacher {teacher} was trained on {config.data.data}, this run trains on {student.data.data}; "
            "name a teacher trained on the same data"
        )
    if student.data.val_split and config.data.val_split != student.data.val_split:
        raise AnymaskError(
            f"--teacher {teacher} trained with val_split {config.data.val_split}, this run holds out "
            f"{student.data.val_split} validation images the teacher may have seen; name a teacher trained "
            "with the same val_split"
        )


def _teacher_record(folder: Path | None, summary: dict[str, Any] | None) -> dict[str, Any]:
    if folder is None or summary is None:
        return {}
    record = {"teacher": str(folder), "teacher_test_acc": summary.get("final_test_acc")}
    for key in ("train_seconds", "train_flops"):
        if key in summary:
            record[f"teacher_{key}"] = summary[key]
    return record


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch (float32)."""
    log_student = F.log_softmax(student.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2


@RECIPE_PARTS.register("kd")
class Distillation(RecipePart):
    """Runs the teacher on every training batch the student sees and mixes its term into the loss."""

    name = "kd"

    def __init__(self, config: Any, total_epochs: float) -> None:
        super().__init__(config, total_epochs)
        if not config.teacher:
            raise AnymaskError("recipe part kd needs a teacher: --teacher RUN_FOLDER (a finished dense run)")
        teacher_paths(config.teacher)
        if not 0 < config.kd_temperature < float("inf"):
            raise AnymaskError(f"kd_temperature must be a positive number, got {config.kd_temperature}")
        if not 0 <= config.kd_weight <= 1:
            raise AnymaskError(f"kd_weight must be in [0, 1], got {config.kd_weight}")
        self.teacher: nn.Module | None = None
        self.record: dict[str, Any] = {}
        self._logits: torch.Tensor | None = None
        self._handle: RemovableHandle | None = None
        self._call: Any = None

    def check(self, context: RecipeContext) -> str | None:
        self.teacher, self.record = load_teacher(self.config.teacher, context)  # one line if it does not fit
        return None

    def prepare(self, context: RecipeContext) -> None:
        if self.teacher is None:
            self.teacher, self.record = load_teacher(self.config.teacher, context)
        if context.channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        self._call = ModelCall.of(self.teacher, None)
        self._handle = context.model.register_forward_pre_hook(self._run_teacher, with_kwargs=True)

    def _run_teacher(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return  # evaluation, BN recalibration, tracing: no loss follows
        images = args[0] if args else next(iter(kwargs.values()))
        with torch.no_grad():
            self._logits = self._call(self.teacher, images).float()

    def mix_loss(
        self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, epoch: float
    ) -> torch.Tensor:
        teacher, self._logits = self._logits, None
        if teacher is None or teacher.shape != logits.shape:
            raise AnymaskError(
                "kd: the teacher did not see this batch (was the model called in another way?)"
            )
        weight = self.config.kd_weight
        return (1 - weight) * loss + weight * distillation_loss(logits, teacher, self.config.kd_temperature)

    def summary(self) -> dict[str, Any]:
        return self.record

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
