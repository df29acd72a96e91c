"""A finished run folder as anything after training reads it: export, a distillation teacher, scripts.

`read_finished_run(folder)` checks the folder is a finished anymask run (config.json, summary.json and
model.safetensors; mask.safetensors read on demand) and returns its typed contents; every way the folder
can be wrong (not a folder, not a run, unfinished, a damaged file) is one `AnymaskError` line saying
what to do. `read_teacher(path)` takes such a folder or a bare model .safetensors file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anymask.artifacts import ARTIFACTS, damaged, first_line, read_model_weights, read_summary
from anymask.config import RunConfig, load_run_config
from anymask.errors import AnymaskError
from anymask.masks import Mask

CONFIG, SUMMARY, MODEL, MASK = "config.json", "summary.json", "model.safetensors", "mask.safetensors"
FINISHED = f"a folder that `anymask train` finished ({CONFIG}, {MODEL}, {SUMMARY})"


@dataclass
class FinishedRun:
    """A finished run's files: `config` and `summary` are None for a bare weights file (a teacher)."""

    path: Path
    config: RunConfig | None
    summary: dict[str, Any] | None
    state: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def folder(self) -> Path | None:
        return self.path if self.config is not None else None

    @property
    def plain_architecture(self) -> bool:
        """False for a tost-official run, whose model keeps parts the plain architecture lacks."""
        return (self.summary or {}).get("plain_architecture") is not False

    def mask(self) -> Mask:
        """The run's final mask (mask.safetensors)."""
        if self.config is None:
            raise AnymaskError(f"{self.path} is a weights file, not a run folder: it has no mask")
        return Mask.load(self.path / MASK, MASK)

    def build_model(self, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        """The run's registry model with its trained weights (strict), in eval mode."""
        from anymask.models import create_model
        from anymask.models.factory import is_factory_name

        if self.config is None:
            raise AnymaskError(f"{self.path} is a weights file: build its model yourself and load .state")
        name = self.config.model.model
        if is_factory_name(name):
            raise AnymaskError(
                f"{self.path} trained your model factory {name}: anymask does not import code a run folder "
                "names; build the model yourself and load this run's .state into it"
            )
        if not self.plain_architecture:
            raise AnymaskError(
                f"{self.path} is a tost-official run: its model keeps dense skip branches and smooth "
                "activations beyond the plain architecture, so it does not load into the plain model"
            )
        model = create_model(name, num_classes, input_shape, self.config.model.width)
        expected = model.state_dict()
        for key, tensor in self.state.items():  # load_state_dict would convert a wrong dtype silently
            if key in expected and tensor.dtype != expected[key].dtype:
                problem = f"tensor '{key}' is {tensor.dtype}, the model's is {expected[key].dtype}"
                raise damaged(self.path / MODEL, MODEL, problem)
        try:
            model.load_state_dict(self.state, strict=True)
        except RuntimeError as error:
            problem = f"it does not load into {name} ({first_line(error)})"
            raise damaged(self.path / MODEL, MODEL, problem) from None
        return model.eval()


def read_finished_run(folder: str | Path) -> FinishedRun:
    """config.json, summary.json and model.safetensors of a finished run, each decoded by its reader."""
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise AnymaskError(f"{folder} is a file, not a run folder; give {FINISHED}")
        raise AnymaskError(f"run folder not found: {folder}; give {FINISHED}")
    has = {name: (folder / name).is_file() for name in (CONFIG, SUMMARY, MODEL)}
    if not has[CONFIG]:
        if not any(has.values()):
            raise AnymaskError(f"{folder} is not an anymask run folder (it has no {CONFIG}); give {FINISHED}")
        raise AnymaskError(
            f"{folder} is not a finished anymask run: it has no {CONFIG}; {ARTIFACTS[CONFIG].fix}"
        )
    if not has[SUMMARY]:
        raise AnymaskError(
            f"{folder} holds an unfinished run (no {SUMMARY}); finish it with "
            f"`anymask train --resume --out {folder}` (plus its settings)"
        )
    config = load_run_config(folder / CONFIG)
    summary = read_summary(folder / SUMMARY)
    weights = read_model_weights(folder / MODEL)
    return FinishedRun(folder, config, summary, weights.tensors, weights.metadata)


def read_teacher(path: str | Path) -> FinishedRun:
    """A distillation teacher: a finished run folder, or a model .safetensors file (inside a finished run
    folder it is read with that run's config)."""
    path = Path(path)
    if path.is_dir():
        return read_finished_run(path)
    if path.suffix != ".safetensors":
        raise AnymaskError(f"teacher {path}: give {FINISHED} or a model .safetensors file")
    if path.name == MODEL and (path.parent / CONFIG).is_file() and (path.parent / SUMMARY).is_file():
        return read_finished_run(path.parent)
    weights = read_model_weights(path, "teacher")
    return FinishedRun(path, None, None, weights.tensors, weights.metadata)
