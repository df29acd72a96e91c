"""The report's figures: accuracy vs sparsity, gains, learning curves, per-layer mask densities, and the
gains of a model's variants (tables that differ in other settings) side by side.

Figures are drawn on `matplotlib.figure.Figure` objects, never through pyplot, so no GUI backend or
global state is involved and reports render the same on a headless server. Each recipe keeps one colour
in every figure of a table, and sparsities are categorical ticks (90%, 98%, 99%): the interesting points
crowd near 100% where a linear axis would squash them.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from anymask.experiments.report.groups import BASELINE, Group, Table, earlier_variant, file_slug, recipe_order
from anymask.experiments.report.markdown import sparsity_label
from anymask.experiments.report.stats import Gain

DPI = 100
COLORS = [f"tab:{c}" for c in ("blue", "orange", "green", "red", "purple", "brown", "pink", "olive")]


def plot_table(table: Table, out: Path) -> list[Path]:
    """Every figure that the table's runs allow; returns the PNG paths written.

    A variant (one of several tables of a model and data) gets only the sparsity figures, and only when
    it has several sparsities: a search over settings has many variants of one mask and sparsity each,
    whose figures would be single points, and its variants figure compares them in one place.
    """
    figures: dict[str, Callable[[Table], Figure | None]] = {
        "accuracy_vs_sparsity": accuracy_vs_sparsity,
        "gain_vs_sparsity": gain_vs_sparsity,
        "learning_curves": learning_curves,
        "gain_by_epoch": gain_by_epoch,
        "densities": densities,
    }
    if table.variant:
        several = len([s for s in table.sparsities if s > 0]) > 1
        kept = ("accuracy_vs_sparsity", "gain_vs_sparsity") if several else ()
        figures = {kind: draw for kind, draw in figures.items() if kind in kept}
    written = []
    for kind, draw in figures.items():
        figure = draw(table)
        if figure is not None:
            written.append(_save(figure, out / f"{kind}_{table.slug}.png"))
    return written


def plot_variants(tables: Sequence[Table], out: Path) -> list[Path]:
    """The variants figure of one model and data; returns the PNG path written, if any."""
    figure = variant_gains(tables)
    if figure is None:
        return []
    return [_save(figure, out / f"variants_gain_{file_slug(f'{tables[0].model}_{tables[0].data}')}.png")]


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI)
    return path


def recipe_color(table: Table, recipe: str) -> str:
    return COLORS[table.recipes.index(recipe) % len(COLORS)]


def _panels(
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


def _wrapped(count: int, max_columns: int) -> list[tuple[int, int]]:
    columns = min(count, max_columns)
    return [divmod(i, columns) for i in range(count)]


def _finish(figure: Figure, axes: list[Axes], title: str, ylabel: str) -> None:
    """Shared title, y label and ticks on each row's first panel, one legend below all panels, light grid."""
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
    # Wrap the title to the figure: a one-panel figure is narrower than a long title in 12 pt
    # (about 11 characters to the inch).
    figure.suptitle(textwrap.fill(title, max(30, int(figure.get_figwidth() * 11))), fontsize=12)
    columns = min(len(legend), max(1, int(figure.get_figwidth() // 1.2)))  # ~1.2 inches per legend entry
    figure.legend(legend.values(), legend, loc="outside lower center", ncol=columns, frameon=False)


# -- accuracy vs sparsity ------------------------------------------------------------------------------
def accuracy_vs_sparsity(table: Table) -> Figure | None:
    """One panel per mask method, one line per recipe; error bars are std over seeds. With one recipe
    and several methods, one panel with a line per method: the comparison the table is then about."""
    masks = [m for m in table.masks if m != "dense"]
    if not masks:
        return None
    sparsities = sorted({g.sparsity for g in table.groups if g.mask != "dense"})
    if len(table.recipes) == 1 and len(masks) > 1:
        return _methods_in_one_panel(table, masks, sparsities)
    figure, axes = _panels(_wrapped(len(masks), 3), (4.2, 3.4))
    for ax, mask in zip(axes, masks, strict=True):
        for recipe in table.recipes:
            _accuracy_line(ax, table, mask, recipe, sparsities)
        _dense_reference(ax, table)
        ax.set_title(mask)
        _sparsity_axis(ax, sparsities)
    title = f"{table.title}: final {table.metric} accuracy vs sparsity (mean ± std over seeds)"
    _finish(figure, axes, title, f"final {table.metric} accuracy (%)")
    return figure


def _methods_in_one_panel(table: Table, masks: list[str], sparsities: list[float]) -> Figure:
    figure, (ax,) = _panels([(0, 0)], (6.4, 4.4))
    recipe = table.recipes[0]
    for i, mask in enumerate(masks):
        _accuracy_line(ax, table, mask, recipe, sparsities, label=mask, color=COLORS[i % len(COLORS)])
    _dense_reference(ax, table)
    _sparsity_axis(ax, sparsities)
    title = f"{table.title}, recipe {recipe}: final {table.metric} accuracy vs sparsity per mask method"
    _finish(figure, [ax], title, f"final {table.metric} accuracy (%)")
    return figure


def _sparsity_axis(ax: Axes, sparsities: list[float]) -> None:
    ax.set_xticks(range(len(sparsities)), [sparsity_label(s) for s in sparsities])
    ax.set_xlim(-0.4, len(sparsities) - 0.6)
    ax.set_xlabel("sparsity (weights removed)")


def _accuracy_line(
    ax: Axes,
    table: Table,
    mask: str,
    recipe: str,
    sparsities: list[float],
    label: str | None = None,
    color: str | None = None,
) -> None:
    points = [(i, g) for i, s in enumerate(sparsities) if (g := table.group(mask, s, recipe))]
    if not points:
        return
    stats = [_percent_stats(g.values("final_test_acc")) for _, g in points]
    ax.errorbar(
        [i for i, _ in points],
        [m for m, _ in stats],
        yerr=[s for _, s in stats],
        label=label or recipe,
        color=color or recipe_color(table, recipe),
        marker="o",
        capsize=3,
        linewidth=1.5,
    )


def _dense_reference(ax: Axes, table: Table) -> None:
    """Dense runs, when the table has them, as a dashed level per recipe."""
    for group in table.groups:
        if group.mask == "dense":
            mean, _ = _percent_stats(group.values("final_test_acc"))
            ax.axhline(
                mean,
                color=recipe_color(table, group.recipe),
                linestyle="--",
                linewidth=1,
                label=f"dense, {group.recipe}",
            )


def _percent_stats(values: Sequence[float]) -> tuple[float, float]:
    return 100 * statistics.fmean(values), 100 * statistics.stdev(values) if len(values) > 1 else 0.0


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
    figure, axes = _panels(_wrapped(len(pairs), 3), (4.4, 3.4))
    masks = [m for m in table.masks if m != "dense"]
    for ax, ((recipe, reference), gains) in zip(axes, pairs, strict=True):
        _pooled_gain_bars(ax, gains, recipe_color(table, recipe))
        for j, mask in enumerate(masks):
            offset = 0.12 * (j - (len(masks) - 1) / 2)
            points = _mask_gains(table, mask, recipe, reference, sparsities)
            ax.scatter(
                [i + offset for i, _ in points],
                [g for _, g in points],
                marker="os^Dv<>p"[j % 8],
                s=18,
                color="gray",
                label=mask,
                zorder=3,
            )
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"{recipe} − {reference}")
        _sparsity_axis(ax, sparsities)
    every_gain = [g for _, gains in pairs for g in gains if g is not None]
    title = (
        f"{table.title}: paired gain in final {table.metric} accuracy, pooled over masks {_bars(every_gain)}"
    )
    _finish(figure, axes, title, "gain (points)")
    return figure


def _bars(gains: Sequence[Gain]) -> str:
    """What the error bars are, for a title: a single pair has no interval, so no bar is drawn for it."""
    if all(g.half_width is None for g in gains):
        return "(one pair each: no interval)"
    if any(g.half_width is None for g in gains):
        return "(bars: 95% confidence interval; none for a single pair)"
    return "(95% confidence interval)"


def _pooled_gain_bars(ax: Axes, gains: list[Any], color: str) -> None:
    points = [(i, g) for i, g in enumerate(gains) if g is not None]
    ax.errorbar(
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


# -- learning curves -----------------------------------------------------------------------------------
def learning_curves(table: Table) -> Figure:
    """Test accuracy after each epoch: a row per mask, a panel per sparsity, a line per recipe (± std)."""
    sparsities = sorted({s for m, s in table.rows if m != "dense"})
    cells = [(table.masks.index(m), sparsities.index(s) if m != "dense" else 0) for m, s in table.rows]
    figure, axes = _panels(cells, (3.6, 2.9))
    for ax, (mask, sparsity) in zip(axes, table.rows, strict=True):
        for recipe in table.recipes:
            group = table.group(mask, sparsity, recipe)
            if group is not None:
                _curve(ax, group, recipe_color(table, recipe))
        ax.set_title(mask if mask == "dense" else f"{mask}, {sparsity_label(sparsity)} sparse")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    title = f"{table.title}: {table.metric} accuracy during training (mean over seeds)"
    _finish(figure, axes, title, f"{table.metric} accuracy (%)")
    return figure


def gain_by_epoch(table: Table) -> Figure | None:
    """A panel per sparsity: each recipe pair's paired gain after every epoch, pooled over masks and seeds,
    with its 95% interval as a band and a dotted line where the recipe's ghost phase ends. Says when a
    recipe's lead opens and whether it survives the ghosts' removal. None without a comparable pair."""
    sparsities = [s for s in table.sparsities if s > 0]
    panels = [
        (s, lines)
        for s in sparsities
        if (
            lines := [(pair, g) for pair in table.recipe_pairs if (g := table.pooled_gain_by_epoch(*pair, s))]
        )
    ]
    if not panels:
        return None
    # Own y scales: a sparsity with two pairs has an interval ten times wider than one with nine.
    figure, axes = _panels(_wrapped(len(panels), 3), (4.4, 3.2), sharey=False)
    every_gain = []
    for ax, (sparsity, lines) in zip(axes, panels, strict=True):
        for (recipe, reference), gains in lines:
            color = recipe_color(table, recipe)
            _gain_line(ax, gains, color, f"{recipe} − {reference}")
            end = table.ghost_phase_end(recipe, sparsity)
            if 0 < end < len(gains):
                ax.axvline(
                    end + 0.5, color=color, linestyle=":", linewidth=1.2, label=f"{recipe}: ghosts removed"
                )
            every_gain += gains
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"{sparsity_label(sparsity)} sparsity")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    title = f"{table.title}: paired gain in {table.metric} accuracy after each epoch {_bars(every_gain)}"
    _finish(figure, axes, title, "gain (points)")
    return figure


def _gain_line(ax: Axes, gains: list[Gain], color: str, label: str) -> None:
    x = range(1, len(gains) + 1)
    ax.plot(x, [100 * g.mean for g in gains], color=color, linewidth=1.5, label=label)
    if all(g.half_width is not None for g in gains):
        _band(
            ax,
            x,
            [100 * (g.mean - g.half_width) for g in gains],
            [100 * (g.mean + g.half_width) for g in gains],
            color,
        )


def _band(ax: Axes, x: range, low: list[float], high: list[float], color: str) -> None:
    ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)


def _curve(ax: Axes, group: Group, color: str) -> None:
    epochs = min(len(run.curve) for run in group.runs)
    per_epoch = [[100 * run.curve[e] for run in group.runs] for e in range(epochs)]
    mean = [statistics.fmean(values) for values in per_epoch]
    x = range(1, epochs + 1)
    ax.plot(x, mean, color=color, linewidth=1.5, label=group.recipe)
    if len(group.runs) > 1:
        std = [statistics.stdev(values) for values in per_epoch]
        _band(
            ax,
            x,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color,
        )


# -- per-layer densities -------------------------------------------------------------------------------
def densities(table: Table) -> Figure | None:
    """Per-layer density of each mask method at the table's highest sparsity, layers in model order."""
    sparse = [s for s in table.sparsities if s > 0]
    if not sparse:
        return None
    sparsity = sparse[-1]
    layers: dict[str, dict[str, float]] = {}
    for mask in table.masks:
        group = table.group(mask, sparsity, BASELINE) or next(
            (g for g in table.groups if (g.mask, g.sparsity) == (mask, sparsity)), None
        )
        density = group.runs[0].layer_densities if group else None
        if density is not None:
            layers[mask] = density
    if not layers:
        return None
    names = _model_order(table, {name for densities in layers.values() for name in densities})
    figure = Figure(figsize=(min(18.0, max(7.0, 0.3 * len(names) + 2)), 4.8), layout="constrained")
    ax = figure.subplots()
    floor = min(d for density in layers.values() for d in density.values() if d > 0) / 2
    for i, (mask, density) in enumerate(layers.items()):
        values = [density.get(n, math.nan) for n in names]
        color = COLORS[i % len(COLORS)]
        ax.plot(
            range(len(names)),
            [v if v > 0 else math.nan for v in values],
            marker="o",
            markersize=4,
            linewidth=1.2,
            color=color,
            label=mask,
        )
        collapsed = [x for x, v in enumerate(values) if v == 0]
        if collapsed:  # log scale has no 0: mark layers left without weights at the bottom
            ax.scatter(
                collapsed,
                [floor] * len(collapsed),
                marker="x",
                s=60,
                color=color,
                label=f"{mask}: layer with no weights",
            )
    ax.axhline(1 - sparsity, color="black", linestyle=":", linewidth=1, label="overall density")
    ax.set_yscale("log")
    ax.set_ylim(top=1.3)  # always show the 100% tick: dense layers are the reference
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=None))
    many = len(names) > 8
    ax.set_xticks(
        range(len(names)),
        [n.removesuffix(".weight") for n in names],
        rotation=90 if many else 0,
        fontsize=7 if many else 9,
    )
    ax.set_xlabel("layer (input to output)")
    title = f"{table.title}: per-layer density of each mask at {sparsity_label(sparsity)} sparsity"
    _finish(figure, [ax], title, "weights kept in the layer (log scale)")
    return figure


