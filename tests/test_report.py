"""Reports from hand-made run folders: grouping, mean ± std, paired gains, files written and plots."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from anymask.errors import AnymaskError
from anymask.experiments.report import build_tables, collect_runs, markdown_table, paired_gain, write_report
from anymask.experiments.report.figures import accuracy_vs_sparsity
from anymask.experiments.report.gain_figures import gain_by_epoch, gain_vs_sparsity, variant_gains
from anymask.masks import Mask
from report_runs import make_run, read_csv, table_cells, tables_cells, write_records

DEFAULT = {0: (0.80, 0.82), 1: (0.84, 0.85), 2: (0.82, 0.86)}
TOST = {0: (0.85, 0.86), 1: (0.86, 0.88)}  # seed 2 missing: the gain pairs seeds 0 and 1 only


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed, (final, best) in DEFAULT.items():
        make_run(root, "snip", 0.9, "default", seed, final, best)
    for seed, (final, best) in TOST.items():
        make_run(root / "nested" / "deeper", "snip", 0.9, "tost", seed, final, best)
    make_run(root, "random", 0.98, "default", 0, 0.5, 0.6)
    make_run(root, "random", 0.98, "tost", 5, 0.6, 0.6)  # no common seed: difference of means
    return root


def test_mean_std_and_paired_gain(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_report([runs], tmp_path / "report")
    rows = {(r["mask"], r["recipe"]): r for r in read_csv(tmp_path / "report" / "results.csv")}
    default, tost = rows["snip", "default"], rows["snip", "tost"]
    finals = [f for f, _ in DEFAULT.values()]
    assert (default["n"], default["seeds"]) == ("3", "0;1;2")
    assert float(default["final_test_acc_mean"]) == pytest.approx(statistics.fmean(finals), abs=1e-6)
    assert float(default["final_test_acc_std"]) == pytest.approx(statistics.stdev(finals), abs=1e-6)
    assert float(tost["final_gain"]) == pytest.approx(((0.85 - 0.80) + (0.86 - 0.84)) / 2, abs=1e-6)
    assert float(tost["best_gain"]) == pytest.approx(((0.86 - 0.82) + (0.88 - 0.85)) / 2, abs=1e-6)
    assert tost["gain_seeds"] == "2" and default["final_gain"] == ""
    unpaired = rows["random", "tost"]
    assert unpaired["gain_seeds"] == "0" and float(unpaired["final_gain"]) == pytest.approx(0.1, abs=1e-6)
    assert unpaired["final_test_acc_std"] == ""  # one seed: no spread

    markdown = (tmp_path / "report" / "report.md").read_text()
    table = table_cells(markdown)
    assert table[0] == [
        "mask",
        "sparsity",
        "default final",
        "default best",
        "tost final",
        "tost best",
        "tost gain",
    ]
    assert table[2:] == [
        ["random", "98%", "50.00 (1)", "60.00 (1)", "60.00 (1)", "60.00 (1)", "+10.00 (unpaired)"],
        [
            "snip",
            "90%",
            "82.00 ± 2.00 (3)",
            "84.33 ± 2.08 (3)",
            "85.50 ± 0.71 (2)",
            "87.00 ± 1.41 (2)",
            "+3.50 [-15.56, +22.56] (2)",  # t(0.975, 1) = 12.706 on differences 5 and 2 points
        ],
    ]
    matrix = tables_cells(markdown)[1]  # the same final accuracies, one column per sparsity
    assert matrix[0] == ["mask", "recipe", "90%", "98%"]
    assert matrix[2:] == [
        ["random", "default", "–", "50.00 (1)"],
        ["random", "tost", "–", "60.00 (1)"],
        ["snip", "default", "82.00 ± 2.00 (3)", "–"],
        ["snip", "tost", "85.50 ± 0.71 (2)", "–"],
    ]
    printed = capsys.readouterr().out
    assert "## cnn on digits" in printed and "82.00 ± 2.00 (3)" in printed
    assert str(tmp_path / "report" / "accuracy_vs_sparsity_cnn_digits.png") in printed


def test_report_writes_plots_and_keeps_times_apart(runs: Path, tmp_path: Path) -> None:
    files = write_report([runs], tmp_path / "report")
    names = {path.name for path in files}
    assert names == {  # no densities: hand-made folders have no mask files
        "report.md",
        "results.csv",
        "timings.csv",
        "accuracy_vs_sparsity_cnn_digits.png",
        "gain_vs_sparsity_cnn_digits.png",
        "gain_by_epoch_cnn_digits.png",
        "learning_curves_cnn_digits.png",
    }
    assert set(path.name for path in (tmp_path / "report").iterdir()) == names
    assert "variants" not in (tmp_path / "report" / "report.md").read_text()
    for name in names - {"report.md", "results.csv", "timings.csv"}:
        assert (tmp_path / "report" / name).read_bytes().startswith(b"\x89PNG")
    assert "train_seconds" not in (tmp_path / "report" / "results.csv").read_text()
    timings = read_csv(tmp_path / "report" / "timings.csv")
    assert {(t["mask"], t["recipe"]): t["train_seconds_mean"] for t in timings}["snip", "default"] == "4.0"


def test_other_varying_settings_split_tables(tmp_path: Path) -> None:
    """Two learning rates: two variants, each with its own section; a value as common as another is named
    in every row; a variant with two sparsities keeps its sparsity plot, named by its number."""
    for lr, sparsity in ((0.1, 0.9), (0.1, 0.98), (0.2, 0.9), (0.2, 0.98)):
        make_run(tmp_path / "runs", "snip", sparsity, "default", 0, lr + sparsity / 2, 0.8, lr=lr)
    files = {path.name for path in write_report([tmp_path / "runs"], tmp_path / "report")}
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## cnn on digits (variant 1: lr=0.1)" in markdown
    assert "## cnn on digits (variant 2: lr=0.2)" in markdown
    assert "Settings of this variant: lr=0.2." in markdown
    assert tables_cells(markdown)[0] == [
        ["variant", "default snip 90% final", "default snip 98% final"],
        ["-" * 9, "-" * 22, "-" * 22],
        ["1: lr=0.1", "55.00 (1)", "59.00 (1)"],
        ["2: lr=0.2", "65.00 (1)", "69.00 (1)"],
    ]
    assert "A variant is named by its lr (no value is the most common)." in markdown
    # one recipe: no gain to plot; each variant keeps its accuracy plot and learning curves
    assert files == {
        "report.md",
        "results.csv",
        "timings.csv",
        "accuracy_vs_sparsity_cnn_digits_variant1.png",
        "accuracy_vs_sparsity_cnn_digits_variant2.png",
        "learning_curves_cnn_digits_variant1.png",
        "learning_curves_cnn_digits_variant2.png",
    }


VARIANT_FINALS = {  # (recipe, ghost_epochs, ls_alpha) -> final accuracy of seeds 0 and 1
    ("default", None, None): (0.60, 0.62),
    ("lrsi", None, None): (0.59, 0.60),  # GradInit alone reads neither setting: the same runs everywhere
    ("tost", 1, 0.1): (0.63, 0.66),
    ("tost", 2, 0.1): (0.62, 0.61),
    ("tost", 1, 0.05): (0.60, 0.64),
}


@pytest.fixture
def variant_runs(tmp_path: Path) -> Path:
    """Three variants of tost (ghost_epochs 1 or 2, ls_alpha 0.1 or 0.05) sharing one default baseline."""
    root = tmp_path / "runs"
    for (recipe, ghost_epochs, ls_alpha), finals in VARIANT_FINALS.items():
        settings = {"ghost_epochs": ghost_epochs, "ls_alpha": ls_alpha} if recipe == "tost" else {}
        for seed, final in enumerate(finals):
            make_run(root, "erk", 0.98, recipe, seed, final, final, **settings)
    return root


def test_variants_read_as_one_table(variant_runs: Path, tmp_path: Path) -> None:
    files = {path.name for path in write_report([variant_runs], tmp_path / "report")}
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert markdown.index("## cnn on digits: variants") < markdown.index("## cnn on digits (variant 1")
    # Hand-computed, in points: lrsi - default -1, -2; tost - default 3, 4 | 2, -1 | 0, 2;
    # the interval is mean ± t(0.975, 1) * sd / sqrt(2) = 12.706 * sd / sqrt(2).
    assert tables_cells(markdown)[0] == [
        ["variant", "default final", "lrsi final", "lrsi gain", "tost final", "tost gain"],
        ["-" * 23, "-" * 16, "-" * 16, "-" * 24, "-" * 16, "-" * 26],
        [
            "1: most common settings",
            "61.00 ± 1.41 (2)",
            "59.50 ± 0.71 (2)",
            "-1.50 [-7.85, +4.85] (2)",
            "64.50 ± 2.12 (2)",
            "+3.50 [-2.85, +9.85] (2)",
        ],
        ["2: ghost_epochs=2.0", "= 1", "= 1", "= 1", "61.50 ± 0.71 (2)", "+0.50 [-18.56, +19.56] (2)"],
        ["3: ls_alpha=0.05", "= 1", "= 1", "= 1", "62.00 ± 2.83 (2)", "+1.00 [-11.71, +13.71] (2)"],
    ]
    assert "value most variants have (ghost_epochs=1.0, ls_alpha=0.1)." in markdown
    assert "## cnn on digits (variant 3: ls_alpha=0.05)" in markdown
    # one mask and sparsity: the variants plot and each variant's learning curves, no single-point plot
    curves = {f"learning_curves_cnn_digits_variant{n}.png" for n in (1, 2, 3)}
    assert files == {"report.md", "results.csv", "timings.csv", "variants_gain_cnn_digits.png", *curves}
    assert "![learning_curves_cnn_digits_variant3](learning_curves_cnn_digits_variant3.png)" in markdown
    assert "![variants_gain_cnn_digits](variants_gain_cnn_digits.png)" in markdown
    # results.csv names each row's settings in full: the variants table can be rebuilt from it
    rows = read_csv(tmp_path / "report" / "results.csv")
    tost = {r["setting"]: float(r["final_gain"]) for r in rows if r["recipe"] == "tost"}
    assert tost == pytest.approx(
        {
            "ghost_epochs=1.0, ls_alpha=0.1": 0.035,
            "ghost_epochs=2.0, ls_alpha=0.1": 0.005,
            "ghost_epochs=1.0, ls_alpha=0.05": 0.01,
        }
    )


def test_variants_plot_draws_each_gain_once_with_its_interval(variant_runs: Path) -> None:
    tables = build_tables(collect_runs([variant_runs]))
    assert [t.variant.name for t in tables if t.variant] == [
        "1: most common settings",
        "2: ghost_epochs=2.0",
        "3: ls_alpha=0.05",
    ]
    (ax,) = [ax for ax in variant_gains(tables).axes if ax.get_visible()]
    assert [label.get_text() for label in ax.get_yticklabels()] == [t.variant.name for t in tables]
    points = []
    for bars in ax.containers:  # one errorbar per variant and arm: its line holds the gain
        x, y = bars.lines[0].get_xdata()[0], bars.lines[0].get_ydata()[0]
        (segment,) = bars.lines[2][0].get_segments()
        points.append((bars.get_label(), round(y), x, segment[1][0] - x))
    half_width = 12.706205 * 2**-0.5  # t(0.975, 1) * sd / sqrt(2) for differences of sd 1 point
    assert points == [
        ("lrsi", 0, pytest.approx(-1.5), pytest.approx(half_width * 0.5**0.5)),  # lrsi only on variant 1
        ("tost", 0, pytest.approx(3.5), pytest.approx(half_width * 0.5**0.5)),
        ("tost", 1, pytest.approx(0.5), pytest.approx(half_width * 4.5**0.5)),
        ("tost", 2, pytest.approx(1.0), pytest.approx(half_width * 2**0.5)),
    ]


def test_gain_plot_titles_say_an_interval_only_where_one_is_drawn(tmp_path: Path) -> None:
    """One seed per cell gives one pair per mask: the pooled gain over two masks has an interval, a lone
    mask's has none, and the title says which."""
    root = tmp_path / "runs"
    folders = {}
    for mask, tost in (("snip", 0.83), ("erk", 0.82)):
        make_run(root, mask, 0.9, "default", 0, 0.80, 0.80)
        folders[mask] = make_run(root, mask, 0.9, "tost", 0, tost, tost)
    (table,) = build_tables(collect_runs([root]))
    assert "(2 pairs per point; bars: 95% CI)" in gain_vs_sparsity(table).get_suptitle().replace("\n", " ")
    shutil.rmtree(folders["erk"])
    (table,) = build_tables(collect_runs([root]))
    title = gain_vs_sparsity(table).get_suptitle().replace("\n", " ")
    assert "(1 pair per point: no interval)" in title and "95%" not in title


