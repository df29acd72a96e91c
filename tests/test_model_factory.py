"""`--model package.module:function`: a user's factory through create_model, the CLI, sweeps and reports.

The factories live in a module written into the test's working directory, as a user's would be, and
are found there without PYTHONPATH (the `anymask` script does not put the working directory on
sys.path by itself; anymask does).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from anymask.cli import main
from anymask.errors import AnymaskError
from anymask.experiments.report import write_report
from anymask.experiments.sweep import run_sweep
from anymask.models import create_model

# 32 channels: sweep workers are subprocesses, where tiny oneDNN convolutions may crash (see conftest).
USER_MODULE = """
from torch import nn

def tiny(num_classes, input_shape, width):
    channels = round(32 * width)
    return nn.Sequential(
        nn.Conv2d(input_shape[0], channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes),
    )

class Builders:
    @staticmethod
    def tiny(num_classes, input_shape, width):
        return tiny(num_classes, input_shape, width)

def not_a_model(num_classes, input_shape, width):
    return "a string"

def one_argument(num_classes):
    return nn.Linear(2, num_classes)

VALUE = 3
"""
_names = itertools.count()


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh module in the working directory, which is not on sys.path; returns its name."""
    name = f"user_nets_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    (tmp_path / "broken_syntax.py").write_text("def f(:\n")
    (tmp_path / "broken_import.py").write_text("import module_that_does_not_exist\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for module in (name, "broken_syntax", "broken_import"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    return name


def test_a_factory_builds_the_model(user_module: str) -> None:
    for function in ("tiny", "Builders.tiny"):
        model = create_model(f"{user_module}:{function}", 7, (1, 8, 8), 0.5)
        assert isinstance(model, nn.Sequential) and model[0].out_channels == 16
        assert model[-1].out_features == 7
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 7)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module:tiny", r"no module named 'no_such_module' in the working directory .* PYTHONPATH"),
        ("{m}:missing", r"{m} has no attribute 'missing'"),
        ("{m}:VALUE", r"is a int, not a factory function\(num_classes, input_shape, width\)"),
        ("{m}:not_a_model", r"returned a str, not a torch.nn.Module"),
        ("{m}:one_argument", r"must take three arguments: function\(num_classes, input_shape, width\)"),
        ("broken_syntax:f", r"importing broken_syntax failed: SyntaxError: .*broken_syntax.py, line 1"),
        ("broken_import:f", r"importing broken_import failed: ModuleNotFoundError: .*module_that_does_not"),
        ("{m}:", r"names no factory; write it as package.module:function"),
    ],
)
def test_a_bad_factory_is_one_line(user_module: str, name: str, message: str) -> None:
    name, message = name.format(m=user_module), message.format(m=user_module)
    with pytest.raises(AnymaskError, match=message) as error:
        create_model(name, 10, (1, 8, 8), 1.0)
    assert "\n" not in str(error.value)


def test_unknown_names_mention_factories() -> None:
    with pytest.raises(
        AnymaskError, match=r"unknown model 'resnet21'; choose one of: .*; or your own factor"
    ):
        create_model("resnet21")


# -- the commands -----------------------------------------------------------------------------------------
QUICK = ["--data", "digits", "--train-subset", "64", "--batch-size", "32", "--no-progress", "--threads", "1"]


def test_train_from_a_config_file_records_the_factory(user_module: str, tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(f'model = "{user_module}:tiny"\nwidth = 0.5\nepochs = 1\n')
    assert main(["train", "--config", "run.toml", *QUICK, "--recipe", "gsn,gsc,ls", "--out", "run"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["model"] == f"{user_module}:tiny"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["model"] == f"{user_module}:tiny"


def test_prune_and_inspect_take_a_factory(user_module: str, capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", f"{user_module}:tiny", "--width", "0.5"]
    prune = ["prune", *model, *QUICK, "--method", "snip", "--sparsity", "0.9", "--out", "m.safetensors"]
    assert main(prune) == 0
    assert main(["inspect", "m.safetensors", *model, "--data", "digits"]) == 0
    out = capsys.readouterr().out
    assert "0.weight" in out and "all layers: 261 of 2,608 kept" in out


def test_a_bad_factory_fails_the_command_before_writing(
    user_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--model", f"{user_module}:not_a_model", *QUICK, "--out", "run"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()


def test_sweep_workers_import_the_factory_and_the_report_names_it(user_module: str, tmp_path: Path) -> None:
    """Workers are spawned processes: they find the module in the working directory too."""
    (tmp_path / "grid.toml").write_text(
        f'[base]\nmodel = "{user_module}:tiny"\ndata = "digits"\ntrain_subset = 64\nbatch_size = 32\n'
        'epochs = 1\nthreads = 1\nmask_method = "random"\n[grid]\nsparsity = [0.5, 0.9]\n'
    )
    out = run_sweep(tmp_path / "grid.toml", out=tmp_path / "runs")
    summaries = [json.loads(p.read_text()) for p in out.glob("*/summary.json")]
    assert sorted(s["sparsity"] for s in summaries) == [0.5, 0.9]
    write_report([out], tmp_path / "report")
    assert f"{user_module}:tiny on digits" in (tmp_path / "report" / "report.md").read_text()
