"""The report's figures, and which of them each table gets: accuracy vs sparsity, learning curves and
per-layer mask densities here; the gain figures (paired gains per sparsity, after each epoch, and of a
model's variants) in `gain_figures`. Shared drawing in `drawing`; every figure is fitted inside itself
when saved (`anymask.experiments.layout`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from anymask.experiments.layout import SPREAD, density_axis, rotated_labels_height, save
from anymask.experiments.report.drawing import (
    COLORS,
    band,
    finish,
    panels,
    recipe_color,
    sparsity_axis,
    spread_wording,
    tag_bars,
    wrapped,
)
from anymask.experiments.report.gain_figures import gain_by_epoch, gain_vs_sparsity, variant_gains
from anymask.experiments.report.groups import BASELINE, Group, Table, file_slug
from anymask.experiments.report.markdown import sparsity_label


def plot_table(table: Table, out: Path) -> list[Path]:
    """Every figure that the table's runs allow; returns the PNG paths written.

    A variant (one of several tables of a model and data) gets its learning curves, its densities when it
    has several masks, and the sparsity figures only when it has several sparsities: a search over
    settings has many variants of one mask and sparsity each, whose sparsity figures would be single
    points, and its variants figure compares their gains in one place.
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
        kept = ["learning_curves", *(["accuracy_vs_sparsity", "gain_vs_sparsity"] if several else [])]
        kept += ["densities"] if len([m for m in table.masks if m != "dense"]) > 1 else []
        figures = {kind: draw for kind, draw in figures.items() if kind in kept}
    written = []
    for kind, draw in figures.items():
        figure = draw(table)
        if figure is not None:
            written.append(save(figure, out / f"{kind}_{table.slug}.png"))
    return written


def plot_variants(tables: Sequence[Table], out: Path) -> list[Path]:
    """The variants figure of one model and data; returns the PNG path written, if any."""
    figure = variant_gains(tables)
    if figure is None:
        return []
    return [save(figure, out / f"variants_gain_{file_slug(f'{tables[0].model}_{tables[0].data}')}.png")]


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
    figure, axes = panels(wrapped(len(masks), 3), (4.2, 3.4))
    for ax, mask in zip(axes, masks, strict=True):
        for recipe in table.recipes:
            _accuracy_line(ax, table, mask, recipe, sparsities)
        _dense_reference(ax, table)
        ax.set_title(mask)
        sparsity_axis(ax, sparsities)
    title = f"{table.title}: final {table.metric} accuracy vs sparsity {spread_wording(table.groups)}"
    finish(figure, axes, title, f"final {table.metric} accuracy (%)")
    return figure


def _methods_in_one_panel(table: Table, masks: list[str], sparsities: list[float]) -> Figure:
    figure, (ax,) = panels([(0, 0)], (6.4, 4.4))
    recipe = table.recipes[0]
    for i, mask in enumerate(masks):
        _accuracy_line(ax, table, mask, recipe, sparsities, label=mask, color=COLORS[i % len(COLORS)])
    _dense_reference(ax, table)
    sparsity_axis(ax, sparsities)
    title = (
        f"{table.title}, recipe {recipe}: final {table.metric} accuracy vs sparsity per mask method "
        f"{spread_wording(table.groups)}"
    )
    finish(figure, [ax], title, f"final {table.metric} accuracy (%)")
    return figure


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
    bars = ax.errorbar(
        [i for i, _ in points],
        [m for m, _ in stats],
        yerr=[s for _, s in stats],
        label=label or recipe,
        color=color or recipe_color(table, recipe),
        marker="o",
        capsize=3,
        linewidth=1.5,
    )
    tag_bars(bars, SPREAD)


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


# -- learning curves -----------------------------------------------------------------------------------
def learning_curves(table: Table) -> Figure:
    """Test accuracy after each epoch: a row per mask, a panel per sparsity, a line per recipe (± std)."""
    sparsities = sorted({s for m, s in table.rows if m != "dense"})
    cells = [(table.masks.index(m), sparsities.index(s) if m != "dense" else 0) for m, s in table.rows]
    figure, axes = panels(cells, (3.6, 2.9))
    for ax, (mask, sparsity) in zip(axes, table.rows, strict=True):
        for recipe in table.recipes:
            group = table.group(mask, sparsity, recipe)
            if group is not None:
                _curve(ax, group, recipe_color(table, recipe))
        ax.set_title(mask if mask == "dense" else f"{mask}, {sparsity_label(sparsity)} sparse")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    wording = spread_wording(table.groups, drawn="band: ± std", each="line")
    title = f"{table.title}: {table.metric} accuracy during training {wording}"
    finish(figure, axes, title, f"{table.metric} accuracy (%)")
    return figure


def _curve(ax: Axes, group: Group, color: str) -> None:
    epochs = min(len(run.curve) for run in group.runs)
    per_epoch = [[100 * run.curve[e] for run in group.runs] for e in range(epochs)]
    mean = [statistics.fmean(values) for values in per_epoch]
    x = range(1, epochs + 1)
    ax.plot(x, mean, color=color, linewidth=1.5, label=group.recipe)
    if len(group.runs) > 1:
        std = [statistics.stdev(values) for values in per_epoch]
        band(
            ax,
            x,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color,
            SPREAD,
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
    labels = [n.removesuffix(".weight") for n in names]
    many = len(names) > 8
    width = min(18.0, max(7.0, 0.3 * len(names) + 2))
    height = 3.8 + (rotated_labels_height(labels, 7) if many else 0.3)
    figure = Figure(figsize=(width, height), layout="constrained")
    ax = figure.subplots()
    kept = [d for density in layers.values() for d in density.values() if d > 0]
    empty = any(d == 0 for density in layers.values() for d in density.values())
    # Log scale has no 0: layers left without weights get a marker below the lowest decade, where no
    # tick claims a value.
    marker_height = density_axis(ax, min([*kept, 1 - sparsity]), empty)
    empty_labelled = False
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
        if collapsed and marker_height is not None:
            ax.scatter(
                collapsed,
                [marker_height] * len(collapsed),
                marker="x",
                s=60,
                color=color,
                label=None if empty_labelled else "layer with no weights (in its mask's colour)",
                clip_on=False,
            )
            empty_labelled = True
    ax.axhline(1 - sparsity, color="black", linestyle=":", linewidth=1, label="overall density")
    ax.set_xticks(range(len(names)), labels, rotation=90 if many else 0, fontsize=7 if many else 9)
    ax.set_xlabel("layer (input to output)")
    title = f"{table.title}: per-layer density of each mask at {sparsity_label(sparsity)} sparsity"
    finish(figure, [ax], title, "weights kept in the layer (log scale)")
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
