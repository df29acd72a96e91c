"""Sweeps: one file describes a grid of runs; `run_sweep` runs what is not finished yet, N at a time.

A sweep file (TOML or YAML) holds an optional `out` folder, a `[base]` table of settings shared by every
run, a `[grid]` table of lists and an optional list of `[[variants]]` tables; the runs are each variant
(a few settings that override `[base]`; one empty variant without any) crossed with the cartesian product
of the grid lists, in file order with the last key varying fastest. The tables take flat keys (`sparsity`)
or section tables (`[base.train]`), exactly like a run config file. Each run lives in
`<out>/<config hash>`, so running the same file again finds its runs: finished ones are skipped,
interrupted ones resumed from their last epoch, and a grid that grows only adds runs. An engine trains
them (`anymask.experiments.engines`): worker processes here (`--workers N` trains N at once; a crash costs
one run, not the sweep), Ray tasks or a SLURM job array; an optional `[engine]` table sets which and how.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anymask.artifacts import read_settings_file, read_summary
from anymask.config import RunConfig, coerce, flat_settings, section_of
from anymask.data.load import check_dataset_present
from anymask.errors import AnymaskError
from anymask.experiments.engines import ENGINES, Engine, EngineSettings, SweepProgress
from anymask.experiments.report import markdown_table
from anymask.io import atomic_write_text, check_output_folder
from anymask.train.run import CONFIG, METRICS, SUMMARY, folder_state, validate

RECORD = "sweep.json"
TOP_LEVEL = ("out", "kept", "base", "grid", "variants", "engine")
STATES = ("new", "interrupted", "finished", "kept", "foreign")  # folder_state's, and "kept" (see below)


@dataclass(frozen=True)
class PlannedRun:
    """One point of the grid: its resolved config, its grid values and its folder."""

    config: RunConfig
    values: dict[str, Any]
    folder: Path
    kept: Path | None = None  # the run's small files found in a kept folder: finished elsewhere

    @property
    def label(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.values.items()) or "base"

    @property
    def short_label(self) -> str:
        """Just the values ('snip/0.98/tost'): several fit on the progress bar's line."""
        return "/".join(str(value) for value in self.values.values()) or "base"

    @property
    def state(self) -> str:
        state = folder_state(self.folder)
        return "kept" if state == "new" and self.kept is not None else state


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: settings are coerced to their declared types, grid lists are non-empty."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    out: Path | None = None
    variants: tuple[dict[str, Any], ...] = ({},)
    kept: tuple[Path, ...] = ()
    engine: dict[str, Any] = field(default_factory=dict)  # the [engine] table: EngineSettings fields

    def points(self) -> list[dict[str, Any]]:
        """Each variant crossed with the grid's cartesian product, last key varying fastest (one empty
        point without a grid or variants)."""
        grid = itertools.product(*self.grid.values())
        combos = [dict(zip(self.grid, combo, strict=True)) for combo in grid]
        return [{**variant, **combo} for variant in self.variants for combo in combos]

    def plan(self, out: Path) -> list[PlannedRun]:
        """Every run with its folder, each checked as `anymask train` would before anything is written.

        Grid points that train the same run (gsc_mode crossed with a recipe without gsc) share a folder
        and are planned once, at the first of them. A run whose small files lie in a `kept` folder is
        marked as such: it finished on another machine and is not trained again.
        """
        base = RunConfig.from_flat(self.base)
        kept = kept_runs(self.kept)
        runs: dict[Path, PlannedRun] = {}
        for values in self.points():
            config = base.updated(values)
            run = PlannedRun(config, values, out / config.hash(), kept.get(config.hash()))
            try:
                validate(config)
            except AnymaskError as error:
                raise AnymaskError(f"sweep {self.name}, run {run.label}: {error}") from None
            runs.setdefault(run.folder, run)
        return list(runs.values())

    def record(self, runs: list[PlannedRun]) -> dict[str, Any]:
        """What `sweep.json` holds: the resolved file and which folder is which grid point."""
        return {
            "name": self.name,
            "base": self.base,
            "grid": self.grid,
            **({"kept": [str(folder) for folder in self.kept]} if self.kept else {}),
            **({"variants": list(self.variants)} if self.variants != ({},) else {}),
            **({"engine": self.engine} if self.engine else {}),
            "runs": [{"hash": run.folder.name, "values": run.values} for run in runs],
        }


