"""What every sweep engine shares: its settings, the progress bar, and training one run wherever it lands.

An engine takes the runs a sweep still has to train and gets each trained once, somewhere: in local worker
processes, as Ray tasks or as SLURM array tasks. Every engine trains a run the same way (`train_run`:
`run_experiment` with resume, which takes the run folder's lock), so everything a sweep promises holds on
each: hash-named folders, finished runs skipped, interrupted ones resumed from their checkpoint, one writer
per folder. Remote engines need the out folder (and the data) on a filesystem every node sees.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from anymask.bounds import Bounds, bounded, bounds_of, check_setting
from anymask.config import RunConfig
from anymask.data import DATASETS, ImageDataset, load_dataset
from anymask.errors import AnymaskError
from anymask.memory import return_freed_memory
from anymask.registry import Registry
from anymask.train.run import run_experiment

if TYPE_CHECKING:
    from anymask.experiments.sweep import PlannedRun

REFRESH_SECONDS = 1.0  # the sweep's bar redraws at least this often, so elapsed time and ETA stay live


@dataclass
class EngineSettings:
    """How a sweep's runs are scheduled (never what they compute: none of this is in a run's hash).

    The `[engine]` table of a sweep file and the `anymask sweep` flags set these; flags win.
    """

    engine: str = "local"
    """Where runs train: 'local' (worker processes here), 'ray' (Ray tasks) or 'slurm' (a job array)."""
    workers: int = bounded(1, low=1, high=1024)
    """local: runs at a time (processes)."""
    address: str | None = None
    """ray: address of a running cluster (host:port or 'auto'); unset starts a Ray instance here."""
    cpus_per_run: int | None = bounded(None, low=1, high=100_000)
    """ray, slurm: CPUs reserved for each run (default 1); a run's threads default to this."""
    gpus_per_run: float = bounded(0, low=0, high=1024)
    """ray, slurm: GPUs reserved for each run (ray accepts fractions; slurm needs a whole number)."""
    retries: int = bounded(3, low=0, high=1000)
    """ray: times a run is retried after its worker or node died; slurm: times a task is requeued after
    running out of time (preemptions requeue without limit). Each retry resumes from the checkpoint."""
    partition: str | None = None
    """slurm: the partition (default: the cluster's default)."""
    time: int = bounded(60, low=1, high=1_000_000)
    """slurm: minutes per task; a task that runs out is requeued and resumes."""
    max_parallel: int | None = bounded(None, low=1, high=1_000_000)
    """slurm: array tasks running at once (default: no limit)."""
    slurm_cluster: str = "slurm"
    """slurm: 'slurm', or 'local' to run the array through submitit's local executor (no cluster)."""

    def updated(self, values: dict[str, Any], where: str, *, flags: bool = False) -> EngineSettings:
        """A copy with `values` (from a file or, with `flags`, the command line) checked, coerced to each
        field's type and within each field's declared range (`anymask.bounds`)."""
        names = {f.name for f in dataclasses.fields(self)}
        new = dataclasses.replace(self)
        for key, value in values.items():
            if key not in names:
                raise AnymaskError(f"{where}: unknown engine setting '{key}'; use {', '.join(sorted(names))}")
            coerced = _coerce(key, value, where)
            name = "--" + key.replace("_", "-") if flags else f"'{key}' in {where}"
            check_setting(name, coerced, engine_bounds().get(key))
            setattr(new, key, coerced)
        return new


@lru_cache(maxsize=1)
def engine_bounds() -> dict[str, Bounds]:
    """Engine setting -> the range its field declares."""
    return bounds_of([EngineSettings])


