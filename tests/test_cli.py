"""The command line: config files and overrides, and bad input as one line with no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from anymask.cli import build_parser, main, resolve_config
from anymask.config import RunConfig, read_config_file
from anymask.errors import AnymaskError
from cli_helpers import anymask, anymask_in_process, quick_train


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'model = "resnet20"\n[mask]\nsparsity = 0.9\nmask_method = "random"\n[train]\nepochs = 7\n'
    )
    args = build_parser().parse_args(
        ["train", "--config", str(path), "--sparsity", "0.95", "--no-channels-last"]
    )
    config = resolve_config(args)
    assert (config.model.model, config.mask.sparsity, config.train.epochs) == ("resnet20", 0.95, 7)
    assert config.mask.mask_method == "random" and config.train.channels_last is False


def test_yaml_config_and_type_errors(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 3\nlr_milestones: [0.3, 0.6]\n")
    assert read_config_file(path) == {"epochs": 3, "lr_milestones": [0.3, 0.6]}
    path.write_text("epochs: three\n")
    with pytest.raises(AnymaskError, match="'epochs' expects an integer"):
        RunConfig.from_flat(read_config_file(path))
    path.write_text("[mask]\nepochs = 3\n")
    path = path.rename(tmp_path / "bad.toml")
    with pytest.raises(AnymaskError, match=r"belongs in \[train\]"):
        read_config_file(path)


def test_config_hash_ignores_display_settings() -> None:
    base = RunConfig()
    assert base.hash() == base.updated({"progress": False, "threads": 1}).hash()
    assert base.hash() != base.updated({"sparsity": 0.5}).hash()


@pytest.mark.parametrize(
    ("run", "inert", "read"),
    [
        ({"recipe": "default"}, {"ghost_epochs": 3, "gradinit_lr": 0.5, "ls_alpha": 0.3}, None),
        ({"recipe": "gsn"}, {"gsc_mode": "learned"}, {"ghost_epochs": 3, "gsn_soft": "mish"}),
        ({"recipe": "lrsi"}, {"ghost_schedule": "step"}, {"gradinit_iterations": 7}),
        ({"recipe": "ls"}, {"ghost_epochs": 3}, {"ls_alpha": 0.3}),
        ({"recipe": "ls", "ls_schedule": "ghost"}, {"gsn_soft": "mish"}, {"ghost_epochs": 3}),
        ({"mask_method": "erk", "sparsity": 0.9}, {"lth_rate": 0.5, "synflow_iterations": 3}, None),
        ({"mask_method": "snip", "sparsity": 0.9}, {"float64": True}, {"prune_samples_per_class": 2}),
        ({"mask_method": "lth", "sparsity": 0.9}, {"prune_balanced": False}, {"lth_rewind": "2ep"}),
    ],
)
def test_config_hash_leaves_out_settings_the_run_never_reads(
    run: dict[str, object], inert: dict[str, object], read: dict[str, object] | None
) -> None:
    """Two configs that train the same share a folder; a setting the run reads still splits them."""
    base = RunConfig().updated(run)
    assert base.updated(inert).hash() == base.hash()
    if read is not None:
        assert base.updated(read).hash() != base.hash()


@pytest.mark.parametrize("command", ["train", "prune", "sweep", "report", "demo", "inspect", "compare"])
def test_every_command_prints_its_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: anymask" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sparsity", "1.5"], "invalid sparsity: 1.5 is outside [0, 1)"),
        (["--sparsity", "-0.1"], "invalid sparsity: -0.1 is outside [0, 1)"),
        (["--model", "resnet99"], "unknown model 'resnet99'"),
        (["--data", "cifar10", "--data-dir", "/nonexistent"], "cifar-10-batches-py"),
        (["--mask", "/nonexistent/mask.safetensors"], "mask file not found"),
        (["--recipe", "tost,magic"], "unknown recipe part 'magic'"),
        (["--epochs", "zero"], "'epochs' expects an integer"),
        (["--sparsity-typo", "0.5"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    result = anymask_in_process("train", *args, "--out", str(out))
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # argparse puts its usage line above its error
    assert not out.exists(), "no run folder for bad input"


def test_bad_input_is_one_line_from_the_installed_command(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = anymask("train", "--sparsity", "1.5", "--out", str(out))
    assert result.returncode == 2
    assert (
        result.stderr
        == "anymask: error: invalid sparsity: 1.5 is outside [0, 1); give a value in that range\n"
    )
    assert not out.exists(), "no run folder for bad input"


def test_corrupt_and_mismatched_mask_files(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage")
    result = anymask("train", "--mask", str(corrupt), "--out", str(tmp_path / "a"))
    assert result.returncode == 2 and "corrupt" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    made = quick_train(tmp_path / "cnn", "--mask-method", "random", "--sparsity", "0.5")
    assert made.returncode == 0, made.stderr
    result = anymask(
        "train",
        "--model",
        "resnet20",
        "--mask",
        str(tmp_path / "cnn" / "mask.safetensors"),
        "--out",
        str(tmp_path / "b"),
    )
    assert result.returncode == 2 and "does not fit the model" in result.stderr
    assert not (tmp_path / "b").exists()