def _model_order(table: Table, names: set[str]) -> list[str]:
    """Layer names in the model's own order (mask files store them alphabetically); alphabetical for a
    user's factory, which a report never imports (nothing anymask reads runs code)."""
    from anymask.models import create_model
    from anymask.models.factory import is_factory_name

    if is_factory_name(table.model):
        return sorted(names)
    settings = table.groups[0].runs[0].settings
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = create_model(table.model, 10, (3, 32, 32), settings.get("width", 1.0))
    order = [name for name, _ in model.named_parameters() if name in names]
    return order + sorted(names - set(order))


# -- the variants of a model and data ------------------------------------------------------------------
def variant_gains(tables: Sequence[Table]) -> Figure | None:
    """A panel per sparsity, a row per variant: each arm's paired gain over default, pooled over the masks
    of the sparsity, with its 95% interval as error bars. An arm whose runs an earlier variant already
    holds (it reads none of the settings that differ) is drawn there only, as the variants table shows it.
    None when no variant has a gain."""
    arms = sorted({g.recipe for t in tables for g in t.groups} - {BASELINE}, key=recipe_order)
    sparsities = sorted({s for t in tables for s in t.sparsities if s > 0})
    panels = [(s, points) for s in sparsities if (points := _variant_points(tables, arms, s))]
    if not panels:
        return None
    figure, axes = _panels(_wrapped(len(panels), 3), (5.0, 1.2 + len(tables) * (0.3 + 0.15 * len(arms))))
    for ax, (sparsity, points) in zip(axes, panels, strict=True):
        for row, arm_index, gain in points:
            ax.errorbar(
                100 * gain.mean,
                row + 0.5 * (arm_index - (len(arms) - 1) / 2) / len(arms),
                xerr=100 * (gain.half_width or 0.0),
                color=COLORS[arm_index % len(COLORS)],
                marker="o",
                capsize=3,
                label=arms[arm_index],
            )
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{sparsity_label(sparsity)} sparsity")
        ax.set_xlabel(f"gain over {BASELINE} (points)")
    names = [t.variant.name if t.variant else t.setting for t in tables]
    axes[0].set_yticks(range(len(tables)), [textwrap.shorten(n, 40, placeholder="…") for n in names])
    axes[0].set_ylim(len(tables) - 0.5, -0.5)  # variant 1 on top, as in the table (the axes share y)
    first = tables[0]
    title = (
        f"{first.model} on {first.data}: paired gain of each variant in final {first.metric} accuracy, "
        f"pooled over masks {_bars([gain for _, points in panels for _, _, gain in points])}"
    )
    _finish(figure, axes, title, "variant")
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