def test_gain_by_epoch_pools_paired_curves_and_marks_the_ghosts_removal(tmp_path: Path) -> None:
    """Two masks x two seeds at one sparsity: after each epoch the gain is the t interval over the four
    paired differences of the curves, and a dotted line follows tost's last ghost epoch."""
    root = tmp_path / "runs"
    tost_leads = {("snip", 0): 0.01, ("snip", 1): 0.03, ("erk", 0): 0.02, ("erk", 1): 0.06}
    for (mask, seed), lead in tost_leads.items():
        for recipe, curve in (("default", [0.5, 0.6, 0.7]), ("tost", [0.5 + lead, 0.6 - lead, 0.7 + lead])):
            folder = make_run(root, mask, 0.9, recipe, seed, curve[-1], max(curve))
            ghosts = recipe == "tost"
            records = [
                {"epoch": e + 1, "test_acc": acc, "seconds": 1.0, "ghost_phase": ghosts and e == 0}
                for e, acc in enumerate(curve)
            ]
            write_records(folder, records)
    (table,) = build_tables(collect_runs([root]))
    leads = list(tost_leads.values())
    half = 3.182446 * statistics.stdev(leads) / 2  # t(0.975, 3) * sd / sqrt(4)
    gains = table.pooled_gain_by_epoch("tost", "default", 0.9)
    assert [g.mean for g in gains] == pytest.approx([0.03, -0.03, 0.03])
    assert [g.half_width for g in gains] == pytest.approx([half] * 3, rel=1e-5)
    assert table.ghost_phase_end("tost", 0.9) == 1 and table.ghost_phase_end("default", 0.9) == 0
    (ax,) = [ax for ax in gain_by_epoch(table).axes if ax.get_visible()]
    (line,) = [line for line in ax.get_lines() if line.get_label() == "tost − default"]
    assert list(line.get_ydata()) == pytest.approx([3.0, -3.0, 3.0])
    (band,) = ax.collections
    low = band.get_paths()[0].vertices[:, 1].min()
    assert low == pytest.approx(-3.0 - 100 * half, rel=1e-5)
    (removal,) = [line for line in ax.get_lines() if line.get_label() == "tost: ghosts removed"]
    assert list(removal.get_xdata()) == [1.5, 1.5]
    write_report([root], tmp_path / "report")
    assert (tmp_path / "report" / "gain_by_epoch_cnn_digits.png").is_file()


