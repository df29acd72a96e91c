"""The `anymask` command: train, demo, prune, inspect, compare, sweep, report, export (ensemble and
ensemble-report live in `anymask.cli_ensemble`).

Every run setting of `anymask.config` is a flag (`sparsity` -> `--sparsity`, `mask_method` ->
`--mask-method`); a `--config` file gives values that flags then override. User errors print one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anymask.cli_ensemble import add_ensemble_parsers
from anymask.cli_flags import COMMANDS, add_config_flags, command, flag_name
from anymask.config import RunConfig, field_types, read_config_file
from anymask.errors import AnymaskError, one_line_warning


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `EngineSettings` field (`--engine`, `--workers`, `--address`...); unset flags stay
    None so the sweep file's [engine] table keeps its values."""
    from anymask.config import documented_fields
    from anymask.experiments.engines import ENGINES, EngineSettings

    group = parser.add_argument_group("engine: where the runs train (also an [engine] table of the file)")
    helps = documented_fields(EngineSettings)
    for f in dataclasses.fields(EngineSettings):
        text = helps.get(f.name, "") + (f" (default: {f.default})" if f.default is not None else "")
        choices = ENGINES.names() if f.name == "engine" else None
        group.add_argument(
            flag_name(f.name), dest=f.name, default=None, choices=choices, metavar=f.name.upper(), help=text
        )


def prune_settings() -> tuple[list[str], list[str]]:
    """(shown, hidden) settings of `anymask prune`: the model, data and mask sections and the seed and
    device are shown; the other training settings only matter to lth's training rounds."""
    from anymask.config import field_sections

    sections = field_sections()
    shown = [k for k, s in sections.items() if s in {"model", "data", "mask"}]
    shown += ["seed", "device", "threads", "progress"]
    hidden = [k for k, s in sections.items() if s == "train" and k not in shown]
    return shown, hidden


def resolve_config(args: argparse.Namespace, keys: Sequence[str] | None = None) -> RunConfig:
    """Defaults, then the --config file, then the flags given on the command line."""
    values: dict[str, Any] = read_config_file(args.config) if getattr(args, "config", None) else {}
    for key in keys or list(field_types()):
        if key in vars(args):
            values[key] = vars(args)[key]
    return RunConfig.from_flat(values)


# -- commands ----------------------------------------------------------------------------------------
@command("train")
def train_command(args: argparse.Namespace) -> int:
    from anymask.train import run_experiment

    config = resolve_config(args)
    if args.mask:
        config = config.updated({"mask_file": args.mask, "mask_method": "file"})
    out = Path(args.out) if args.out else Path("runs") / config.hash()
    result = run_experiment(config, out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun every rank trains; one line from rank 0 is enough
    s = result.summary
    state = "already finished" if result.skipped else "finished"
    print(
        f"{state}: test accuracy {s['final_test_acc']:.4f} (best {s['best_test_acc']:.4f}), "
        f"{s['nonzero_weights']:,} of {s['mask_total']:,} prunable weights nonzero; run folder: {out}"
    )
    return 0


@command("demo")
def demo_command(args: argparse.Namespace) -> int:
    from anymask.experiments.demo import run_demo

    run_demo(Path(args.out), workers=args.workers)
    return 0


@command("prune")
def prune_command(args: argparse.Namespace) -> int:
    from anymask.experiments.masking import prune_to_file

    shown, hidden = prune_settings()
    config = resolve_config(args, [*shown, *hidden])
    if args.method:
        config = config.updated({"mask_method": args.method})
    mask = prune_to_file(config, Path(args.out))
    print(
        f"saved {args.out}: {mask.kept():,} of {mask.total():,} weights kept "
        f"(sparsity {mask.sparsity():.4f}, {len(mask)} layers)"
    )
    return 0


@command("inspect")
def inspect_command(args: argparse.Namespace) -> int:
    from anymask.experiments.masking import inspect_mask

    inspect_mask(
        Path(args.mask),
        model_name=args.model,
        data=args.data,
        width=args.width,
        plot=Path(args.plot) if args.plot else None,
        seed=args.seed,
    )
    return 0


@command("compare")
def compare_command(args: argparse.Namespace) -> int:
    from anymask.experiments.masking import compare_masks

    compare_masks(Path(args.a), Path(args.b))
    return 0


@command("sweep")
def sweep_command(args: argparse.Namespace) -> int:
    from anymask.experiments.engines import EngineSettings
    from anymask.experiments.sweep import run_sweep

    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(EngineSettings)}
    run_sweep(Path(args.sweep), out=Path(args.out) if args.out else None, dry_run=args.dry_run, **settings)
    return 0


@command("report")
def report_command(args: argparse.Namespace) -> int:
    from anymask.experiments.report import write_report

    write_report(
        [Path(d) for d in args.dirs],
        Path(args.out),
        keep_runs=args.keep_runs,
        only=args.only or [],
        metric=args.metric,
    )
    return 0


