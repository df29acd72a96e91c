"""Do two versions of anymask train bit-identically? Short digits runs of every recipe and feature.

    PYTHONPATH=OLD/src python benchmarks/trainer_equivalence.py run --out /tmp/old
    PYTHONPATH=NEW/src python benchmarks/trainer_equivalence.py run --out /tmp/new
    PYTHONPATH=NEW/src python benchmarks/trainer_equivalence.py resume --interrupted /tmp/old --out /tmp/x
    python benchmarks/trainer_equivalence.py compare /tmp/old /tmp/new
    python benchmarks/trainer_equivalence.py compare /tmp/old /tmp/x

`run` trains each case into OUT/<case> with whichever anymask is imported; a `resume-*` case is first
interrupted right after the checkpoint of one epoch (as a kill would: metrics.jsonl one epoch short),
its folder kept as OUT/<case>-interrupted, and then resumed. `resume` continues another version's
interrupted folders with this version (old checkpoints must resume bit for bit). `compare` checks every
tensor of every safetensors file with torch.equal, and config.json, metrics.jsonl, summary.json and the
other JSON files for equality, leaving out only timing entries (TIMING). Exit status 1 on any difference.

Written for the rebuild of `Trainer` on `SparseTraining` (issue 30): the rebuilt trainer must reproduce
runs made before it exactly.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

TEACHER = Path("/tmp/anymask-equivalence-teacher")  # one fixed path: it is part of the kd run's config
QUICK = {
    "model": "cnn",
    "data": "digits",
    "train_subset": 256,
    "epochs": 3,
    "batch_size": 64,
    "lr": 0.05,
    "progress": False,
    "threads": 1,
    "eval_batch_size": 512,
    "gradinit_iterations": 4,
    "gradinit_batch_size": 32,
}
SPARSE = {"mask_method": "erk", "sparsity": 0.9}
DST = {"dst_interval": 2}
CASES: dict[str, dict[str, Any]] = {
    "default": {"mask_method": "random", "sparsity": 0.9, "val_split": 64},
    "dense": {"mask_method": "dense", "sparsity": 0.0},
    "tost": {"mask_method": "snip", "sparsity": 0.9, "recipe": "tost", "ghost_epochs": 2.0},
    "tost-official": {**SPARSE, "recipe": "tost-official", "model": "resnet20", "width": 0.25},
    "gw": {**SPARSE, "recipe": "gw", "ghost_epochs": 2.0},
    "gw-penalty": {**SPARSE, "recipe": "gw", "gw_form": "relative", "ghost_epochs": 2.0},
    "fold-ghost": {**SPARSE, "recipe": "gsn,fold", "fold_at": "ghost", "ghost_epochs": 2.0},
    "fold-end": {**SPARSE, "recipe": "fold", "fold_at": "end"},
    "kd": {**SPARSE, "recipe": "kd,ls", "teacher": str(TEACHER)},
    "kd-fold": {**SPARSE, "recipe": "kd-fold", "teacher": str(TEACHER)},
    "sparse-init": {**SPARSE, "recipe": "sparse-init"},
    "masked-wd": {**SPARSE, "masked_weight_decay": 0.0, "weight_decay": 5e-3},
    "set": {**SPARSE, **DST, "dst": "set"},
    "rigl": {**SPARSE, **DST, "dst": "rigl"},
    "rigl-tost": {**SPARSE, **DST, "dst": "rigl", "recipe": "tost", "ghost_epochs": 2.0},
    "lth": {"mask_method": "lth", "sparsity": 0.36, "lth_rewind": "1ep", "epochs": 2},
    "tost-recalibrated": {
        **SPARSE,
        "recipe": "tost",
        "ghost_epochs": 2.0,
        "bn_recalibration_batches": 2,
        "channels_last": False,
    },
    "gsc-learned-val": {**SPARSE, "recipe": "gsc,ls", "gsc_mode": "learned", "val_split": 64},
}
# Interrupted right after this epoch's checkpoint, then resumed.
RESUMED: dict[str, tuple[str, int]] = {
    "resume-default": ("default", 1),
    "resume-tost": ("tost", 1),
    "resume-tost-after-ghosts": ("tost", 2),
    "resume-rigl-tost": ("rigl-tost", 1),
    "resume-gw": ("gw", 1),
    "resume-fold-end": ("fold-end", 2),
    "resume-kd": ("kd", 1),
    "resume-tost-official": ("tost-official", 1),
}
TIMING = {"seconds", "images_per_s", "train_seconds", "finished_at", "prepare_seconds", "teacher_seconds"}


def is_timing(key: str) -> bool:
    return key in TIMING or key.endswith("_seconds")


class Interrupted(Exception):
    pass


def settings(case: str) -> dict[str, Any]:
    base = RESUMED[case][0] if case in RESUMED else case
    return {**QUICK, **CASES[base]}


def train(config_settings: dict[str, Any], out: Path, resume: bool = False) -> None:
    from anymask.config import RunConfig
    from anymask.train import run_experiment

    run_experiment(RunConfig.from_flat(config_settings), out, resume=resume)


def train_interrupted(config_settings: dict[str, Any], out: Path, after_epoch: int) -> None:
    """Train until the checkpoint of `after_epoch` is written, then stop as a kill there would."""
    import anymask.train.run as run_module

    original = run_module.save_checkpoint

    def save_then_stop(path: Path, state: dict[str, Any]) -> None:
        original(path, state)
        if state["epoch"] == after_epoch:
            raise Interrupted

    run_module.save_checkpoint = save_then_stop
    try:
        train(config_settings, out)
    except Interrupted:
        pass
    finally:
        run_module.save_checkpoint = original
    assert (out / "checkpoint.pt").is_file() and not (out / "summary.json").exists()


def ensure_teacher() -> None:
    if not (TEACHER / "summary.json").is_file():
        train({**QUICK, "mask_method": "dense", "sparsity": 0.0, "epochs": 2}, TEACHER)


def command_run(out: Path, only: list[str] | None) -> None:
    ensure_teacher()
    for case in [*CASES, *RESUMED]:
        if only and case not in only:
            continue
        folder = out / case
        if (folder / "summary.json").is_file():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if case in RESUMED:
            kept = out / f"{case}-interrupted"
            shutil.rmtree(kept, ignore_errors=True)
            train_interrupted(settings(case), kept, RESUMED[case][1])
            shutil.copytree(kept, folder)
            train(settings(case), folder, resume=True)
        else:
            train(settings(case), folder)
        print(f"trained {case}", flush=True)


def command_resume(interrupted: Path, out: Path) -> None:
    """Resume another version's interrupted folders with this version."""
    ensure_teacher()
    for case in RESUMED:
        source = interrupted / f"{case}-interrupted"
        if not source.is_dir():
            continue
        folder = out / case
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source, folder)
        train(settings(case), folder, resume=True)
        print(f"resumed {case}", flush=True)


