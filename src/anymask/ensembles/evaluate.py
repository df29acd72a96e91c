"""An ensemble of finished run folders measured on the test (or validation) images: ensemble.json.

Every member and the ensemble (mean of softmax) get accuracy, NLL, ECE (15 bins) and reliability bins;
a prune-and-tune ensemble also gets its parent's, measured the same way, and its training cost in
epochs and seconds against the parent's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from anymask.ensembles.calibration import ECE_BINS, calibration
from anymask.ensembles.combine import COMBINATION, disagreement, mean_probabilities
from anymask.ensembles.members import (
    MemberRun,
    evaluation_data,
    member_record,
    split_images,
    split_probabilities,
)
from anymask.errors import AnymaskError
from anymask.io import atomic_write_text
from anymask.train.distributed import World, resolve_device

ENSEMBLE_JSON = "ensemble.json"


def evaluate_ensemble(
    members: list[MemberRun],
    *,
    parent: MemberRun | None = None,
    roles: list[str] | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    split: str = "test",
) -> dict[str, Any]:
    """ensemble.json's measurements: the ensemble, each member and (for prune-and-tune) the parent, on
    the test images, or with `split` 'val' on the validation images (to choose settings)."""
    if not members:
        raise AnymaskError("an ensemble needs at least one member")
    runs = {
        run.folder: run for run in [*members, *([parent] if parent else [])]
    }  # the parent may be a member
    data = evaluation_data(list(runs.values()), data_dir, split)
    where = resolve_device(device, World())
    probabilities = {
        folder: split_probabilities(run, data, where, split=split) for folder, run in runs.items()
    }
    labels = split_images(data, split)[1]
    member_probabilities = [probabilities[run.folder] for run in members]
    combined = mean_probabilities(member_probabilities)
    records = []
    for index, run in enumerate(members):
        record = {"role": roles[index] if roles else "member", **member_record(run)}
        record.update(calibration(member_probabilities[index], labels).to_dict())
        records.append(record)
    accuracies = [r["accuracy"] for r in records]
    result: dict[str, Any] = {
        "combination": COMBINATION,
        "evaluated_on": {"data": data.name, "split": split, "images": len(labels), "ece_bins": ECE_BINS},
        "ensemble": {
            "members": len(members),
            **calibration(combined, labels).to_dict(),
            "mean_member_accuracy": sum(accuracies) / len(accuracies),
            "best_member_accuracy": max(accuracies),
            "disagreement": disagreement(member_probabilities),
        },
        "members": records,
    }
    if parent is not None:
        result["parent"] = {
            **member_record(parent),
            **calibration(probabilities[parent.folder], labels).to_dict(),
        }
    result["evaluated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return result


def training_cost(members: list[MemberRun], parent: MemberRun | None) -> dict[str, Any]:
    """Epochs and training seconds (as each run's summary records them) of everything the ensemble trained,
    against its parent's (prune-and-tune) or a single member's on average (a set of runs)."""
    trained = [run for run in members if parent is None or run.folder != parent.folder]
    epochs = sum(int(run.summary["epochs"]) for run in trained)
    seconds = sum(float(run.summary.get("train_seconds", 0.0)) for run in trained)
    if parent is not None:
        base_epochs, base_seconds = (
            int(parent.summary["epochs"]),
            float(parent.summary.get("train_seconds", 0.0)),
        )
        total_epochs, total_seconds, against = base_epochs + epochs, base_seconds + seconds, "parent"
    else:
        base_epochs = epochs / len(trained)
        base_seconds = seconds / len(trained)
        total_epochs, total_seconds, against = epochs, seconds, "one member (mean)"
    return {
        "against": against,
        "epochs": total_epochs,
        "baseline_epochs": base_epochs,
        "epochs_ratio": total_epochs / base_epochs,
        "train_seconds": total_seconds,
        "baseline_train_seconds": base_seconds,
        "seconds_ratio": total_seconds / base_seconds if base_seconds else None,
    }


def write_ensemble_json(out: Path, record: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / ENSEMBLE_JSON
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def evaluate_runs(
    folders: list[Path], out: Path, *, data_dir: str | None = None, device: str = "auto", split: str = "test"
) -> dict[str, Any]:
    """`anymask ensemble --members RUN RUN ...`: a given set of runs (a deep ensemble, or one run for its
    calibration alone) measured and written to OUT/ensemble.json."""
    from anymask.ensembles.members import read_member
    from anymask.io import check_output_folder

    check_output_folder(out)
    runs = [read_member(folder) for folder in folders]
    if len({run.folder.resolve() for run in runs}) != len(runs):
        raise AnymaskError("a run folder is listed twice in --members; list each member once")
    record = {"kind": "members", **evaluate_ensemble(runs, data_dir=data_dir, device=device, split=split)}
    record["cost"] = training_cost(runs, None)
    write_ensemble_json(out, record)
    return record


def summary_line(record: dict[str, Any]) -> str:
    e = record["ensemble"]
    line = (
        f"ensemble of {e['members']}: accuracy {e['accuracy']:.4f}, NLL {e['nll']:.4f}, ECE {e['ece']:.4f} "
        f"(members' mean accuracy {e['mean_member_accuracy']:.4f})"
    )
    if "parent" in record:
        p = record["parent"]
        line += f"; parent {p['accuracy']:.4f}, NLL {p['nll']:.4f}, ECE {p['ece']:.4f}"
    cost = record["cost"]
    return line + f"; {cost['epochs']:g} epochs, {cost['epochs_ratio']:.2f}x the {cost['against']}'s"
