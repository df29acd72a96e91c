"""Every kind of figure anymask draws, from small hand-made runs built to strain the layout (many masks
and arms, long recipe and mask names, one seed and three, densities from 100% down to 0.001% and empty
layers), checked for what a reader would see as broken: anything past the figure's edge, a non-blank
outer border, two tick labels that read the same, a title promising an interval that is not drawn."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import pytest
import torch
from matplotlib.figure import Figure

from anymask.experiments.layout import (
    CONFIDENCE,
    SPREAD,
    add_legend,
    border_problems,
    fit,
    intervals_drawn,
    layout_problems,
    percent_label,
)
from anymask.experiments.masking import plot_densities
from anymask.experiments.report.figures import accuracy_vs_sparsity, densities, learning_curves
from anymask.experiments.report.gain_figures import gain_by_epoch, gain_vs_sparsity, variant_gains
from anymask.experiments.report.groups import Table, build_tables
from anymask.experiments.report.runs import collect_runs
from anymask.masks import Mask
from report_runs import make_run

DOCS = Path(__file__).resolve().parents[1] / "docs"
MANY_MASKS = ["random", "er", "erk", "magnitude", "snip", "grasp", "synflow", "lth"]
LONG_ARMS = ["tost", "tost-official", "dense-skips,lrsi,ls", "smooth,lrsi,ls"]
DENSITIES = [1.0, 0.3, 0.01, 0.001, 0.00001, 0.0]  # 100% down to 0.001%, and an empty layer
LAYERS = [f"features.block{i}.a_rather_long_layer_name.weight" for i in range(len(DENSITIES))]
SINGLE_FIGURES: dict[str, Callable[[Table], Figure | None]] = {
    "accuracy_vs_sparsity": accuracy_vs_sparsity,
    "gain_vs_sparsity": gain_vs_sparsity,
    "learning_curves": learning_curves,
    "gain_by_epoch": gain_by_epoch,
    "densities": densities,
}


def with_densities(folder: Path, scale: float) -> None:
    """Kept per-layer densities, as `report --keep-runs` leaves them in place of the mask."""
    values = {name: density * scale for name, density in zip(LAYERS, DENSITIES, strict=True)}
    (folder / "layer_densities.json").write_text(json.dumps(values))


def one_table(root: Path) -> Table:
    (table,) = build_tables(collect_runs([root]))
    return table


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory: pytest.TempPathFactory) -> Table:
    """Eight masks at two sparsities under `default`, and one of them under four long-named arms, with
    one seed each: no interval anywhere."""
    root = tmp_path_factory.mktemp("one_seed")
    for i, mask in enumerate(MANY_MASKS):
        for sparsity in (0.9, 0.999):
            folder = make_run(root, mask, sparsity, "default", 0, 0.5 + 0.02 * i, 0.6)
            with_densities(folder, 1.0 if i % 2 else 0.5)
    for mask in ("erk",):  # one mask: a pooled gain of one pair
        for j, arm in enumerate(LONG_ARMS):
            for sparsity in (0.9, 0.999):
                make_run(root, mask, sparsity, arm, 0, 0.55 + 0.01 * j, 0.6, ghost_epochs=1.0)
    return one_table(root)


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory: pytest.TempPathFactory) -> Table:
    """A static mask against SET and RigL, with and without the recipe, three seeds each: intervals."""
    root = tmp_path_factory.mktemp("three_seeds")
    for seed in range(3):
        for sparsity in (0.9, 0.98):
            for k, (recipe, dst) in enumerate([("default", "none"), ("tost", "none"), ("tost", "rigl")]):
                final = 0.6 + 0.03 * k + 0.01 * seed * (k - 1)
                folder = make_run(root, "erk", sparsity, recipe, seed, final, final + 0.01, dst=dst)
                with_densities(folder, 1.0)
    return one_table(root)


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> list[Table]:
    """Four variants that differ in two settings each (long names), one seed: no interval."""
    root = tmp_path_factory.mktemp("variants")
    make_run(root, "erk", 0.98, "default", 0, 0.6, 0.6)
    for i, lr in enumerate((0.05, 0.1, 0.2, 0.4)):
        for arm in ("tost", "gsn,lrsi,ls"):
            make_run(root, "erk", 0.98, arm, 0, 0.6 + 0.01 * i, 0.62, lr=lr, gradinit_lr=lr / 10)
    return build_tables(collect_runs([root]))


def assert_reads(figure: Figure) -> None:
    fit(figure)
    assert layout_problems(figure) == []


def words(figure: Figure) -> str:
    return " ".join(t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))).replace("\n", " ")


@pytest.mark.parametrize("kind", SINGLE_FIGURES)
def test_one_seed_figures_fit_and_claim_no_interval(one_seed: Table, kind: str) -> None:
    figure = SINGLE_FIGURES[kind](one_seed)
    assert figure is not None
    assert_reads(figure)
    text = words(figure)
    assert not intervals_drawn(figure, CONFIDENCE) and not intervals_drawn(figure, SPREAD)
    assert "95%" not in text and "std" not in text
    if kind.startswith("gain"):
        assert "1 pair per point: no interval" in text
    elif kind != "densities":
        assert "1 seed per" in text


@pytest.mark.parametrize("kind", SINGLE_FIGURES)
def test_three_seed_figures_fit_and_name_the_intervals_they_draw(three_seeds: Table, kind: str) -> None:
    figure = SINGLE_FIGURES[kind](three_seeds)
    assert figure is not None
    assert_reads(figure)
    text = words(figure)
    assert ("95% CI" in text) == intervals_drawn(figure, CONFIDENCE)
    assert ("std" in text) == intervals_drawn(figure, SPREAD)
    if kind.startswith("gain"):
        assert intervals_drawn(figure, CONFIDENCE) and "3 pairs per point" in text
    elif kind != "densities":
        assert intervals_drawn(figure, SPREAD) and "3 seeds" in text


def test_methods_in_one_panel_fit_with_many_entries(tmp_path: Path) -> None:
    for i, mask in enumerate(MANY_MASKS):
        for sparsity in (0.9, 0.98, 0.999):
            make_run(tmp_path, mask, sparsity, "default", 0, 0.5 + 0.02 * i, 0.6)
    figure = accuracy_vs_sparsity(one_table(tmp_path))
    assert figure is not None and len(figure.legends[0].get_texts()) == len(MANY_MASKS)
    assert_reads(figure)


def test_variant_gains_fit_and_say_one_pair(variants: list[Table]) -> None:
    figure = variant_gains(variants)
    assert figure is not None
    assert_reads(figure)
    assert not intervals_drawn(figure, CONFIDENCE) and "95%" not in words(figure)
    assert "1 pair per point" in words(figure)


def test_density_axis_labels_every_decade_and_marks_empty_layers_off_the_ticks(one_seed: Table) -> None:
    figure = densities(one_seed)
    assert figure is not None
    assert_reads(figure)
    (ax,) = figure.axes
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert labels == ["0.0001%", "0.001%", "0.01%", "0.1%", "1%", "10%", "100%"]  # lowest: 0.0005%
    empty = [c for c in ax.collections if "no weights" in (c.get_label() or "")]
    assert len(empty) == 1
    height = empty[0].get_offsets()[0][1]
    low, _ = ax.get_ylim()
    assert low < height < min(ax.get_yticks()[ax.get_yticks() >= low])  # below the lowest labelled tick


def test_inspect_density_plot_fits(tmp_path: Path) -> None:
    mask = Mask()
    for name, density in zip(LAYERS, DENSITIES, strict=True):
        kept = torch.zeros(100_000, dtype=torch.bool)
        kept[: round(density * 100_000)] = True
        mask[name] = kept
    title = "a_mask_file_with_a_long_name: density per layer"
    figure = plot_densities(mask, tmp_path / "densities.png", title)
    assert layout_problems(figure, dpi=110) == []
    assert border_problems(matplotlib.image.imread(tmp_path / "densities.png")) == []


@pytest.mark.filterwarnings("ignore:constrained_layout not applied")  # the first, overfull draw
def test_a_legend_wider_than_its_figure_is_refitted() -> None:
    """The check itself: a legend laid out past the figure is found, and `fit` brings it inside."""
    figure = Figure(figsize=(3, 2), layout="constrained")
    ax = figure.subplots()
    for i in range(6):
        ax.plot([0, 1], [i, i], label=f"a rather long recipe name number {i}")
    add_legend(figure, *ax.get_legend_handles_labels(), loc="outside lower center", ncol=6)
    assert any("reaches past" in p for p in layout_problems(figure))
    assert_reads(figure)


def test_percent_labels_keep_the_digits_a_density_needs() -> None:
    assert [percent_label(10.0**e) for e in range(-6, 1)] == [
        "0.0001%",
        "0.001%",
        "0.01%",
        "0.1%",
        "1%",
        "10%",
        "100%",
    ]


def test_committed_figures_leave_their_border_blank() -> None:
    """Every PNG under docs/: nothing drawn in its outermost pixels (a legend or label cut off there)."""
    pngs = sorted(DOCS.rglob("*.png"))
    assert pngs
    problems = {str(p.relative_to(DOCS)): border_problems(matplotlib.image.imread(p)) for p in pngs}
    assert {name: found for name, found in problems.items() if found} == {}
