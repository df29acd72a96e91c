"""Security and failure: hostile files run no code, a death at any moment resumes consistently, damaged
runs do not sink a report, files get ordinary modes, and what a newcomer meets first reads right.

(Bad flags and files as one line: tests/test_bad_input.py. Kill -9 of a real process: tests/test_train.py.)
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anymask.cli import main
from anymask.config import RunConfig, save_config
from anymask.errors import AnymaskError
from anymask.io import atomic_write_text
from anymask.train import run_experiment
from anymask.train.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from quick_runs import quick_config


class Plant:
    """Pickles to `os.system("touch <canary>")`: loading it unsafely creates the canary file."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.canary}",))


def flags(config: RunConfig) -> list[str]:
    """The command-line flags that give `config` (booleans as --x / --no-x)."""
    out = []
    for key, value in config.to_flat().items():
        if value is None:
            continue
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(name if value else name.replace("--", "--no-", 1))
        elif isinstance(value, list):
            out += [name, ",".join(map(str, value))]
        else:
            out += [name, str(value)]
    return out


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code  # type: ignore[assignment]
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def interrupted_folder(folder: Path, config: RunConfig, checkpoint: bytes) -> None:
    """A run folder as a killed run leaves it, with `checkpoint` as its checkpoint file."""
    folder.mkdir(parents=True)
    save_config(config, folder / "config.json")
    (folder / CHECKPOINT).write_bytes(checkpoint)