def strip_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_timing(v) for k, v in value.items() if not is_timing(k)}
    if isinstance(value, list):
        return [strip_timing(v) for v in value]
    return value


def read_json_file(path: Path) -> Any:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def compare_folder(a: Path, b: Path) -> list[str]:
    import torch
    from safetensors.torch import load_file

    problems: list[str] = []
    names_a = {p.name for p in a.iterdir()}
    names_b = {p.name for p in b.iterdir()}
    if names_a != names_b:
        problems.append(f"files differ: {sorted(names_a ^ names_b)}")
    for name in sorted(names_a & names_b):
        pa, pb = a / name, b / name
        if name.endswith(".safetensors"):
            ta, tb = load_file(pa), load_file(pb)
            if set(ta) != set(tb):
                problems.append(f"{name}: tensor names differ")
                continue
            bad = [k for k in ta if not (ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]))]
            if bad:
                problems.append(f"{name}: {len(bad)} tensors differ, e.g. {bad[:3]}")
        elif name.endswith((".json", ".jsonl")):
            ja, jb = strip_timing(read_json_file(pa)), strip_timing(read_json_file(pb))
            if ja != jb:
                problems.append(f"{name}: {first_difference(ja, jb)}")
            elif name == "summary.json" and list(read_json_file(pa)) != list(read_json_file(pb)):
                problems.append("summary.json: same entries in another order")
        elif pa.read_bytes() != pb.read_bytes() and name != "train.lock":
            problems.append(f"{name}: bytes differ")
    return problems


def first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key, "<missing>") != b.get(key, "<missing>"):
                return first_difference(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{where}.{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return first_difference(x, y, f"{where}[{i}]")
    return f"{where or 'value'}: {str(a)[:120]} != {str(b)[:120]}"


def command_compare(a: Path, b: Path) -> int:
    cases = sorted(p.name for p in a.iterdir() if p.is_dir() and not p.name.endswith("-interrupted"))
    failures = 0
    for case in cases:
        if not (b / case / "summary.json").is_file() or not (a / case / "summary.json").is_file():
            print(f"{case}: MISSING (no finished run in both folders)")
            failures += 1
            continue
        problems = compare_folder(a / case, b / case)
        failures += bool(problems)
        print(f"{case}: " + ("identical" if not problems else "DIFFERENT: " + "; ".join(problems)))
    print(f"{len(cases) - failures}/{len(cases)} identical (timing entries left out: {sorted(TIMING)})")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--only", nargs="*")
    resume = sub.add_parser("resume")
    resume.add_argument("--interrupted", type=Path, required=True)
    resume.add_argument("--out", type=Path, required=True)
    compare = sub.add_parser("compare")
    compare.add_argument("a", type=Path)
    compare.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        command_run(args.out, args.only)
    elif args.command == "resume":
        command_resume(args.interrupted, args.out)
    else:
        return command_compare(args.a, args.b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
