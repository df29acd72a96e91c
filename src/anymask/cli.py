"""The `anymask` command: train, demo, prune, inspect, compare, sweep, report, export.

Every run setting of `anymask.config` is a flag (`sparsity` -> `--sparsity`, `mask_method` ->
`--mask-method`); a `--config` file gives values that flags then override. User errors print one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anymask.config import RunConfig, field_help, field_types, read_config_file
from anymask.errors import AnymaskError, one_line_warning

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def add(handler: Handler) -> Handler:
        COMMANDS[name] = handler
        return handler

    return add


# -- config flags ------------------------------------------------------------------------------------
def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def add_config_flags(
    parser: argparse.ArgumentParser,
    keys: Sequence[str] | None = None,
    hidden: Sequence[str] = (),
    title: str = "run settings (also valid as keys in --config files)",
) -> None:
    """One flag per setting; unset flags stay absent so the config file's values survive.

    `hidden` settings are accepted but left out of --help (prune takes training settings for lth only).
    """
    helps, types = field_help(), field_types()
    group = parser.add_argument_group(title)
    for key in [*(keys or list(types)), *hidden]:
        hint = types[key]
        default = getattr(RunConfig(), _section(key)).__dict__[key]
        text = helps.get(key, "")
        if "default" not in text and default is not None:  # some helps already say what unset means
            text += f" (default: {default})"
        text = text.replace("%", "%%")  # argparse formats help
        help_text = argparse.SUPPRESS if key in hidden else text
        if hint is bool:
            group.add_argument(
                flag_name(key),
                dest=key,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            metavar = "LIST" if typing.get_origin(hint) is list else key.upper()
            group.add_argument(
                flag_name(key), dest=key, default=argparse.SUPPRESS, metavar=metavar, help=help_text
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


def _section(key: str) -> str:
    from anymask.config import section_of

    return section_of(key)


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
    )
    return 0


@command("compare")
def compare_command(args: argparse.Namespace) -> int:
    from anymask.experiments.masking import compare_masks

    compare_masks(Path(args.a), Path(args.b))
    return 0


@command("sweep")
def sweep_command(args: argparse.Namespace) -> int:
    from anymask.experiments.sweep import run_sweep

    run_sweep(
        Path(args.sweep), out=Path(args.out) if args.out else None, workers=args.workers, dry_run=args.dry_run
    )
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
    from anymask.deploy import export_run

    result = export_run(Path(args.run_dir), Path(args.out))
    print(
        f"saved {result.path}: {result.file_bytes:,} bytes, {result.ratio:.1f}x smaller than the dense "
        f"weights ({result.dense_bytes:,} bytes); {result.kept:,} of {result.total:,} weights kept in "
        f"{result.compressed} compressed tensors"
    )
    return 0


# -- parser ------------------------------------------------------------------------------------------
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

    compare = sub.add_parser("compare", help="overlap of two masks (IoU, Hamming distance)")
    compare.add_argument("a", help="first mask file")
    compare.add_argument("b", help="second mask file")

    sweep = sub.add_parser("sweep", help="run a grid of runs (resumable, parallel)")
    sweep.add_argument("sweep", help="sweep file: [base] settings and a [grid] of lists")
    sweep.add_argument("--out", help="folder for the runs (default: the file's out or runs/<file name>)")
    sweep.add_argument("--workers", type=int, default=1, help="runs at a time (processes; default: 1)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")

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
        "export", help="write a finished run's weights compressed (kept values + positions)"
    )
    export.add_argument(
        "run_dir", help="a finished run folder (holds model.safetensors and mask.safetensors)"
    )
    export.add_argument("--out", required=True, help="the .safetensors file to write")
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
