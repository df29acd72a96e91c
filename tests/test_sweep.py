"""Sweeps: parsing and its one-line errors, dry runs, presets, and real runs killed, resumed and parallel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anymask.cli import main
from anymask.config import RunConfig
from anymask.errors import AnymaskError
from anymask.experiments.engines import run_config as worker_config
from anymask.experiments.report import write_report
from anymask.experiments.sweep import PlannedRun, load_sweep, run_sweep

REPO = Path(__file__).resolve().parents[1]
# Small real runs: 600 digits images, 3 epochs of 10 steps. threads is pinned because a different
# thread count (the sweep gives each of N workers cpus/N) may change float sums, hence the bits.
BASE = """\
[base]
model = "cnn"
data = "digits"
train_subset = 600
batch_size = 64
epochs = 3
lr = 0.2
sparsity = 0.9
threads = 1
"""
GRID = '[grid]\nmask_method = ["random", "snip"]\nrecipe = ["default", "ls"]\n'


def sweep_file(tmp_path: Path, text: str, name: str = "small.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- parsing --------------------------------------------------------------------------------------------
def test_grid_points_that_train_the_same_run_are_planned_once(tmp_path: Path) -> None:
    """gsc_mode means nothing to a recipe without gsc: those points share one folder, run once."""
    text = 'mask_method = "random"\n[grid]\nrecipe = ["default", "gsc"]\ngsc_mode = ["learned", "free"]\n'
    runs = load_sweep(sweep_file(tmp_path, BASE + text)).plan(tmp_path / "out")
    assert [run.short_label for run in runs] == ["default/learned", "gsc/learned", "gsc/free"]
    assert len({run.folder for run in runs}) == 3


def test_grid_expands_in_file_order_last_key_fastest(tmp_path: Path) -> None:
    text = '[base.train]\nepochs = 2\n[base.mask]\nmask_method = "erk"\n[grid]\nsparsity = [0.9, "0.98"]\n'
    text += 'recipe = ["default", "ls"]\n'
    path = sweep_file(tmp_path, text)
    sweep = load_sweep(path)
    assert sweep.base == {"epochs": 2, "mask_method": "erk"}
    assert sweep.points() == [
        {"sparsity": 0.9, "recipe": "default"},
        {"sparsity": 0.9, "recipe": "ls"},
        {"sparsity": 0.98, "recipe": "default"},
        {"sparsity": 0.98, "recipe": "ls"},
    ]
    runs = sweep.plan(tmp_path / "out")
    assert [run.folder for run in runs] == [tmp_path / "out" / run.config.hash() for run in runs]
    assert runs[3].config.train.epochs == 2 and runs[3].config.mask.sparsity == 0.98


def test_file_without_grid_is_one_run(tmp_path: Path) -> None:
    sweep = load_sweep(sweep_file(tmp_path, 'out = "runs/x"\n[base]\nepochs = 1\n'))
    assert sweep.points() == [{}] and sweep.out == Path("runs/x")
    assert len(sweep.plan(tmp_path)) == 1


def test_variants_cross_the_grid_and_override_base(tmp_path: Path) -> None:
    """Each [[variants]] table changes a few settings of [base]: a one-at-a-time search in one file."""
    text = (
        '[base]\nrecipe = "tost"\nls_alpha = 0.1\n[grid]\nseed = [0, 1]\n'
        '[[variants]]\nrecipe = "default"\n[[variants]]\n[[variants]]\nls_alpha = 0.2\n'
    )
    sweep = load_sweep(sweep_file(tmp_path, text))
    assert sweep.points() == [
        {"recipe": "default", "seed": 0},
        {"recipe": "default", "seed": 1},
        {"seed": 0},
        {"seed": 1},
        {"ls_alpha": 0.2, "seed": 0},
        {"ls_alpha": 0.2, "seed": 1},
    ]
    runs = sweep.plan(tmp_path / "out")
    assert [(r.config.recipe.recipe, r.config.recipe.ls_alpha) for r in runs[::2]] == [
        ("default", 0.1),
        ("tost", 0.1),
        ("tost", 0.2),
    ]
    assert sweep.record(runs)["variants"] == [{"recipe": "default"}, {}, {"ls_alpha": 0.2}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[grid]\nseed = [0]\n[[variants]]\nseed = 1\n",
            r"'seed' is set in both \[grid\] and \[\[variants\]\] 1",
        ),
        (
            "[[variants]]\nseed = 1\n[[variants]]\nseed = 1\n",
            r"\[\[variants\]\] 2 repeats an earlier variant",
        ),
        ("variants = 3\n", "'variants' must be a list of tables"),
        ("[[variants]]\nsparsty = 0.9\n", "unknown config key 'sparsty'"),
        ("kept = 3\n", "'kept' expects a folder name or a list of them"),
        ("[base]\nsparsty = 0.9\n", "unknown config key 'sparsty'; did you mean 'sparsity'"),
        ("[grid]\nrecipes = ['default']\n", "unknown config key 'recipes'"),
        ("[base.train]\nsparsity = 0.9\n", r"'sparsity' belongs in \[mask\], not \[train\]"),
        ("epochs = 3\n", r"setting 'epochs' is at the top level; put it under \[base\]"),
        ("[runs]\nx = 1\n", "unknown key 'runs'"),
        ("[grid]\nsparsity = []\n", r"\[grid\] 'sparsity' is an empty list"),
        ("[grid]\nsparsity = 0.9\n", r"\[grid\] 'sparsity' must be a list of values"),
        ("[grid]\nseed = [0, 0]\n", r"\[grid\] 'seed' lists 0 twice"),
        ("[base]\nepochs = 'three'\n", "config key 'epochs' expects an integer, got 'three'"),
        ("[grid]\nepochs = [1, 'x']\n", "config key 'epochs' expects an integer, got 'x'"),
        ("[base]\nseed = 1\n[grid]\nseed = [1, 2]\n", r"'seed' is set in both \[base\] and \[grid\]"),
        ('[base]\nmask_method = "er"\n[grid]\nsparsity = [0.5, 1.5]\n', r"sparsity: 1.5 is outside \[0, 1\)"),
        ("out = 3\n", "'out' expects a folder name"),
        ("[base\n", "cannot parse"),
    ],
)
def test_malformed_sweep_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = sweep_file(tmp_path, text, "bad.toml")
    with pytest.raises(AnymaskError, match=message) as error:
        run_sweep(path, out=tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_malformed_sweep_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = sweep_file(tmp_path, "[grid]\nsparsity = []\n", "bad.toml")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("anymask: error: sweep file") and "'sparsity' is an empty list" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_dry_run_lists_runs_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    run_sweep(sweep_file(tmp_path, BASE + GRID), out=out, dry_run=True)
    printed = capsys.readouterr().out
    runs = load_sweep(tmp_path / "small.toml").plan(out)
    assert printed.startswith(f"4 runs in {out} (4 new)")
    assert all(run.folder.name in printed for run in runs)
    assert "| random      | default | new   |" in printed
    assert not out.exists()


def test_worker_config_turns_bars_off_and_sets_threads_only_when_unset() -> None:
    unset = PlannedRun(RunConfig(), {}, Path("x"))
    assert (worker_config(unset, 3).train.threads, worker_config(unset, 3).train.progress) == (3, False)
    pinned = PlannedRun(RunConfig.from_flat({"threads": 1}), {}, Path("x"))
    assert worker_config(pinned, 3).train.threads == 1
    assert worker_config(unset, 3).hash() == unset.config.hash()


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_preset_expands_to_valid_runs(preset: Path, tmp_path: Path) -> None:
    runs = load_sweep(preset).plan(tmp_path)
    assert runs and len({run.folder for run in runs}) == len(runs)
    if preset.name.startswith("paper_"):
        train = runs[0].config.train
        protocol = (train.epochs, train.batch_size, train.weight_decay, train.lr_schedule, train.lr)
        assert protocol == (182, 128, 2e-4, "step", 0.1)
        assert runs[0].config.data.val_split == 5000
        assert {run.config.recipe.recipe for run in runs} == {"default", "tost"}


# -- real runs --------------------------------------------------------------------------------------------
def finished(out: Path) -> dict[str, int]:
    """Finished run folder name -> mtime of its summary.json."""
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}


def kill_after_first_run_and_a_checkpoint(path: Path, out: Path) -> None:
    """Start the sweep as a command and SIGKILL it (and its worker) once one run has finished and
    another has saved an epoch checkpoint, so the second invocation must really resume mid-run."""
    command = [sys.executable, "-m", "anymask", "sweep", str(path), "--out", str(out)]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        mid_run = [p for p in out.glob("*/checkpoint.pt") if not (p.parent / "summary.json").exists()]
        if finished(out) and mid_run:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the sweep ended before it could be killed mid-run"


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 2x2 sweep run twice: killed mid-run then resumed (1 worker), and in one go (2 workers)."""
    root = tmp_path_factory.mktemp("sweeps")
    path = sweep_file(root, BASE + GRID)
    interrupted, parallel = root / "interrupted", root / "parallel"
    kill_after_first_run_and_a_checkpoint(path, interrupted)
    before = finished(interrupted)
    run_sweep(path, out=interrupted)
    run_sweep(path, out=parallel, workers=2)
    for out in (interrupted, parallel):
        write_report([out], out / "report")
    (root / "before_resume.json").write_text(json.dumps(before))
    return {"root": root, "interrupted": interrupted, "parallel": parallel}


