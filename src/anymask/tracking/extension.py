"""Trackers inside `anymask train`: the trainer extension that feeds them as the run folder is written.

Epochs are sent after they are saved (checkpoint and metrics.jsonl), so a tracker never shows an epoch the
run folder lacks. `tracking.json` in the run folder records, per tracker, its ids and the last epoch it was
sent; a resumed run reads it and sends the epochs an interrupted process had not, then carries on, so
each epoch appears once (TensorBoard also purges events at or past the resumed epoch, and MLflow checks
the epochs it already holds, against a kill between sending and recording).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anymask.errors import AnymaskError
from anymask.extensions import TRAINER_EXTENSIONS, ExtensionContext, ExtensionKind, TrainerExtension
from anymask.extras import check_installed
from anymask.io import atomic_write_text
from anymask.tracking.trackers import TRACKERS, TrackedRun, Tracker

STATE = "tracking.json"


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The entries of a metrics line a tracker plots: numbers (flags as 0/1), never lists or the epoch."""
    return {
        key: float(value)
        for key, value in record.items()
        if isinstance(value, int | float) and key != "epoch"
    }


def layer_table(mask: Any) -> list[dict[str, Any]]:
    return [
        {
            "layer": layer.name,
            "shape": "x".join(map(str, layer.shape)),
            "kept": layer.kept,
            "total": layer.total,
            "density": round(layer.density, 6),
        }
        for layer in mask.layers()
    ]


def open_tracker(name: str, run: TrackedRun) -> Tracker:
    """The tracker for this run; a tracker that cannot start (no server, a refused store) is one line."""
    try:
        return TRACKERS.get(name)(run)
    except AnymaskError:
        raise
    except Exception as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[0] if lines else type(error).__name__
        raise AnymaskError(f"--log {name} cannot start: {reason}") from None


class TrackingExtension(TrainerExtension):
    name = "tracking"

    def __init__(self, context: ExtensionContext) -> None:
        assert context.out_dir is not None
        self.folder: Path = context.out_dir
        self.config = context.config
        self.mask = context.mask
        self.names: list[str] = list(dict.fromkeys(context.config.tracking.log))
        self.state: dict[str, dict[str, Any]] = self.read_state()
        self.trackers: dict[str, Tracker] = {}

    def read_state(self) -> dict[str, dict[str, Any]]:
        from anymask.artifacts import read_tracking_state

        path = self.folder / STATE
        return read_tracking_state(path) if path.is_file() else {}

    def write_state(self) -> None:
        atomic_write_text(self.folder / STATE, json.dumps(self.state, indent=2) + "\n")

    def open(self) -> None:
        """Each tracker, once per process; a tracker seen before in this folder continues its run."""
        c = self.config
        name = f"{c.mask.mask_method}-{c.mask.sparsity:g}-{c.recipe.recipe}-s{c.train.seed}-{c.hash()}"
        flat = {**c.to_flat(), "config_hash": c.hash()}
        for tracker in [t for t in self.names if t not in self.trackers]:
            state = self.state.setdefault(tracker, {"epochs": 0})
            run = TrackedRun(
                self.folder,
                name,
                flat,
                c.tracking.log_project,
                c.tracking.mlflow_uri,
                state,
                first_epoch=state["epochs"] + 1,
                resumed="started" in state,
                save=self.write_state,
            )
            self.trackers[tracker] = open_tracker(tracker, run)
        self.write_state()  # ids to reconnect to, before anything is sent

    def send(self, what: str, action: Any) -> None:
        """Give every tracker that lacks `what` (a state key) what `action(tracker)` sends, then record it."""
        for name, tracker in self.trackers.items():
            if not self.state[name].get(what):
                action(tracker)
                tracker.flush()
                self.state[name][what] = True
                self.write_state()

    def start(self) -> None:
        self.open()
        layers = layer_table(self.mask)
        self.send("started", lambda tracker: tracker.start(layers))

    def epoch_saved(self, history: list[dict[str, Any]]) -> None:
        self.open()
        if not all(self.state[name].get("started") for name in self.trackers):  # killed before start
            self.start()
        for name, tracker in self.trackers.items():
            for record in history[self.state[name]["epochs"] :]:
                tracker.epoch(record["epoch"], scalars(record))
                tracker.flush()
                self.state[name]["epochs"] = record["epoch"]
                self.write_state()

    def summarized(self, summary: dict[str, Any]) -> None:
        self.open()
        epochs = self.config.train.epochs
        self.send("summary", lambda tracker: tracker.summary(summary, epochs))
        for tracker in self.trackers.values():
            tracker.close()
        self.trackers.clear()


class TrackingKind(ExtensionKind):
    def validate(self, config: Any) -> None:
        trackers = {name: TRACKERS.get(name) for name in config.tracking.log}  # unknown names first
        for name, tracker in trackers.items():
            check_installed(tracker.module, tracker.extra, f"--log {name}")
        if not config.tracking.log_project:
            raise AnymaskError("log_project is empty; name the W&B project / MLflow experiment")

    def create(self, context: ExtensionContext) -> TrainerExtension | None:
        if not context.config.tracking.log or context.out_dir is None:  # off, or not the writing rank
            return None
        return TrackingExtension(context)


TRAINER_EXTENSIONS.register("tracking")(TrackingKind())
