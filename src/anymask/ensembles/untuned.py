"""What pruning alone does to a prune-and-tune ensemble: each child's mask applied to its parent's
weights and measured before any tuning, alone and averaged as the ensemble averages them; once with the
parent's BatchNorm statistics, once with statistics recomputed from training images.

Beside the tuned children it says how much pruning cost and how much of it the tuning won back, which
separates "the children cannot recover in so few steps" from "averaging does not add enough"; the
recomputed statistics separate what the pruned weights lost from what stale normalisation hides
(docs/ensembles.md).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from anymask.data import ImageDataset
from anymask.ensembles.calibration import calibration
from anymask.ensembles.combine import mean_probabilities
from anymask.ensembles.members import (
    MemberRun,
    evaluation_data,
    model_probabilities,
    plain_batches,
    split_images,
)
from anymask.ensembles.pruning import pruned_child
from anymask.recipe.gradinit import recalibrate_running_stats
from anymask.train.distributed import World, resolve_device

MEASURES = ("accuracy", "nll", "ece")  # of each untuned child and their ensemble (no reliability bins)
RECALIBRATION_IMAGES = 2560
"""Training images (the first ones, in file order, not augmented) BatchNorm statistics are recomputed from."""


def untuned_children(
    parent: MemberRun,
    children: list[MemberRun],
    *,
    data_dir: str | None = None,
    device: str = "auto",
    split: str = "test",
) -> dict[str, Any]:
    """ensemble.json's 'untuned': every child's mask on the parent's weights, measured on the split with
    the parent's BatchNorm statistics, and under 'recalibrated' with statistics recomputed from
    RECALIBRATION_IMAGES training images; each alone and as the mean of their softmax."""
    data = evaluation_data([parent, *children], data_dir, split)
    where = resolve_device(device, World())
    labels = split_images(data, split)[1]
    parent_model = parent.model(data, where)
    stale, fresh = [], []
    for child in children:
        mask = child.mask(child.model(data))  # the child's mask file, or what its tuned weights keep
        pruned = pruned_child(parent_model, mask.to(where))
        stale.append(model_probabilities(pruned, parent, data, where, split=split))
        fresh.append(
            model_probabilities(recalibrated(pruned, parent, data, where), parent, data, where, split=split)
        )
    return {
        **measured(stale, labels),
        "recalibrated": {"images": min(RECALIBRATION_IMAGES, len(data.train_y)), **measured(fresh, labels)},
    }


def recalibrated(
    model: nn.Module, run: MemberRun, data: ImageDataset, device: torch.device | str
) -> nn.Module:
    """A copy of `model` whose BatchNorm running statistics are the average over the first
    RECALIBRATION_IMAGES training images, in batches of the run's batch size; weights unchanged."""
    model = copy.deepcopy(model)
    images, labels = data.train_x[:RECALIBRATION_IMAGES], data.train_y[:RECALIBRATION_IMAGES]
    batch_size = run.config.train.batch_size
    batches = plain_batches(images, labels, run, data, device, batch_size)
    recalibrate_running_stats(model, batches, math.ceil(len(labels) / batch_size))
    return model.eval()


def measured(probabilities: list[torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
    members = []
    for index, child_probabilities in enumerate(probabilities):
        result = calibration(child_probabilities, labels).to_dict()
        members.append({"child": index, **{key: result[key] for key in MEASURES}})
    combined = calibration(mean_probabilities(probabilities), labels).to_dict()
    accuracies = [member["accuracy"] for member in members]
    return {
        "members": members,
        "ensemble": {
            **{key: combined[key] for key in MEASURES},
            "mean_member_accuracy": sum(accuracies) / len(accuracies),
        },
    }
