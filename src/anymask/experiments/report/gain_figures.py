"""The report's gain figures: paired gain per sparsity, paired gain after each epoch, and the gains of a
model's variants side by side. Every gain is a mean of paired differences (same mask and seed); its 95%
confidence interval is drawn where it has two pairs or more, and each title says how many pairs each
point is over."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from anymask.experiments.layout import CONFIDENCE
from anymask.experiments.report.drawing import (
    COLORS,
    band,
    finish,
    interval_wording,
    panels,
    recipe_color,
    sparsity_axis,
    tag_bars,
    wrapped,
)
from anymask.experiments.report.groups import BASELINE, Table, earlier_variant, recipe_order
from anymask.experiments.report.markdown import sparsity_label
from anymask.experiments.report.stats import Gain

MASK_MARKERS = "os^Dv<>pP*hX"


# -- paired gain vs sparsity --------------------------------------------------------------------------
def gain_vs_sparsity(table: Table) -> Figure | None:
    """One panel per recipe pair: the pooled paired gain per sparsity with its 95% interval as error
    bars, and each mask's own mean gain as a small marker beside it. None without a comparable pair."""
    sparsities = [s for s in table.sparsities if s > 0]
    pairs = [
        (pair, gains)
        for pair in table.recipe_pairs
        if any(gains := [table.pooled_gain(*pair, s, "final_test_acc") for s in sparsities])
    ]
    if not pairs:
        return None
    figure, axes = panels(wrapped(len(pairs), 3), (4.4, 3.4))
    masks = [m for m in table.masks if m != "dense"]
    for ax, ((recipe, reference), gains) in zip(axes, pairs, strict=True):
        _pooled_gain_bars(ax, gains, recipe_color(table, recipe))
        for j, mask in enumerate(masks):
            offset = 0.12 * (j - (len(masks) - 1) / 2)
            points = _mask_gains(table, mask, recipe, reference, sparsities)
            ax.scatter(
                [i + offset for i, _ in points],
                [g for _, g in points],
                marker=MASK_MARKERS[j % len(MASK_MARKERS)],
                s=18,
                color="gray",
                label=mask,
                zorder=3,
            )
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"{recipe} − {reference}")
        sparsity_axis(ax, sparsities)
    every_gain = [g for _, gains in pairs for g in gains if g is not None]
    title = (
        f"{table.title}: paired gain in final {table.metric} accuracy, pooled over masks "
        f"{interval_wording(every_gain)}"
    )
    finish(figure, axes, title, "gain (points)")
    return figure


def _pooled_gain_bars(ax: Axes, gains: list[Gain | None], color: str) -> None:
    points = [(i, g) for i, g in enumerate(gains) if g is not None]
    bars = ax.errorbar(
        [i for i, _ in points],
        [100 * g.mean for _, g in points],
        yerr=[100 * (g.half_width or 0.0) for _, g in points],
        color=color,
        marker="o",
        capsize=4,
        linewidth=1.5,
        label="pooled over masks",
        zorder=4,
    )
    tag_bars(bars, CONFIDENCE)


def _mask_gains(
    table: Table, mask: str, recipe: str, reference: str, sparsities: list[float]
) -> list[tuple[int, float]]:
    points = []
    for i, sparsity in enumerate(sparsities):
        group, base = table.group(mask, sparsity, recipe), table.group(mask, sparsity, reference)
        differences = group.differences(base, "final_test_acc") if group and base else []
        if differences:
            points.append((i, 100 * statistics.fmean(differences)))
    return points


# -- paired gain after each epoch -----------------------------------------------------------------------
def gain_by_epoch(table: Table) -> Figure | None:
    """A panel per sparsity: each recipe pair's paired gain after every epoch, pooled over masks and seeds,
    with its 95% interval as a band and a dotted line where the recipe's ghost phase ends. Says when a
    recipe's lead opens and whether it survives the ghosts' removal. None without a comparable pair.
    Each pair has its own colour (two pairs of one recipe, against default and against tost, differ)."""
    sparsities = [s for s in table.sparsities if s > 0]
    drawn = [
        (s, lines)
        for s in sparsities
        if (
            lines := [(pair, g) for pair in table.recipe_pairs if (g := table.pooled_gain_by_epoch(*pair, s))]
        )
    ]
    if not drawn:
        return None
    # Own y scales: a sparsity with two pairs has an interval ten times wider than one with nine.
    figure, axes = panels(wrapped(len(drawn), 3), (4.4, 3.2), sharey=False)
    every_gain = []
    for ax, (sparsity, lines) in zip(axes, drawn, strict=True):
        ghosts_marked = set()
        for pair, gains in lines:
            color = pair_color(table, pair)
            _gain_line(ax, gains, color, f"{pair[0]} − {pair[1]}")
            recipe = pair[0]
            end = table.ghost_phase_end(recipe, sparsity)
            if 0 < end < len(gains) and recipe not in ghosts_marked:
                ghosts_marked.add(recipe)
                ax.axvline(
                    end + 0.5, color=color, linestyle=":", linewidth=1.2, label=f"{recipe}: ghosts removed"
                )
            every_gain += gains
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"{sparsity_label(sparsity)} sparsity")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    title = (
        f"{table.title}: paired gain in {table.metric} accuracy after each epoch "
        f"{interval_wording(every_gain).replace('bars', 'bands')}"
    )
    finish(figure, axes, title, "gain (points)")
    return figure


