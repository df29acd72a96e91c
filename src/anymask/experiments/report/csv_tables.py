"""CSV tables: results.csv (one row per group: accuracies as fractions, gains over `default` with their
interval) and timings.csv (train time per group, kept apart because wall time differs between machines).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence

from anymask.experiments.report.groups import Group, Table
from anymask.experiments.report.runs import METRICS_READ
from anymask.experiments.report.stats import mean_std


def results_csv(tables: Sequence[Table]) -> str:
    """One row per group; accuracies as fractions like summary.json, gains over the default recipe."""
    # A new column is a name here and its value at the same place in `_csv_row` (a number from
    # summary.json averaged over the group: `_mean_std_fields(group.values("train_flops"))`).
    header = [
        "model",
        "data",
        "setting",
        "mask",
        "sparsity",
        "recipe",
        "n",
        "seeds",
        "mask_density",
        "final_test_acc_mean",
        "final_test_acc_std",
        "best_test_acc_mean",
        "best_test_acc_std",
        "test_acc_at_best_val_mean",
        "test_acc_at_best_val_std",
        "final_gain",
        "best_gain",
        "gain_seeds",
        "final_gain_ci_low",
        "final_gain_ci_high",
        "collapsed_layers",
    ]
    if tables and tables[0].metric != "test":  # accuracies read from the validation split or training
        short = {word: metric for metric, word in METRICS_READ.items()}[tables[0].metric]
        header = [name.replace("test_acc", f"{short}_acc") for name in header]
    rows = [_csv_row(table, group) for table in tables for group in table.groups]
    if any(group.values("train_flops_vs_default") for table in tables for group in table.groups):
        header += ["train_flops_vs_default_mean"]  # runs that counted their cost (times: timings.csv)
        groups = [group for table in tables for group in table.groups]
        for row, group in zip(rows, groups, strict=True):
            row.append(_mean_or_blank(group.values("train_flops_vs_default")))
    return _csv_text(header, rows)


def _mean_or_blank(values: Sequence[float]) -> str:
    return _number(statistics.fmean(values)) if values else ""


def _csv_row(table: Table, group: Group) -> list[str]:
    baseline = table.baseline_of(group)
    keys = ("final_test_acc", "best_test_acc")
    gains = [group.gain_over(baseline, key) for key in keys] if baseline else []
    return [
        table.model,
        table.data,
        table.setting,
        group.mask,
        f"{group.sparsity:g}",
        group.recipe,
        str(len(group.runs)),
        ";".join(map(str, group.seeds)),
        _number(statistics.fmean(group.values("mask_density"))),
        *_mean_std_fields(group.values("final_test_acc")),
        *_mean_std_fields(group.values("best_test_acc")),
        *_mean_std_fields(group.values("test_acc_at_best_val")),
        *([_number(g.mean) for g in gains] or ["", ""]),
        str(gains[0].seeds) if gains else "",
        *(map(_number, gains[0].interval) if gains and gains[0].interval else ["", ""]),
        ";".join(group.collapsed_layers),
    ]


def _mean_std_fields(values: Sequence[float]) -> list[str]:
    if not values:
        return ["", ""]
    mean, std = mean_std(values)
    return [_number(mean), _number(std)]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def timings_csv(tables: Sequence[Table]) -> str:
    """Train time per group: kept apart because wall time changes from one machine and run to the next."""
    header = ["model", "data", "setting", "mask", "sparsity", "recipe", "n", "train_seconds_mean"]
    rows = [
        [
            t.model,
            t.data,
            t.setting,
            g.mask,
            f"{g.sparsity:g}",
            g.recipe,
            str(len(g.runs)),
            f"{statistics.fmean(g.values('train_seconds')):.1f}",
        ]
        for t in tables
        for g in t.groups
    ]
    return _csv_text(header, rows)


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
