"""A finished run folder as deployment reads it: the model's state, its mask and how to rebuild it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from anymask.data import DATASET_SHAPES
from anymask.deploy.export import ExportResult, ModelSpec, export_state
from anymask.errors import AnymaskError
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
    from safetensors.torch import load_file

    from anymask.config import load_run_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AnymaskError(f"run folder not found: {run_dir}")
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise AnymaskError(
            f"{run_dir} has no model.safetensors: the run has not finished; finish it with "
            f"`anymask train --resume --out {run_dir}` (plus its settings)"
        )
    try:
        config = load_run_config(run_dir / "config.json")
        state = load_file(str(weights))
    except Exception as error:
        raise AnymaskError(f"cannot read the run in {run_dir}: {str(error).splitlines()[0][:200]}") from None
    check_exportable(run_dir, config.model.model)
    mask = Mask.load(run_dir / "mask.safetensors")
    if config.data.data not in DATASET_SHAPES:
        raise AnymaskError(f"cannot export runs on dataset '{config.data.data}': its image shape is unknown")
    classifier = [v for k, v in state.items() if k.endswith("classifier.weight")]
    num_classes = int(classifier[-1].shape[0]) if classifier else 10
    shape = DATASET_SHAPES[config.data.data][0]
    spec = ModelSpec(config.model.model, config.model.width, num_classes, shape)
    run = TrainedRun(state, mask, spec)
    try:
        run.model()
    except RuntimeError as error:
        raise AnymaskError(
            f"{weights} does not load into {spec.model}: {str(error).splitlines()[0][:200]}"
        ) from None
    return run


def check_exportable(run_dir: Path, model_name: str) -> None:
    """Refuse, in one line, a run whose model anymask cannot rebuild without running code or losing parts."""
    from anymask.models.factory import is_factory_name

    if is_factory_name(model_name):
        raise AnymaskError(
            f"{run_dir} trained your model factory {model_name}: anymask does not import code a run folder "
            "names; build the model yourself and call anymask.deploy.export_model(model, out, mask)"
        )
    summary = run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("plain_architecture") is False:
        raise AnymaskError(
            f"{run_dir} is a tost-official run: its model keeps dense skip branches and smooth activations "
            "beyond the plain architecture, which export and sparse inference do not cover"
        )


def export_run(run_dir: str | Path, out: str | Path) -> ExportResult:
    """`anymask export RUN_DIR --out FILE`: the run's weights compressed with its own mask."""
    run = read_run(run_dir)
    return export_state(run.state, run.mask, out, run.spec)
