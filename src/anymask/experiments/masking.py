"""The mask commands: `anymask prune`, `anymask inspect` and `anymask compare`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from anymask.config import RunConfig, coerce
from anymask.data import DATASET_SHAPES
from anymask.errors import AnymaskError
from anymask.io import check_output_file
from anymask.masks import Mask
from anymask.masks.analysis import compare, inspect_rows
from anymask.masks.connectivity import connectivity

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        padded = (c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric, strict=True))
        return "  ".join(padded).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def prune_to_file(config: RunConfig, out: Path) -> Mask:
    """Build the config's mask on the seeded initial model (as `train` would) and save it."""
    from anymask.data import data_options, load_dataset
    from anymask.train.distributed import World, resolve_device
    from anymask.train.run import _Run, validate

    validate(config)
    if out.suffix not in {".safetensors", ".pt", ".pth"}:
        raise AnymaskError(f"--out must end in .safetensors or .pt, got '{out.name}'")
    check_output_file(out)
    device = resolve_device(config.train.device, World())
    data = load_dataset(config.data.data, config.data.data_dir, **data_options(config.data)).to(device)
    run = _Run(config, out.parent / f"{out.stem}-lth", data, device, World(), resuming=False)
    torch.manual_seed(config.train.seed)
    mask, _ = run.build_mask(run.new_model())
    mask.save(out)
    return mask


def registry_model(
    name: str, data: str, width: float, weights: Path | None = None, seed: int = 0
) -> nn.Module:
    """The registry model with the initial weights `anymask train --seed SEED` starts from (or `weights`)."""
    from anymask.models import MODELS, create_model

    MODELS.get(name)  # an unknown model is one line naming the choices
    if data not in DATASET_SHAPES:
        raise AnymaskError(f"unknown dataset '{data}'; choose one of: {', '.join(DATASET_SHAPES)}")
    shape, classes = DATASET_SHAPES[data]
    torch.manual_seed(seed)
    model = create_model(name, classes, shape, width)
    if weights is not None:
        from anymask.artifacts import read_model_weights

        model.load_state_dict(read_model_weights(weights).tensors)
    return model


# The dataset a model is usually trained on: tried first when `inspect` is given no --data.
USUAL_DATA = {"cnn": "digits"}


def model_for_mask(mask: Mask, name: str, width: float, seed: int = 0) -> tuple[nn.Module, str]:
    """The registry model built for the first dataset (the model's usual one first) whose input channels
    and classes give the mask's layer shapes, and that dataset's name."""
    first = USUAL_DATA.get(name, "cifar10")
    for data in [first, *(d for d in DATASET_SHAPES if d != first)]:
        model = registry_model(name, data, width, seed=seed)
        try:
            mask.check_fits(model)
        except AnymaskError:
            continue
        return model, data
    raise AnymaskError(
        f"the mask does not fit model '{name}' (width {width:g}) for any dataset "
        f"({', '.join(DATASET_SHAPES)}); check --model and --width"
    )


