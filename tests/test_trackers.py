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
from tracker_readback import (
    tensorboard_scalars,
    tensorboard_texts,
    tracker_env,
    wandb_history,
    wandb_runs,
    wandb_summary,
)

EPOCHS = 8


def test_unknown_tracker_is_one_line_listing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Named before the unknown one, a known tracker whose package is missing does not hide the typo."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if its extra were not installed
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
    pytest.importorskip("mlflow")  # the sweep's runs log to mlflow
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


KILL_AFTER = 2  # epochs W&B is recorded as sent when the training process is killed


def sent_epochs(folder: Path, tracker: str = "wandb") -> int:
    try:
        return json.loads((folder / "tracking.json").read_text())[tracker]["epochs"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run killed (SIGKILL) the moment tracking.json records epoch KILL_AFTER as sent to W&B (W&B's
    service has it, but has likely not written it yet), then resumed to the end."""
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
    while process.poll() is None and sent_epochs(folder) < KILL_AFTER and time.monotonic() < deadline:
        time.sleep(0.005)
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


def test_wandb_offline_run_has_every_epoch_once_the_config_table_and_summary(
    tracked_run: tuple[Path, Path],
) -> None:
    folder, _ = tracked_run
    run_id = json.loads((folder / "tracking.json").read_text())["wandb"]["id"]
    folders = sorted(folder.glob("wandb/offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(run_id) for f in folders)  # one W&B run, 2 processes
    runs = wandb_runs(folder)  # the killed process's run record may be lost with what it held
    assert runs and all(found == run_id for found, _ in runs)
    summary = json.loads((folder / "summary.json").read_text())
    assert runs[-1][1]["sparsity"] == 0.9 and runs[-1][1]["config_hash"] == summary["config_hash"]
    rows = wandb_history(folder)
    # Each epoch once, the mask table (epoch 0) once, each at W&B step = epoch, so the two processes'
    # rows are one increasing sequence (what `wandb sync` of both folders needs).
    assert [row["epoch"] for row in rows] == list(range(EPOCHS + 1))
    assert all(row["_step"] == row["epoch"] for row in rows)
    accuracy = {r["epoch"]: r["test_acc"] for r in metrics(folder)}
    assert all(row["test_acc"] == accuracy[row["epoch"]] for row in rows[1:])
    assert rows[0]["mask/layers/nrows"] == len(Mask.load(folder / "mask.safetensors"))
    assert wandb_summary(folder)["final/final_test_acc"] == summary["final_test_acc"]
    # The killed process's W&B file holds a prefix of what it sent: the epochs written within the
    # tracker's 0.1 s flush (at least epoch 1, long before the kill), never the ones it had not; the
    # resumed process sent exactly the rest.
    first = [row["epoch"] for row in wandb_history(folder, folders[:1])]
    sent_before_kill = int((folder.parent / "wandb_sent_before_kill").read_text())
    assert sent_before_kill >= KILL_AFTER and first == list(range(len(first)))
    assert 2 <= len(first) <= sent_before_kill + 1


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


def test_mlflow_resume_after_a_kill_before_tracking_json_reuses_the_folders_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed between MLflow's create_run and the tracking.json write: the next process finds
    the run by its folder tag and continues it, so the experiment holds one run, not an empty one more."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from anymask.tracking.trackers import MlflowTracker, TrackedRun

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path / 'store'}"

    def tracker(folder: Path) -> MlflowTracker:
        run = TrackedRun(folder, folder.name, {"seed": 0}, "resume", uri, {}, 1, False)  # empty state
        return MlflowTracker(run)

    first = tracker(tmp_path / "run")
    first.epoch(1, {"test_acc": 0.5})  # ... and the process dies before tracking.json is written
    again = tracker(tmp_path / "run")
    other = tracker(tmp_path / "other run")
    assert again.run_id == first.run_id and again._holds("test_acc", 1) and not again._holds("test_acc", 2)
    assert other.run_id != first.run_id
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("resume").experiment_id
    assert len(client.search_runs([experiment])) == 2


def test_mlflow_resume_after_a_kill_between_two_metrics_of_an_epoch_logs_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file store writes a batch's metrics one at a time: a kill after test_acc but before the rest of
    epoch 2 left test_acc twice at step 2 on resume (seen in CI). Each metric now counts its own epochs."""
    pytest.importorskip("mlflow")
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from anymask.tracking.trackers import MlflowTracker, TrackedRun

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri, folder = f"file:{tmp_path / 'store'}", tmp_path / "run"
    state: dict = {}
    first = MlflowTracker(TrackedRun(folder, "run", {"seed": 0}, "resume", uri, state, 1, False))
    first.epoch(1, {"test_acc": 0.5, "train_loss": 2.0})
    first.client.log_batch(first.run_id, metrics=[Metric("test_acc", 0.6, 0, 2)])  # killed here
    again = MlflowTracker(TrackedRun(folder, "run", {"seed": 0}, "resume", uri, state, 1, False))
    again.epoch(2, {"test_acc": 0.6, "train_loss": 1.5})
    again.epoch(2, {"test_acc": 0.6, "train_loss": 1.5})  # and a replayed epoch sends nothing
    client = MlflowClient(tracking_uri=uri)
    for key, values in {"test_acc": [0.5, 0.6], "train_loss": [2.0, 1.5], "epoch": [1, 2]}.items():
        history = sorted(client.get_metric_history(first.run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == list(zip([1, 2], values, strict=True)), key
