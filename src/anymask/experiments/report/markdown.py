"""Tables and markdown: the report's text, one long table per table of runs (final and best accuracy,
gains with intervals), the accuracy matrix, pooled gains, notes on collapsed or disconnected masks and
changed architectures, and the variants table of a model and data.

Only what a run's config determines appears (accuracies, sparsities, counts), never wall times or paths:
the same runs give byte-identical text however they were scheduled or resumed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from anymask.experiments.report.groups import (
    BASELINE,
    Group,
    Table,
    earlier_variant,
    mask_order,
    most_common_values,
    recipe_order,
    setting_text,
)
from anymask.experiments.report.runs import Run
from anymask.experiments.report.stats import Gain, mean_std

FINAL = "final_test_acc"  # the accuracy the pooled gains compare


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


def final_cell(group: Group) -> str:
    """Final test accuracy, marked † when the mask collapsed a layer, § when it disconnects the network
    otherwise, and ‡ when the trained model is not the plain architecture."""
    mask_mark = " †" if group.collapsed_layers else " §" if group.disconnected else ""
    marks = mask_mark + (" ‡" if group.changed_architecture else "")
    return percent_cell(group.values("final_test_acc")) + marks


def sparsity_label(sparsity: float) -> str:
    return f"{100 * sparsity:g}%"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with padded columns, so it reads as well in a terminal as rendered."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


@dataclass(frozen=True)
class ArmColumn:
    """A column the long table repeats for every arm: headed '<arm> <name>', one cell per group."""

    name: str
    cell: Callable[[Table, Group], str]
    compares: bool = False  # a comparison with `default`: the `default` arm has no such column
    shown: Callable[[Table], bool] = lambda table: True  # e.g. only for runs that recorded the data


def has_cost(table: Table) -> bool:
    """Runs made since training costs are counted (summary.json's `train_flops_vs_default`)."""
    return any(group.values("train_flops_vs_default") for group in table.groups)


def cost_cell(table: Table, group: Group) -> str:
    """'1.28x': training FLOPs against the default protocol on the same mask, from each run's own count.
    (Wall time varies from run to run, so it stays in timings.csv: a report must not change when the
    same runs are trained again.)"""
    flops = group.values("train_flops_vs_default")
    return f"{statistics.fmean(flops):.2f}x" if flops else "–"


# The long table's columns, per arm, in order. A new column is one entry here (and a sentence in the
# legend of `table_markdown`).
ARM_COLUMNS = (
    ArmColumn("final", lambda table, group: final_cell(group)),
    ArmColumn("best", lambda table, group: percent_cell(group.values("best_test_acc"))),
    ArmColumn("gain", lambda table, group: _gain_text(table, group), compares=True),
    ArmColumn("cost", cost_cell, compares=True, shown=has_cost),
)


def arm_columns(recipe: str, table: Table) -> list[ArmColumn]:
    return [
        column
        for column in ARM_COLUMNS
        if (recipe != BASELINE or not column.compares) and column.shown(table)
    ]


def table_markdown(table: Table) -> str:
    """One table: rows mask x sparsity; per recipe final and best accuracy, and the gain over default."""
    header = ["mask", "sparsity"]
    for recipe in table.recipes:
        header += [f"{recipe} {column.name}" for column in arm_columns(recipe, table)]
    rows = []
    for mask, sparsity in table.rows:
        row = [mask, sparsity_label(sparsity)]
        for recipe in table.recipes:
            group = table.group(mask, sparsity, recipe)
            row += [column.cell(table, group) if group else "–" for column in arm_columns(recipe, table)]
        rows.append(row)
    epochs = {run.summary["epochs"] for g in table.groups for run in g.runs}
    after = f" after {epochs.pop()} epochs" if len(epochs) == 1 else ""
    legend = (
        f"{table.metric.capitalize()} accuracy (%){after}: final and best epoch, mean ± std over seeds "
        "(number of seeds). "
        f"Gain: final accuracy minus `{BASELINE}` on the same mask, sparsity and seeds (points), "
        "with its 95% confidence interval (Student t over the paired differences) and the number of pairs."
    )
    if has_cost(table):
        legend += (
            " Cost: training FLOPs against the default protocol on the same mask (counted as the RigL paper "
            "counts them, teacher forward passes included); training times are in timings.csv."
        )
    extras = [accuracy_matrix_markdown(table), pooled_gains_markdown(table)]
    settings = f"Settings of this variant: {table.setting}.\n\n" if table.variant else ""
    long_table = f"## {table.title}\n\n{settings}{legend}\n\n{markdown_table(header, rows)}\n"
    notes = collapse_note(table) + architecture_note(table)
    return long_table + "".join(f"\n{extra}" for extra in extras if extra) + notes


def pooled_gains_markdown(table: Table) -> str:
    """Per sparsity and recipe pair, the paired gain over every mask and seed with its 95% interval, and
    where some pair is on a disconnected mask, the same without those pairs beside it. Empty when no
    pair of recipes shares a mask and seed."""
    rows = []
    for sparsity in table.sparsities:
        cells = [
            (table.pooled_gain(r, ref, sparsity, FINAL), table.pooled_gain(r, ref, sparsity, FINAL, True))
            for r, ref in table.recipe_pairs
        ]
        if any(every for every, _ in cells):
            rows.append((sparsity, cells))
    if not rows:
        return ""
    any_cut = any(_leaves_out(*cell) for _, cells in rows for cell in cells)
    header = ["sparsity", *(f"{r} − {ref}" for r, ref in table.recipe_pairs)]
    if any_cut:
        header += [f"{r} − {ref}, connected masks" for r, ref in table.recipe_pairs]
    body = [
        [
            sparsity_label(sparsity),
            *(gain_cell(every) if every else "–" for every, _ in cells),
            *((_connected_cell(*cell) for cell in cells) if any_cut else ()),
        ]
        for sparsity, cells in rows
    ]
    legend = (
        f"Paired gain in final {table.metric} accuracy (points), pooled over the masks of each sparsity: "
        "mean of the "
        "differences on the same mask and seed, 95% confidence interval, number of pairs."
    )
    if any_cut:
        legend += (
            " Connected masks: the same without the pairs on a disconnected mask (§), "
            "where the baseline's score says more about the mask than about training."
        )
    return f"{legend}\n\n{markdown_table(header, body)}\n"


def _leaves_out(every: Gain | None, connected: Gain | None) -> bool:
    """Whether the connected-masks gain leaves out some of the pairs the full gain has."""
    return every is not None and (connected is None or connected.seeds < every.seeds)


def _connected_cell(every: Gain | None, connected: Gain | None) -> str:
    if connected is None:
        return "–"
    return gain_cell(connected) if _leaves_out(every, connected) else "same"


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
                cells = [final_cell(g) if g else "–" for g in groups]
                rows.append([mask, *([recipe] if several_recipes else []), *cells])
    return f"Final {table.metric} accuracy (%) by sparsity:\n\n{markdown_table(header, rows)}\n"


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
                row += [final_cell(group), _gain_text(table, group)][:width]
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