def test_a_setting_only_some_runs_read_does_not_split_their_baseline(tmp_path: Path) -> None:
    """Default runs read no ghost setting, so they are the baseline of each ghost_epochs table, and an
    lth run's lth_epochs, which no other run reads, does not split anything."""
    root = tmp_path / "runs"
    make_run(root, "snip", 0.9, "default", 0, 0.80, 0.80)
    make_run(root, "snip", 0.9, "tost", 0, 0.83, 0.83, ghost_epochs=1)
    make_run(root, "snip", 0.9, "tost", 0, 0.79, 0.79, ghost_epochs=2)
    make_run(root, "lth", 0.9, "default", 0, 0.70, 0.70, lth_epochs=1)
    write_report([root], tmp_path / "report")
    rows = read_csv(tmp_path / "report" / "results.csv")
    gains = {(r["setting"], r["mask"], r["recipe"]): r for r in rows}
    assert {r["setting"] for r in rows} == {"ghost_epochs=1.0", "ghost_epochs=2.0"}
    assert float(gains["ghost_epochs=1.0", "snip", "tost"]["final_gain"]) == pytest.approx(0.03)
    assert float(gains["ghost_epochs=2.0", "snip", "tost"]["final_gain"]) == pytest.approx(-0.01)
    assert ("ghost_epochs=2.0", "lth", "default") in gains


