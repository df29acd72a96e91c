"""What the report's figures share: colours, a grid of panels, the finishing touches (title, labels, one
legend below the panels), categorical sparsity axes, bands and error bars tagged with what they are, and
the wording that says what each point stands for (the number of seeds or pairs, and a 95% confidence
interval only where one is drawn).

Figures are drawn on `matplotlib.figure.Figure` objects, never through pyplot, so no GUI backend or
global state is involved and reports render the same on a headless server. `anymask.experiments.layout`
fits their text inside them when they are saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from anymask.experiments.layout import add_legend, legend_columns
from anymask.experiments.report.groups import Group, Table
from anymask.experiments.report.markdown import sparsity_label
from anymask.experiments.report.stats import Gain

COLORS = [f"tab:{c}" for c in ("blue", "orange", "green", "red", "purple", "brown", "pink", "olive", "cyan")]
COLORS += ["tab:gray", "black", "gold", "navy", "lime", "maroon", "teal"]  # tables with many arms


def recipe_color(table: Table, recipe: str) -> str:
    """Each recipe keeps one colour in every figure of a table."""
    return COLORS[table.recipes.index(recipe) % len(COLORS)]


def panels(
    cells: list[tuple[int, int]], panel: tuple[float, float], sharey: bool = True
) -> tuple[Figure, list[Axes]]:
    """A figure with a panel at each (row, column) of `cells`, sharing the y axis unless told not to;
    other slots stay empty."""
    rows, columns = max(r for r, _ in cells) + 1, max(c for _, c in cells) + 1
    figure = Figure(figsize=(panel[0] * columns, panel[1] * rows + 0.9), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False, sharey=sharey)
    for ax in grid.flat:
        ax.set_visible(False)
    axes = [grid[r][c] for r, c in cells]
    for ax in axes:
        ax.set_visible(True)
    return figure, axes


def wrapped(count: int, max_columns: int) -> list[tuple[int, int]]:
    columns = min(count, max_columns)
    return [divmod(i, columns) for i in range(count)]


def finish(figure: Figure, axes: list[Axes], title: str, ylabel: str) -> None:
    """Shared title, y label and ticks on each row's first panel, one legend below all panels, light grid.
    The legend's columns and the title's lines are fitted to the figure when it is saved."""
    rows_labelled: set[int] = set()
    legend: dict[str, Any] = {}
    for ax in axes:
        ax.grid(True, alpha=0.3)
        row = ax.get_subplotspec().rowspan.start
        if row not in rows_labelled:
            rows_labelled.add(row)
            ax.set_ylabel(ylabel)
            ax.tick_params(labelleft=True)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    figure.suptitle(title, fontsize=12)
    if legend:
        columns = legend_columns(list(legend), figure)
        handles, labels = list(legend.values()), list(legend)
        add_legend(figure, handles, labels, loc="outside lower center", ncol=columns, frameon=False)


def sparsity_axis(ax: Axes, sparsities: list[float]) -> None:
    """Sparsities as categorical ticks (90%, 98%, 99%): the interesting points crowd near 100%, where a
    linear axis would squash them."""
    ax.set_xticks(range(len(sparsities)), [sparsity_label(s) for s in sparsities])
    ax.set_xlim(-0.4, len(sparsities) - 0.6)
    ax.set_xlabel("sparsity (weights removed)")


def band(ax: Axes, x: Sequence[float], low: list[float], high: list[float], color: str, kind: str) -> None:
    """A shaded band between `low` and `high`, tagged CONFIDENCE or SPREAD."""
    ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0).set_gid(kind)


def tag_bars(container: ErrorbarContainer, kind: str) -> None:
    """Tag an errorbar's bars as CONFIDENCE or SPREAD, so the figure's wording can be checked against
    what it draws."""
    for collection in container.lines[2]:
        collection.set_gid(kind)


# -- what a point stands for ---------------------------------------------------------------------------
def interval_wording(gains: Sequence[Gain]) -> str:
    """For a title: how many pairs each gain is over, and "95% CI" only where an interval is drawn (a
    gain over one pair has none)."""
    pairs = sorted({g.seeds for g in gains})
    count = _count(pairs, "pair")
    drawn = [g for g in gains if g.half_width is not None]
    if not drawn:
        return f"({count} per point: no interval)"
    if len(drawn) < len(gains):
        return f"({count} per point; bars: 95% CI where a point has 2 or more, none for one pair)"
    return f"({count} per point; bars: 95% CI)"


def spread_wording(groups: Sequence[Group], drawn: str = "error bars: std", each: str = "point") -> str:
    """For a title: how many seeds each point (or line) is over, and what spread is drawn where there
    are several ("error bars: std"); none is drawn for one seed."""
    seeds = sorted({len(g.runs) for g in groups})
    count = _count(seeds, "seed")
    if seeds[-1] < 2:
        return f"({count} per {each})"
    if seeds[0] < 2:
        return f"(mean of {count} per {each}; {drawn} where 2 or more)"
    return f"(mean of {count} per {each}; {drawn})"


def _count(values: list[int], noun: str) -> str:
    """'1 seed', '3 seeds', '1-3 pairs'."""
    low, high = values[0], values[-1]
    number = f"{low}" if low == high else f"{low}-{high}"
    return f"{number} {noun}{'' if high == 1 else 's'}"
