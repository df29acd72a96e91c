"""Pairing: runs grouped by everything but the seed, groups gathered into tables (one per model, data and
combination of other settings), and the comparisons a table makes: paired gains of each recipe over its
reference on the same mask and seed, pooled over the masks of a sparsity, after each epoch too.

Runs that differ only by seed form a group; a recipe's gain over `default` is the mean of per-seed
differences on the same mask and sparsity, which cancels most of the seed-to-seed noise. Settings that
vary between the collected runs other than the table axes (say two learning rates) split the runs into
separate tables, so no group mixes them; those tables are the *variants* of their model and data.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from typing import Any

from anymask.errors import AnymaskError
from anymask.experiments.report.runs import METRICS_READ, Run
from anymask.experiments.report.stats import Gain, paired_gain

BASELINE = "default"
# Run settings that are table axes (or identify a mask file) rather than a setting that splits tables.
# `teacher` goes with the seed: distillation runs read the dense run of their own seed, so a teacher that
# differs between seeds is not a variant (two runs of one seed that differ in it are refused below).
AXES = frozenset(
    {"model", "data", "mask_method", "mask_file", "sparsity", "recipe", "dst", "seed", "teacher"}
)
# The label of the variant whose varying settings all have their most common value.
COMMON = "most common settings"


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

    def differences(self, baseline: Group, key: str, connected_only: bool = False) -> list[float]:
        """This group's value minus the baseline's on each seed both have (paired differences); with
        `connected_only`, not on a seed where either run's mask is disconnected."""
        mine, base = self.by_seed(key), baseline.by_seed(key)
        seeds = mine.keys() & base.keys()
        if connected_only:
            seeds -= self.disconnected_seeds | baseline.disconnected_seeds
        return [mine[s] - base[s] for s in sorted(seeds)]

    @property
    def disconnected_seeds(self) -> set[int]:
        return {run.summary["seed"] for run in self.runs if run.disconnected}

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
    groups: list[Group]
    metric: str = "test"  # whose accuracy the table holds: "test", "validation" or "training" (--metric)
    # The settings beyond the axes that this table holds fixed, {"lr": 0.05}, when the collected runs
    # vary in them; else empty.
    values: dict[str, Any] = field(default_factory=dict)
    variant: Variant | None = None  # set when its model and data have several tables

    @property
    def setting(self) -> str:
        """The table's settings as text, "lr=0.05" ("" when the runs vary in no other setting)."""
        return setting_text(self.values)

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

    def pooled_gain(
        self, recipe: str, reference: str, sparsity: float, key: str, connected_only: bool = False
    ) -> Gain | None:
        """`recipe` minus `reference` over every mask of a sparsity, paired on (mask, seed); None when
        no mask has both recipes on a common seed. `connected_only` leaves out the pairs on a mask that
        cuts the network (a class unreachable): there the baseline's score says more about the mask."""
        differences = [
            d
            for group, base in self._mask_pairs(recipe, reference, sparsity)
            for d in group.differences(base, key, connected_only)
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


# -- grouping ------------------------------------------------------------------------------------------
def build_tables(runs: Sequence[Run], metric: str = "test") -> list[Table]:
    """Group runs by everything but the seed, and groups into tables by model, data and other settings.

    A run joins every table whose settings it agrees with: a default-protocol run, which reads no recipe
    setting, is the baseline of the tables for ghost_epochs=4 and ghost_epochs=8 alike. Several tables of
    one model and data are its variants, numbered in the variants table's order (`number_variants`).
    """
    varying = _varying_settings(runs)
    settings = {
        id(run): {k: run.table_settings[k] for k in varying if k in run.table_settings} for run in runs
    }
    combos = {setting_text(c): c for c in _table_settings(list(settings.values()))}
    tables: dict[tuple[str, str, str], Table] = {}
    by_group: dict[tuple[Any, ...], list[Run]] = {}
    for run in runs:
        s = run.summary
        for setting, combo in combos.items():
            # A run joins a table only when the table fixes every varying setting the run reads: a kd run
            # at T 2 must not join a table of fold_at=ghost runs that says nothing of the temperature, or
            # it would be averaged with the T 4 run as if it were another seed.
            if any(k not in combo or combo[k] != v for k, v in settings[id(run)].items()):
                continue
            key = (s["model"], s["data"], setting, run.mask, s["sparsity"], run.arm)
            by_group.setdefault(key, []).append(run)
    for (model, data, setting, mask, sparsity, recipe), members in by_group.items():
        members.sort(key=lambda r: r.summary["seed"])
        _refuse_two_runs_of_one_seed(members)
        table = tables.setdefault(
            (model, data, setting), Table(model, data, [], METRICS_READ[metric], values=combos[setting])
        )
        table.groups.append(Group(mask, sparsity, recipe, members))
    for table in tables.values():
        table.groups.sort(key=lambda g: (mask_order(g.mask), g.sparsity, recipe_order(g.recipe)))
    ordered = by_model_and_data([tables[key] for key in sorted(tables)])
    return [table for same in ordered for table in number_variants(same)]


def _refuse_two_runs_of_one_seed(members: Sequence[Run]) -> None:
    """A group is one run per seed; two runs of one seed differ in an axis-like setting (a teacher) and
    averaging them would count one seed twice."""
    for first, second in pairwise(members):
        if first.summary["seed"] == second.summary["seed"]:
            differ = sorted(
                k
                for k in set(first.settings) | set(second.settings)
                if not _same(first.settings.get(k), second.settings.get(k))
            )
            raise AnymaskError(
                f"runs {first.summary['config_hash']} and {second.summary['config_hash']} share seed "
                f"{first.summary['seed']} and the table's settings but differ in "
                f"{', '.join(differ) or 'nothing'}; report them apart with --only (e.g. --only teacher=RUN)"
            )


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
    keys = sorted(set().union(*(run.table_settings for run in runs)) - AXES) if runs else []
    return [
        key
        for key in keys
        if len({json.dumps(run.table_settings[key]) for run in runs if key in run.table_settings}) > 1
    ]


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