def test_sweep_finishes_every_run_and_records_it(sweeps: dict[str, Path]) -> None:
    out = sweeps["parallel"]
    record = json.loads((out / "sweep.json").read_text())
    assert sorted(run["hash"] for run in record["runs"]) == sorted(finished(out))
    assert len(record["runs"]) == 4 and record["grid"] == {
        "mask_method": ["random", "snip"],
        "recipe": ["default", "ls"],
    }
    assert [r["values"] for r in record["runs"]][1] == {"mask_method": "random", "recipe": "ls"}
    assert not list(out.glob("*/checkpoint.pt"))


def test_rerun_after_kill_completes_only_the_missing_runs(sweeps: dict[str, Path]) -> None:
    before = json.loads((sweeps["root"] / "before_resume.json").read_text())
    after = finished(sweeps["interrupted"])
    assert 1 <= len(before) < 4 and len(after) == 4
    assert {name: after[name] for name in before} == before  # finished runs were not touched


def test_resumed_and_parallel_sweeps_give_identical_results(sweeps: dict[str, Path]) -> None:
    def accuracies(out: Path) -> dict[str, tuple[float, float]]:
        summaries = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/summary.json")}
        return {name: (s["final_test_acc"], s["best_test_acc"]) for name, s in summaries.items()}

    assert accuracies(sweeps["interrupted"]) == accuracies(sweeps["parallel"])
    assert len(set(accuracies(sweeps["parallel"]).values())) > 1  # the runs learned different things
    for name in ("report.md", "results.csv"):
        assert (sweeps["interrupted"] / "report" / name).read_bytes() == (
            sweeps["parallel"] / "report" / name
        ).read_bytes()


