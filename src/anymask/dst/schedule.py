"""When the mask changes and by how much: every `dst_interval` steps until `dst_end` of training, a
fraction of each layer's active weights that decays from `dst_fraction` to 0 along a cosine (RigL)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from anymask.dst.config import DstConfig


@dataclass(frozen=True)
class UpdateSchedule:
    interval: int  # optimizer steps between updates
    initial_fraction: float  # dst_fraction: the fraction at step 0 of the cosine
    end_step: int  # first step at which the mask is frozen

    @classmethod
    def from_config(cls, config: DstConfig, total_steps: int) -> UpdateSchedule:
        return cls(config.dst_interval, config.dst_fraction, int(config.dst_end * total_steps))

    def is_update_step(self, step: int) -> bool:
        """Steps interval, 2 x interval, ... before end_step (step 0 has no training signal yet)."""
        return 0 < step < self.end_step and step % self.interval == 0

    def fraction(self, step: int) -> float:
        """0.5 * f0 * (1 + cos(pi * step / end_step)): f0 at the start, 0 when the mask freezes."""
        if step >= self.end_step:
            return 0.0
        return 0.5 * self.initial_fraction * (1 + math.cos(math.pi * step / self.end_step))

    def update_steps(self) -> list[int]:
        return [s for s in range(self.interval, self.end_step, self.interval)]
