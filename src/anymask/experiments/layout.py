"""Figure layout shared by every figure anymask draws (reports, `anymask inspect`, the demo): text and
legends fitted inside the figure, log-scale density axes that read, saving, and the checks that hold
figures to that (`layout_problems`, used by the tests and usable on any figure).

A figure is fitted by measuring, not by guessing from character counts: it is drawn, every title,
legend and label that runs past the figure (or a title past its panel) is wrapped or given fewer
legend columns, and it is drawn again until all of it fits. Constrained layout then keeps a margin
of a few pixels on every side, so nothing touches the figure's outer border.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import Collection
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Text
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

DPI = 100
BORDER = 2  # pixels at the figure's edge that stay blank
# Artist gids that say what an error bar or band is, so a title's wording can be checked against it.
CONFIDENCE, SPREAD = "confidence-interval", "standard-deviation"
_FIT_ROUNDS = 8


def save(figure: Figure, path: Path, dpi: int = DPI) -> Path:
    """Fit the figure's text inside it, then write it."""
    fit(figure, dpi)
    figure.savefig(path, dpi=dpi)
    return path


def fit(figure: Figure, dpi: int = DPI) -> None:
    """Wrap titles, labels and legend entries and thin legend columns until everything lies inside the
    figure (and every panel title inside its panel's width)."""
    figure.set_dpi(dpi)
    for _ in range(_FIT_ROUNDS):
        renderer = _draw(figure)
        changed = False
        limit = _inner(figure)
        for text in _texts_to_wrap(figure):
            changed |= _wrap_to(text, _width_for(text, limit), renderer)
        for ax in figure.axes:
            if ax.get_visible():  # axis labels: no longer than their panel's side
                changed |= _wrap_to(ax.xaxis.label, max(ax.bbox.width, 80), renderer)
                changed |= _wrap_to(ax.yaxis.label, max(ax.bbox.height, 80), renderer, vertical=True)
        for legend in _legends(figure):
            changed |= _fit_legend(legend, limit, renderer)
        if not changed:
            changed = _grow_to_hold(figure, renderer)
        if not changed:
            return


def _grow_to_hold(figure: Figure, renderer: Any) -> bool:
    """A figure too short for what it holds (a one-column legend of many entries) grows taller."""
    needed = figure.get_tightbbox(renderer).height + 2 * (BORDER + 2) / figure.dpi
    if needed <= figure.get_figheight():
        return False
    figure.set_figheight(needed + 0.1)
    return True


def _draw(figure: Figure) -> Any:
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


def _inner(figure: Figure) -> Bbox:
    """The figure's area less the blank border, in display pixels."""
    box = figure.bbox
    return Bbox.from_extents(box.x0 + BORDER, box.y0 + BORDER, box.x1 - BORDER, box.y1 - BORDER)


def _texts_to_wrap(figure: Figure) -> list[Text]:
    texts = [t for t in (figure._suptitle, figure._supxlabel, figure._supylabel) if t is not None]
    for ax in figure.axes:
        if ax.get_visible():
            texts += [ax.title, ax._left_title, ax._right_title]
    return [t for t in texts if t.get_visible() and t.get_text()]


def _width_for(text: Text, limit: Bbox) -> float:
    """How wide a text may be: a panel title its panel's width, anything else the figure's."""
    ax = text.axes
    if ax is not None and text in (ax.title, ax._left_title, ax._right_title):
        return min(ax.bbox.width * 1.1, limit.width)
    return limit.width


