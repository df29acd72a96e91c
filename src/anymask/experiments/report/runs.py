"""Reading run folders: finished runs found under folders, read back (summary, settings, per-epoch
curve, mask densities), filtered by `--only`, and their small files kept for a committed report.

Nothing here groups or compares runs; `groups` does that with what this module reads.
"""

from __future__ import annotations

import functools
import json
import shutil
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from anymask.artifacts import damaged, read_layer_densities, read_metrics, read_summary
from anymask.config import (
    MODEL_REVISIONS,
    RunConfig,
    coerce,
    load_run_config,
    saved_model_revision,
    section_of,
)
from anymask.errors import AnymaskError
from anymask.io import atomic_write, atomic_write_text

AUTOMATIC_SETTINGS = {key: value for key, value in RunConfig().to_flat().items() if value == "auto"}
"""Settings whose default resolves per run (prune_bn_mode: each scorer's reference mode)."""
SUMMARY, CONFIG, METRICS = "summary.json", "config.json", "metrics.jsonl"  # as anymask.train.run writes them
KEPT_FILES = (CONFIG, METRICS, SUMMARY, "gradinit_scales.json")  # small, and enough to rebuild a report
MASK, LAYER_DENSITIES = "mask.safetensors", "layer_densities.json"


@dataclass(frozen=True)
class Run:
    """One finished run folder, read back."""

    folder: Path
    summary: dict[str, Any]
    settings: dict[str, Any]
    curve: list[float]  # test accuracy after each epoch
    ghost_epochs: int = 0  # epochs trained with ghost parts in the model (tost's ghost phase)

    @property
    def mask(self) -> str:
        """Mask method, or the mask file's name for runs trained on a saved mask."""
        file = self.settings.get("mask_file")
        return f"file:{Path(file).stem}" if file else self.summary["mask_method"]

    @property
    def arm(self) -> str:
        """The training protocol the tables compare: the recipe, joined by the mask's evolution when it
        has one ('tost+rigl'), so static, SET and RigL runs of a mask sit side by side in one table."""
        dst = self.settings.get("dst", "none")
        return self.summary["recipe"] + ("" if dst == "none" else f"+{dst}")

    @cached_property
    def table_settings(self) -> dict[str, Any]:
        """`settings` as tables compare them: a setting whose default is automatic reads 'auto' where the
        run has the value 'auto' gives it, so a GraSP run in train mode and a SNIP run in eval mode, each
        its method's reference (`prune_bn_mode`), share a table instead of splitting it in two variants."""
        table = dict(self.settings)
        for key, auto in AUTOMATIC_SETTINGS.items():
            if key in table and resolved(self, key, [auto]) == [table[key]]:
                table[key] = auto
        return table

    @cached_property
    def layer_densities(self) -> dict[str, float] | None:
        """Per-layer mask density, read once per run (the table, the plot and kept runs all use it)."""
        return layer_densities(self.folder, self.summary["mask_total"])

    @property
    def collapsed_layers(self) -> list[str]:
        """Layers this run's mask leaves without a weight (layer collapse)."""
        return [name for name, density in (self.layer_densities or {}).items() if density == 0]

    @property
    def disconnected(self) -> bool:
        """This run's mask leaves a class unreachable or most kept weights on no input-output path."""
        return bool(self.summary.get("mask_disconnected"))


# -- collecting ----------------------------------------------------------------------------------------
def collect_runs(dirs: Iterable[Path], metric: str = "test") -> list[Run]:
    """Every finished run folder under `dirs` (searched recursively), each config once."""
    folders = sorted({p.parent.resolve() for d in dirs for p in _summary_files(Path(d))})
    runs: dict[str, Run] = {}
    for folder in folders:
        missing = [name for name in (CONFIG, METRICS) if not (folder / name).is_file()]
        if missing:
            warnings.warn(f"skipping {folder}: it has {SUMMARY} but no {' or '.join(missing)}", stacklevel=2)
            continue
        try:
            run = read_run(folder, metric)
            run.layer_densities  # noqa: B018  (read now: a damaged mask skips its run, not the report)
        except (
            ValueError,
            KeyError,
            TypeError,
            OSError,
            AnymaskError,
        ) as error:  # one bad run, not the report
            warnings.warn(f"skipping {folder}: {unreadable_reason(error)}", stacklevel=2)
            continue
        first = runs.setdefault(run.summary["config_hash"], run)
        if first is not run:
            warnings.warn(f"skipping {folder}: the same run as {first.folder}", stacklevel=2)
    return list(runs.values())


def _summary_files(path: Path) -> list[Path]:
    if not path.is_dir():
        raise AnymaskError(f"not a folder: {path}")
    return sorted(path.rglob(SUMMARY))


