"""Reports: finished run folders -> results.csv, report.md (one table per model and dataset) and plots.

Runs that differ only by seed form a group; a group is summarised as mean ± std over its seeds, and a
recipe's gain over `default` is the mean of per-seed differences on the same mask and sparsity, which
cancels most of the seed-to-seed noise. Settings that vary between the collected runs other than the
table axes (say two learning rates) split the runs into separate tables, so no group mixes them; those
tables are the *variants* of their model and data, compared side by side in one variants table.

report.md and results.csv hold only what a run's config determines (accuracies, sparsities, counts),
never wall times or paths: the same runs give byte-identical files however they were scheduled or
resumed. Train times go to timings.csv.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
import shutil
import statistics
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from anymask.artifacts import read_layer_densities, read_metrics, read_summary
from anymask.config import MODEL_REVISIONS, coerce, load_run_config, saved_model_revision, section_of
from anymask.errors import AnymaskError
from anymask.io import atomic_write, atomic_write_text, check_output_folder

SUMMARY, CONFIG, METRICS = "summary.json", "config.json", "metrics.jsonl"  # as anymask.train.run writes them
KEPT_FILES = (CONFIG, METRICS, SUMMARY, "gradinit_scales.json")  # small, and enough to rebuild a report
MASK, LAYER_DENSITIES = "mask.safetensors", "layer_densities.json"
BASELINE = "default"
# Run settings that are table axes (or identify a mask file) rather than a setting that splits tables.
AXES = frozenset({"model", "data", "mask_method", "mask_file", "sparsity", "recipe", "dst", "seed"})
# The label of the variant whose varying settings all have their most common value.
COMMON = "most common settings"


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


@dataclass(frozen=True)
class Gain:
    """A recipe's accuracy minus the baseline's: paired over common seeds, else a difference of means."""

    mean: float
    seeds: int  # differences the mean is paired over; 0 for an unpaired difference of means
    half_width: float | None = None  # of the 95% confidence interval; None below two paired differences

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.half_width is None:
            return None
        return self.mean - self.half_width, self.mean + self.half_width


def paired_gain(differences: Sequence[float]) -> Gain:
    """Mean of paired differences with a 95% Student-t confidence interval over them.

    The interval is mean ± t(0.975, n - 1) * sd / sqrt(n): it treats the pairs (same mask, same seed) as
    independent draws, so a pooled interval over masks says how the recipe does on masks like these.
    """
    n = len(differences)
    if n == 0:
        raise ValueError("no paired differences")
    mean = statistics.fmean(differences)
    if n < 2:
        return Gain(mean, n)
    from scipy.stats import t  # imported here: scipy is slow to import and only reports need it

    return Gain(mean, n, float(t.ppf(0.975, n - 1)) * statistics.stdev(differences) / math.sqrt(n))


@dataclass
class Group:
    """Runs that share every setting but the seed."""

    mask: str
    sparsity: float
    recipe: str
    runs: list[Run]

    def by_seed(self, key: str) -> dict[int, float]:
        return {run.summary["seed"]: run.summary[key] for run in self.runs}

    def values(self, key: str) -> list[float]:
        return [run.summary[key] for run in self.runs if key in run.summary]

    @property
    def seeds(self) -> list[int]:
        return [run.summary["seed"] for run in self.runs]

    @cached_property
    def collapsed_layers(self) -> list[str]:
        """Layers some run's mask leaves empty (layer collapse), from the mask file or kept densities."""
        return sorted({name for run in self.runs for name in run.collapsed_layers})

    @cached_property
    def changed_architecture(self) -> str:
        """How the recipe changed the trained model (tost-official), from summary.json; '' if it did not."""
        changed = (
            r.summary.get("architecture", "")
            for r in self.runs
            if r.summary.get("plain_architecture") is False
        )
        return next(changed, "")

    @property
    def disconnected(self) -> bool:
        """Some run's mask leaves a class unreachable or most kept weights on no input-output path."""
        return any(run.disconnected for run in self.runs)

    def final_cell(self) -> str:
        """Final test accuracy, marked † when the mask collapsed a layer, § when it disconnects the network
        otherwise, and ‡ when the trained model is not the plain architecture."""
        mask_mark = " †" if self.collapsed_layers else " §" if self.disconnected else ""
        marks = mask_mark + (" ‡" if self.changed_architecture else "")
        return percent_cell(self.values("final_test_acc")) + marks

    def differences(self, baseline: Group, key: str) -> list[float]:
        """This group's value minus the baseline's on each seed both have (paired differences)."""
        mine, base = self.by_seed(key), baseline.by_seed(key)
        return [mine[s] - base[s] for s in sorted(mine.keys() & base.keys())]

    def curve_differences(self, baseline: Group) -> list[list[float]]:
        """Per seed both have, this group's accuracy curve minus the baseline's, over their common epochs."""
        mine = {run.summary["seed"]: run.curve for run in self.runs}
        base = {run.summary["seed"]: run.curve for run in baseline.runs}
        return [
            [a - b for a, b in zip(mine[s], base[s], strict=False)] for s in sorted(mine.keys() & base.keys())
        ]

    def gain_over(self, baseline: Group, key: str) -> Gain:
        differences = self.differences(baseline, key)
        if differences:
            return paired_gain(differences)
        mine, base = self.by_seed(key), baseline.by_seed(key)
        return Gain(statistics.fmean(mine.values()) - statistics.fmean(base.values()), 0)


