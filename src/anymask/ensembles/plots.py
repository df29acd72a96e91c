"""Reliability diagrams: per bin of confidence, how often the prediction was right.

Drawn on `matplotlib.figure.Figure` objects (no pyplot, no GUI backend). Legends and ECE labels sit
inside the axes and figures are saved with a tight bounding box, so nothing is cut off.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from anymask.ensembles.calibration import ReliabilityBins

DPI = 100
PANEL_INCHES = 3.6


def reliability_figure(panels: Sequence[tuple[str, ReliabilityBins]], title: str | None = None) -> Figure:
    """One panel per (label, bins): accuracy bars against the diagonal of perfect calibration, with the
    gap to each bin's mean confidence shaded and the ECE written in the panel."""
    figure = Figure(figsize=(PANEL_INCHES * len(panels), PANEL_INCHES + 0.4), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, bins) in zip(axes, panels, strict=True):
        width = bins.edges[1] - bins.edges[0]
        centers = [lo + width / 2 for lo in bins.edges[:-1]]
        used = [i for i, n in enumerate(bins.counts) if n > 0]
        ax.bar(
            [centers[i] for i in used],
            [bins.accuracy[i] for i in used],
            width=width,
            color="tab:blue",
            edgecolor="black",
            linewidth=0.5,
            label="accuracy",
        )
        low = [min(bins.confidence[i], bins.accuracy[i]) for i in used]
        ax.bar(  # hatched, unfilled: it reads the same over the accuracy bar or above it
            [centers[i] for i in used],
            [abs(bins.confidence[i] - bins.accuracy[i]) for i in used],
            bottom=low,
            width=width,
            fill=False,
            hatch="///",
            edgecolor="tab:red",
            linewidth=0.5,
            label="gap to mean confidence",
        )
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("confidence")
        ax.set_title(label, fontsize=10)
        ax.text(
            0.97,
            0.04,
            f"ECE {bins.ece() * 100:.2f}%\n{bins.images:,} images",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
        )
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=7, framealpha=0.9)
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


def save_figure(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight", pad_inches=0.1)
    return path