def _wrap_to(text: Text, width: float, renderer: Any, vertical: bool = False) -> bool:
    """Re-wrap `text` to fit `width` pixels (its height, for a `vertical` text); True when it changed."""

    def length() -> float:
        extent = text.get_window_extent(renderer)
        return extent.height if vertical else extent.width

    if not text.get_text() or length() <= width:
        return False
    flat = " ".join(text.get_text().split())
    chars = max(8, int(len(flat) * width / length() * 0.95))
    for line_chars in range(chars, 7, -max(1, chars // 10)):
        text.set_text(_wrapped_text(flat, line_chars))
        if length() <= width:
            return True
    return True


def _wrapped_text(text: str, width: int) -> str:
    """Wrapped at spaces and hyphens, and a word longer than a line broken wherever it must."""
    return "\n".join(textwrap.wrap(text, width))


def _legends(figure: Figure) -> list[Legend]:
    legends = list(figure.legends)
    legends += [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
    return [legend for legend in legends if legend.get_visible()]


def _fit_legend(legend: Legend, limit: Bbox, renderer: Any) -> bool:
    """Fewer columns, then wrapped entries, until the legend is no wider than the figure (a legend in a
    panel: than its panel)."""
    parent = legend.parent
    width = parent.bbox.width if isinstance(parent, Axes) else limit.width
    if legend.get_window_extent(renderer).width <= width:
        return False
    columns = legend._ncols
    if columns > 1 and hasattr(legend, _KWARGS):
        # A legend lays out its columns when it is made: make it again with one column fewer.
        legend.remove()
        add_legend(
            parent,
            legend.legend_handles,
            [t.get_text() for t in legend.get_texts()],
            **{**getattr(legend, _KWARGS), "ncol": columns - 1},
        )
        return True
    room = 3 * legend.handlelength * legend.prop.get_size_in_points() * legend.figure.dpi / 72
    for text in legend.get_texts():
        _wrap_to(text, (width - room) / columns, renderer)
    return True


_KWARGS = "_anymask_legend_kwargs"


def add_legend(
    parent: Figure | Axes, handles: Sequence[Artist], labels: Sequence[str], **kwargs: Any
) -> Legend:
    """A legend `fit` can re-make with fewer columns (matplotlib fixes the columns when it builds one)."""
    legend = parent.legend(list(handles), list(labels), **kwargs)
    setattr(legend, _KWARGS, kwargs)
    return legend


def rotated_labels_height(labels: Sequence[str], fontsize: float) -> float:
    """Inches that tick labels rotated upright take below an axis (about 0.6 em a character)."""
    return max((len(label) for label in labels), default=0) * fontsize * 0.6 / 72


def legend_columns(labels: Sequence[str], figure: Figure) -> int:
    """A first guess of legend columns for the figure's width (`fit` corrects it by measuring)."""
    longest = max((len(label) for label in labels), default=1)
    inches_per_entry = 0.6 + 0.075 * longest
    return max(1, min(len(labels), int(figure.get_figwidth() / inches_per_entry)))


# -- log-scale density axes ----------------------------------------------------------------------------
def percent_label(fraction: float) -> str:
    """'0.01%', '1%', '100%': a density as a percentage with as many decimals as it needs."""
    percent = 100 * fraction
    if percent >= 1:
        return f"{percent:.0f}%"
    decimals = max(0, -math.floor(math.log10(percent) + 1e-9))
    return f"{percent:.{decimals}f}%"


def density_axis(ax: Axes, lowest: float, empty: bool) -> float | None:
    """A log y axis of densities from 100% down to the decade below `lowest` (> 0), a labelled tick at
    every decade and unlabelled minor ticks. With `empty`, room is kept below the lowest decade for the
    layers with no weights: returns the height to draw their marker at, between ticks, where no tick
    label claims a value (log scale has no 0). None without `empty`."""
    bottom = 10 ** math.floor(math.log10(lowest) + 1e-9)
    decades = [10.0**e for e in range(round(math.log10(bottom)), 1)]
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(FixedLocator(decades))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: percent_label(value)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10)), numticks=100))
    ax.yaxis.set_minor_formatter(NullFormatter())
    marker = bottom / 10**0.5 if empty else None
    ax.set_ylim(bottom / 10**0.8 if empty else bottom / 10**0.15, 1.4)
    return marker