@dataclass(frozen=True)
class Variant:
    """A table's place among the tables of its model and data when other settings vary between them."""

    number: int  # 1, 2, ... in the variants table's order; the table's section and files carry it
    label: str  # the settings where it differs from the most common values ("gradinit_lr=0.05"), or COMMON

    @property
    def name(self) -> str:
        return f"{self.number}: {self.label}"


@dataclass
class Table:
    """The groups of one model on one dataset under one combination of other settings."""

    model: str
    data: str
    setting: str  # "lr=0.05" when the collected runs vary in settings beyond the axes; else ""
    groups: list[Group]
    metric: str = "test"  # whose accuracy the table holds: "test", "validation" or "training" (--metric)
    values: dict[str, Any] = field(default_factory=dict)  # the setting string's values, {"lr": 0.05}
    variant: Variant | None = None  # set when its model and data have several tables

    @property
    def title(self) -> str:
        if self.variant:  # the full setting string can be a line long: the section says it in full
            return f"{self.model} on {self.data} (variant {self.variant.name})"
        return f"{self.model} on {self.data}" + (f" ({self.setting})" if self.setting else "")

    @property
    def slug(self) -> str:
        """File-name part for this table's plots: a variant's number, not its settings, which can make a
        file name hundreds of characters long."""
        setting = f"variant{self.variant.number}" if self.variant else self.setting
        return file_slug(f"{self.model}_{self.data}_{setting}")

    @cached_property
    def masks(self) -> list[str]:
        return sorted({g.mask for g in self.groups}, key=mask_order)

    @cached_property
    def sparsities(self) -> list[float]:
        return sorted({g.sparsity for g in self.groups})

    @cached_property
    def recipes(self) -> list[str]:
        return sorted({g.recipe for g in self.groups}, key=recipe_order)

    @cached_property
    def rows(self) -> list[tuple[str, float]]:
        """(mask, sparsity) pairs that have runs, in display order."""
        present = {(g.mask, g.sparsity) for g in self.groups}
        return [(m, s) for m in self.masks for s in self.sparsities if (m, s) in present]

    def group(self, mask: str, sparsity: float, recipe: str) -> Group | None:
        key = (mask, sparsity, recipe)
        return next((g for g in self.groups if (g.mask, g.sparsity, g.recipe) == key), None)

    def baseline_of(self, group: Group) -> Group | None:
        """The default-recipe group on the same mask and sparsity (None for the baseline itself)."""
        return None if group.recipe == BASELINE else self.group(group.mask, group.sparsity, BASELINE)

    @cached_property
    def recipe_pairs(self) -> list[tuple[str, str]]:
        """(recipe, reference) pairs to compare: each recipe against `default` first, then each against
        every recipe whose name it extends: tost-official against tost says what temporary ghosts cost,
        tost+rigl against tost what an evolving mask adds to the recipe."""
        recipes = self.recipes
        pairs = [(r, BASELINE) for r in recipes if r != BASELINE and BASELINE in recipes]
        others = [r for r in recipes if r != BASELINE]
        return pairs + [(b, a) for a in others for b in others if b.startswith((f"{a}+", f"{a}-"))]

    def pooled_gain(self, recipe: str, reference: str, sparsity: float, key: str) -> Gain | None:
        """`recipe` minus `reference` over every mask of a sparsity, paired on (mask, seed); None when
        no mask has both recipes on a common seed."""
        differences = [
            d
            for group, base in self._mask_pairs(recipe, reference, sparsity)
            for d in group.differences(base, key)
        ]
        return paired_gain(differences) if differences else None

    def _mask_pairs(self, recipe: str, reference: str, sparsity: float) -> list[tuple[Group, Group]]:
        """(recipe's group, reference's group) on each mask of `sparsity` that has both."""
        pairs = [(self.group(m, sparsity, recipe), self.group(m, sparsity, reference)) for m in self.masks]
        return [(group, base) for group, base in pairs if group and base]

    def pooled_gain_by_epoch(self, recipe: str, reference: str, sparsity: float) -> list[Gain]:
        """The pooled paired gain after each epoch (of the curve the table's metric reads), over every
        (mask, seed) pair of a sparsity, up to the shortest pair's last epoch: where a recipe's lead opens
        and where it closes (the ghosts' removal, say). Empty when no pair exists."""
        curves = [
            c
            for group, base in self._mask_pairs(recipe, reference, sparsity)
            for c in group.curve_differences(base)
        ]
        if not curves:
            return []
        epochs = min(len(c) for c in curves)
        return [paired_gain([c[e] for c in curves]) for e in range(epochs)]

    def ghost_phase_end(self, recipe: str, sparsity: float) -> int:
        """The last epoch with ghost parts in any of the recipe's runs at `sparsity` (0: none had ghosts)."""
        return max(
            (
                r.ghost_epochs
                for g in self.groups
                if (g.recipe, g.sparsity) == (recipe, sparsity)
                for r in g.runs
            ),
            default=0,
        )