def test_rerunning_a_finished_sweep_runs_nothing(
    sweeps: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = finished(sweeps["parallel"])
    run_sweep(sweeps["root"] / "small.toml", out=sweeps["parallel"], dry_run=True)
    assert "(4 finished)" in capsys.readouterr().out
    run_sweep(sweeps["root"] / "small.toml", out=sweeps["parallel"])
    assert finished(sweeps["parallel"]) == before


def test_failed_run_is_reported_and_the_others_finish(tmp_path: Path) -> None:
    base = BASE.replace("epochs = 3", "epochs = 1").replace('data = "digits"', f'data_dir = "{tmp_path}"')
    (tmp_path / "cifar-10-batches-py").mkdir()  # there, but empty: found missing only when the run loads it
    path = sweep_file(tmp_path, base + 'mask_method = "random"\n[grid]\ndata = ["cifar10", "digits"]\n')
    with pytest.raises(AnymaskError, match=r"1 of 2 runs failed \(.*\); fix the cause") as error:
        run_sweep(path, out=tmp_path / "out")
    runs = load_sweep(path).plan(tmp_path / "out")
    assert str(runs[0].folder) in str(error.value)
    assert [run.state for run in runs] == ["new", "finished"]


def test_runs_kept_as_committed_files_are_skipped_and_new_ones_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new machine has no run folders, only the small files committed under a kept folder: those runs
    are not trained again, and each run the sweep finishes adds its small files there."""
    base = BASE.replace("epochs = 3", "epochs = 1").replace(
        "sparsity = 0.9", 'sparsity = 0.9\nmask_method = "random"'
    )
    grid = "[grid]\nseed = [0, 1]\n"
    kept = tmp_path / "docs" / "runs"
    first = sweep_file(tmp_path, f'kept = "{kept}"\n' + base + "[grid]\nseed = [0]\n", "first.toml")
    run_sweep(first, out=tmp_path / "machine1")
    (seed0,) = load_sweep(first).plan(tmp_path / "machine1")
    assert {p.name for p in (kept / seed0.folder.name).iterdir()} == {
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "layer_densities.json",
    }
    both = sweep_file(tmp_path, f'kept = ["{kept}"]\n' + base + grid, "both.toml")
    run_sweep(both, out=tmp_path / "machine2", dry_run=True)
    assert "(1 new, 1 kept)" in capsys.readouterr().out
    run_sweep(both, out=tmp_path / "machine2")
    assert list(finished(tmp_path / "machine2")) != [seed0.folder.name]  # only seed 1 trained here
    assert len(finished(tmp_path / "machine2")) == 1
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        r.folder.name for r in load_sweep(both).plan(kept)
    )
    (kept / seed0.folder.name / "metrics.jsonl").unlink()  # incomplete kept files do not count
    run_sweep(both, out=tmp_path / "machine2", dry_run=True)
    assert "(1 new, 1 finished)" in capsys.readouterr().out