def inspect_mask(
    path: Path,
    *,
    model_name: str | None = None,
    data: str | None = None,
    width: float = 1.0,
    plot: Path | None = None,
    seed: int = 0,
) -> Path:
    """Print the per-layer table of a mask file and write its density bar plot; returns the plot path.

    Without `data`, the model's input shape and classes are those of the first dataset the mask fits.
    """
    width = coerce("width", width)  # the range a run's --width has
    seed = coerce("seed", seed)
    plot = plot or path.with_name(f"{path.stem}_densities.png")
    check_output_file(plot, "--plot")
    mask = Mask.load(path)
    model = None
    if model_name:
        if data:
            model = registry_model(model_name, data, width, seed=seed)
        else:
            model, data = model_for_mask(mask, model_name, width, seed)
    rows = inspect_rows(mask, model)
    # Effective density needs the model's wiring: without --model the column shows "-".
    links = connectivity(model, mask, DATASET_SHAPES[data][0]) if model is not None and data else None
    effective = {layer.name: layer.effective_density for layer in links.layers} if links else {}
    headers = [
        "layer",
        "shape",
        "kept",
        "total",
        "density",
        "effective",
        "outputs",
        "positive",
        "collapse",
        "gap",
        "weighted gap",
    ]
    table = [
        (
            r.name,
            "x".join(map(str, r.shape)),
            r.kept,
            r.total,
            r.density,
            effective.get(r.name),
            f"{r.outputs_alive}/{r.outputs}",
            None if r.positive is None else r.positive / max(r.kept, 1),
            "COLLAPSED" if r.collapsed else "",
            r.gap,
            r.weighted_gap,
        )
        for r in rows
    ]
    print(format_table(headers, table))
    print(
        f"\nall layers: {mask.kept():,} of {mask.total():,} kept, density {mask.density():.4f}, "
        f"sparsity {mask.sparsity():.4f}; {len(mask.collapsed_layers())} collapsed layer(s)"
    )
    alive, outputs = sum(r.outputs_alive for r in rows), sum(r.outputs for r in rows)
    print(f"width: {alive:,} of {outputs:,} output channels keep a weight ({alive / outputs:.1%})")
    if model is not None:  # the seed's initial weights: those a run of that seed made its mask on
        positive = sum(r.positive or 0 for r in rows)
        print(
            f"signs: {positive / max(mask.kept(), 1):.1%} of the kept weights are positive at the model's "
            f"seed-{seed} initial weights (a mask blind to sign keeps about half)"
        )
    if links is not None:
        print(
            f"effective: {links.effective:,} of the kept weights lie on an input-output path, density "
            f"{links.effective_density:.4f}; {links.classes_reachable} of {links.num_classes} classes "
            "reachable" + ("  DISCONNECTED" if links.disconnected else "")
        )
    notes = sorted({r.note for r in rows if r.note})
    for note in notes:
        print(f"note: {note}")
    plot_densities(mask, plot, title=f"{path.name}: density per layer (overall {mask.density():.4f})")
    print(f"density plot: {plot}")
    return plot


def plot_densities(mask: Mask, path: Path, title: str) -> Figure:
    """The per-layer density bar plot of `anymask inspect`: a log axis with a tick at every decade the
    densities reach, and a marker below the lowest decade for layers with no weights. Returns the figure
    (already written to `path`)."""
    from matplotlib.figure import Figure

    from anymask.experiments.layout import (
        add_legend,
        density_axis,
        legend_columns,
        rotated_labels_height,
        save,
    )

    layers = mask.layers()
    densities = [layer.density for layer in layers]
    names = [layer.name.removesuffix(".weight") for layer in layers]
    height = 3.6 + rotated_labels_height(names, 7)
    figure = Figure(figsize=(max(6.0, 0.28 * len(layers) + 2), height), layout="constrained")
    ax = figure.subplots()
    collapsed = [i for i, layer in enumerate(layers) if layer.collapsed]
    lowest = min([d for d in densities if d > 0] + [mask.density()] + ([1.0] if mask.density() == 0 else []))
    marker = density_axis(ax, lowest, bool(collapsed))
    bottom = ax.get_ylim()[0]
    # Bars rise from the axis' bottom: a log axis has no 0 to start them from.
    ax.bar(
        range(len(layers)),
        [d - bottom if d > 0 else 0 for d in densities],
        bottom=bottom,
        color="tab:blue",
        label="density of the layer",
    )
    if collapsed:
        ax.scatter(
            collapsed,
            [marker] * len(collapsed),
            marker="x",
            color="tab:red",
            zorder=3,
            label="layer with no weights",
            clip_on=False,
        )
    ax.axhline(mask.density(), color="black", linestyle="--", linewidth=1, label="overall density")
    ax.set_xticks(range(len(layers)), names, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_ylabel("weights kept in the layer (log scale)")
    figure.suptitle(title, fontsize=10)
    labels = ax.get_legend_handles_labels()
    columns = legend_columns(labels[1], figure)
    add_legend(figure, *labels, loc="outside lower center", ncol=columns, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(figure, path, dpi=110)
    return figure


def compare_masks(a_path: Path, b_path: Path) -> None:
    """Print per-layer and overall IoU and Hamming distance of two mask files."""
    result = compare(Mask.load(a_path), Mask.load(b_path))
    rows = [(o.name, o.iou, o.hamming, o.total, o.hamming_fraction) for o in [*result.layers, result.overall]]
    print(format_table(["layer", "IoU", "hamming", "total", "hamming fraction"], rows))
