"""Learning-rate schedules as pure functions of the step: resuming needs no scheduler state."""

from __future__ import annotations

import math
from collections.abc import Callable

from anymask.config import TrainConfig
from anymask.errors import AnymaskError
from anymask.registry import Registry

# factor(step, total_steps, config) -> multiplier of config.lr
Schedule = Callable[[int, int, TrainConfig], float]
SCHEDULES: Registry[Schedule] = Registry("learning-rate schedule")


def _warmup(step: int, total: int, config: TrainConfig) -> float:
    warmup_steps = config.warmup_epochs / max(config.epochs, 1) * total
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


@SCHEDULES.register("constant")
def constant(step: int, total: int, config: TrainConfig) -> float:
    return _warmup(step, total, config)


@SCHEDULES.register("cosine")
def cosine(step: int, total: int, config: TrainConfig) -> float:
    return _warmup(step, total, config) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))


@SCHEDULES.register("step")
def step_decay(step: int, total: int, config: TrainConfig) -> float:
    passed = sum(step >= m * total for m in config.lr_milestones)
    return _warmup(step, total, config) * config.lr_gamma**passed


@SCHEDULES.register("onecycle")
def one_cycle(step: int, total: int, config: TrainConfig) -> float:
    """Linear from `onecycle_start` of the peak up to it over the first `onecycle_warmup` of the run (30%
    and 1/25 by default, as OneCycleLR), then cosine down to 1/1000 of the peak."""
    peak = config.onecycle_warmup * total
    start = config.onecycle_start
    if step < peak:
        return start + (1 - start) * step / peak
    progress = (step - peak) / max(total - peak, 1)
    return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    if config.lr <= 0:
        raise AnymaskError(f"lr must be positive, got {config.lr}")
    return config.lr * SCHEDULES.get(config.lr_schedule)(step, total_steps, config)
