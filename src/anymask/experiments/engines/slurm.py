"""The SLURM engine: the sweep's runs are one job array submitted through submitit, one task per run.

Each task asks for `cpus_per_run` CPUs, `gpus_per_run` GPUs and `time` minutes on `partition`. SLURM
warns a task shortly before its time runs out or when it is preempted (submitit asks for SIGUSR2); the task
is then requeued (at most `retries` times after timeouts; preemptions do not count) and resumes from the
run's last epoch checkpoint. The sweep command waits for the array, showing the progress bar; if it is
interrupted the tasks keep running, and running the sweep again finds their finished folders. submitit's
job files and logs go to `<out>/.slurm/`.
"""

from __future__ import annotations

import time
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

FEATURE = "--engine slurm"
CLUSTERS = ("slurm", "local")
JOBS_FOLDER = ".slurm"


@ENGINES.register("slurm")
class SlurmEngine(Engine):
    def __init__(self, settings: EngineSettings) -> None:
        super().__init__(settings)
        self.cpus = settings.cpus_per_run or 1

    def check(self) -> None:
        check_installed("submitit", "slurm", FEATURE)
        s = self.settings
        if s.slurm_cluster not in CLUSTERS:
            raise AnymaskError(f"unknown slurm_cluster '{s.slurm_cluster}'; use {' or '.join(CLUSTERS)}")
        if s.gpus_per_run != int(s.gpus_per_run):  # (its range is checked with the other settings)
            raise AnymaskError(f"--gpus-per-run must be a whole number for SLURM, got {s.gpus_per_run:g}")

    def executor(self, folder: Path, name: str) -> Any:
        submitit = require("submitit", "slurm", FEATURE)
        s = self.settings
        executor = submitit.AutoExecutor(
            folder=folder / "%j", cluster=s.slurm_cluster, slurm_max_num_timeout=s.retries
        )
        parameters: dict[str, Any] = {
            "name": name,
            "timeout_min": s.time,
            "cpus_per_task": self.cpus,
            "tasks_per_node": 1,
            "nodes": 1,
        }
        if s.gpus_per_run:
            parameters["gpus_per_node"] = int(s.gpus_per_run)
        if s.partition:
            parameters["slurm_partition"] = s.partition
        if s.max_parallel:
            parameters["slurm_array_parallelism"] = s.max_parallel
        executor.update_parameters(**parameters)
        return executor

    def run(self, runs: list[PlannedRun], progress: SweepProgress) -> None:
        out = runs[0].folder.parent.resolve()
        executor = self.executor(out / JOBS_FOLDER, f"anymask-{out.name}")
        tasks = [RunTask(run_config(run, self.cpus), run.folder.resolve(), Path.cwd()) for run in runs]
        try:
            jobs = executor.map_array(SlurmTask(), tasks)
        except Exception as error:  # sbatch refused (unknown partition, no such cluster...)
            first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise AnymaskError(f"SLURM refused the job array: {first}") from None
        pending = dict(zip(jobs, runs, strict=True))
        while pending:
            progress.running(list(pending.values()))
            for job in [job for job in pending if job.done()]:
                progress.done(pending.pop(job), _result(job))
            time.sleep(REFRESH_SECONDS)


def _result(job: Any) -> str | None:
    try:
        return job.result()
    except Exception as error:  # the task died, ran out of requeues, or was cancelled
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        return f"SLURM task {job.job_id} did not finish: {lines[-1] if lines else type(error).__name__}"


class SlurmTask:
    """The callable each array task runs. Checkpointable: on timeout or preemption submitit calls
    `checkpoint` and requeues the task with the same arguments; the run folder's checkpoint carries
    the progress, so nothing else needs saving."""

    def __call__(self, task: RunTask) -> str | None:
        import warnings

        from anymask.errors import one_line_warning

        warnings.showwarning = one_line_warning  # type: ignore[assignment]
        return task()

    def checkpoint(self, task: RunTask) -> Any:
        submitit = require("submitit", "slurm", FEATURE)
        return submitit.helpers.DelayedSubmission(self, task)
