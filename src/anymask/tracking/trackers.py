"""The trackers: TensorBoard, Weights & Biases and MLflow, each behind the same four calls.

A tracker is opened for one run folder, told whether it continues an earlier process's tracking (a
resumed run), and receives the run's start (config and mask table), each epoch's scalar metrics with the
epoch as step, and the summary. Each imports its package only when opened; `module` and `extra` name the
package and the pip extra that installs it.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anymask.extras import require
from anymask.registry import Registry
from anymask.tracking.wandb_files import SUMMARY_PREFIX, Held, held_offline, held_online, set_aside_empty


@dataclass
class TrackedRun:
    """What a tracker knows of its run. `state` is the tracker's own entry in the folder's tracking.json
    (ids to reconnect to); `first_epoch` the first epoch this process will send."""

    folder: Path
    name: str
    config: dict[str, Any]  # flat settings
    project: str
    mlflow_uri: str | None
    state: dict[str, Any]
    first_epoch: int
    resumed: bool
    save: Callable[[], None] = lambda: None  # writes tracking.json (all trackers' state) now


class Tracker:
    module = ""
    extra = ""

    def __init__(self, run: TrackedRun) -> None:
        self.run = run

    def start(self, layers: list[dict[str, Any]]) -> None:
        """The config and the mask's per-layer table, once per run."""

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """One epoch's scalars (1-based epoch as the step)."""

    def summary(self, summary: dict[str, Any], epoch: int) -> None:
        """The run's summary.json entries, once, at its last epoch."""

    def flush(self) -> None:
        """Make what was sent durable before the run folder records it as sent."""

    def close(self) -> None:
        """End the tracker's run."""


TRACKERS: Registry[type[Tracker]] = Registry("tracker")


def markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows])


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """Event files in `<run folder>/tensorboard`: `tensorboard --logdir <sweep folder>` shows every run.
    A resumed run purges the events at or past its first epoch (all of them if the start was not
    recorded as sent), so an event written twice appears once; and it reads back whether the summary
    arrived before the kill."""

    module, extra = "tensorboard", "tensorboard"

    def __init__(self, run: TrackedRun) -> None:
        super().__init__(run)
        require("tensorboard", self.extra, "--log tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        folder = run.folder / "tensorboard"
        earlier = any(folder.glob("events.out.tfevents.*"))
        # Every writer starts a session at its purge step: a resumed one at its first epoch (0 if the
        # start was not recorded as sent), purging what the killed process wrote from there on; a new
        # one at 0, purging nothing, so that a later session counts as a restart for every reader.
        purge = run.first_epoch if earlier and run.state.get("started") else 0
        if purge and not run.state.get("summary") and self._holds_summary(folder, before=purge):
            run.state["summary"] = True  # sent, then killed before tracking.json recorded it
        self.writer = SummaryWriter(str(folder), purge_step=purge)

    @staticmethod
    def _holds_summary(folder: Path, before: int) -> bool:
        """Whether the event files hold the summary text at a step the purge keeps."""
        from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

        events = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()
        tag = "summary/text_summary"
        return tag in events.Tags()["tensors"] and any(e.step < before for e in events.Tensors(tag))

    def start(self, layers: list[dict[str, Any]]) -> None:
        config = "\n".join(f"    {key} = {value!r}" for key, value in self.run.config.items())
        self.writer.add_text("config", config, global_step=0)
        self.writer.add_text("mask/layers", markdown(layers), global_step=0)
        for layer in layers:
            self.writer.add_scalar(f"mask/density/{layer['layer']}", layer["density"], global_step=0)

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=epoch)

    def summary(self, summary: dict[str, Any], epoch: int) -> None:
        self.writer.add_text("summary", "    " + json.dumps(summary, indent=2).replace("\n", "\n    "), epoch)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@TRACKERS.register("wandb")
