"""`anymask ensemble-report`: prune-and-tune ensembles against their parents and against deep ensembles.

Reads the ensemble.json of each folder given. Prune-and-tune ensembles that share their settings form a
group (one per parent); the report gives each group's accuracy, NLL and ECE as mean ± sd over its parents,
the paired gain over the parent with a 95% Student-t interval, each child's own accuracy (a better single
model is not an ensemble effect), the cost against the parent, the share of the parent-to-deep-ensemble
gap closed, and reliability diagrams (parents, ensembles and deep ensembles, bins pooled over parents).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anymask.artifacts import read_ensemble_record
from anymask.ensembles.calibration import ReliabilityBins
from anymask.ensembles.evaluate import ENSEMBLE_JSON
from anymask.errors import AnymaskError
from anymask.experiments.report import markdown_table
from anymask.io import atomic_write_text, check_output_folder

REPORT = "ensemble_report.md"
METRICS = (("accuracy", "accuracy (%)", 100.0), ("nll", "NLL", 1.0), ("ece", "ECE (%)", 100.0))


@dataclass
class EnsembleGroup:
    """Prune-and-tune ensembles made the same way, one per parent."""

    label: str
    records: list[dict[str, Any]] = field(default_factory=list)

    def values(self, who: str, metric: str) -> list[float]:
        return [float(r[who][metric]) for r in self.records]

    def gains(self, metric: str) -> list[float]:
        return [
            e - p for e, p in zip(self.values("ensemble", metric), self.values("parent", metric), strict=True)
        ]


def read_ensembles(folders: Sequence[Path]) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for folder in folders:
        path = Path(folder) / ENSEMBLE_JSON
        if not path.is_file():
            raise AnymaskError(f"{folder} holds no {ENSEMBLE_JSON}; make it with `anymask ensemble`")
        found.append((Path(folder), read_ensemble_record(path)))
    return found


TUNING_DEFAULTS = {"tune_lr": 0.1, "tune_warmup": 0.1, "tune_start": 0.01}  # EnsembleSettings' defaults
# Child settings that say where and how visibly a child trains, not what it learns: never a group apart.
PLACEMENT = frozenset({"progress", "threads", "device", "data_dir", "log", "log_project", "mlflow_uri"})


def group_label(record: dict[str, Any]) -> str:
    """The settings an ensemble was made with, in words; ensembles differing in any (the tuning schedule,
    a run setting given to the children) never share a group."""
    s = record["settings"]
    if s["pruning"] == "anti-random":
        how = s["pruning"]
    else:  # a method at sparsity 0 prunes nothing: a control that tunes the parent itself
        how = "unpruned" if s["sparsity"] == 0 else f"{s['pruning']} {s['sparsity']:g}"
    parent = " + parent" if record.get("parent_is_member") else ""
    children, epochs = plural(s["children"], "child", "children"), plural(s["tune_epochs"], "epoch", "epochs")
    label = f"{how}, {children}{parent}, {epochs}, recipe {s['recipe']}"
    changed = [f"{key} {s[key]:g}" for key, value in TUNING_DEFAULTS.items() if s.get(key, value) != value]
    overrides = sorted(s.get("overrides", {}).items())
    changed += [f"{key}={value}" for key, value in overrides if key not in PLACEMENT]
    return ", ".join([label, *changed])


def plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def mean_sd(values: Sequence[float], scale: float, digits: int = 2) -> str:
    scaled = [v * scale for v in values]
    if len(scaled) < 2:
        return f"{scaled[0]:.{digits}f}"
    return f"{statistics.fmean(scaled):.{digits}f} ± {statistics.stdev(scaled):.{digits}f}"


def t_interval(differences: Sequence[float]) -> tuple[float, float, float] | None:
    """(mean, low, high) of a 95% Student-t interval over paired differences; None below two."""
    if len(differences) < 2:
        return None
    from scipy.stats import t  # slow to import: only reports need it

    mean = statistics.fmean(differences)
    half = (
        float(t.ppf(0.975, len(differences) - 1))
        * statistics.stdev(differences)
        / math.sqrt(len(differences))
    )
    return mean, mean - half, mean + half


def gain_text(differences: Sequence[float], scale: float, digits: int) -> str:
    interval = t_interval(differences)
    if interval is None:
        return f"{differences[0] * scale:+.{digits}f}"
    mean, low, high = (x * scale for x in interval)
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def group_summary(group: EnsembleGroup) -> str:
    """Parent and ensemble as mean ± sd over parents, the paired gain with its 95% interval, and the cost."""
    rows = []
    for metric, name, scale in METRICS:
        digits = 2 if scale != 1.0 else 4
        rows.append(
            [
                name,
                mean_sd(group.values("parent", metric), scale, digits),
                mean_sd(group.values("ensemble", metric), scale, digits),
                gain_text(group.gains(metric), scale, digits),
            ]
        )
    nll_ratio = [
        e / p for e, p in zip(group.values("ensemble", "nll"), group.values("parent", "nll"), strict=True)
    ]
    rows.append(["NLL ensemble / parent", "", f"{statistics.fmean(nll_ratio):.3f}", ""])
    member_means = [r["ensemble"]["mean_member_accuracy"] for r in group.records]
    rows.append(["children's own accuracy (%), mean", "", mean_sd(member_means, 100.0), ""])
    rows += untuned_rows(group)
    epochs = [r["cost"]["epochs_ratio"] for r in group.records]
    seconds = [r["cost"]["seconds_ratio"] for r in group.records if r["cost"]["seconds_ratio"] is not None]
    rows.append(["training epochs vs parent", "1", f"{statistics.fmean(epochs):.2f}x", ""])
    if seconds:
        rows.append(["training seconds vs parent", "1", f"{statistics.fmean(seconds):.2f}x", ""])
    header = ["", "parent", "ensemble", f"paired gain, 95% CI (n={len(group.records)})"]
    return markdown_table(header, rows)


def untuned_rows(group: EnsembleGroup) -> list[list[str]]:
    """The children before tuning (their masks on the parent's weights), with the parent's BatchNorm
    statistics and with recomputed ones, where every ensemble of the group measured them: what pruning
    cost, beside what tuning and averaging won back."""
    if not all("untuned" in r for r in group.records):
        return []
    parents = group.values("parent", "accuracy")
    rows = []
    for label, entries in (
        ("parent's BN statistics", [r["untuned"] for r in group.records]),
        ("BN statistics recomputed", [r["untuned"]["recalibrated"] for r in group.records]),
    ):
        untuned = [entry["ensemble"] for entry in entries]
        gains = [u["accuracy"] - p for u, p in zip(untuned, parents, strict=True)]
        own = mean_sd([u["mean_member_accuracy"] for u in untuned], 100.0)
        rows += [
            [f"children before tuning, {label}: own accuracy (%), mean", "", own, ""],
            [
                f"children before tuning, {label}: ensemble accuracy (%)",
                "",
                mean_sd([u["accuracy"] for u in untuned], 100.0),
                gain_text(gains, 100.0, 2),
            ],
        ]
    return rows


def per_parent_table(group: EnsembleGroup, folders: dict[int, Path]) -> str:
    rows = []
    for record in group.records:
        p, e = record["parent"], record["ensemble"]
        children = [m for m in record["members"] if m.get("role") == "child"]
        rows.append(
            [
                str(folders[id(record)]),
                str(p.get("seed")),
                f"{p['accuracy'] * 100:.2f}",
                f"{e['accuracy'] * 100:.2f}",
                f"{p['nll']:.4f}",
                f"{e['nll']:.4f}",
                f"{p['ece'] * 100:.2f}",
                f"{e['ece'] * 100:.2f}",
                " ".join(f"{m['accuracy'] * 100:.1f}" for m in children),
                f"{e['disagreement'] * 100:.1f}",
                f"{record['cost']['epochs']:g} ({record['cost']['epochs_ratio']:.2f}x)",
            ]
        )
    header = [
        "ensemble",
        "parent seed",
        "parent acc",
        "ensemble acc",
        "parent NLL",
        "ensemble NLL",
        "parent ECE",
        "ensemble ECE",
        "each child's acc",
        "disagreement (%)",
        "epochs (vs parent)",
    ]
    return markdown_table(header, rows)


def deep_table(deep: list[tuple[Path, dict[str, Any]]]) -> str:
    rows = []
    for folder, record in deep:
        e = record["ensemble"]
        rows.append(
            [
                str(folder),
                str(e["members"]),
                f"{e['accuracy'] * 100:.2f}",
                f"{e['nll']:.4f}",
                f"{e['ece'] * 100:.2f}",
                f"{e['mean_member_accuracy'] * 100:.2f}",
                f"{record['cost']['epochs']:g}",
            ]
        )
    header = ["set of runs", "members", "accuracy", "NLL", "ECE", "members' mean acc", "epochs"]
    return markdown_table(header, rows)


def gap_closed(group: EnsembleGroup, deep: dict[str, Any], metric: str) -> float | None:
    """(ensemble - parent) / (deep ensemble - parent), parent and ensemble as means over the group."""
    parent = statistics.fmean(group.values("parent", metric))
    gap = float(deep["ensemble"][metric]) - parent
    if gap == 0:
        return None
    return (statistics.fmean(group.values("ensemble", metric)) - parent) / gap


def gap_table(groups: list[EnsembleGroup], deep: list[tuple[Path, dict[str, Any]]]) -> str:
    rows = []
    for group in groups:
        for folder, record in deep:
            cells = [group.label, str(folder)]
            for metric in ("accuracy", "nll"):
                share = gap_closed(group, record, metric)
                cells.append("n/a" if share is None else f"{share * 100:.0f}%")
            rows.append(cells)
    return markdown_table(["ensemble", "deep ensemble", "accuracy gap closed", "NLL gap closed"], rows)


def reliability_panels(
    group: EnsembleGroup, deep: list[tuple[Path, dict[str, Any]]]
) -> list[tuple[str, ReliabilityBins]]:
    def pooled(who: str) -> ReliabilityBins:
        return ReliabilityBins.pooled(
            [ReliabilityBins.from_dict(r[who]["reliability"]) for r in group.records]
        )

    n = len(group.records)
    panels = [(f"parents ({n})", pooled("parent")), (f"prune-and-tune ({n})", pooled("ensemble"))]
    for folder, record in deep:
        members = record["ensemble"]["members"]
        panels.append(
            (
                f"deep ensemble of {members} ({folder.name})",
                ReliabilityBins.from_dict(record["ensemble"]["reliability"]),
            )
        )
    return panels


def write_ensemble_report(folders: Sequence[Path], out: Path) -> Path:
    """OUT/ensemble_report.md and one reliability diagram per group (PNG); returns the report's path."""
    from anymask.ensembles.plots import reliability_figure, save_figure

    check_output_folder(out)
    found = read_ensembles(folders)
    groups: dict[str, EnsembleGroup] = {}
    where: dict[int, Path] = {}
    deep = []
    for folder, record in found:
        if record.get("kind") == "prune-and-tune":
            label = group_label(record)
            groups.setdefault(label, EnsembleGroup(label)).records.append(record)
            where[id(record)] = folder
        else:
            deep.append((folder, record))
    data = {r["evaluated_on"]["data"] for _, r in found}
    if len(data) > 1:
        raise AnymaskError(f"the ensembles were measured on different datasets ({', '.join(sorted(data))})")
    splits = {r["evaluated_on"].get("split", "test") for _, r in found}
    if len(splits) > 1:
        raise AnymaskError(
            "the ensembles were measured on different images (test and validation); report them apart"
        )
    split = splits.pop()
    images = {"test": "Test", "val": "Validation"}.get(split, f"'{split}'")
    lines = [
        "# Ensembles: accuracy, NLL and calibration",
        "",
        f"{images} images of {next(iter(data))}; predictions combined as the mean of softmax; ECE over 15 "
        "equal-width confidence bins. Gains are paired per parent (ensemble minus its own parent), with a "
        "95% Student-t interval over the parents.",
    ]
    for index, group in enumerate(groups.values()):
        lines += ["", f"## Prune-and-tune: {group.label}", "", group_summary(group), ""]
        lines += ["Per parent:", "", per_parent_table(group, where), ""]
        figure = reliability_figure(reliability_panels(group, deep), f"Reliability: {group.label}")
        png = save_figure(figure, out / f"reliability_{index}.png")
        lines += [f"![reliability diagrams]({png.name})"]
    if deep:
        lines += ["", "## Sets of runs (`--members`): deep ensembles, or one run alone", "", deep_table(deep)]
    if groups and deep:
        lines += [
            "",
            "## Share of the parent-to-deep-ensemble gap closed",
            "",
            "(mean ensemble − mean parent) / (deep ensemble − mean parent), for accuracy and for NLL.",
            "",
            gap_table(list(groups.values()), deep),
        ]
    if not groups and deep:
        figure = reliability_figure(
            [
                (
                    f"{folder.name} ({r['ensemble']['members']})",
                    ReliabilityBins.from_dict(r["ensemble"]["reliability"]),
                )
                for folder, r in deep
            ]
        )
        lines += ["", f"![reliability diagrams]({save_figure(figure, out / 'reliability_0.png').name})"]
    path = out / REPORT
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