def test_a_run_joins_only_tables_that_fix_every_setting_it_reads(tmp_path: Path) -> None:
    """Two kd runs at different temperatures on one seed never average as two seeds: the fold table, which
    says nothing of the temperature, holds neither, and each temperature has its own table."""
    root = tmp_path / "runs"
    make_run(root, "erk", 0.98, "default", 0, 0.60, 0.60)
    make_run(root, "erk", 0.98, "fold", 0, 0.57, 0.57, fold_at="ghost")
    make_run(root, "erk", 0.98, "kd", 0, 0.62, 0.62, teacher="t", kd_temperature=4.0)
    make_run(root, "erk", 0.98, "kd", 0, 0.64, 0.64, teacher="t", kd_temperature=2.0)
    write_report([root], tmp_path / "report")
    rows = read_csv(tmp_path / "report" / "results.csv")
    kd = {r["setting"]: r for r in rows if r["recipe"] == "kd"}
    assert {s: r["n"] for s, r in kd.items()} == {"kd_temperature=4.0": "1", "kd_temperature=2.0": "1"}
    assert float(kd["kd_temperature=2.0"]["final_gain"]) == pytest.approx(0.04)


def test_each_seeds_own_teacher_is_one_arm_and_two_teachers_of_one_seed_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed in (0, 1):
        make_run(root, "erk", 0.98, "default", seed, 0.60, 0.60)
        make_run(root, "erk", 0.98, "kd", seed, 0.63 + seed / 100, 0.63, teacher=f"teacher{seed}")
    write_report([root], tmp_path / "report")
    kd = [r for r in read_csv(tmp_path / "report" / "results.csv") if r["recipe"] == "kd"]
    assert [(r["n"], r["gain_seeds"]) for r in kd] == [("2", "2")]
    assert float(kd[0]["final_gain"]) == pytest.approx(0.035)
    make_run(root, "erk", 0.98, "kd", 0, 0.50, 0.50, teacher="another")
    with pytest.raises(AnymaskError, match=r"share seed 0 .* differ in teacher"):
        write_report([root], tmp_path / "report2")


