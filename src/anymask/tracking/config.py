"""Settings for experiment trackers (the `[tracking]` section of a run config). None is hashed: where a
run's curves are shown never changes its numbers, so turning a tracker on keeps the run's folder."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrackingConfig:
    log: list[str] = field(default_factory=list)
    """Experiment trackers sent each epoch's metrics, the config, the mask's per-layer densities and the
    summary, beside metrics.jsonl: any of tensorboard, wandb, mlflow (e.g. --log tensorboard,wandb)."""
    log_project: str = "anymask"
    """W&B project and MLflow experiment the runs go to."""
    mlflow_uri: str | None = None
    """MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's own default)."""

    def inert_settings(self) -> set[str]:
        return {"log", "log_project", "mlflow_uri"}