def pair_color(table: Table, pair: tuple[str, str]) -> str:
    """A recipe pair's colour: its recipe's colour when that recipe has one pair in the table, else one
    of its own, so `tost-official − default` and `tost-official − tost` never share a colour."""
    recipe = pair[0]
    if sum(1 for r, _ in table.recipe_pairs if r == recipe) == 1:
        return recipe_color(table, recipe)
    taken = {recipe_color(table, r) for r in table.recipes}
    spare = [c for c in COLORS if c not in taken] or COLORS
    shared = [p for p in table.recipe_pairs if p[0] == recipe]
    index = shared.index(pair)
    return recipe_color(table, recipe) if index == 0 else spare[(index - 1) % len(spare)]


def _gain_line(ax: Axes, gains: list[Gain], color: str, label: str) -> None:
    x = range(1, len(gains) + 1)
    ax.plot(x, [100 * g.mean for g in gains], color=color, linewidth=1.5, label=label)
    if all(g.half_width is not None for g in gains):
        band(
            ax,
            x,
            [100 * (g.mean - (g.half_width or 0.0)) for g in gains],
            [100 * (g.mean + (g.half_width or 0.0)) for g in gains],
            color,
            CONFIDENCE,
        )


# -- the variants of a model and data ------------------------------------------------------------------
def variant_gains(tables: Sequence[Table]) -> Figure | None:
    """A panel per sparsity, a row per variant: each arm's paired gain over default, pooled over the masks
    of the sparsity, with its 95% interval as error bars. An arm whose runs an earlier variant already
    holds (it reads none of the settings that differ) is drawn there only, as the variants table shows it.
    None when no variant has a gain."""
    arms = sorted({g.recipe for t in tables for g in t.groups} - {BASELINE}, key=recipe_order)
    sparsities = sorted({s for t in tables for s in t.sparsities if s > 0})
    drawn = [(s, points) for s in sparsities if (points := _variant_points(tables, arms, s))]
    if not drawn:
        return None
    figure, axes = panels(wrapped(len(drawn), 3), (5.0, 1.2 + len(tables) * (0.3 + 0.15 * len(arms))))
    for ax, (sparsity, points) in zip(axes, drawn, strict=True):
        for row, arm_index, gain in points:
            bars = ax.errorbar(
                100 * gain.mean,
                row + 0.5 * (arm_index - (len(arms) - 1) / 2) / len(arms),
                xerr=100 * (gain.half_width or 0.0),
                color=COLORS[arm_index % len(COLORS)],
                marker="o",
                capsize=3,
                label=arms[arm_index],
            )
            tag_bars(bars, CONFIDENCE)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{sparsity_label(sparsity)} sparsity")
        ax.set_xlabel(f"gain over {BASELINE} (points)")
    names = [t.variant.name if t.variant else t.setting for t in tables]
    axes[0].set_yticks(range(len(tables)), [textwrap.shorten(n, 40, placeholder="…") for n in names])
    axes[0].set_ylim(len(tables) - 0.5, -0.5)  # variant 1 on top, as in the table (the axes share y)
    first = tables[0]
    title = (
        f"{first.model} on {first.data}: paired gain of each variant in final {first.metric} accuracy, "
        f"pooled over masks {interval_wording([gain for _, points in drawn for _, _, gain in points])}"
    )
    finish(figure, axes, title, "variant")
    return figure


def _variant_points(tables: Sequence[Table], arms: list[str], sparsity: float) -> list[tuple[int, int, Gain]]:
    """(variant row, arm index, pooled gain) for each variant and arm with a gain at `sparsity`."""
    points = []
    for row, table in enumerate(tables):
        cells = [(mask, sparsity) for mask in table.masks]
        for arm_index, arm in enumerate(arms):
            gain = table.pooled_gain(arm, BASELINE, sparsity, "final_test_acc")
            if gain is not None and earlier_variant(tables, row, arm, cells) is None:
                points.append((row, arm_index, gain))
    return points
