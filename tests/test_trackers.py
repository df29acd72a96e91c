"""Trackers (--log tensorboard,wandb,mlflow): what a run sends, read back from each tool's own files, with
every epoch exactly once on a run killed mid-way and resumed; and their one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anymask.config import RunConfig
from anymask.errors import AnymaskError
from anymask.experiments.sweep import load_sweep
from anymask.masks import Mask
from anymask.train.run import validate
from quick_runs import QUICK
from tracker_readback import tensorboard_scalars, tensorboard_texts, wandb_history, wandb_runs, wandb_summary

EPOCHS = 8


def test_unknown_tracker_is_one_line_listing_them() -> None:
    with pytest.raises(
        AnymaskError, match="unknown tracker 'neptune'; choose one of: mlflow, tensorboard, wandb"
    ):
        validate(RunConfig.from_flat({"log": "tensorboard,neptune"}))


@pytest.mark.parametrize(
    ("tracker", "module"), [("tensorboard", "tensorboard"), ("wandb", "wandb"), ("mlflow", "mlflow")]
)
def test_missing_tracker_package_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, tracker: str, module: str
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    with pytest.raises(AnymaskError) as error:
        validate(RunConfig.from_flat({"log": [tracker]}))
    assert str(error.value) == (
        f"--log {tracker} needs the '{module}' package, which is not installed; "
        f"install it with: pip install 'anymask[{tracker}]'"
    )


def test_trackers_are_a_setting_of_files_and_sweeps_that_keeps_run_folders(tmp_path: Path) -> None:
    plain = RunConfig.from_flat({"sparsity": 0.9, "mask_method": "erk"})
    logged = plain.updated({"log": "tensorboard,wandb", "log_project": "study", "mlflow_uri": "file:x"})
    assert logged.tracking.log == ["tensorboard", "wandb"] and logged.hash() == plain.hash()
    assert plain.updated({"log": "mlflow, wandb"}).tracking.log == ["mlflow", "wandb"]
    assert logged.updated({"log": ""}).tracking.log == []  # `--log ""`: off (as a config's flags give it)
    path = tmp_path / "s.toml"
    path.write_text('[base]\nlog = ["mlflow"]\n[base.tracking]\nlog_project = "p"\n[grid]\nseed = [0, 1]\n')
    runs = load_sweep(path).plan(tmp_path / "out")
    assert [run.config.tracking.log for run in runs] == [["mlflow"], ["mlflow"]]
    assert runs[0].config.hash() == RunConfig.from_flat({"seed": 0}).hash()


# -- a real run, killed and resumed, read back from all three trackers ----------------------------------
def tracker_env(root: Path) -> dict[str, str]:
    """Offline W&B and a local MLflow file store, everything under `root`."""
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(root / "wandb-config"),
        "WANDB_CACHE_DIR": str(root / "wandb-cache"),
        "WANDB_DATA_DIR": str(root / "wandb-data"),
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 keeps the file store for those who ask for it
    }


def train_command(folder: Path, store: Path, resume: bool = False) -> list[str]:
    settings = {**QUICK, "train_subset": 512, "epochs": EPOCHS, "mask_method": "random", "sparsity": 0.9}
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items() if key != "progress"]
    command = [sys.executable, "-m", "anymask", "train", *flags, "--no-progress", "--out", str(folder)]
    command += [
        "--log",
        "tensorboard,wandb,mlflow",
        "--log-project",
        "readback",
        "--mlflow-uri",
        f"file:{store}",
    ]
    return command + (["--resume"] if resume else [])


def sent_epochs(folder: Path) -> int:
    try:
        return json.loads((folder / "tracking.json").read_text())["mlflow"]["epochs"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run killed (SIGKILL) after its first epochs reached the trackers, then resumed to the end."""
    for package in ("tensorboard", "wandb", "mlflow"):
        pytest.importorskip(package)
    root = tmp_path_factory.mktemp("tracked")
    folder, store, env = root / "run", root / "mlruns", tracker_env(root)
    process = subprocess.Popen(
        train_command(folder, store),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while process.poll() is None and sent_epochs(folder) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # the training process only, as an OOM kill would
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read() if process.stderr else ""
    assert not (folder / "summary.json").exists(), "the run finished before it could be killed"
    _wait_for_group(process.pid)  # W&B's service notices and exits
    state = json.loads((folder / "tracking.json").read_text())
    (root / "wandb_sent_before_kill").write_text(str(state["wandb"]["epochs"]))
    resumed = subprocess.run(
        train_command(folder, store, resume=True), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    return folder, store


def _wait_for_group(group: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(group, signal.SIGKILL)


def metrics(folder: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_shows_every_epoch_once_and_the_run(tracked_run: tuple[Path, Path]) -> None:
    folder, _ = tracked_run
    scalars = tensorboard_scalars(folder / "tensorboard")
    assert len(list((folder / "tensorboard").glob("events.out.tfevents.*"))) == 2  # two processes wrote
    for key in ("test_acc", "train_loss", "lr", "nonzero"):
        assert [step for step, _ in scalars[key]] == list(range(1, EPOCHS + 1)), key
        assert [value for _, value in scalars[key]] == pytest.approx(
            [r[key] for r in metrics(folder)], rel=1e-6
        )
    mask = Mask.load(folder / "mask.safetensors")
    densities = {f"mask/density/{layer.name}": layer.density for layer in mask.layers()}
    for tag, density in densities.items():  # the table's 6 decimals, as float32
        assert scalars[tag] == [(0, pytest.approx(density, abs=2e-6))]
    texts = tensorboard_texts(folder / "tensorboard")
    assert texts == {
        "config/text_summary": [0],
        "mask/layers/text_summary": [0],
        "summary/text_summary": [EPOCHS],
    }


@pytest.mark.xfail(
    reason="known gap (issue 23 open, docs/scale.md): a W&B run killed with SIGKILL may not be continued "
    "by the resumed process; it failed so in session 9's full suite on a loaded machine",
    strict=False,
)
def test_wandb_offline_run_has_every_epoch_once_the_config_table_and_summary(
    tracked_run: tuple[Path, Path],
) -> None:
    folder, _ = tracked_run
    runs = wandb_runs(folder)
    assert len(runs) == 2 and runs[0][0] == runs[1][0]  # the resumed process continued the same W&B run
    assert runs[0][0] == json.loads((folder / "tracking.json").read_text())["wandb"]["id"]
    summary = json.loads((folder / "summary.json").read_text())
    assert runs[0][1]["sparsity"] == 0.9 and runs[0][1]["config_hash"] == summary["config_hash"]
    rows = wandb_history(folder)
    epochs = [row["epoch"] for row in rows if "test_acc" in row]
    # No epoch twice. W&B's service drops records it had not yet written when the training process is
    # killed (SIGKILL), so the last epochs the killed process sent may be missing (docs/scale.md);
    # every epoch the resumed process sent is there.
    sent_before_kill = int((folder.parent / "wandb_sent_before_kill").read_text())
    assert epochs == sorted(set(epochs)) and set(range(sent_before_kill + 1, EPOCHS + 1)) <= set(epochs)
    accuracy = {r["epoch"]: r["test_acc"] for r in metrics(folder)}
    assert all(row["test_acc"] == accuracy[row["epoch"]] for row in rows if "test_acc" in row)
    tables = [row for row in rows if "mask/layers/nrows" in row]
    assert len(tables) <= 1 and all(
        t["mask/layers/nrows"] == len(Mask.load(folder / "mask.safetensors")) for t in tables
    )
    assert wandb_summary(folder)["final/final_test_acc"] == summary["final_test_acc"]


def test_mlflow_store_has_every_epoch_once_params_table_and_summary(
    tracked_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")

    folder, store = tracked_run
    client = MlflowClient(tracking_uri=f"file:{store}")
    run_id = json.loads((folder / "tracking.json").read_text())["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["sparsity"] == "0.9"
    assert client.get_experiment(run.info.experiment_id).name == "readback"
    history = sorted(client.get_metric_history(run_id, "test_acc"), key=lambda m: (m.step, m.timestamp))
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))
    assert [m.value for m in history] == [r["test_acc"] for r in metrics(folder)]
    artifacts = Path(client.download_artifacts(run_id, "", str(folder.parent / "artifacts")))
    summary = json.loads((folder / "summary.json").read_text())
    assert json.loads((artifacts / "summary.json").read_text()) == summary
    layers = json.loads((artifacts / "mask_layers.json").read_text())["layers"]
    assert [row["kept"] for row in layers] == [
        layer.kept for layer in Mask.load(folder / "mask.safetensors").layers()
    ]