def file_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


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


def build_tables(runs: Sequence[Run], metric: str = "test") -> list[Table]:
    """Group runs by everything but the seed, and groups into tables by model, data and other settings.

    A run joins every table whose settings it agrees with: a default-protocol run, which reads no recipe
    setting, is the baseline of the tables for ghost_epochs=4 and ghost_epochs=8 alike. Several tables of
    one model and data are its variants, numbered in the variants table's order (`number_variants`).
    """
    varying = _varying_settings(runs)
    settings = {id(run): {k: run.settings[k] for k in varying if k in run.settings} for run in runs}
    combos = {setting_text(c): c for c in _table_settings(list(settings.values()))}
    tables: dict[tuple[str, str, str], Table] = {}
    by_group: dict[tuple[Any, ...], list[Run]] = {}
    for run in runs:
        s = run.summary
        for setting, combo in combos.items():
            if any(combo.get(k, v) != v for k, v in settings[id(run)].items()):
                continue
            key = (s["model"], s["data"], setting, run.mask, s["sparsity"], run.arm)
            by_group.setdefault(key, []).append(run)
    for (model, data, setting, mask, sparsity, recipe), members in by_group.items():
        members.sort(key=lambda r: r.summary["seed"])
        table = tables.setdefault(
            (model, data, setting),
            Table(model, data, setting, [], METRICS_READ[metric], values=combos[setting]),
        )
        table.groups.append(Group(mask, sparsity, recipe, members))
    for table in tables.values():
        table.groups.sort(key=lambda g: (mask_order(g.mask), g.sparsity, recipe_order(g.recipe)))
    ordered = by_model_and_data([tables[key] for key in sorted(tables)])
    return [table for same in ordered for table in number_variants(same)]