def test_only_keeps_the_runs_asked_for_and_their_baseline(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, "snip", 0.9, "default", 0, 0.80, 0.80)
    make_run(root, "snip", 0.9, "tost", 0, 0.83, 0.83, ghost_epochs=1)
    make_run(root, "snip", 0.9, "tost", 0, 0.79, 0.79, ghost_epochs=2)
    make_run(root, "snip", 0.9, "gsn", 0, 0.81, 0.81, ghost_epochs=1)
    only = ["recipe=default", "recipe=tost", "ghost-epochs=1"]
    write_report([root], tmp_path / "report", only=only)
    rows = read_csv(tmp_path / "report" / "results.csv")
    kept = {(r["recipe"], float(r["final_test_acc_mean"])) for r in rows}
    assert kept == {("default", 0.8), ("tost", 0.83)}
    with pytest.raises(AnymaskError, match="unknown config key 'ghost_epoch'"):
        write_report([root], tmp_path / "bad", only=["ghost_epoch=1"])
    with pytest.raises(AnymaskError, match="not KEY=VALUE"):
        write_report([root], tmp_path / "bad", only=["tost"])
    with pytest.raises(AnymaskError, match=r"no finished runs .* matching --only recipe=ls"):
        write_report([root], tmp_path / "bad", only=["recipe=ls"])


def test_each_scorers_reference_mode_is_one_table_and_only_auto_keeps_it(tmp_path: Path) -> None:
    """GraSP in train mode and SNIP in eval mode are each method's `auto` mode: one table, not two
    variants; `--only prune_bn_mode=auto` keeps exactly those, the other modes split off as variants."""
    root = tmp_path / "runs"
    make_run(root, "grasp", 0.9, "default", 0, 0.71, 0.71, prune_bn_mode="train")
    make_run(root, "snip", 0.9, "default", 0, 0.69, 0.69, prune_bn_mode="eval")
    make_run(root, "erk", 0.9, "default", 0, 0.72, 0.72)
    write_report([root], tmp_path / "reference")
    rows = read_csv(tmp_path / "reference" / "results.csv")
    assert {r["setting"] for r in rows} == {""} and len(rows) == 3
    make_run(root, "grasp", 0.9, "default", 0, 0.60, 0.60, prune_bn_mode="eval")
    make_run(root, "snip", 0.9, "default", 0, 0.70, 0.70, prune_bn_mode="train")
    write_report([root], tmp_path / "auto", only=["prune_bn_mode=auto"])
    kept = {(r["mask"], float(r["final_test_acc_mean"])) for r in read_csv(tmp_path / "auto" / "results.csv")}
    assert kept == {("grasp", 0.71), ("snip", 0.69), ("erk", 0.72)}
    write_report([root], tmp_path / "eval", only=["prune_bn_mode=eval"])
    kept = {(r["mask"], float(r["final_test_acc_mean"])) for r in read_csv(tmp_path / "eval" / "results.csv")}
    assert kept == {("grasp", 0.60), ("snip", 0.69), ("erk", 0.72)}
    write_report([root], tmp_path / "all")
    settings = {r["setting"] for r in read_csv(tmp_path / "all" / "results.csv")}
    assert settings == {"prune_bn_mode=auto", "prune_bn_mode=eval", "prune_bn_mode=train"}


def test_kept_runs_rebuild_the_same_report(runs: Path, tmp_path: Path) -> None:
    write_report([runs], tmp_path / "report", keep_runs=True)
    kept = tmp_path / "report" / "runs"
    files = {p.name for p in next(kept.iterdir()).iterdir()}
    assert files == {"config.json", "metrics.jsonl", "summary.json"}  # these runs have no mask file
    shutil.rmtree(runs)  # the run folders are gone (a fresh machine); the kept files are enough
    write_report([kept], tmp_path / "rebuilt", keep_runs=True)
    for name in ("report.md", "results.csv"):
        assert (tmp_path / "rebuilt" / name).read_text() == (tmp_path / "report" / name).read_text()


