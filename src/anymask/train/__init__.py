"""Training: the loop, learning-rate schedules, checkpoints, and the run pipeline."""

from anymask.train.run import RunResult, run_experiment
from anymask.train.trainer import Trainer

__all__ = ["RunResult", "Trainer", "run_experiment"]