def setting_text(values: dict[str, Any]) -> str:
    """'lr=0.05, seed_data=1': how tables, file names and results.csv name a combination of settings."""
    return ", ".join(f"{key}={value}" for key, value in values.items())


def by_model_and_data(tables: Sequence[Table]) -> list[list[Table]]:
    """The tables, sorted by model and data, in one list per model and data."""
    same: dict[tuple[str, str], list[Table]] = {}
    for table in tables:
        same.setdefault((table.model, table.data), []).append(table)
    return [same[key] for key in sorted(same)]


def number_variants(tables: list[Table]) -> list[Table]:
    """The tables of one model and data; when there are several, each labelled by where its settings
    differ from the most common ones and numbered in that order: the most common settings first, then by
    how many settings differ and by label, so the same runs always get the same numbers."""
    if len(tables) < 2:
        return tables
    common = most_common_values([t.values for t in tables])
    differences = [
        [setting_text({k: v}) for k, v in t.values.items() if k not in common or not _same(v, common[k])]
        for t in tables
    ]
    ranked = sorted(zip(differences, tables, strict=True), key=lambda pair: (len(pair[0]), pair[0]))
    for number, (differs, table) in enumerate(ranked, start=1):
        table.variant = Variant(number, ", ".join(differs) or COMMON)
    return [table for _, table in ranked]


