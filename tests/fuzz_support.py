"""What the fuzz tests share: hypothesis settings, the outcomes the docs table names, the pristine run
folders the damaged files are made from, and running the CLI with its one-line checks.

`ANYMASK_FUZZ=long` runs the long profile (random, many examples), `ANYMASK_FUZZ_EXAMPLES=N` sets the
count; by default each case is deterministic with a few examples.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, settings
from safetensors.torch import load_file

from anymask.bounds import Bounds
from anymask.cli import main
from anymask.config import field_types
from quick_runs import quick_config

LONG = os.environ.get("ANYMASK_FUZZ") == "long"
EXAMPLES = int(os.environ.get("ANYMASK_FUZZ_EXAMPLES", "0")) or (300 if LONG else 5)
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=not LONG,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ERROR = "one-line error, exit 2"
RAISES = "raises AnymaskError, one line"
SKIP = "one-line warning naming the run, which is left out; exit 0"


def typing_origin(key: str) -> Any:
    import typing

    hint = field_types()[key]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is not list and len(args) == 1:  # Optional[X] (X | None): X's origin
        hint = args[0]
    return typing.get_origin(hint)


class _Stop(Exception):
    pass


def make_pristine(root: Path) -> Path:
    """A finished run, a second finished run (a report's good neighbour), an interrupted run after its
    first epoch, their configs as flag files, a mask in both formats, a config and a sweep file, an
    export."""
    from anymask.deploy import export_run
    from anymask.ensembles.evaluate import evaluate_runs
    from anymask.train import run as run_module
    from anymask.train import run_experiment

    config = quick_config(epochs=1, train_subset=64, mask_method="random", sparsity=0.5)
    run_experiment(config, root / "finished")
    run_experiment(config.updated({"seed": 1}), root / "good")
    two_epochs = config.updated({"epochs": 2})
    save = run_module.save_checkpoint

    def save_then_stop(path: Path, state: dict[str, Any]) -> None:
        save(path, state)
        raise _Stop  # as a kill after the first checkpoint

    with mock.patch.object(run_module, "save_checkpoint", save_then_stop), pytest.raises(_Stop):
        run_experiment(two_epochs, root / "interrupted")
    for name, folder in (("config.json", "finished"), ("config2.json", "interrupted")):
        shutil.copy(root / folder / "config.json", root / name)
    shutil.copy(root / "finished" / "mask.safetensors", root / "mask.safetensors")
    shutil.copy(root / "good" / "mask.safetensors", root / "good_mask.safetensors")
    shutil.copy(root / "finished" / "model.safetensors", root / "model.safetensors")
    torch.save(load_file(str(root / "mask.safetensors")), root / "mask.pt")
    (root / "config.toml").write_text("epochs = 1\ntrain_subset = 64\n")
    (root / "sweep.toml").write_text('[base]\nmask_method = "random"\n[grid]\nsparsity = [0.5, 0.9]\n')
    export_run(root / "finished", root / "export.safetensors")
    evaluate_runs([root / "finished", root / "good"], root / "ensemble")
    # what `--log tensorboard` leaves after the first epoch; read when the run resumes with it
    (root / "interrupted" / "tracking.json").write_text('{"tensorboard": {"epochs": 1, "started": true}}\n')
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code  # type: ignore[assignment]
    return int(code or 0), capsys.readouterr().err


def check_one_line(code: int, err: str, outcome: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    if outcome == ERROR:
        assert code == 2 and lines[0].startswith("anymask: error: "), err
    else:
        assert code == 0 and lines[0].startswith("anymask: warning: skipping "), err


def engine_and_ensemble_bounds() -> list[tuple[str, str, Bounds]]:
    from anymask.ensembles.prune_and_tune import ENSEMBLE_BOUNDS
    from anymask.experiments.engines.base import engine_bounds

    return [("sweep", k, b) for k, b in sorted(engine_bounds().items())] + [
        ("ensemble", k, b) for k, b in sorted(ENSEMBLE_BOUNDS.items())
    ]