# -- parsing -------------------------------------------------------------------------------------------
def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep file; every mistake is one `AnymaskError` line naming the file and key."""
    path = Path(path)
    raw = read_settings_file(path, "sweep file")
    try:
        return _sweep_from_table(raw, path.stem)
    except AnymaskError as error:
        raise AnymaskError(f"sweep file {path}: {error}") from None


def _sweep_from_table(raw: Any, name: str) -> Sweep:
    if not isinstance(raw, dict):
        raise AnymaskError("expected a table with [base] and [grid]")
    for key in raw:
        if key not in TOP_LEVEL:
            raise AnymaskError(_top_level_hint(key))
    out = raw.get("out")
    if out is not None and not isinstance(out, str):
        raise AnymaskError(f"'out' expects a folder name, got {out!r}")
    base = {key: coerce(key, value) for key, value in flat_settings(raw.get("base", {}), "[base]").items()}
    if "grid" in raw and not raw["grid"]:
        raise AnymaskError("[grid] is empty; give it lists of values, or leave it out to run [base] alone")
    grid = {key: _grid_values(key, v) for key, v in flat_settings(raw.get("grid", {}), "[grid]").items()}
    for key in grid:
        if key in base:
            raise AnymaskError(f"'{key}' is set in both [base] and [grid]; keep one")
    variants = _variants(raw.get("variants", [{}]), grid)
    engine = raw.get("engine", {})
    if not isinstance(engine, dict):
        raise AnymaskError("'engine' must be a table: an [engine] line, then key = value lines")
    EngineSettings().updated(engine, "[engine]")  # checked now, applied with the flags when it runs
    kept = _kept_folders(raw.get("kept", []))
    return Sweep(name, base, grid, Path(out) if out else None, variants, kept, engine)


def _kept_folders(raw: Any) -> tuple[Path, ...]:
    """`kept`: a folder, or a list of folders, of committed run files (the first also receives the small
    files of runs this sweep finishes)."""
    folders = [raw] if isinstance(raw, str) else raw
    if not isinstance(folders, list) or not all(isinstance(f, str) and f for f in folders):
        raise AnymaskError(f"'kept' expects a folder name or a list of them, got {raw!r}")
    return tuple(Path(folder) for folder in folders)


def kept_runs(folders: Iterable[Path]) -> dict[str, Path]:
    """Config hash -> kept run folder, for every finished run's small files under `folders`.

    A kept run counts when its summary names the hash its folder is named by and its config and metrics
    are there too: the files a report needs, committed so a new machine need not train it again.
    """
    found: dict[str, Path] = {}
    for root in folders:
        for summary in sorted(root.rglob(SUMMARY)) if root.is_dir() else []:
            folder = summary.parent
            if all((folder / name).is_file() for name in (CONFIG, METRICS)):
                with contextlib.suppress(AnymaskError):  # a damaged kept run is trained again
                    if read_summary(summary)["config_hash"] == folder.name:
                        found.setdefault(folder.name, folder)
    return found


def _variants(raw: Any, grid: dict[str, list[Any]]) -> tuple[dict[str, Any], ...]:
    """The `[[variants]]` tables: each a few settings overriding `[base]`, never a grid key."""
    if not isinstance(raw, list) or not raw or not all(isinstance(v, dict) for v in raw):
        raise AnymaskError("'variants' must be a list of tables: a [[variants]] line, then key = value lines")
    variants = []
    for i, table in enumerate(raw, 1):
        settings = flat_settings(table, f"[[variants]] {i}")
        variant = {key: coerce(key, value) for key, value in settings.items()}
        for key in variant:
            if key in grid:
                raise AnymaskError(f"'{key}' is set in both [grid] and [[variants]] {i}; keep one")
        if variant in variants:
            raise AnymaskError(f"[[variants]] {i} repeats an earlier variant")
        variants.append(variant)
    return tuple(variants)


def _top_level_hint(key: str) -> str:
    try:
        section_of(key)
    except AnymaskError:
        return f"unknown key '{key}'; a sweep file holds out, kept, [base], [grid], [[variants]] and [engine]"
    return f"setting '{key}' is at the top level; put it under [base] (or a list of values under [grid])"


def _grid_values(key: str, values: Any) -> list[Any]:
    if not isinstance(values, list):
        raise AnymaskError(f"[grid] '{key}' must be a list of values, e.g. {key} = [{values!r}]")
    if not values:
        raise AnymaskError(f"[grid] '{key}' is an empty list; give at least one value")
    coerced = [coerce(key, value) for value in values]
    for i, value in enumerate(coerced):
        if value in coerced[:i]:
            raise AnymaskError(f"[grid] '{key}' lists {value!r} twice")
    return coerced


# -- running -------------------------------------------------------------------------------------------
def run_sweep(
    path: str | Path, *, out: Path | None = None, dry_run: bool = False, **engine_settings: Any
) -> Path:
    """Run every unfinished run of the sweep file into `out`; returns the sweep folder.

    `out` defaults to the file's `out`, then to runs/<file name>. `engine_settings` are `EngineSettings`
    fields (`engine="ray"`, `workers=2`, `address=...`); those given (not None) override the file's
    `[engine]` table. Raises `AnymaskError` after the last run if any failed, so the command exits
    non-zero while the other runs still finished.
    """
    flags = {k: v for k, v in engine_settings.items() if v is not None}
    EngineSettings().updated(flags, "sweep", flags=True)  # what was typed is checked before the file
    sweep = load_sweep(path)
    engine = engine_for(sweep, flags)
    out = out or sweep.out or Path("runs") / sweep.name
    check_output_folder(out)
    runs = sweep.plan(out)
    if dry_run:
        print(plan_table(runs, out))
        return out
    todo = [run for run in runs if run.state not in {"finished", "kept"}]
    check_datasets(todo, sweep.name)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RECORD, json.dumps(sweep.record(runs), indent=2) + "\n")
    keep_into = sweep.kept[0] if sweep.kept else None
    failures = _train_all(engine, todo, len(runs), f"sweep {sweep.name}", keep_into) if todo else {}
    if keep_into is not None:  # runs finished before `kept` was set, or by an older anymask
        _keep([run for run in runs if run.state == "finished"], keep_into)
    if failures:
        names = ", ".join(str(folder) for folder in list(failures)[:3])
        raise AnymaskError(
            f"{len(failures)} of {len(runs)} runs failed ({names}{', ...' if len(failures) > 3 else ''}); "
            "fix the cause and run the same sweep again to finish them"
        )
    print(f"sweep {sweep.name}: all {len(runs)} runs finished in {out}; see them with: anymask report {out}")
    return out


def engine_for(sweep: Sweep, overrides: dict[str, Any]) -> Engine:
    """The sweep's engine: defaults, then the file's [engine] table, then `overrides` (the flags); its
    settings and package are checked before anything is written."""
    settings = EngineSettings().updated(sweep.engine, f"sweep {sweep.name} [engine]")
    settings = settings.updated(overrides, "sweep", flags=True)
    engine = ENGINES.get(settings.engine)(settings)
    engine.check()
    return engine


def _train_all(
    engine: Engine, runs: list[PlannedRun], total: int, desc: str, keep_into: Path | None
) -> dict[Path, str]:
    """Train `runs` on `engine` under one progress bar; returns folder -> error. With `keep_into`, each
    run's small files are copied there the moment it finishes."""
    on_finished = (lambda run: _keep([run], keep_into)) if keep_into is not None else None
    progress = SweepProgress(total, len(runs), desc, on_finished)
    try:
        engine.run(runs, progress)
    finally:
        progress.close()
    return progress.failures