def test_kept_runs_hold_the_mask_densities_for_the_density_plot(tmp_path: Path) -> None:
    folder = make_run(tmp_path / "runs", "snip", 0.5, "default", 0, 0.8, 0.8)
    Mask(  # 100 weights, as the run's summary counts (a mask of another size is not the run's)
        {"a.weight": torch.tensor([True, False, False, False]), "b.weight": torch.ones(96, dtype=torch.bool)}
    ).save(folder / "mask.safetensors")
    write_report([tmp_path / "runs"], tmp_path / "report", keep_runs=True)
    kept = tmp_path / "report" / "runs" / folder.name
    assert json.loads((kept / "layer_densities.json").read_text()) == {"a.weight": 0.25, "b.weight": 1.0}
    shutil.rmtree(tmp_path / "runs")
    rebuilt = write_report([kept.parent], tmp_path / "rebuilt")
    assert any(path.name.startswith("densities_") for path in rebuilt)


def test_a_run_reached_twice_counts_once(runs: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(runs / "nested", copy)
    with pytest.warns(UserWarning, match="the same run as"):
        collected = collect_runs([runs, copy, runs / "nested"])
    assert len(collected) == 7


def test_no_finished_runs_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnymaskError, match="no finished runs"):
        write_report([tmp_path / "empty"], tmp_path / "report")


def test_one_recipe_matrix_has_no_recipe_column_and_one_sparsity_has_no_matrix(tmp_path: Path) -> None:
    make_run(tmp_path / "runs", "erk", 0.9, "default", 0, 0.7, 0.7)
    make_run(tmp_path / "runs", "erk", 0.98, "default", 0, 0.6, 0.6)
    make_run(tmp_path / "runs", "lth", 0.98, "default", 0, 0.5, 0.5)
    write_report([tmp_path / "runs"], tmp_path / "two")
    matrix = tables_cells((tmp_path / "two" / "report.md").read_text())[1]
    assert matrix[0] == ["mask", "90%", "98%"]
    assert matrix[2:] == [["erk", "70.00 (1)", "60.00 (1)"], ["lth", "–", "50.00 (1)"]]
    write_report([tmp_path / "runs"], tmp_path / "one", only=["sparsity=0.98"])
    assert len(tables_cells((tmp_path / "one" / "report.md").read_text())) == 1


def test_accuracy_plot_compares_methods_in_one_panel_when_there_is_one_recipe(
    runs: Path, tmp_path: Path
) -> None:
    def panels(root: Path) -> list[tuple[str, list[str]]]:
        figure = accuracy_vs_sparsity(build_tables(collect_runs([root]))[0])
        visible = [ax for ax in figure.axes if ax.get_visible()]
        return [(ax.get_title(), sorted(ax.get_legend_handles_labels()[1])) for ax in visible]

    assert panels(runs) == [("random", ["default", "tost"]), ("snip", ["default", "tost"])]
    for mask, sparsity, final in (("erk", 0.9, 0.7), ("erk", 0.98, 0.6), ("lth", 0.98, 0.5)):
        make_run(tmp_path / "one_recipe", mask, sparsity, "default", 0, final, final)
    assert panels(tmp_path / "one_recipe") == [("", ["erk", "lth"])]


def test_markdown_table_pads_columns() -> None:
    assert markdown_table(["a", "long"], [["xyz", "1"]]).splitlines() == [
        "| a   | long |",
        "| --- | ---- |",
        "| xyz | 1    |",
    ]


def test_paired_gain_interval_is_student_t_over_the_differences() -> None:
    """Hand-computed: differences 1, 3 and 2 points: mean 2, sd 1, t(0.975, 2) = 4.302653."""
    gain = paired_gain([0.01, 0.03, 0.02])
    assert gain.mean == pytest.approx(0.02) and gain.seeds == 3
    assert gain.half_width == pytest.approx(4.302653 * 0.01 / 3**0.5, rel=1e-6)
    assert gain.interval == pytest.approx((0.02 - 0.0248414, 0.02 + 0.0248414), abs=1e-6)
    single = paired_gain([0.04])
    assert (single.mean, single.half_width, single.interval) == (0.04, None, None)