def _coerce(key: str, value: Any, where: str) -> Any:
    hint = typing.get_type_hints(EngineSettings)[key]
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    unset = value is None or (isinstance(value, str) and value.lower() in {"none", ""})
    if unset and type(None) in typing.get_args(hint):
        return None
    kind = kinds[0]
    try:
        if kind is str and isinstance(value, str):
            return value
        if kind is int and not isinstance(value, bool) and float(value) == int(float(value)):
            return int(float(value))
        if kind is float and not isinstance(value, bool):
            return float(value)
    except (TypeError, ValueError):
        pass
    expected = {str: "a string", int: "an integer", float: "a number"}[kind]
    raise AnymaskError(f"{where}: engine setting '{key}' expects {expected}, got {value!r}")


@dataclass
class SweepProgress:
    """The sweep's one progress bar and its outcome: every engine reports each run's end here."""

    total: int
    todo: int
    desc: str
    on_finished: Callable[[PlannedRun], None] | None = None  # e.g. copy its small files to `kept`
    failures: dict[Path, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bar = tqdm(
            total=self.total,
            initial=self.total - self.todo,
            desc=self.desc,
            unit="run",
            smoothing=0,
            dynamic_ncols=True,
        )

    def running(self, runs: list[PlannedRun]) -> None:
        self.bar.set_postfix_str(", ".join(run.short_label for run in runs), refresh=True)

    def done(self, run: PlannedRun, error: str | None) -> None:
        self.bar.update(1)
        if error is not None:
            self.failures[run.folder] = error
            self.bar.write(f"anymask: run {run.folder} ({run.label}) failed: {error}")
        elif self.on_finished is not None:
            self.on_finished(run)

    def close(self) -> None:
        self.bar.close()


class Engine:
    """Trains a sweep's unfinished runs. `check` runs before anything is written (settings, packages)."""

    def __init__(self, settings: EngineSettings) -> None:
        for key, bounds in engine_bounds().items():  # settings made in code, not through `updated`
            check_setting(key, getattr(settings, key), bounds)
        self.settings = settings

    def check(self) -> None:
        """Raise a one-line `AnymaskError` for settings or packages this engine cannot work with."""

    def run(self, runs: list[PlannedRun], progress: SweepProgress) -> None:
        """Train every run once, calling `progress.done(run, error or None)` as each ends."""
        raise NotImplementedError


ENGINES: Registry[Callable[[EngineSettings], Engine]] = Registry("sweep engine")


def run_config(run: PlannedRun, threads: int) -> RunConfig:
    """The run's config as an engine trains it: no per-run bars (the sweep has one), and `threads` unless
    the sweep file sets them. Neither setting is hashed, so the folder stays the same."""
    overrides: dict[str, Any] = {"progress": False}
    if run.config.train.threads is None:
        overrides["threads"] = threads
    return run.config.updated(overrides)


@dataclass(frozen=True)
class RunTask:
    """What a remote worker needs to train one run: the config, the folder and the directory relative
    paths (out, data_dir) mean, which is the sweep's working directory on a shared filesystem."""

    config: RunConfig
    folder: Path
    cwd: Path

    def __call__(self) -> str | None:
        os.chdir(self.cwd)
        return train_run(self.config, self.folder)


def train_run(config: RunConfig, folder: Path) -> str | None:
    """Train (or resume) one run; None on success, else the message to show (a traceback for bugs)."""
    try:
        d = config.data
        # A small dataset is loaded once for consecutive runs; a streamed one (imagefolder, a factory)
        # holds nothing worth sharing and is opened by the run itself.
        small = d.data in DATASETS
        data = _dataset(d.data, d.data_dir, d.download, d.val_split, d.train_subset) if small else None
        run_experiment(config, folder, resume=True, data=data)
    except AnymaskError as error:
        return str(error)
    except Exception:
        return traceback.format_exc().rstrip()
    finally:
        return_freed_memory()  # a worker trains many runs: keep it at one run's footprint, not the peak
    return None


@lru_cache(maxsize=1)  # consecutive runs of a grid share their dataset; keep one in memory, not all
def _dataset(
    name: str, data_dir: str, download: bool, val_split: int, train_subset: int | None
) -> ImageDataset:
    return load_dataset(name, data_dir, download=download, val_split=val_split, train_subset=train_subset)