@command("export")
def export_command(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        from anymask.deploy.onnx_export import export_run_onnx

        onnx = export_run_onnx(Path(args.run_dir), Path(args.out))
        print(
            f"saved {onnx.path}: {onnx.file_bytes:,} bytes of ONNX (the plain model, dense); onnxruntime's "
            f"logits equal PyTorch's within {onnx.max_difference:.1e}"
        )
        return 0
    from anymask.deploy import export_run

    result = export_run(Path(args.run_dir), Path(args.out))
    print(
        f"saved {result.path}: {result.file_bytes:,} bytes, {result.ratio:.1f}x smaller than the dense "
        f"weights ({result.dense_bytes:,} bytes); {result.kept:,} of {result.total:,} weights kept in "
        f"{result.compressed} compressed tensors"
    )
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the problem and where help is), not usage + error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"anymask: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="anymask", description="Train sparse neural networks well, whatever mask they come with."
    )
    parser.add_argument("--version", action="version", version=f"anymask {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train one model with a mask and a recipe")
    train.add_argument("--config", help="TOML or YAML file of settings (flags override it)")
    train.add_argument("--out", help="run folder (default: runs/<config hash>)")
    train.add_argument("--mask", help="mask file to train (same as --mask-file)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    add_config_flags(train)

    demo = sub.add_parser("demo", help="a small sweep on digits (no download) and its report")
    demo.add_argument(
        "--out", default="runs/demo", help="folder for the runs and the report (default: runs/demo)"
    )
    demo.add_argument("--workers", type=int, default=1, help="runs at a time (default: 1)")

    prune = sub.add_parser("prune", help="compute a mask and save it")
    prune.add_argument("--config", help="TOML or YAML file of settings")
    prune.add_argument("--method", help="mask method (same as --mask-method)")
    prune.add_argument("--out", required=True, help="mask file to write (.safetensors or .pt)")
    shown, hidden = prune_settings()
    add_config_flags(
        prune,
        shown,
        hidden,
        "mask settings (also valid as keys in --config files; lth also takes the training settings of "
        "`anymask train --help`, for its rounds)",
    )

    inspect = sub.add_parser("inspect", help="per-layer table and density plot of a mask")
    inspect.add_argument("mask", help="mask file")
    inspect.add_argument("--model", help="model the mask is for (adds spectral gaps with weights)")
    inspect.add_argument(
        "--data",
        help="dataset that sets the model's input shape and classes (default: the first the mask fits, "
        "the model's usual one first: digits for cnn, cifar10 for the others)",
    )
    inspect.add_argument("--width", type=float, default=1.0, help="model width multiplier (default: 1.0)")
    inspect.add_argument("--plot", help="PNG path for the density bar plot (default: beside the mask)")
    inspect.add_argument(
        "--seed",
        type=int,
        default=0,
        help="with --model: its initial weights as `anymask train --seed` draws them, for the weighted gaps "
        "and the signs of the kept weights (default: 0)",
    )

    compare = sub.add_parser("compare", help="overlap of two masks (IoU, Hamming distance)")
    compare.add_argument("a", help="first mask file")
    compare.add_argument("b", help="second mask file")

    sweep = sub.add_parser("sweep", help="run a grid of runs (resumable, parallel)")
    sweep.add_argument("sweep", help="sweep file: [base] settings and a [grid] of lists")
    sweep.add_argument("--out", help="folder for the runs (default: the file's out or runs/<file name>)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    add_engine_flags(sweep)

    report = sub.add_parser("report", help="tables and plots from run folders")
    report.add_argument("dirs", nargs="+", help="run or sweep folders")
    report.add_argument(
        "--out", default="report", help="folder for report.md, results.csv and the PNGs (default: report)"
    )
    report.add_argument(
        "--only",
        action="append",
        metavar="KEY=VALUE",
        help="keep runs with this setting (repeat: --only recipe=default --only recipe=tost); "
        "runs that never read KEY are kept",
    )
    report.add_argument(
        "--metric",
        choices=["test", "val", "train"],
        default="test",
        help="whose accuracy the tables hold: test; val (runs with --val-split; for choosing settings, "
        "no test accuracy is shown); or train (final training accuracy: does a recipe fit better?) "
        "(default: test)",
    )
    report.add_argument(
        "--keep-runs",
        action="store_true",
        help="also copy each run's config, metrics and summary into OUT/runs (commit those, not run folders)",
    )

    export = sub.add_parser(
        "export", help="write a finished run's weights compressed (kept values + positions), or as ONNX"
    )
    export.add_argument(
        "run_dir", help="a finished run folder (holds model.safetensors and mask.safetensors)"
    )
    export.add_argument(
        "--format",
        choices=("safetensors", "onnx"),
        default="safetensors",
        help="safetensors: kept values + positions, for anymask (default); onnx: the plain trained model "
        "for onnxruntime (needs `pip install 'anymask[onnx]'`)",
    )
    export.add_argument("--out", required=True, help="the file to write (.safetensors or .onnx)")
    add_ensemble_parsers(sub)
    return parser


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("anymask")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = one_line_warning  # type: ignore[assignment]
    try:
        return COMMANDS[args.command](args)
    except AnymaskError as error:
        print(f"anymask: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = "with --resume" if args.command == "train" else "again"
        print(f"anymask: interrupted; run the same command {again} to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except OSError as error:  # a place anymask cannot read or write that no earlier check foresaw
        where = f": {error.filename}" if error.filename else ""
        print(f"anymask: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
