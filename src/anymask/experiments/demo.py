"""`anymask demo`: a real sweep, small enough for a laptop CPU in a few minutes, and its report.

Two masks (random, SNIP) at two sparsities, each trained with the default protocol and with ToST, on
scikit-learn's digits (real images, no download). The sweep file is written into the output folder and
run like any other, so an interrupted demo resumes where it stopped and a finished one just reports.
"""

from __future__ import annotations

from pathlib import Path

from anymask.bounds import check_setting
from anymask.io import atomic_write_text, check_output_folder

SWEEP_FILE = "demo.toml"
DEMO_SWEEP = """\
# The sweep behind `anymask demo`; run it again with `anymask sweep <this file> --out <this folder>`.
# lr 0.2: the best of 0.05/0.1/0.2 for the default recipe on these sparse CNNs (0.05 left it at 58%
# on random 90%), so tost is compared with a fair baseline. GradInit (part of tost) runs 60 iterations
# instead of 180: each costs a few training steps on a CPU, and 60 already settle the layer scales.
# One thread per run: this CNN is too small to gain from more, and `--workers 2` then uses two cores.

[base]
model = "cnn"
data = "digits"
epochs = 10
lr = 0.2
seed = 0
gradinit_iterations = 60
threads = 1

[grid]
mask_method = ["random", "snip"]
sparsity = [0.9, 0.98]
recipe = ["default", "tost"]
"""


def run_demo(out: Path, workers: int = 1) -> Path:
    """Run (or resume) the demo sweep into `out`, report it into `out/report`; returns the accuracy plot."""
    from anymask.experiments.engines.base import engine_bounds
    from anymask.experiments.report import write_report
    from anymask.experiments.sweep import run_sweep

    check_setting("--workers", workers, engine_bounds()["workers"])
    check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SWEEP_FILE, DEMO_SWEEP)
    run_sweep(out / SWEEP_FILE, out=out, workers=workers)
    files = write_report([out], out / "report")
    plot = next(path for path in files if path.name.startswith("accuracy_vs_sparsity"))
    print(f"accuracy vs sparsity plot: {plot}")
    return plot
