"""What pruning alone does to a prune-and-tune ensemble: each child's mask applied to its parent's
weights and measured before any tuning, alone and averaged as the ensemble averages them.

Beside the tuned children it says how much pruning cost and how much of it the tuning won back, which
separates "the children cannot recover in so few steps" from "averaging does not add enough"
(docs/ensembles.md).
"""

from __future__ import annotations

from typing import Any

from anymask.ensembles.calibration import calibration
from anymask.ensembles.combine import mean_probabilities
from anymask.ensembles.members import MemberRun, evaluation_data, model_probabilities, split_images
from anymask.ensembles.pruning import pruned_child
from anymask.train.distributed import World, resolve_device

MEASURES = ("accuracy", "nll", "ece")  # of each untuned child and their ensemble (no reliability bins)


def untuned_children(
    parent: MemberRun,
    children: list[MemberRun],
    *,
    data_dir: str | None = None,
    device: str = "auto",
    split: str = "test",
) -> dict[str, Any]:
    """ensemble.json's 'untuned': every child's mask on the parent's weights (BatchNorm statistics the
    parent's), measured on the split, and the mean of their softmax."""
    data = evaluation_data([parent, *children], data_dir, split)
    where = resolve_device(device, World())
    labels = split_images(data, split)[1]
    parent_model = parent.model(data, where)
    probabilities = []
    for child in children:
        mask = child.mask(child.model(data))  # the child's mask file, or what its tuned weights keep
        pruned = pruned_child(parent_model, mask.to(where))
        probabilities.append(model_probabilities(pruned, parent, data, where, split=split))
    members = []
    for index, child_probabilities in enumerate(probabilities):
        measured = calibration(child_probabilities, labels).to_dict()
        members.append({"child": index, **{key: measured[key] for key in MEASURES}})
    combined = calibration(mean_probabilities(probabilities), labels).to_dict()
    accuracies = [member["accuracy"] for member in members]
    return {
        "members": members,
        "ensemble": {
            **{key: combined[key] for key in MEASURES},
            "mean_member_accuracy": sum(accuracies) / len(accuracies),
        },
    }