def check_datasets(runs: list[PlannedRun], name: str) -> None:
    """A dataset folder that is missing fails the sweep once, before any run starts (not once per run)."""
    for data, data_dir, download in sorted(
        {(r.config.data.data, r.config.data.data_dir, r.config.data.download) for r in runs}
    ):
        try:
            check_dataset_present(data, data_dir, download)
        except AnymaskError as error:
            raise AnymaskError(f"sweep {name}: {error}") from None


def plan_table(runs: list[PlannedRun], out: Path) -> str:
    """The dry-run listing: one row per run with its folder name, grid values and state."""
    keys = list(dict.fromkeys(key for run in runs for key in run.values))  # variants may set other keys
    rows = [[run.folder.name, *(str(run.values.get(k, "")) for k in keys), run.state] for run in runs]
    states = [run.state for run in runs]
    counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(sorted(states, key=STATES.index)))
    return f"{len(runs)} runs in {out} ({counts}):\n" + markdown_table(["run", *keys, "state"], rows)


def _keep(runs: list[PlannedRun], into: Path) -> None:
    """Copy the small files of finished runs into the kept folder (what a commit needs), once each."""
    from anymask.experiments.report import keep_run_files, read_run

    missing = [run for run in runs if not (into / run.folder.name / SUMMARY).is_file()]
    keep_run_files([read_run(run.folder) for run in missing], into)


def train_planned(runs: list[PlannedRun], workers: int, desc: str) -> None:
    """Train `runs` (each a config and its folder) in `workers` worker processes, as a sweep does; one
    line naming the runs that failed, after the others finished."""
    engine = ENGINES.get("local")(EngineSettings(workers=min(workers, len(runs))))
    engine.check()
    failures = _train_all(engine, runs, len(runs), desc, None)
    if failures:
        names = ", ".join(str(folder) for folder in list(failures)[:3])
        raise AnymaskError(f"{len(failures)} of {len(runs)} runs failed ({names}); run the command again")
