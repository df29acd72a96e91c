"""Sweep engines: settings and their one-line errors, and real sweeps on a Ray cluster and on SLURM whose
runs are killed mid-run, each ending with the weights the local engine trains."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anymask.errors import AnymaskError
from anymask.experiments.sweep import load_sweep, run_sweep

# Two small real runs (digits, 600 images, 12 epochs of 10 steps), one thread each so every engine trains
# the same bits. 12 epochs: a run stays mid-way for seconds, so the engine tests see it there and kill it.
SWEEP = """\
[base]
model = "cnn"
data = "digits"
train_subset = 600
batch_size = 64
epochs = 12
lr = 0.2
sparsity = 0.9
threads = 1
[grid]
mask_method = ["random", "snip"]
"""


def sweep_file(root: Path, extra: str = "") -> Path:
    path = root / "pair.toml"
    path.write_text(extra + SWEEP)  # top-level keys and tables first: then [base] and [grid]
    return path


def weights(out: Path) -> dict[str, bytes]:
    """Run folder name -> its final model file's bytes."""
    return {p.parent.name: p.read_bytes() for p in sorted(out.glob("*/model.safetensors"))}


def in_progress(out: Path) -> list[Path]:
    """Run folders with an epoch checkpoint and no summary: mid-run."""
    return [p.parent for p in out.glob("*/checkpoint.pt") if not (p.parent / "summary.json").exists()]


@pytest.fixture(scope="module")
def local_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The reference: the same sweep trained by the local engine (today's default)."""
    root = tmp_path_factory.mktemp("local")
    run_sweep(sweep_file(root), out=root / "out")
    found = weights(root / "out")
    assert len(found) == 2
    return found


# -- settings ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "flags", "message"),
    [
        (
            "[engine]\nengine = 'kubernetes'\n",
            {},
            "unknown sweep engine 'kubernetes'; choose one of: local, ray",
        ),
        ("[engine]\nworkerz = 2\n", {}, r"\[engine\]: unknown engine setting 'workerz'"),
        ("[engine]\ntime = 'long'\n", {}, "engine setting 'time' expects an integer, got 'long'"),
        ("engine = 3\n", {}, "'engine' must be a table"),
        ("", {"workers": "0"}, r"invalid --workers: 0 is outside \[1, 1024\]"),
        ("[engine]\nretries = -1\n", {}, r"invalid 'retries' in .*\[engine\]: -1 is outside \[0, 1000\]"),
        ("", {"engine": "ray", "cpus_per_run": "0"}, r"invalid --cpus-per-run: 0 is outside \[1, "),
        ("", {"engine": "slurm", "gpus_per_run": "0.5"}, "--gpus-per-run must be a whole number for SLURM"),
        ("", {"engine": "slurm", "slurm_cluster": "aws"}, "unknown slurm_cluster 'aws'"),
    ],
)
def test_bad_engine_settings_are_one_line_before_anything_is_written(
    tmp_path: Path, extra: str, flags: dict[str, str], message: str
) -> None:
    package = {"ray": "ray", "slurm": "submitit"}.get(flags.get("engine", ""))
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    with pytest.raises(AnymaskError, match=message) as error:
        run_sweep(sweep_file(tmp_path, extra), out=tmp_path / "out", **flags)
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


def test_engine_table_is_read_and_flags_win(tmp_path: Path) -> None:
    from anymask.experiments.sweep import engine_for

    sweep = load_sweep(sweep_file(tmp_path, "[engine]\nworkers = 2\n"))
    assert sweep.engine == {"workers": 2}
    assert engine_for(sweep, {}).workers == 2
    assert engine_for(sweep, {"workers": "3"}).workers == 3


