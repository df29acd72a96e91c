"""Experiment trackers: a run's curves live in TensorBoard, Weights & Biases or MLflow too (`--log`).

A trainer extension (registered here, on import) sends each saved epoch, the config, the mask's per-layer
density table and the final summary to every tracker the run names; `metrics.jsonl` stays the record the
reports read. Each tracker is an optional extra (`pip install 'anymask[tensorboard]'`, `[wandb]`,
`[mlflow]`). See docs/scale.md.
"""

from anymask.tracking import extension  # noqa: F401  (registers the "tracking" trainer extension)
from anymask.tracking.config import TrackingConfig
from anymask.tracking.trackers import TRACKERS, Tracker

__all__ = ["TRACKERS", "Tracker", "TrackingConfig"]