# -- checks --------------------------------------------------------------------------------------------
def layout_problems(figure: Figure, dpi: int = DPI) -> list[str]:
    """What a reader would see as broken in the figure: an artist reaching past the figure's inner
    area, a non-blank outer border, or two tick labels on one axis that read the same. Empty if none."""
    renderer = _draw(figure) if figure.dpi == dpi else (figure.set_dpi(dpi), _draw(figure))[1]
    limit = _inner(figure)
    problems = []
    for artist in _drawn_artists(figure):
        extent = artist.get_window_extent(renderer)
        if extent.width <= 0 and extent.height <= 0:
            continue
        if not _within(extent, limit):
            problems.append(f"{_describe(artist)} reaches past the figure ({_box(extent)} vs {_box(limit)})")
    problems += border_problems(np.asarray(figure.canvas.buffer_rgba()))
    for ax in figure.axes:
        if ax.get_visible():
            for axis in (ax.xaxis, ax.yaxis):
                problems += duplicate_tick_labels(axis)
    return problems


def border_problems(pixels: np.ndarray, border: int = BORDER) -> list[str]:
    """The outermost `border` pixels of an RGB(A) image must be white."""
    rgb = pixels[..., :3].astype(int)
    if rgb.max() <= 1:  # matplotlib reads PNGs as floats in [0, 1]
        rgb = (pixels[..., :3] * 255).round().astype(int)
    edges = {"top": rgb[:border], "bottom": rgb[-border:], "left": rgb[:, :border], "right": rgb[:, -border:]}
    return [f"content touches the {side} edge" for side, strip in edges.items() if (strip < 250).any()]


def duplicate_tick_labels(axis: Axis) -> list[str]:
    """Visible tick labels of one axis that read the same (two ticks labelled "0%")."""
    labels = [label.get_text() for label in _shown_tick_labels(axis)]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    name = f"{axis.axes.get_title() or 'panel'} {axis.axis_name}"
    return [f"{name} axis has the tick label {label!r} more than once" for label in repeated]


def _shown_tick_labels(axis: Axis) -> list[Text]:
    """The major tick labels matplotlib draws: visible, with text, at a tick inside the view."""
    low, high = sorted(axis.get_view_interval())
    slack = 1e-9 * max(abs(low), abs(high), 1e-300)
    return [
        tick.label1
        for tick in axis.get_major_ticks()
        if tick.label1.get_visible()
        and tick.label1.get_text()
        and low - slack <= tick.get_loc() <= high + slack
    ]


def _drawn_artists(figure: Figure) -> list[Artist]:
    artists = [figure._suptitle, *figure.legends]
    for ax in figure.axes:
        if not ax.get_visible():
            continue
        artists += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        artists += [ax.get_legend()]
        for axis in (ax.xaxis, ax.yaxis):
            artists += _shown_tick_labels(axis)
    drawn = [a for a in artists if a is not None and a.get_visible()]
    return [a for a in drawn if not isinstance(a, Text) or a.get_text()]


def _within(extent: Bbox, limit: Bbox) -> bool:
    slack = 0.5  # sub-pixel rounding
    return (
        extent.x0 >= limit.x0 - slack
        and extent.y0 >= limit.y0 - slack
        and extent.x1 <= limit.x1 + slack
        and extent.y1 <= limit.y1 + slack
    )


def _describe(artist: Artist) -> str:
    if isinstance(artist, Text):
        return f"text {artist.get_text()[:40]!r}"
    return type(artist).__name__.lower()


def _box(box: Bbox) -> str:
    return f"x {box.x0:.0f}..{box.x1:.0f}, y {box.y0:.0f}..{box.y1:.0f}"


def intervals_drawn(figure: Figure, kind: str) -> bool:
    """Whether any error bar or band tagged `kind` (CONFIDENCE or SPREAD) has a visible length."""
    for artist in figure.findobj(lambda a: a.get_gid() == kind):
        if isinstance(artist, Collection) and any(
            np.ptp(np.asarray(path.vertices), axis=0).max() > 0 for path in artist.get_paths()
        ):
            return True
    return False
