"""Reading back what the trackers wrote: TensorBoard event files, offline W&B run files, an MLflow store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

WANDB_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of checksummed chunks
FULL, LAST = 1, 4


def tracker_env(root: Path) -> dict[str, str]:
    """Offline W&B and a local MLflow file store, everything under `root`."""
    inherited = {k: v for k, v in os.environ.items() if k != "WANDB__TRANSACTION_LOG_FLUSH_INTERVAL"}
    return {
        **inherited,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(root / "wandb-config"),
        "WANDB_CACHE_DIR": str(root / "wandb-cache"),
        "WANDB_DATA_DIR": str(root / "wandb-data"),
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 keeps the file store for those who ask for it
    }


def tensorboard_events(folder: Path, plugin: str) -> dict[str, list[Any]]:
    """Tag -> its events of one kind (`scalars`, `text`), as the TensorBoard app loads them: its plugin
    event accumulator, which applies purges to every kind (the older EventAccumulator keeps texts)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()
    return {
        tag: events.Tensors(tag)
        for tag in events.Tags()["tensors"]
        if events.SummaryMetadata(tag).plugin_data.plugin_name == plugin
    }


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> (step, value) in step order, as TensorBoard shows them (purged events dropped)."""
    from tensorboard.util.tensor_util import make_ndarray

    return {
        tag: [(e.step, float(make_ndarray(e.tensor_proto))) for e in found]
        for tag, found in tensorboard_events(folder, "scalars").items()
    }


def tensorboard_texts(folder: Path) -> dict[str, list[int]]:
    """Text tag -> the steps it was written at, as TensorBoard shows them (purged events dropped)."""
    return {tag: [e.step for e in found] for tag, found in tensorboard_events(folder, "text").items()}


def offline_files(run_folder: Path, folders: list[Path] | None = None) -> list[Path]:
    folders = sorted(run_folder.glob("wandb/offline-run-*")) if folders is None else folders
    return [path for f in folders for path in sorted(f.glob("run-*.wandb"))]


def wandb_records(path: Path) -> list[Any]:
    """Every record of one offline run's .wandb file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if WANDB_BLOCK - pos % WANDB_BLOCK < 7:  # a block's tail too short for a header is padding
            pos += WANDB_BLOCK - pos % WANDB_BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(run_folder: Path, folders: list[Path] | None = None) -> list[dict[str, Any]]:
    """The logged rows of every offline W&B run under a run folder (or in `folders`), oldest first."""
    rows = []
    for path in offline_files(run_folder, folders):
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
                )
    return rows


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_summary(run_folder: Path) -> dict[str, Any]:
    """The run's summary as its records leave it (later updates win)."""
    summary: dict[str, Any] = {}
    for path in offline_files(run_folder):
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "summary":
                summary.update({_key(item): json.loads(item.value_json) for item in record.summary.update})
    return summary


def wandb_runs(run_folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """(run id, config) of each offline run under a run folder, oldest first."""
    found = []
    for path in offline_files(run_folder):
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "run":
                items = record.run.config.update
                config = {item.key: json.loads(item.value_json) for item in items if item.key != "_wandb"}
                found.append((record.run.run_id, config))
    return found
