"""The Ray engine: each run of the grid is one Ray task, on a running cluster (`--address`) or here.

A task reserves `cpus_per_run` CPUs and `gpus_per_run` GPUs (Ray sets CUDA_VISIBLE_DEVICES for it) and
trains its run with that many threads unless the sweep file sets `threads`. When the worker or the node
running a task dies, Ray retries the task (`retries` times) on another node, and the retry resumes the
run from its last epoch checkpoint in the shared run folder: no run is lost and none starts over.
Failures inside a run (bad data, a bug) are not retried: they are reported as the local engine does.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anymask.errors import AnymaskError
from anymask.experiments.engines.base import (
    ENGINES,
    REFRESH_SECONDS,
    Engine,
    EngineSettings,
    RunTask,
    SweepProgress,
    run_config,
)
from anymask.extras import check_installed, require

if TYPE_CHECKING:
    from anymask.experiments.sweep import PlannedRun

FEATURE = "--engine ray"


@ENGINES.register("ray")
class RayEngine(Engine):
    def __init__(self, settings: EngineSettings) -> None:
        super().__init__(settings)
        self.cpus = settings.cpus_per_run or 1

    def check(self) -> None:
        check_installed("ray", "ray", FEATURE)

    def run(self, runs: list[PlannedRun], progress: SweepProgress) -> None:
        ray = require("ray", "ray", FEATURE)
        started_here = not ray.is_initialized()
        if started_here:
            _connect(ray, self.settings.address)
        remote = ray.remote(_run_task).options(
            num_cpus=self.cpus,
            num_gpus=self.settings.gpus_per_run,
            max_retries=self.settings.retries,  # system failures only: a dead worker or node
            retry_exceptions=False,
        )
        tasks = [RunTask(run_config(run, self.cpus), run.folder.resolve(), Path.cwd()) for run in runs]
        pending = {remote.remote(task): run for task, run in zip(tasks, runs, strict=True)}
        try:
            while pending:
                progress.running(list(pending.values()))
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=REFRESH_SECONDS)
                for ref in ready:
                    progress.done(pending.pop(ref), _result(ray, ref, self.settings.retries))
        finally:
            for ref in pending:  # interrupted: stop the tasks so their folders are free to resume later
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()


def _connect(ray: Any, address: str | None) -> None:
    try:
        ray.init(address=address, include_dashboard=False, logging_level="warning")
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise AnymaskError(f"cannot connect to {where}: {first}; start it with `ray start --head`") from None


def _result(ray: Any, ref: Any, retries: int) -> str | None:
    """The task's answer (None or the run's error), or why Ray gave up on it, as one line."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"Ray gave up on this run after {retries} retries ({type(error).__name__}: {first})"


def _run_task(task: RunTask) -> str | None:
    """Inside a Ray worker: warnings as one line, then train (or resume) the run."""
    import warnings

    from anymask.errors import one_line_warning

    warnings.showwarning = one_line_warning  # type: ignore[assignment]
    return task()
