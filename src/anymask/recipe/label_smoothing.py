"""Label smoothing (ls): train against a softened target instead of a one-hot one.

Smoothing keeps logits from growing without bound, which a sparse network with few weights per unit
is prone to. The convention is the paper code's: the true class gets 1 - alpha and each of the other
C - 1 classes alpha / (C - 1) (PyTorch's `label_smoothing=alpha` gives alpha / C to every class).
The official code parses its smoothing flag and ignores it; here the part is on whenever `ls` is in
the recipe, with an optional schedule.
"""

from __future__ import annotations

from typing import Any

import torch

from anymask.errors import AnymaskError
from anymask.recipe.base import RECIPE_PARTS, RecipePart, check_choice
from anymask.recipe.schedules import ghost_end, ramp

SCHEDULES = ("constant", "ghost", "linear")


def smoothed_targets(targets: torch.Tensor, num_classes: int, alpha: float) -> torch.Tensor:
    """[B, C] distributions: 1 - alpha on the target, alpha / (C - 1) on every other class."""
    rows = torch.full((len(targets), num_classes), alpha / max(num_classes - 1, 1), device=targets.device)
    return rows.scatter_(1, targets[:, None], 1.0 - alpha)


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, alpha: float) -> torch.Tensor:
    """Mean cross-entropy of the softmax of `logits` against `smoothed_targets` (computed in float32)."""
    log_probs = logits.float().log_softmax(dim=1)
    return -(smoothed_targets(targets, logits.shape[1], alpha) * log_probs).sum(dim=1).mean()


@RECIPE_PARTS.register("ls")
class LabelSmoothing(RecipePart):
    """`ls_alpha` constant, only during the ghost phase ('ghost'), or decaying linearly to 0 ('linear')."""

    name = "ls"

    def __init__(self, config: Any, total_epochs: float) -> None:
        super().__init__(config, total_epochs)
        if not 0 <= config.ls_alpha < 1:
            raise AnymaskError(f"ls_alpha must be in [0, 1), got {config.ls_alpha}")
        schedule = check_choice("ls_schedule", config.ls_schedule, SCHEDULES)
        self.decay: tuple[float, str] | None = None  # (epoch at which alpha reaches 0, ramp shape)
        if schedule == "ghost":
            self.decay = (ghost_end(config.ghost_epochs, total_epochs), "step")
        elif schedule == "linear":
            self.decay = (total_epochs, "linear")
        self.alpha = config.ls_alpha

    def alpha_at(self, epoch: float) -> float:
        if self.decay is None:
            return self.config.ls_alpha
        end, shape = self.decay
        return self.config.ls_alpha * (1.0 - ramp(epoch, 0.0, end, shape))

    def update(self, epoch: float) -> None:
        self.alpha = self.alpha_at(epoch)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, epoch: float) -> torch.Tensor:
        return smoothed_cross_entropy(logits, targets, self.alpha_at(epoch))

    def metrics(self) -> dict[str, float]:
        return {"alpha": self.alpha}
