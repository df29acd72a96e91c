"""Ramps in epoch time shared by every part, and where the ghost phase ends.

Every schedule is a ramp from 0 to 1 between two epochs; a part maps it onto its own quantity (a ghost
neuron's blend goes 0 -> 1, a ghost skip's scale 1 -> 0, label smoothing alpha -> 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from anymask.errors import AnymaskError
from anymask.recipe.base import RecipePart, check_choice

DEFAULT_GHOST_FRACTION = 0.25
"""Ghost phase = the first quarter of the run unless ghost_epochs says otherwise (docs/recipe.md: why)."""

SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda t: t,
    "cosine": lambda t: (1 - math.cos(math.pi * t)) / 2,  # flat at both ends: no jump in slope
    "step": lambda t: float(t >= 1),  # 0 until the end, then 1
}


def ramp(epoch: float, start: float, end: float, shape: str) -> float:
    """0 at `start`, 1 at `end`, clamped outside; `shape` bends the way in between."""
    if end <= start:
        return float(epoch >= end)
    t = min(max((epoch - start) / (end - start), 0.0), 1.0)
    return SHAPES[shape](t)


def check_shape(key: str, shape: str) -> str:
    return check_choice(key, shape, SHAPES)


def ghost_end(ghost_epochs: float | None, total_epochs: float) -> float:
    """The epoch at which ghost parts are gone: `ghost_epochs`, or a fraction of the run by default.

    The phase must end within the run, or the trained network would change when the ghosts are
    finally removed before saving.
    """
    if ghost_epochs is None:
        return DEFAULT_GHOST_FRACTION * total_epochs
    if not 0 <= ghost_epochs <= total_epochs:
        raise AnymaskError(
            f"ghost_epochs must be between 0 and the run's {total_epochs:g} epochs, got {ghost_epochs:g}; "
            "the ghost parts must be gone before training ends"
        )
    return float(ghost_epochs)


class GhostPart(RecipePart):
    """A temporary part: its strength follows `ramp` from epoch 0 to the ghost end, then it is removed.

    `progress` is the ramp position (0 = full ghost, 1 = the plain model); subclasses map it onto their
    own knob and read it in `forward`.
    """

    ghost = True

    def __init__(self, config: Any, total_epochs: float) -> None:
        super().__init__(config, total_epochs)
        self.end = ghost_end(config.ghost_epochs, total_epochs)
        self.shape = check_shape("ghost_schedule", config.ghost_schedule)
        self.progress = 0.0

    def ghost_end(self) -> float:
        return self.end

    def update(self, epoch: float) -> None:
        self.progress = ramp(epoch, 0.0, self.end, self.shape)