# -- 1. hostile and damaged checkpoints --------------------------------------------------------------
def test_planted_checkpoint_runs_no_code_on_resume_nor_in_a_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from anymask.experiments.engines import train_run as sweep_worker_train

    config = quick_config(epochs=1, train_subset=64)
    canary = tmp_path / "canary"
    planted = pickle.dumps({"epoch": 1, "trainer": Plant(canary), "history": []})
    torch.save({"epoch": 1, "trainer": Plant(canary), "history": []}, tmp_path / "planted.pt")
    for name, payload in [("raw", planted), ("torch", (tmp_path / "planted.pt").read_bytes())]:
        folder = tmp_path / name
        interrupted_folder(folder, config, payload)
        code, _, err = cli(["train", *flags(config), "--out", str(folder), "--resume"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "cannot read checkpoint" in err and "weights_only" not in err and "Traceback" not in err
        # a plain sweep rerun resumes unfinished folders by itself: the same refusal, as one line
        message = sweep_worker_train(config, folder)
        assert message is not None and "cannot read checkpoint" in message and "\n" not in message
    assert not canary.exists(), "the planted pickle ran"


def test_truncated_checkpoint_is_one_line_saying_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = quick_config(epochs=1, train_subset=64)
    save_checkpoint(tmp_path / "whole.pt", {"epoch": 1, "trainer": {"w": torch.ones(1000)}, "history": []})
    whole = (tmp_path / "whole.pt").read_bytes()
    interrupted_folder(tmp_path / "run", config, whole[: len(whole) // 2])
    code, _, err = cli(["train", *flags(config), "--out", str(tmp_path / "run"), "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "truncated or corrupt" in err and "delete it to restart" in err


def test_a_resumed_tost_run_loads_its_checkpoint_safely_and_ends_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every object of a real checkpoint (learned ghost-skip branches, optimizer state with a ghost group,
    GradInit-rescaled weights, history) loads with weights_only=True, and resuming stays exact."""
    from anymask.train.trainer import Trainer

    config = quick_config(recipe="tost", epochs=3, ghost_epochs=2, gradinit_iterations=3, model="resnet20")
    config = config.updated({"width": 0.25, "train_subset": 128})
    reference = run_experiment(config, tmp_path / "reference")

    original = Trainer.train_epoch

    def die_in_epoch_two(self, epoch, **kwargs):  # type: ignore[no-untyped-def]
        if epoch == 1:
            raise KeyboardInterrupt  # as a kill: the epoch-1 checkpoint is on disk
        return original(self, epoch, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", die_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "killed")
    state = load_checkpoint(tmp_path / "killed" / CHECKPOINT)
    assert state["epoch"] == 1 and state["trainer"]["recipe"]["gsc"]["branches"]
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = run_experiment(config, tmp_path / "killed", resume=True)
    expected, actual = (load_file(r.out_dir / "model.safetensors") for r in (reference, resumed))
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)


# -- 1b. hostile CIFAR batches -----------------------------------------------------------------------
def test_hostile_cifar_batch_runs_no_code(tmp_path: Path) -> None:
    from anymask.data import load_dataset

    canary = tmp_path / "canary"
    root = tmp_path / "data" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (root / name).write_bytes(pickle.dumps({"data": Plant(canary), "labels": [0]}, protocol=2))
    with pytest.raises(AnymaskError, match=r"posix.system.*refused unread") as error:
        load_dataset("cifar10", tmp_path / "data")
    assert "\n" not in str(error.value)
    assert not canary.exists()


def test_the_safe_unpickler_still_reads_official_cifar(shared_data: Path) -> None:
    from anymask.data.cifar import _read_pickle

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy.core deprecation either
        batch = _read_pickle("cifar10", shared_data / "cifar-10-batches-py" / "test_batch")
    assert batch["data"].shape == (5000, 3072) and len(batch["labels"]) == 5000


# -- 5. the last epoch's metrics line ------------------------------------------------------------------
def test_death_between_checkpoint_and_metrics_resumes_with_every_metrics_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anymask.train.run as run_module

    config = quick_config(epochs=2)
    write = run_module.atomic_write_text

    def die_before_last_metrics(path, text):  # type: ignore[no-untyped-def]
        if Path(path).name == "metrics.jsonl" and len(text.splitlines()) == config.train.epochs:
            raise KeyboardInterrupt  # killed after the final checkpoint, before its metrics line
        write(path, text)

    monkeypatch.setattr(run_module, "atomic_write_text", die_before_last_metrics)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "run")
    monkeypatch.setattr(run_module, "atomic_write_text", write)
    history = load_checkpoint(tmp_path / "run" / CHECKPOINT)["history"]
    run_experiment(config, tmp_path / "run", resume=True)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert lines == json.loads(json.dumps(history))


# -- 3. a new run that fails leaves no folder ----------------------------------------------------------
def test_a_new_run_that_fails_in_its_first_epoch_leaves_no_folder(tmp_path: Path) -> None:
    from unittest import mock

    from anymask.train.trainer import Trainer

    # (every learning rate in its range trains this small net without diverging: the loss is made NaN)
    diverged = AnymaskError("training diverged: the loss became NaN or infinite in epoch 1")
    with (
        mock.patch.object(Trainer, "check_finite", side_effect=diverged),
        pytest.raises(AnymaskError, match="diverged"),
    ):
        run_experiment(quick_config(epochs=1), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    run_experiment(quick_config(epochs=1), tmp_path / "run")  # the corrected command just runs


# -- 4. report over damaged runs -------------------------------------------------------------------
def _fake_run(folder: Path, seed: int) -> None:
    config = quick_config(mask_method="random", sparsity=0.5, seed=seed)
    folder.mkdir(parents=True)
    save_config(config, folder / "config.json")
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.5}) + "\n")
    summary = {
        "model": "cnn",
        "data": "digits",
        "mask_method": "random",
        "sparsity": 0.5,
        "recipe": "default",
        "seed": seed,
        "epochs": 1,
        "final_test_acc": 0.5,
        "best_test_acc": 0.5,
        "best_test_epoch": 1,
        "mask_kept": 1,
        "mask_total": 2,
        "mask_density": 0.5,
        "nonzero_weights": 1,
        "train_seconds": 1.0,
        "config_hash": config.hash(),
    }
    (folder / "summary.json").write_text(json.dumps(summary))


def test_report_skips_a_damaged_run_with_one_line_and_reports_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    for seed in range(3):
        _fake_run(runs / f"run{seed}", seed)
    (runs / "run1" / "summary.json").write_bytes(os.urandom(64) + b"\xff\xfe")
    (runs / "run2" / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": 0.5}\n{"epoch": 2, "te')
    code, _, err = cli(["report", str(runs), "--out", str(tmp_path / "report")], capsys)
    assert code == 0, err
    warnings_ = err.strip().splitlines()
    assert len(warnings_) == 2 and all(w.startswith("anymask: warning: skipping ") for w in warnings_)
    assert "1 finished runs" in (tmp_path / "report" / "report.md").read_text()


# -- 7. file modes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_written_files_get_the_mode_open_would_give(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(old)
    modes = {stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("a.txt", "b.txt")}
    assert modes == {0o666 & ~umask}


def test_every_file_of_a_run_folder_is_readable_by_others(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        run_experiment(quick_config(epochs=1, train_subset=64), tmp_path / "run")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_an_output_place_that_cannot_be_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a user without write permission meets it (the tests may run as root, who has every permission)."""
    import anymask.io

    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(anymask.io.os, "access", lambda path, mode: Path(path).name != "locked")
    out = tmp_path / "locked" / "new" / "run"
    for argv in (
        ["train", "--out", str(out)],
        ["prune", "--method", "random", "--sparsity", "0.5", "--out", f"{out}.safetensors"],
        ["report", str(tmp_path), "--out", str(out)],
        ["train", "--out", str(tmp_path / "locked")],
    ):
        code, _, err = cli(argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "permission denied" in err
    assert list((tmp_path / "locked").iterdir()) == []


# -- 9. sweeps -------------------------------------------------------------------------------------
def test_sweep_workers_show_warnings_as_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from anymask.experiments.engines import local as sweep

    monkeypatch.setattr(sweep.signal, "signal", lambda *_: None)
    monkeypatch.setattr(sweep, "_exit_with_parent", lambda: None)
    with warnings.catch_warnings():  # puts the test process's warning display back afterwards
        warnings.simplefilter("always")
        sweep._prepare_worker(None)
        warnings.warn("layer 'fc' has no weights left\n(layer collapse)", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == "anymask: warning: layer 'fc' has no weights left (layer collapse)\n"


# -- 10. BatchNorm statistics after GradInit ----------------------------------------------------------
def test_running_statistics_describe_the_network_gradinit_rescaled() -> None:
    from anymask.data import load_dataset
    from anymask.models import create_model
    from anymask.recipe import Recipe, RecipeContext

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = create_model("cnn", 10, data.input_shape)
    config = quick_config(recipe="lrsi", gradinit_iterations=20)
    recipe = Recipe.from_config(config.recipe, config.train.epochs)
    recipe.prepare(RecipeContext(model, None, data, config, torch.device("cpu"), False, 0.0))
    first = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    captured = {}
    first.register_forward_hook(lambda m, inputs, _: captured.update(x=inputs[0]))
    model.eval()
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (data.mean, data.std))
    with torch.no_grad():
        model((data.train_x[:512].float() / 255 - mean) / std)
    actual = captured["x"].var(dim=(0, 2, 3))
    ratio = first.running_var / actual
    assert 0.5 < float(ratio.median()) < 2, ratio  # before: the init's 1.0 against a variance far smaller
    assert int(first.num_batches_tracked) == 0  # as before GradInit: training's momentum path unchanged


def test_a_short_lrsi_run_evaluates_the_network_it_trained(tmp_path: Path) -> None:
    """The issue's digits case, shortened: with the initial running statistics the first evaluation
    predicted one class (10%); the network's own statistics put it far above chance."""
    config = RunConfig.from_flat(
        {"model": "cnn", "data": "digits", "epochs": 1, "recipe": "lrsi", "gradinit_iterations": 20}
        | {"progress": False, "threads": 1}
    )
    result = run_experiment(config, tmp_path / "run")
    assert result.summary["final_test_acc"] > 0.3


def test_gradinit_says_how_long_it_will_take_when_that_is_long(capsys: pytest.CaptureFixture[str]) -> None:
    from anymask.recipe.gradinit import _announce

    _announce(180, 30.0)
    assert capsys.readouterr().err == ""
    _announce(180, 2400.0)
    err = capsys.readouterr().err
    assert "180 iterations" in err and "about 40 min" in err and "--gradinit-iterations" in err


# -- 11. what a newcomer meets -------------------------------------------------------------------
def test_help_texts_read_right(capsys: pytest.CaptureFixture[str]) -> None:
    texts = {}
    for command in ("train", "prune", "report", "sweep", "inspect", "demo"):
        code, out, _ = cli([command, "--help"], capsys)
        assert code == 0
        texts[command] = " ".join(out.split())
    assert (
        "--lr " not in texts["prune"] and "--epochs" not in texts["prune"] and "--sparsity" in texts["prune"]
    )
    assert "(default: None)" not in texts["train"]
    assert "the run's seed). (default" not in texts["train"]
    assert "(default: report)" in texts["report"] and "default: 1)" in texts["sweep"]
    assert "default: the first the mask fits" in texts["inspect"]
    code, out, _ = cli(["--version"], capsys)
    assert code == 0 and out.startswith("anymask ")


def test_prune_accepts_training_settings_for_lth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.safetensors"
    code, _, err = cli(
        ["prune", "--method", "random", "--sparsity", "0.5", "--lr", "0.2", "--out", str(out)], capsys
    )
    assert code == 0 and out.is_file(), err


def test_inspect_infers_the_input_shape_from_the_mask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mask = tmp_path / "m.safetensors"
    assert cli(["prune", "--method", "random", "--sparsity", "0.5", "--out", str(mask)], capsys)[0] == 0
    code, out, err = cli(["inspect", str(mask), "--model", "cnn"], capsys)
    assert code == 0, err
    assert "sparsity 0.5000" in out


def test_only_rank_zero_prints_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = quick_config(epochs=1, train_subset=64)
    monkeypatch.setenv("RANK", "1")
    code, out, _ = cli(["train", *flags(config), "--out", str(tmp_path / "run")], capsys)
    assert code == 0 and out == ""
    monkeypatch.setenv("RANK", "0")
    code, out, _ = cli(["train", *flags(config), "--out", str(tmp_path / "run")], capsys)
    assert code == 0 and out.startswith("already finished:")