def read_run(folder: Path, metric: str = "test") -> Run:
    """A finished run folder; a damaged file raises (ValueError for bad text or JSON, KeyError...).

    With `metric` "val" ("train") the run's accuracies are its validation (training) ones, read from its
    per-epoch records into the places the report reads (final, best, the curve): settings are chosen on
    validation without the test accuracies appearing anywhere in the report, and training accuracy says
    whether a recipe fits the training images better, where test accuracy alone cannot say why.
    """
    summary = read_summary(folder / SUMMARY)
    settings = load_run_config(folder / CONFIG).read_settings()
    if summary.get("model") in MODEL_REVISIONS:  # an older architecture's runs never share its cells
        settings["model_revision"] = saved_model_revision(folder / CONFIG)
    records = read_metrics(folder / METRICS)
    ghost_epochs = sum(1 for r in records if r.get("ghost_phase"))
    if metric == "test":
        return Run(folder, summary, settings, [r["test_acc"] for r in records], ghost_epochs)
    key = RECORD_KEYS[metric]
    if not all(key in r for r in records):
        raise ValueError(MISSING_RECORD[metric])
    curve = [r[key] for r in records]
    return Run(folder, summary_from_records(summary, records, key), settings, curve, ghost_epochs)


# `report --metric` values and the words the tables use for them.
METRICS_READ = {"test": "test", "val": "validation", "train": "training"}
# Where each metric other than test is read from a run's per-epoch records, and why a run may lack it.
RECORD_KEYS = {"val": "val_acc", "train": "train_acc"}
MISSING_RECORD = {
    "val": "it has no validation accuracy (trained without --val-split)",
    "train": "its per-epoch records have no training accuracy",
}


def summary_from_records(summary: dict[str, Any], records: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The summary with the per-epoch `key` accuracies in the test accuracies' places (and no test accuracy
    left): the best epoch is chosen, as for test, among epochs without ghost parts in the model."""
    final_model = [r for r in records if not r.get("ghost_phase")] or records
    best = max(final_model, key=lambda r: r[key])
    test_keys = {"final_test_acc", "best_test_acc", "best_test_epoch", "test_acc_at_best_val"}
    return {
        **{k: v for k, v in summary.items() if k not in test_keys},
        "final_test_acc": records[-1][key],
        "best_test_acc": best[key],
        "best_test_epoch": best["epoch"],
    }


def unreadable_reason(error: Exception) -> str:
    """One line for a run folder the report cannot read."""
    if isinstance(error, UnicodeDecodeError):
        return "a file is not text (damaged?)"
    if isinstance(error, json.JSONDecodeError):
        return (
            f"a file is not valid JSON ({error.msg}, line {error.lineno}); was the run cut off while writing?"
        )
    if isinstance(error, KeyError):
        return f"a file lacks the entry {error}"
    return " ".join(str(error).split()) or type(error).__name__


def keep_run_files(runs: Sequence[Run], into: Path) -> None:
    """Copy each run's config, metrics and summary into `into/<config hash>/`, with the mask's per-layer
    densities (a few hundred bytes) in place of the mask itself."""
    for run in runs:
        folder = into / run.summary["config_hash"]
        if folder.resolve() == run.folder.resolve():
            continue  # rebuilding a report from its own kept runs
        folder.mkdir(parents=True, exist_ok=True)
        for name in KEPT_FILES:
            if (run.folder / name).is_file():  # copied as bytes: a report never decodes what it copies
                atomic_write(folder / name, functools.partial(shutil.copyfile, run.folder / name))
        densities = run.layer_densities
        if densities is not None:
            atomic_write_text(folder / LAYER_DENSITIES, json.dumps(densities, indent=1) + "\n")


def layer_densities(folder: Path, total: int | None = None) -> dict[str, float] | None:
    """Per-layer density of a run's mask: from its mask file (which must cover the `total` weights the
    summary counts), or from the densities a kept run holds."""
    if (folder / MASK).is_file():
        from anymask.masks import Mask

        mask = Mask.load(folder / MASK, MASK)
        if total is not None and mask.total() != total:
            problem = f"it covers {mask.total():,} weights, the run's summary {total:,}"
            raise damaged(folder / MASK, MASK, problem)
        return {layer.name: layer.density for layer in mask.layers()}
    if (folder / LAYER_DENSITIES).is_file():
        return read_layer_densities(folder / LAYER_DENSITIES)
    return None


# -- filtering ---------------------------------------------------------------------------------------
def parse_filters(specs: Sequence[str]) -> dict[str, list[Any]]:
    """`--only KEY=VALUE` flags -> {key: accepted values}; several flags on one key accept any of them."""
    filters: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise AnymaskError(f"--only {spec!r} is not KEY=VALUE; e.g. --only recipe=tost --only lr=0.1")
        key = key.strip().replace("-", "_")
        section_of(key)  # an unknown key is one clear line naming it
        filters.setdefault(key, []).append(coerce(key, value.strip()))
    return filters


def keep_matching(runs: Sequence[Run], filters: dict[str, list[Any]]) -> list[Run]:
    """Runs whose settings are among the accepted values; a run that never reads a key passes on it
    (the default protocol passes --only ghost_epochs=4, as it is the baseline of such runs). A value is
    read as that run's config would read it: `--only prune_bn_mode=auto` keeps each method's reference
    mode (GraSP train, SNIP eval)."""
    return [
        run
        for run in runs
        if all(
            key not in run.settings or run.settings[key] in resolved(run, key, values)
            for key, values in filters.items()
        )
    ]


def resolved(run: Run, key: str, values: list[Any]) -> list[Any]:
    """The filter's values as the run's own config resolves them (an automatic value becomes concrete)."""
    flat = {k: v for k, v in run.settings.items() if k != "model_revision"}
    return [RunConfig.from_flat({**flat, key: value}).read_settings().get(key, value) for value in values]
