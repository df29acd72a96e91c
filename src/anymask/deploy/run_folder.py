"""A finished run folder as deployment reads it: the model's state, its mask and how to rebuild it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anymask.artifacts import damaged
from anymask.data import DATASET_SHAPES
from anymask.deploy.export import ExportResult, ModelSpec, export_state
from anymask.errors import AnymaskError
from anymask.finished_run import MASK, read_finished_run
from anymask.masks import Mask


@dataclass
class TrainedRun:
    state: dict[str, torch.Tensor]
    mask: Mask
    spec: ModelSpec

    def model(self) -> nn.Module:
        """The registry model with the run's weights, in eval mode."""
        model = self.spec.build()
        model.load_state_dict(self.state, strict=True)
        return model.eval()


def read_run(run_dir: str | Path) -> TrainedRun:
    """config.json, mask.safetensors and model.safetensors of a finished run, with one-line errors."""
    run = read_finished_run(run_dir)
    assert run.config is not None and run.summary is not None
    check_exportable(run.path, run.config.model.model, run.summary)
    config = run.config
    if config.data.data not in DATASET_SHAPES:
        raise AnymaskError(f"cannot export runs on dataset '{config.data.data}': its image shape is unknown")
    classifier = [v for k, v in run.state.items() if k.endswith("classifier.weight")]
    num_classes = int(classifier[-1].shape[0]) if classifier and classifier[-1].dim() else 10
    shape = DATASET_SHAPES[config.data.data][0]
    spec = ModelSpec(config.model.model, config.model.width, num_classes, shape)
    model = run.build_model(num_classes, shape)  # the weights load into the model, strictly
    mask = run.mask()
    try:
        mask.check_fits(model)
    except AnymaskError as error:
        raise damaged(run.path / MASK, MASK, str(error)) from None
    return TrainedRun(run.state, mask, spec)


def check_exportable(run_dir: Path, model_name: str, summary: dict[str, Any]) -> None:
    """Refuse, in one line, a run whose model anymask cannot rebuild without running code or losing parts."""
    from anymask.models.factory import is_factory_name

    if is_factory_name(model_name):
        raise AnymaskError(
            f"{run_dir} trained your model factory {model_name}: anymask does not import code a run folder "
            "names; build the model yourself and call anymask.deploy.export_model(model, out, mask)"
        )
    if summary.get("plain_architecture") is False:
        raise AnymaskError(
            f"{run_dir} is a tost-official run: its model keeps dense skip branches and smooth activations "
            "beyond the plain architecture, which export and sparse inference do not cover"
        )


def export_run(run_dir: str | Path, out: str | Path) -> ExportResult:
    """`anymask export RUN_DIR --out FILE`: the run's weights compressed with its own mask."""
    check_export_path(out)
    run = read_run(run_dir)
    return export_state(run.state, run.mask, out, run.spec)


def check_export_path(out: str | Path) -> None:
    """--out names a .safetensors file that can be written: checked before the run is read."""
    from anymask.io import check_output_file

    if Path(out).suffix != ".safetensors":
        raise AnymaskError(f"--out {out}: an export is a .safetensors file; give a name ending in it")
    check_output_file(out)
