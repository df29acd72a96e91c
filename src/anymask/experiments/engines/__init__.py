"""Sweep engines: where a sweep's runs train. `local` (worker processes here, the default), `ray` (one Ray
task per run) and `slurm` (one SLURM job array through submitit). Each is registered in `ENGINES` by its
module; a new one is an `Engine` subclass registered the same way (docs/scale.md)."""

from anymask.experiments.engines import local, ray, slurm  # noqa: F401  (register the engines)
from anymask.experiments.engines.base import (
    ENGINES,
    Engine,
    EngineSettings,
    RunTask,
    SweepProgress,
    run_config,
    train_run,
)

__all__ = ["ENGINES", "Engine", "EngineSettings", "RunTask", "SweepProgress", "run_config", "train_run"]
