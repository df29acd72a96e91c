"""Reports from hand-made run folders: marks on masks that collapse a layer or cut the network, and the
gains: pooled over masks, on connected masks, on validation and training accuracy, for DST arms, with the
cost column."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from anymask.errors import AnymaskError
from anymask.experiments.report import build_tables, collapse_note, collect_runs, table_markdown, write_report
from anymask.experiments.report.gain_figures import gain_vs_sparsity
from anymask.experiments.report.markdown import gain_cell
from report_runs import make_run, read_csv, table_cells, tables_cells, write_records


def test_a_collapsed_mask_is_marked_and_named(tmp_path: Path) -> None:
    """Layer collapse (an empty layer) is read from the kept per-layer densities and flagged."""
    for mask, final in (("magnitude", 0.1), ("synflow", 0.57)):
        folder = make_run(tmp_path / "runs", mask, 0.98, "default", 0, final, final)
        densities = {"conv.weight": 0.05, "classifier.weight": 0.0 if mask == "magnitude" else 0.01}
        (folder / "layer_densities.json").write_text(json.dumps(densities))
    write_report([tmp_path / "runs"], tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert table_cells(markdown)[2:] == [
        ["magnitude", "98%", "10.00 (1) †", "10.00 (1)"],
        ["synflow", "98%", "57.00 (1)", "57.00 (1)"],
    ]
    assert "- magnitude at 98% (default), seed 0: classifier.weight" in markdown
    rows = {r["mask"]: r for r in read_csv(tmp_path / "report" / "results.csv")}
    assert rows["magnitude"]["collapsed_layers"] == "classifier.weight"
    assert rows["synflow"]["collapsed_layers"] == ""


def test_a_disconnected_mask_is_marked_apart_from_collapse(tmp_path: Path) -> None:
    """A run whose summary says its mask left a class unreachable gets a section mark (§) and a note."""
    for mask, final, cut in (("snip", 0.1, True), ("synflow", 0.57, False)):
        folder = make_run(tmp_path / "runs", mask, 0.99, "default", 0, final, final)
        summary = json.loads((folder / "summary.json").read_text())
        reachable, effective = (0, 0.0) if cut else (10, 0.009)
        summary.update(
            mask_effective_kept=int(effective * 100),
            mask_effective_density=effective,
            mask_classes_reachable=reachable,
            mask_disconnected=cut,
        )
        (folder / "summary.json").write_text(json.dumps(summary))
    write_report([tmp_path / "runs"], tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert table_cells(markdown)[2:] == [
        ["snip", "99%", "10.00 (1) §", "10.00 (1)"],
        ["synflow", "99%", "57.00 (1)", "57.00 (1)"],
    ]
    assert "- snip at 99% (default), seed 0: effective density 0.00e+00, 0 classes reachable" in markdown
    assert "§ Disconnected" in markdown


def test_pooled_gain_on_connected_masks_leaves_out_the_pairs_on_a_cut_mask(tmp_path: Path) -> None:
    """A pair whose mask cuts off a class can carry a pooled gain on its own (the baseline scored little
    on it): the pooled table then shows the gain without such pairs beside the gain over all of them."""
    finals = {"default": (0.60, 0.61, 0.50), "kd-fold": (0.62, 0.62, 0.58)}  # seed 2's mask is cut
    for recipe, values in finals.items():
        for seed, final in enumerate(values):
            folder = make_run(tmp_path / "runs", "snip", 0.98, recipe, seed, final, final)
            summary = json.loads((folder / "summary.json").read_text())
            summary.update(mask_disconnected=seed == 2, mask_effective_density=0.01)
            summary.update(mask_classes_reachable=9 if seed == 2 else 10)
            (folder / "summary.json").write_text(json.dumps(summary))
    table = build_tables(collect_runs([tmp_path / "runs"]))[0]
    every = table.pooled_gain("kd-fold", "default", 0.98, "final_test_acc")
    connected = table.pooled_gain("kd-fold", "default", 0.98, "final_test_acc", connected_only=True)
    assert (every.seeds, every.mean) == (3, pytest.approx((0.02 + 0.01 + 0.08) / 3))
    assert (connected.seeds, connected.mean) == (2, pytest.approx(0.015))
    write_report([tmp_path / "runs"], tmp_path / "report")
    pooled = next(
        t for t in tables_cells((tmp_path / "report" / "report.md").read_text()) if t[0][0] == "sparsity"
    )
    assert pooled[0] == ["sparsity", "kd-fold − default", "kd-fold − default, connected masks"]
    assert (
        pooled[2][1].endswith("(3)") and pooled[2][2].startswith("+1.50 [") and pooled[2][2].endswith("(2)")
    )


def test_pooled_gain_without_cut_masks_adds_no_column(tmp_path: Path) -> None:
    for recipe, final in (("default", 0.60), ("kd-fold", 0.62)):
        make_run(tmp_path / "runs", "erk", 0.98, recipe, 0, final, final)
    write_report([tmp_path / "runs"], tmp_path / "report")
    pooled = next(
        t for t in tables_cells((tmp_path / "report" / "report.md").read_text()) if t[0][0] == "sparsity"
    )
    assert pooled[0] == ["sparsity", "kd-fold − default"]


def test_the_notes_name_the_seeds_whose_masks_are_cut(tmp_path: Path) -> None:
    """Each seed draws its own mask: the note names the seeds that disconnect (or collapse) and reads the
    effective density of those runs only."""
    folders = {}
    for seed, (cut, effective, reachable) in enumerate(
        ((True, 0.010, 9), (False, 0.018, 10), (True, 0.014, 8))
    ):
        folders[seed] = make_run(tmp_path / "runs", "snip", 0.98, "default", seed, 0.5, 0.5)
        summary = json.loads((folders[seed] / "summary.json").read_text())
        summary.update(
            mask_effective_density=effective, mask_classes_reachable=reachable, mask_disconnected=cut
        )
        (folders[seed] / "summary.json").write_text(json.dumps(summary))

    def note_with_seed_1_shortcut(density: float) -> str:
        for seed, folder in folders.items():
            densities = {"conv.weight": 0.05, "shortcut.weight": density if seed == 1 else 0.02}
            (folder / "layer_densities.json").write_text(json.dumps(densities))
        return collapse_note(build_tables(collect_runs([tmp_path / "runs"]))[0])

    collapsed = note_with_seed_1_shortcut(0.0)
    assert "- snip at 98% (default), seed 1: shortcut.weight" in collapsed
    assert "§" not in collapsed  # a collapsed layer is the stronger mark
    cut = note_with_seed_1_shortcut(0.02)
    assert "- snip at 98% (default), seeds 0, 2: effective density 1.20e-02, 8 classes reachable" in cut


def test_gains_pooled_over_masks_pair_on_mask_and_seed(tmp_path: Path) -> None:
    """Two masks x three seeds: the pooled gain is the t interval over all six paired differences. Each
    arm is compared with default and with the arm it extends (tost+rigl, a RigL run of the tost recipe,
    against tost), in the table and the gain plot."""
    root = tmp_path / "runs"
    finals = {
        ("erk", "default"): (0.60, 0.62, 0.61),
        ("erk", "tost+rigl"): (0.61, 0.62, 0.60),
        ("erk", "tost"): (0.62, 0.63, 0.64),
        ("snip", "default"): (0.55, 0.56, 0.54),
        ("snip", "tost+rigl"): (0.55, 0.57, 0.56),
        ("snip", "tost"): (0.58, 0.56, 0.57),
    }
    for (mask, arm), values in finals.items():
        recipe, _, dst = arm.partition("+")
        for seed, final in enumerate(values):
            make_run(root, mask, 0.98, recipe, seed, final, final, **({"dst": dst} if dst else {}))
    write_report([root], tmp_path / "report")
    table = build_tables(collect_runs([root]))[0]
    assert table.recipe_pairs == [("tost", "default"), ("tost+rigl", "default"), ("tost+rigl", "tost")]
    differences = [0.02, 0.01, 0.03, 0.03, 0.0, 0.03]  # tost - default: erk seeds 0-2, snip seeds 0-2
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    half = 2.570582 * sd / 6**0.5  # t(0.975, 5)
    pooled = table.pooled_gain("tost", "default", 0.98, "final_test_acc")
    assert (pooled.mean, pooled.seeds) == (pytest.approx(mean), 6)
    assert pooled.half_width == pytest.approx(half, rel=1e-5)
    markdown = (tmp_path / "report" / "report.md").read_text()
    pooled_table = next(t for t in tables_cells(markdown) if t[0][0] == "sparsity")
    assert pooled_table[0] == ["sparsity", "tost − default", "tost+rigl − default", "tost+rigl − tost"]
    expected = f"{100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}] (6)"
    assert pooled_table[2][0] == "98%" and pooled_table[2][1] == expected
    rows = {(r["mask"], r["recipe"]): r for r in read_csv(tmp_path / "report" / "results.csv")}
    erk = [0.02, 0.01, 0.03]
    erk_half = 4.302653 * statistics.stdev(erk) / 3**0.5
    erk_tost = rows["erk", "tost"]
    assert float(erk_tost["final_gain_ci_low"]) == pytest.approx(0.02 - erk_half, abs=1e-6)
    assert float(erk_tost["final_gain_ci_high"]) == pytest.approx(0.02 + erk_half, abs=1e-6)
    figure = gain_vs_sparsity(table)
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["tost − default", "tost+rigl − default", "tost+rigl − tost"]
    bars = panels[0].containers[0]  # the pooled errorbar: its line holds the mean, its bars the interval
    assert bars.lines[0].get_ydata()[0] == pytest.approx(100 * mean)
    segment = bars.lines[2][0].get_segments()[0]
    assert (segment[0][1], segment[1][1]) == (
        pytest.approx(100 * (mean - half)),
        pytest.approx(100 * (mean + half)),
    )
    assert (tmp_path / "report" / "gain_vs_sparsity_cnn_digits.png").is_file()


def test_metric_val_reports_validation_accuracy_and_no_test_accuracy(tmp_path: Path) -> None:
    """Settings are chosen on validation: with --metric val every accuracy is the validation one."""
    for recipe, val in (("default", (0.50, 0.62, 0.60)), ("tost", (0.55, 0.58, 0.66))):
        folder = make_run(tmp_path / "runs", "erk", 0.98, recipe, 0, 0.777, 0.888)
        records = [
            {"epoch": e + 1, "test_acc": 0.999, "val_acc": acc, "seconds": 1.0} for e, acc in enumerate(val)
        ]
        write_records(folder, records)
    make_run(tmp_path / "runs", "erk", 0.98, "ls", 0, 0.7, 0.7)  # no validation split: skipped, said so
    with pytest.warns(UserWarning, match="no validation accuracy"):
        write_report([tmp_path / "runs"], tmp_path / "report", metric="val")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Validation accuracy (%)" in markdown and "no test accuracy is shown" in markdown
    assert table_cells(markdown)[2] == [
        "erk",
        "98%",
        "60.00 (1)",
        "62.00 (1)",
        "66.00 (1)",
        "66.00 (1)",
        "+6.00 (1)",
    ]
    for hidden in ("77.70", "88.80", "99.90"):
        assert hidden not in markdown
    rows = read_csv(tmp_path / "report" / "results.csv")
    assert float(rows[1]["final_val_acc_mean"]) == pytest.approx(0.66)
    with pytest.raises(AnymaskError, match="unknown --metric 'loss'; use test, val, train"):
        write_report([tmp_path / "runs"], tmp_path / "bad", metric="loss")


def test_metric_train_pairs_final_training_accuracies_with_their_interval(tmp_path: Path) -> None:
    """--metric train: does a recipe fit the training images better? Final training accuracies, paired
    per mask and seed; the best epoch is chosen among epochs without ghost parts in the model."""
    train_curves = {
        ("default", 0): (0.40, 0.50, 0.60),
        ("default", 1): (0.40, 0.52, 0.62),
        ("tost", 0): (0.90, 0.55, 0.61),  # epoch 1 is inside the ghost phase: never the best epoch
        ("tost", 1): (0.90, 0.56, 0.65),
    }
    for (recipe, seed), curve in train_curves.items():
        folder = make_run(tmp_path / "runs", "erk", 0.98, recipe, seed, 0.777, 0.888)
        records = [
            {"epoch": e + 1, "test_acc": 0.999, "train_acc": acc, "seconds": 1.0, "ghost_phase": e == 0}
            for e, acc in enumerate(curve)
        ]
        write_records(folder, records)
    write_report([tmp_path / "runs"], tmp_path / "report", metric="train")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Training accuracy (%)" in markdown and "no test accuracy is shown" in markdown
    # gains +1 and +3 points: mean +2, t(0.975, 1) = 12.706 times sd sqrt(2) / sqrt(2) = 12.706
    assert table_cells(markdown)[2] == [
        "erk",
        "98%",
        "61.00 ± 1.41 (2)",
        "61.00 ± 1.41 (2)",
        "63.00 ± 2.83 (2)",
        "63.00 ± 2.83 (2)",
        "+2.00 [-10.71, +14.71] (2)",
    ]
    for hidden in ("77.70", "88.80", "99.90", "90.00"):
        assert hidden not in markdown
    rows = read_csv(tmp_path / "report" / "results.csv")
    assert float(rows[1]["final_train_acc_mean"]) == pytest.approx(0.63)


def test_three_seed_dst_table_gives_mean_sd_and_paired_intervals_against_the_static_mask(
    tmp_path: Path,
) -> None:
    """The DST table's shape (one mask, static vs SET per protocol) with three seeds: every cell is mean
    ± sd over three seeds, and each evolving arm's gain over its static arm is paired on seed with a 95%
    interval, per cell and pooled."""
    root = tmp_path / "runs"
    finals = {
        "default": (0.60, 0.62, 0.61),
        "default+set": (0.62, 0.63, 0.61),
        "tost": (0.61, 0.62, 0.63),
        "tost+set": (0.63, 0.62, 0.66),
    }
    for arm, values in finals.items():
        recipe, _, dst = arm.partition("+")
        for seed, final in enumerate(values):
            make_run(root, "erk", 0.98, recipe, seed, final, final, **({"dst": dst} if dst else {}))
    (table,) = build_tables(collect_runs([root]))
    cells = dict(zip(*tables_cells(table_markdown(table))[0][0::2], strict=True))

    def gain(arm: str, reference: str) -> str:
        differences = [a - b for a, b in zip(finals[arm], finals[reference], strict=True)]
        mean, half = statistics.fmean(differences), 4.302653 * statistics.stdev(differences) / 3**0.5
        return f"{100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}] (3)"

    sd = 100 * statistics.stdev(finals["default+set"])
    assert cells["default+set final"] == f"{100 * statistics.fmean(finals['default+set']):.2f} ± {sd:.2f} (3)"
    assert cells["default+set gain"] == gain("default+set", "default")
    pooled = {
        f"{arm} − {reference}": table.pooled_gain(arm, reference, 0.98, "final_test_acc")
        for arm, reference in table.recipe_pairs
    }
    assert set(pooled) >= {"default+set − default", "tost+set − default", "tost+set − tost"}
    assert gain_cell(pooled["tost+set − tost"]) == gain("tost+set", "tost")


def test_cost_column_reads_each_runs_flops_against_default(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed, (flops, seconds) in enumerate([(1.2, 30.0), (1.4, 50.0)]):
        for recipe, ratio, time in [("default", 1.0, 20.0), ("kd", flops, seconds)]:
            folder = make_run(root, "erk", 0.98, recipe, seed, 0.6, 0.61)
            summary = json.loads((folder / "summary.json").read_text())
            summary.update(train_flops_vs_default=ratio, train_seconds=time)
            (folder / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "report"
    write_report([root], out)
    text = (out / "report.md").read_text()
    assert "kd cost" in text and "default cost" not in text
    assert "| 1.30x" in text.replace("  ", " ") or " 1.30x " in text
    rows = list(csv.DictReader((out / "results.csv").open()))
    kd = next(row for row in rows if row["recipe"] == "kd")
    assert float(kd["train_flops_vs_default_mean"]) == pytest.approx(1.3)


def test_reports_of_runs_without_costs_have_no_cost_column(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for recipe in ("default", "tost"):
        make_run(root, "erk", 0.98, recipe, 0, 0.6, 0.61)
    write_report([root], tmp_path / "report")
    assert "cost" not in (tmp_path / "report" / "report.md").read_text()
    assert "train_flops" not in (tmp_path / "report" / "results.csv").read_text()