@pytest.mark.parametrize(
    ("engine", "module", "extra"), [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")]
)
def test_missing_engine_package_names_its_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str, module: str, extra: str
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    with pytest.raises(AnymaskError) as error:
        run_sweep(sweep_file(tmp_path), out=tmp_path / "out", engine=engine)
    assert str(error.value) == (
        f"--engine {engine} needs the '{module}' package, which is not installed; "
        f"install it with: pip install 'anymask[{extra}]'"
    )


# -- Ray: a head and a worker node on 127.0.0.1, the worker killed mid-run ------------------------------
@pytest.fixture
def loopback_ray(monkeypatch: pytest.MonkeyPatch) -> object:
    """Ray's cluster utilities, with every node (and the sweep's driver) on 127.0.0.1.

    Ray maps a loopback address to the machine's own address unless told the cluster is this machine
    only; then a driver given 127.0.0.1:port looks for the head elsewhere and waits forever."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    return cluster_utils


def test_ray_sweep_survives_a_dead_node_and_matches_the_local_engine(
    tmp_path: Path, local_weights: dict[str, bytes], loopback_ray: object
) -> None:
    # The head schedules only (no CPUs, as on many clusters) and one worker node trains one run at a time:
    # which node holds the first run is then known without racing it, however loaded the machine is.
    node = {"object_store_memory": 80 * 1024**2, "node_ip_address": "127.0.0.1"}
    cluster = loopback_ray.Cluster(  # type: ignore[attr-defined]
        initialize_head=True, head_node_args={**node, "num_cpus": 0, "include_dashboard": False}
    )
    sweep = None
    try:
        worker = cluster.add_node(**node, num_cpus=1)
        cluster.wait_for_nodes()
        assert cluster.address.startswith("127.0.0.1:")
        out = tmp_path / "out"
        command = [sys.executable, "-m", "anymask", "sweep", str(sweep_file(tmp_path)), "--out", str(out)]
        command += ["--engine", "ray", "--address", cluster.address, "--cpus-per-run", "1"]
        sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 900  # generous: a loaded machine starts workers slowly
        while not in_progress(out) and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(in_progress(out)) == 1, "no run was seen mid-way on the worker node"
        started = {folder.name: (folder / "config.json").stat().st_mtime_ns for folder in in_progress(out)}
        # Kill the only node that can train (SIGKILL of its raylet and workers), then give the cluster a
        # new one: Ray retries the killed run there and it resumes from its checkpoint.
        cluster.remove_node(worker, allow_graceful=False)
        killed_at = time.time_ns()
        cluster.add_node(**node, num_cpus=1)
        output, _ = sweep.communicate(timeout=900)
    finally:
        if sweep is not None and sweep.poll() is None:
            sweep.kill()
            sweep.wait()
        cluster.shutdown()
    assert sweep.returncode == 0, output
    assert "all 2 runs finished" in output
    assert weights(out) == local_weights
    for name, mtime in started.items():  # resumed, never started over: the run's config is the first one
        assert (out / name / "config.json").stat().st_mtime_ns == mtime
        assert (out / name / "summary.json").stat().st_mtime_ns > killed_at
    for lines in (path.read_text().splitlines() for path in out.glob("*/metrics.jsonl")):
        assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 13))
    assert not list(out.glob("*/checkpoint.pt")) and not list(out.glob(".*.lock"))


# -- SLURM through submitit's local executor: the engine's own path, where no cluster is installed ------
def test_slurm_engine_through_submitits_local_executor_matches_the_local_engine(
    tmp_path: Path, local_weights: dict[str, bytes]
) -> None:
    pytest.importorskip("submitit")
    out = tmp_path / "out"
    run_sweep(sweep_file(tmp_path), out=out, engine="slurm", slurm_cluster="local", cpus_per_run=1)
    assert weights(out) == local_weights
    assert len(list(out.glob(".slurm/*/*_result.pkl"))) == 2  # one submitit job per run, each answered


# -- SLURM: a real single-node cluster, the running array tasks preempted mid-run ------------------------
@pytest.mark.slow
def test_slurm_sweep_requeues_preempted_tasks_and_matches_the_local_engine(
    tmp_path: Path, local_weights: dict[str, bytes]
) -> None:
    from slurm_cluster import slurm_cluster, squeue, why_unavailable

    pytest.importorskip("submitit")
    if reason := why_unavailable():
        pytest.skip(reason)
    out = tmp_path / "out"
    with slurm_cluster(tmp_path / "slurm", cpus=2) as env:
        command = [sys.executable, "-m", "anymask", "sweep", str(sweep_file(tmp_path)), "--out", str(out)]
        command += ["--engine", "slurm", "--partition", "test", "--time", "60", "--cpus-per-run", "1"]
        pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        sweep = subprocess.Popen(command, env=env, **pipe)
        try:
            deadline = time.monotonic() + 900  # generous: a loaded machine starts workers slowly
            while len(in_progress(out)) < 2 and sweep.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(in_progress(out)) == 2, "the array's tasks never trained side by side"
            started = {run.name: (run / "config.json").stat().st_mtime_ns for run in in_progress(out)}
            # Preemption as SLURM announces it: SIGUSR2 to the tasks. Each requeues itself and exits;
            # SLURM holds a requeued job for two minutes, which the test skips by starting it now.
            array = squeue(env)[0][0].split("_")[0]
            subprocess.run(["scancel", "--signal=USR2", array], env=env, check=True)
            preempted_at = time.time_ns()
            held = time.monotonic() + 120
            while sweep.poll() is None and time.monotonic() < held:
                for job, state, reason in squeue(env):
                    if state == "PENDING" and reason == "BeginTime":
                        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env)
                time.sleep(0.5)
            output, _ = sweep.communicate(timeout=900)
        finally:
            if sweep.poll() is None:
                sweep.kill()
                sweep.wait()
    assert sweep.returncode == 0, output
    assert "all 2 runs finished" in output
    logs = "".join(p.read_text() for p in out.glob(".slurm/*/*_log.err"))
    assert logs.count("this job is preempted") == 2, logs
    assert weights(out) == local_weights
    for name, mtime in started.items():
        assert (out / name / "config.json").stat().st_mtime_ns == mtime
        assert (out / name / "summary.json").stat().st_mtime_ns > preempted_at
    assert not list(out.glob("*/checkpoint.pt"))