def most_common_values(values: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each setting's value in the most variants that read it. A setting whose top count is shared by two
    values has none, so every variant names its value: calling either one 'common' would hide it."""
    common = {}
    for key in sorted(set().union(*values)):
        originals = {json.dumps(v[key], sort_keys=True): v[key] for v in values if key in v}
        counts = Counter(json.dumps(v[key], sort_keys=True) for v in values if key in v).most_common()
        if len(counts) == 1 or counts[0][1] > counts[1][1]:
            common[key] = originals[counts[0][0]]
    return common


def _same(a: Any, b: Any) -> bool:
    """Equal by JSON text, as `_varying_settings` compares settings (lists and None alike)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _table_settings(assignments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct settings of the runs, less those another run's settings extend (the tables)."""
    distinct = list({json.dumps(a, sort_keys=True): a for a in assignments}.values())
    extended = [a for a in distinct if any(b != a and b.items() >= a.items() for b in distinct)]
    return [a for a in distinct if a not in extended] or [{}]


def mask_order(mask: str) -> tuple[bool, str]:
    return mask != "dense", mask


def recipe_order(recipe: str) -> tuple[bool, str]:
    return recipe != BASELINE, recipe


def _varying_settings(runs: Sequence[Run]) -> list[str]:
    """Settings (beyond the axes) whose values differ between the runs that read them: each value set
    gets its own table. A setting only some runs read (lth_epochs, gsc_mode) varies only among those."""
    keys = sorted(set().union(*(run.settings for run in runs)) - AXES) if runs else []
    return [
        key for key in keys if len({json.dumps(run.settings[key]) for run in runs if key in run.settings}) > 1
    ]


# -- statistics and formatting -----------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def percent_cell(values: Sequence[float]) -> str:
    """'93.11 ± 0.52 (3)': mean ± std in percent, and the number of seeds."""
    mean, std = mean_std(values)
    spread = f" ± {100 * std:.2f}" if std is not None else ""
    return f"{100 * mean:.2f}{spread} ({len(values)})"


def gain_cell(gain: Gain) -> str:
    """'+0.91 [-0.29, +2.11] (3)': the mean paired gain in points, its 95% confidence interval (from two
    pairs on) and the number of pairs; '(unpaired)' for a difference of means without common seeds."""
    pairing = f"({gain.seeds})" if gain.seeds else "(unpaired)"
    interval = gain.interval
    ci = f" [{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]" if interval else ""
    return f"{100 * gain.mean:+.2f}{ci} {pairing}"


def sparsity_label(sparsity: float) -> str:
    return f"{100 * sparsity:g}%"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with padded columns, so it reads as well in a terminal as rendered."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def table_markdown(table: Table) -> str:
    """One table: rows mask x sparsity; per recipe final and best accuracy, and the gain over default."""
    header = ["mask", "sparsity"]
    for recipe in table.recipes:
        header += [f"{recipe} final", f"{recipe} best"] + ([f"{recipe} gain"] if recipe != BASELINE else [])
    rows = []
    for mask, sparsity in table.rows:
        row = [mask, sparsity_label(sparsity)]
        for recipe in table.recipes:
            group = table.group(mask, sparsity, recipe)
            row += _recipe_cells(table, group, recipe)
        rows.append(row)
    epochs = {run.summary["epochs"] for g in table.groups for run in g.runs}
    after = f" after {epochs.pop()} epochs" if len(epochs) == 1 else ""
    legend = (
        f"{table.metric.capitalize()} accuracy (%){after}: final and best epoch, mean ± std over seeds "
        "(number of seeds). "
        f"Gain: final accuracy minus `{BASELINE}` on the same mask, sparsity and seeds (points), "
        "with its 95% confidence interval (Student t over the paired differences) and the number of pairs."
    )
    extras = [accuracy_matrix_markdown(table), pooled_gains_markdown(table)]
    settings = f"Settings of this variant: {table.setting}.\n\n" if table.variant else ""
    long_table = f"## {table.title}\n\n{settings}{legend}\n\n{markdown_table(header, rows)}\n"
    notes = collapse_note(table) + architecture_note(table)
    return long_table + "".join(f"\n{extra}" for extra in extras if extra) + notes


def pooled_gains_markdown(table: Table) -> str:
    """Per sparsity and recipe pair, the paired gain over every mask and seed with its 95% interval.
    Empty when no pair of recipes shares a mask and seed."""
    rows = []
    for sparsity in table.sparsities:
        cells = [table.pooled_gain(r, ref, sparsity, "final_test_acc") for r, ref in table.recipe_pairs]
        if any(cells):
            rows.append([sparsity_label(sparsity), *(gain_cell(c) if c else "–" for c in cells)])
    if not rows:
        return ""
    header = ["sparsity", *(f"{r} − {ref}" for r, ref in table.recipe_pairs)]
    legend = (
        f"Paired gain in final {table.metric} accuracy (points), pooled over the masks of each sparsity: "
        "mean of the "
        "differences on the same mask and seed, 95% confidence interval, number of pairs."
    )
    return f"{legend}\n\n{markdown_table(header, rows)}\n"


def collapse_note(table: Table) -> str:
    """One line per group whose mask empties a layer or disconnects the network, naming the seeds whose
    masks do (seeds draw different masks): the accuracy there says more about the mask."""
    lines = [
        f"- {g.mask} at {sparsity_label(g.sparsity)} ({g.recipe}), {_seeds(collapsed)}: "
        f"{', '.join(g.collapsed_layers)}"
        for g in table.groups
        if (collapsed := [r for r in g.runs if r.collapsed_layers])
    ]
    cut = [
        f"- {g.mask} at {sparsity_label(g.sparsity)} ({g.recipe}), {_seeds(runs)}: effective density "
        f"{statistics.fmean(r.summary['mask_effective_density'] for r in runs):.2e}, "
        f"{min(r.summary['mask_classes_reachable'] for r in runs)} classes reachable"
        for g in table.groups
        if not g.collapsed_layers and (runs := [r for r in g.runs if r.disconnected])
    ]
    note = "\n† Layer collapse: the mask leaves these layers without a weight:\n\n" + "\n".join(lines) + "\n"
    cut_note = (
        "\n§ Disconnected: no layer is empty, but a class is unreachable from the input or most kept weights "
        "lie on no input-output path:\n\n" + "\n".join(cut) + "\n"
    )
    return (note if lines else "") + (cut_note if cut else "")


def _seeds(runs: Sequence[Run]) -> str:
    seeds = sorted(run.summary["seed"] for run in runs)
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def architecture_note(table: Table) -> str:
    """One line per recipe whose trained model is not the plain architecture: its accuracy is not that of
    the sparse network alone."""
    notes = {g.recipe: g.changed_architecture for g in table.groups if g.changed_architecture}
    if not notes:
        return ""
    lines = [f"- {recipe}: {text}" for recipe, text in sorted(notes.items())]
    return "\n‡ The trained model keeps more than the mask's weights:\n\n" + "\n".join(lines) + "\n"


def accuracy_matrix_markdown(table: Table) -> str:
    """Final test accuracy with one column per sparsity and one row per mask (and recipe): the shape a
    method comparison is read in. Empty when the table has a single sparsity (the long table says it all)."""
    if len(table.sparsities) < 2:
        return ""
    several_recipes = len(table.recipes) > 1
    header = ["mask", *(["recipe"] if several_recipes else []), *map(sparsity_label, table.sparsities)]
    rows = []
    for mask in table.masks:
        for recipe in table.recipes:
            groups = [table.group(mask, sparsity, recipe) for sparsity in table.sparsities]
            if any(groups):
                cells = [g.final_cell() if g else "–" for g in groups]
                rows.append([mask, *([recipe] if several_recipes else []), *cells])
    return f"Final {table.metric} accuracy (%) by sparsity:\n\n{markdown_table(header, rows)}\n"


def _recipe_cells(table: Table, group: Group | None, recipe: str) -> list[str]:
    width = 2 if recipe == BASELINE else 3
    if group is None:
        return ["–"] * width
    cells = [group.final_cell(), percent_cell(group.values("best_test_acc"))]
    return cells + ([_gain_text(table, group)] if recipe != BASELINE else [])


def _gain_text(table: Table, group: Group) -> str:
    """The group's paired gain in final accuracy over `default` on its mask and sparsity ('–' without)."""
    baseline = table.baseline_of(group)
    return gain_cell(group.gain_over(baseline, "final_test_acc")) if baseline else "–"


def variants_markdown(tables: Sequence[Table]) -> str:
    """The variants of one model and data side by side: a row per variant, and for each arm and (mask,
    sparsity) its final accuracy and paired gain over `default`, as in the variant's own section."""
    cells = sorted({row for t in tables for row in t.rows}, key=lambda r: (mask_order(r[0]), r[1]))
    arms = sorted({g.recipe for t in tables for g in t.groups}, key=recipe_order)
    # A single (mask, sparsity) is named in the legend rather than in every column.
    where = [f" {mask} {sparsity_label(sparsity)}" if len(cells) > 1 else "" for mask, sparsity in cells]
    header = ["variant"]
    for arm in arms:
        header += [f"{arm}{w} {kind}" for w in where for kind in _variant_kinds(arm)]
    rows = [
        [table.variant.name if table.variant else "", *_variant_cells(tables, i, arms, cells)]
        for i, table in enumerate(tables)
    ]
    title = f"## {tables[0].model} on {tables[0].data}: variants"
    return f"{title}\n\n{_variants_legend(tables, cells)}\n\n{markdown_table(header, rows)}\n"


def _variant_kinds(arm: str) -> list[str]:
    return ["final"] if arm == BASELINE else ["final", "gain"]


def _variant_cells(
    tables: Sequence[Table], index: int, arms: list[str], cells: list[tuple[str, float]]
) -> list[str]:
    """One variant's cells: per arm and (mask, sparsity) the final accuracy (and gain), or the number of
    the earlier variant that holds the same runs."""
    table, row = tables[index], []
    for arm in arms:
        for mask, sparsity in cells:
            group, width = table.group(mask, sparsity, arm), len(_variant_kinds(arm))
            earlier = earlier_variant(tables, index, arm, [(mask, sparsity)]) if group else None
            if group is None:
                row += ["–"] * width
            elif earlier and earlier.variant:
                row += [f"= {earlier.variant.number}"] * width
            else:
                row += [group.final_cell(), _gain_text(table, group)][:width]
    return row


def _variants_legend(tables: Sequence[Table], cells: list[tuple[str, float]]) -> str:
    common = most_common_values([t.values for t in tables])
    tied = sorted(set().union(*(t.values for t in tables)) - common.keys())
    naming = []
    if common:
        most = setting_text(common)
        naming.append(f"the settings where it differs from the value most variants have ({most})")
    if tied:  # calling either value common would hide it
        naming.append(f"its {', '.join(tied)} (no value is the most common)")
    at = f" ({cells[0][0]} at {sparsity_label(cells[0][1])})" if len(cells) == 1 else ""
    metric = tables[0].metric
    return (
        "The runs differ in settings beyond the table axes; each combination is a variant with its own "
        f"section below, in this order. A variant is named by {' and by '.join(naming)}. "
        f"Per arm{at}: final {metric} accuracy (%), mean ± std over seeds (number of seeds), and the gain "
        f"over `{BASELINE}` on the same mask, sparsity and seeds (points, 95% confidence interval, number "
        "of pairs). `= k`: the same runs as variant k (the arm reads none of the settings that differ), "
        "shown once."
    )


def earlier_variant(
    tables: Sequence[Table], index: int, arm: str, cells: Sequence[tuple[str, float]]
) -> Table | None:
    """The first variant before `index` whose `arm` and baseline are the very same runs on `cells`: an arm
    that reads none of the settings a variant changes (the default protocol, or a recipe without the
    part they belong to) joins that variant's table unchanged, and saying so beats repeating it."""
    runs = _run_hashes(tables[index], arm, cells)
    return next((t for t in tables[:index] if _run_hashes(t, arm, cells) == runs), None)


def _run_hashes(table: Table, arm: str, cells: Sequence[tuple[str, float]]) -> frozenset[str]:
    groups = (table.group(mask, sparsity, recipe) for mask, sparsity in cells for recipe in {arm, BASELINE})
    return frozenset(run.summary["config_hash"] for group in groups if group for run in group.runs)


def results_csv(tables: Sequence[Table]) -> str:
    """One row per group; accuracies as fractions like summary.json, gains over the default recipe."""
    header = [
        "model",
        "data",
        "setting",
        "mask",
        "sparsity",
        "recipe",
        "n",
        "seeds",
        "mask_density",
        "final_test_acc_mean",
        "final_test_acc_std",
        "best_test_acc_mean",
        "best_test_acc_std",
        "test_acc_at_best_val_mean",
        "test_acc_at_best_val_std",
        "final_gain",
        "best_gain",
        "gain_seeds",
        "final_gain_ci_low",
        "final_gain_ci_high",
        "collapsed_layers",
    ]
    if tables and tables[0].metric != "test":  # accuracies read from the validation split or training
        short = {word: metric for metric, word in METRICS_READ.items()}[tables[0].metric]
        header = [name.replace("test_acc", f"{short}_acc") for name in header]
    rows = [_csv_row(table, group) for table in tables for group in table.groups]
    return _csv_text(header, rows)


def _csv_row(table: Table, group: Group) -> list[str]:
    baseline = table.baseline_of(group)
    keys = ("final_test_acc", "best_test_acc")
    gains = [group.gain_over(baseline, key) for key in keys] if baseline else []
    return [
        table.model,
        table.data,
        table.setting,
        group.mask,
        f"{group.sparsity:g}",
        group.recipe,
        str(len(group.runs)),
        ";".join(map(str, group.seeds)),
        _number(statistics.fmean(group.values("mask_density"))),
        *_mean_std_fields(group.values("final_test_acc")),
        *_mean_std_fields(group.values("best_test_acc")),
        *_mean_std_fields(group.values("test_acc_at_best_val")),
        *([_number(g.mean) for g in gains] or ["", ""]),
        str(gains[0].seeds) if gains else "",
        *(map(_number, gains[0].interval) if gains and gains[0].interval else ["", ""]),
        ";".join(group.collapsed_layers),
    ]


def _mean_std_fields(values: Sequence[float]) -> list[str]:
    if not values:
        return ["", ""]
    mean, std = mean_std(values)
    return [_number(mean), _number(std)]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def timings_csv(tables: Sequence[Table]) -> str:
    """Train time per group: kept apart because wall time changes from one machine and run to the next."""
    header = ["model", "data", "setting", "mask", "sparsity", "recipe", "n", "train_seconds_mean"]
    rows = [
        [
            t.model,
            t.data,
            t.setting,
            g.mask,
            f"{g.sparsity:g}",
            g.recipe,
            str(len(g.runs)),
            f"{statistics.fmean(g.values('train_seconds')):.1f}",
        ]
        for t in tables
        for g in t.groups
    ]
    return _csv_text(header, rows)


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


# -- writing -------------------------------------------------------------------------------------------
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
    (the default protocol passes --only ghost_epochs=4, as it is the baseline of such runs)."""
    return [
        run
        for run in runs
        if all(key not in run.settings or run.settings[key] in values for key, values in filters.items())
    ]


def write_report(
    dirs: Sequence[Path],
    out: Path,
    *,
    keep_runs: bool = False,
    only: Sequence[str] = (),
    metric: str = "test",
) -> list[Path]:
    """Write report.md, results.csv, timings.csv and the plots into `out`; print the tables and paths.

    `keep_runs` also copies each run's small files (config, per-epoch metrics, summary) into
    `out/runs/<hash>/`: a report folder that can be committed and rebuilt from itself, without the
    weights and checkpoints the run folders hold. `metric` "val" reports validation accuracy instead of
    test accuracy (runs trained with a validation split), for choosing settings; "train" reports
    training accuracy, to tell a recipe that fits better from one that generalises better.
    """
    if metric not in METRICS_READ:
        raise AnymaskError(f"unknown --metric '{metric}'; use {', '.join(METRICS_READ)}")
    filters = parse_filters(only)
    check_output_folder(out)
    runs = keep_matching(collect_runs(dirs, metric), filters)
    if not runs:
        which = f" matching {' '.join(f'--only {o}' for o in only)}" if only else ""
        raise AnymaskError(
            f"no finished runs (folders with {SUMMARY}){which} under {', '.join(map(str, dirs))}"
        )
    tables = build_tables(runs, metric)
    out.mkdir(parents=True, exist_ok=True)
    if keep_runs:
        keep_run_files(runs, out / "runs")
    parts = _sections(tables, out)  # (markdown, the plots written for it)
    sections = [text + "".join(f"\n![{p.stem}]({p.name})\n" for p in paths) for text, paths in parts]
    which = {
        "test": "",
        "val": " Accuracies are on the validation split; no test accuracy is shown.",
        "train": " Accuracies are training accuracies (each epoch's training batches, as trained); no test"
        " accuracy is shown.",
    }[metric]
    markdown = f"# anymask report\n\n{len(runs)} finished runs.{which}\n\n" + "\n".join(sections)
    written = {
        out / "report.md": markdown,
        out / "results.csv": results_csv(tables),
        out / "timings.csv": timings_csv(tables),
    }
    for path, text in written.items():
        atomic_write_text(path, text)
    print("\n".join(text for text, _ in parts))
    files = [*written, *(p for _, paths in parts for p in paths)]
    print("wrote:\n" + "\n".join(f"  {path}" for path in files))
    return files


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
        from anymask.artifacts import damaged
        from anymask.masks import Mask

        mask = Mask.load(folder / MASK, MASK)
        if total is not None and mask.total() != total:
            problem = f"it covers {mask.total():,} weights, the run's summary {total:,}"
            raise damaged(folder / MASK, MASK, problem)
        return {layer.name: layer.density for layer in mask.layers()}
    if (folder / LAYER_DENSITIES).is_file():
        return read_layer_densities(folder / LAYER_DENSITIES)
    return None


def _sections(tables: Sequence[Table], out: Path) -> list[tuple[str, list[Path]]]:
    """Each model and data's variants table (when it has several tables) before its tables, each with the
    plots written for it."""
    from anymask.experiments import plots  # matplotlib is slow to import; only reports need it

    parts = []
    for same in by_model_and_data(tables):
        if len(same) > 1:
            parts.append((variants_markdown(same), plots.plot_variants(same, out)))
        parts += [(table_markdown(table), plots.plot_table(table, out)) for table in same]
    return parts
