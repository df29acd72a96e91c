"""The run pipeline: outputs, reproducibility, exact resume after a kill, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anymask.config import RunConfig
from anymask.errors import AnymaskError
from anymask.masks import Mask
from anymask.models import create_model
from anymask.train import run_experiment
from anymask.train.lock import run_folder_lock
from anymask.train.lr import lr_at
from quick_runs import QUICK, quick_config


def test_run_folder_holds_everything(tmp_path: Path) -> None:
    config = quick_config(mask_method="random", sparsity=0.9)
    result = run_experiment(config, tmp_path / "run")
    folder = result.out_dir
    assert {p.name for p in folder.iterdir()} == {
        "config.json",
        "mask.safetensors",
        "metrics.jsonl",
        "model.safetensors",
        "summary.json",
    }
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert 0.0 <= records[-1]["test_acc"] <= 1.0
    # final weights load into the plain registry model, pruned weights are exactly zero
    model = create_model("cnn", 10, (1, 8, 8))
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    mask = Mask.load(folder / "mask.safetensors")
    assert sum(int(model.get_parameter(n).count_nonzero()) for n in mask) <= mask.kept()
    assert all(torch.all(model.get_parameter(n)[~k] == 0) for n, k in mask.items())
    assert result.summary["mask_kept"] == mask.kept()
    assert json.loads((folder / "config.json").read_text())["mask"]["sparsity"] == 0.9
    # the mask's effective sparsity, for `report` (a random 90% mask of the cnn stays connected)
    assert result.summary["mask_classes_reachable"] == 10 and result.summary["mask_disconnected"] is False
    assert 0 < result.summary["mask_effective_kept"] <= mask.kept()
    # what the seed's bits depend on beyond the config (QUICK pins one thread)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["torch_version"] == torch.__version__
    assert summary["cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""
    assert summary["threads"] == 1


def test_same_seed_reproduces_a_cpu_run(tmp_path: Path) -> None:
    config = quick_config(mask_method="random", sparsity=0.5)
    a = run_experiment(config, tmp_path / "a")
    b = run_experiment(config, tmp_path / "b")
    c = run_experiment(config.updated({"seed": 1}), tmp_path / "c")
    wa, wb, wc = (load_file(r.out_dir / "model.safetensors") for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_finished_run_is_skipped(tmp_path: Path) -> None:
    config = quick_config(epochs=1)
    run_experiment(config, tmp_path / "run")
    again = run_experiment(config, tmp_path / "run")
    assert again.skipped
    with pytest.raises(AnymaskError, match="different config"):
        run_experiment(config.updated({"lr": 0.01}), tmp_path / "run")


def test_a_run_folder_trains_in_one_process_at_a_time(tmp_path: Path) -> None:
    config = quick_config(epochs=1)
    folder = tmp_path / "sweep" / "run"
    with run_folder_lock(folder):  # another process (a second sweep) is training this run
        with pytest.raises(AnymaskError, match="being trained by another process"):
            run_experiment(config, folder)
        assert not folder.exists()
    assert run_experiment(config, folder).summary["epochs"] == 1
    assert [p.name for p in folder.parent.iterdir()] == ["run"]  # the lock file is gone


def _train_command(out: Path, epochs: int) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in QUICK.items() if k not in {"progress", "epochs"}]
    return [
        sys.executable,
        "-m",
        "anymask",
        "train",
        *flags,
        f"--epochs={epochs}",
        "--no-progress",
        "--mask-method=random",
        "--sparsity=0.8",
        "--out",
        str(out),
    ]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path) -> None:
    epochs = 6
    reference = tmp_path / "reference"
    subprocess.run(_train_command(reference, epochs), check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command(killed, epochs), stderr=subprocess.PIPE)
    deadline = time.time() + 600  # generous: on a loaded machine (a sweep beside the tests) it crawls
    metrics = killed / "metrics.jsonl"
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert time.time() < deadline, "the run wrote no 2 epochs in 600 s: nothing to kill mid-way"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists(), "run finished before it could be killed"

    refused = subprocess.run(_train_command(killed, epochs), capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    subprocess.run([*_train_command(killed, epochs), "--resume"], check=True, capture_output=True)

    expected, actual = load_file(reference / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, epochs + 1))


@pytest.mark.parametrize("schedule", ["cosine", "step", "onecycle", "constant"])
def test_lr_schedules(schedule: str) -> None:
    config = quick_config(lr_schedule=schedule, lr=0.1, epochs=10).train
    rates = [lr_at(step, 1000, config) for step in range(1000)]
    assert max(rates) <= 0.1 + 1e-12 and min(rates) > 0
    if schedule == "step":
        assert rates[0] == 0.1 and rates[600] == pytest.approx(0.01) and rates[900] == pytest.approx(0.001)
    if schedule == "cosine":
        assert rates[0] == 0.1 and rates[-1] < 1e-5
    if schedule == "constant":
        assert set(rates) == {0.1}


def test_warmup_ramps_linearly() -> None:
    config = quick_config(lr_schedule="constant", lr=0.1, epochs=10, warmup_epochs=1).train
    assert lr_at(0, 1000, config) == pytest.approx(0.001)
    assert lr_at(99, 1000, config) == pytest.approx(0.1)


def test_nan_loss_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every --lr in its range trains this small net, so the loss the real check sees is made NaN.
    from anymask.train.trainer import Trainer

    check = Trainer.check_finite

    def nan_loss(self: Trainer, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        check(self, loss_sum * float("nan"), epoch, step)

    monkeypatch.setattr(Trainer, "check_finite", nan_loss)
    with pytest.raises(AnymaskError, match=r"diverged.*lower --lr \(now 0\.05\)"):
        run_experiment(quick_config(lr=0.05, epochs=1), tmp_path / "run")


@pytest.mark.slow
def test_dense_resnet20_on_real_cifar(shared_data: Path, tmp_path: Path) -> None:
    """The documented baseline (docs/results.md): 30 epochs reach at least 75%."""
    config = RunConfig.from_flat(
        {
            "model": "resnet20",
            "data": "cifar10",
            "data_dir": str(shared_data),
            "epochs": 30,
            "progress": False,
        }
    )
    assert run_experiment(config, tmp_path / "run").summary["final_test_acc"] >= 0.75


def test_lottery_ticket_with_epoch_rewind_runs_its_rounds(tmp_path: Path) -> None:
    """lth inside `train`: rounds follow 1 - 0.8^k and a rewind point in epochs is understood."""
    config = quick_config(mask_method="lth", sparsity=0.36, lth_rewind="1ep", epochs=2)
    result = run_experiment(config, tmp_path / "run")
    rounds = [json.loads(line) for line in (tmp_path / "run" / "lth_rounds.jsonl").read_text().splitlines()]
    assert [r["sparsity"] for r in rounds] == pytest.approx([0.2, 0.36], abs=1e-4)
    assert result.summary["mask_kept"] == round(0.64 * result.summary["mask_total"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["start_step"] == 4  # 256 / 64


def test_bn_recalibration_changes_only_the_ghost_phase_evaluations(tmp_path: Path) -> None:
    """Evaluations inside the ghost phase use recomputed BN statistics; training is bit-identical."""
    base = quick_config(
        model="resnet20",
        width=0.5,
        mask_method="random",
        sparsity=0.9,
        recipe="tost",
        epochs=3,
        ghost_epochs=2,
        gradinit_iterations=2,
    )
    plain = run_experiment(base, tmp_path / "plain")
    recalibrated = run_experiment(base.updated({"bn_recalibration_batches": 2}), tmp_path / "recal")
    weights = [load_file(r.out_dir / "model.safetensors") for r in (plain, recalibrated)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # running stats included
    records = [
        [json.loads(line) for line in (r.out_dir / "metrics.jsonl").read_text().splitlines()]
        for r in (plain, recalibrated)
    ]
    for before, after in zip(*records, strict=True):
        assert "bn_recalibrated" not in before
        assert after.get("bn_recalibrated", False) == before["ghost_phase"]
        same = (before["test_loss"], before["test_acc"]) == (after["test_loss"], after["test_acc"])
        assert same != before["ghost_phase"]
    assert [r["ghost_phase"] for r in records[0]] == [True, False, False]


def test_negative_bn_recalibration_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AnymaskError, match="invalid bn_recalibration_batches: -1"):
        run_experiment(quick_config(bn_recalibration_batches=-1), tmp_path / "run")