class WandbTracker(Tracker):
    """A W&B run per run folder, its id kept in tracking.json so a resumed run continues it. Honours the
    usual WANDB_* variables (WANDB_MODE=offline writes `<run folder>/wandb/offline-run-*`).

    Epoch N is logged at W&B step N (the mask table at step 0), so the steps of every process are one
    increasing sequence: a resumed online run continues the server's, and `wandb sync` of a run's
    offline folders puts them one after the other. A resumed run asks W&B what it holds
    (`wandb_files`) and corrects its tracking.json entry to match before anything is sent: the epochs
    a SIGKILL took from W&B's service are sent again, and none twice."""

    module, extra = "wandb", "wandb"
    FLUSH_SECONDS = 0.1  # the service writes the .wandb file this often (W&B's default: 15 s)
    FLUSH_VARIABLE = "WANDB__TRANSACTION_LOG_FLUSH_INTERVAL"  # the user's own choice wins

    def __init__(self, run: TrackedRun) -> None:
        super().__init__(run)
        wandb = require("wandb", self.extra, "--log wandb")
        continued = "id" in run.state
        if not continued:
            run.state["id"] = secrets.token_hex(8)
            run.save()  # the id, before W&B writes anything under it
        earlier = held_offline(run.folder / "wandb", run.state["id"])  # before init adds a folder
        set_aside_empty(run.folder / "wandb", run.state["id"])  # so `wandb sync` takes the rest
        flush = {"x_transaction_log_flush_interval": self.FLUSH_SECONDS}
        if self.FLUSH_VARIABLE in os.environ:
            flush = {}
        self.wandb = wandb
        self.handle = wandb.init(
            project=run.project,
            id=run.state["id"],
            name=run.name,
            dir=str(run.folder),
            config=run.config,
            resume="allow",
            reinit="finish_previous",  # a sweep worker's previous run, if it ended by an error
            settings=wandb.Settings(**flush),
        )
        self.handle.define_metric("*", step_metric="epoch")
        if continued:
            self.match(earlier if self.handle.offline else held_online(self.handle))

    def match(self, held: Held) -> None:
        """tracking.json says what this W&B run holds: the extension then sends exactly the rest."""
        state = self.run.state
        state["epochs"] = held.last_epoch
        for key, present in (("started", 0 in held.epochs), ("summary", held.summary)):
            if present:
                state[key] = True
            else:
                state.pop(key, None)

    def start(self, layers: list[dict[str, Any]]) -> None:
        table = self.wandb.Table(columns=list(layers[0]), data=[list(row.values()) for row in layers])
        self.handle.log({"mask/layers": table, "epoch": 0}, step=0, commit=True)

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.handle.log({**metrics, "epoch": epoch}, step=epoch, commit=True)

    def summary(self, summary: dict[str, Any], epoch: int) -> None:
        self.handle.summary.update({f"{SUMMARY_PREFIX}{key}": value for key, value in summary.items()})

    def flush(self) -> None:
        # log() only queues a record for W&B's service process; reading the summary is a round trip
        # through the same ordered channel, so the service holds the epoch before it is recorded as
        # sent, and writes it to the .wandb file within FLUSH_SECONDS. (W&B has no call that writes
        # it now; what a SIGKILL takes before that is sent again on resume, see `match`.)
        self.handle.summary.keys()

    def close(self) -> None:
        self.handle.finish()


FOLDER_TAG = "anymask.run_folder"
"""The MLflow tag holding a run's folder: how a resumed run finds its MLflow run without tracking.json."""


@TRACKERS.register("mlflow")
class MlflowTracker(Tracker):
    """An MLflow run per run folder (its id kept in tracking.json), in experiment `log_project`: the config
    as params, epochs as metrics with the epoch as step, the mask table and summary as JSON artifacts.
    Before sending, it reads back which epochs each metric already holds, so none is logged twice, even
    when a kill fell between two metrics of one epoch (the file store writes them one at a time)."""

    module, extra = "mlflow", "mlflow"

    def __init__(self, run: TrackedRun) -> None:
        super().__init__(run)
        require("mlflow", self.extra, "--log mlflow")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=run.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        if "run_id" not in run.state:
            experiment = self._experiment_id()
            folder = str(run.folder.resolve())
            run.state["run_id"] = (
                self._run_of_folder(experiment, folder)
                or self.client.create_run(
                    experiment, run_name=run.name, tags={FOLDER_TAG: folder}
                ).info.run_id
            )
        self.run_id = run.state["run_id"]
        self.logged: dict[str, set[int]] = {}  # metric -> epochs the run holds, read on first use

    def _holds(self, key: str, epoch: int) -> bool:
        if key not in self.logged:
            self.logged[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        return epoch in self.logged[key]

    def _run_of_folder(self, experiment: str, folder: str) -> str | None:
        """The MLflow run an earlier process made for this folder, if it was killed before tracking.json
        recorded its id (else a resumed run would start a second, and leave the first empty)."""
        if "'" in folder:  # cannot be quoted in a search filter: a new run it is
            return None
        found = self.client.search_runs([experiment], filter_string=f"tags.`{FOLDER_TAG}` = '{folder}'")
        return found[0].info.run_id if found else None

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.run.project)
        return found.experiment_id if found else self.client.create_experiment(self.run.project)

    def start(self, layers: list[dict[str, Any]]) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(value)[:500]) for key, value in self.run.config.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_dict(self.run_id, {"layers": layers}, "mask_layers.json")

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = {**metrics, "epoch": epoch}
        entries = [Metric(key, v, now, epoch) for key, v in values.items() if not self._holds(key, epoch)]
        for i in range(0, len(entries), 1000):
            self.client.log_batch(self.run_id, metrics=entries[i : i + 1000])
        for key in values:
            self.logged[key].add(epoch)

    def summary(self, summary: dict[str, Any], epoch: int) -> None:
        self.client.log_dict(self.run_id, summary, "summary.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
