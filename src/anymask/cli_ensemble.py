"""`anymask ensemble` and `anymask ensemble-report`: prune-and-tune ensembles from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anymask.cli_flags import add_config_flags, command
from anymask.config import field_types
from anymask.errors import AnymaskError


@command("ensemble")
def ensemble_command(args: argparse.Namespace) -> int:
    from anymask.artifacts import damaged, read_settings_file
    from anymask.config import flat_settings
    from anymask.ensembles.evaluate import evaluate_runs, summary_line
    from anymask.ensembles.prune_and_tune import ensemble_settings, prune_and_tune

    out = Path(args.out)
    if args.members:
        if args.parent:
            raise AnymaskError("give a parent run or --members RUN RUN ..., not both")
        record = evaluate_runs(
            [Path(m) for m in args.members],
            out,
            data_dir=getattr(args, "data_dir", None),
            device=getattr(args, "device", "auto"),
            split=args.split,
        )
        print(f"{summary_line(record)}; written to {out / 'ensemble.json'}")
        return 0
    if not args.parent:
        raise AnymaskError("give the parent run folder (anymask ensemble PARENT_RUN --out OUT), or --members")
    values: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    if args.config:  # ensemble settings, and run settings for the children (flat or in sections)
        path = Path(args.config)
        table = read_settings_file(path, "config file")
        if not isinstance(table, dict):
            raise damaged(path, "config file", "it is not a table of settings")
        values = {k: v for k, v in table.items() if k in ENSEMBLE_FLAGS}
        rest = {k: v for k, v in table.items() if k not in ENSEMBLE_FLAGS}
        overrides = flat_settings(rest, f"config file {path}")
    values.update({k: vars(args)[k] for k in ENSEMBLE_FLAGS if k in vars(args)})
    overrides.update({k: vars(args)[k] for k in field_types() if k not in ENSEMBLE_FLAGS and k in vars(args)})
    workers = values.pop("workers", 1)
    if not str(workers).isdigit():
        raise AnymaskError(f"--workers expects a whole number, got {workers!r}")
    data_dir = overrides.pop("data_dir", None)
    record = prune_and_tune(
        Path(args.parent),
        out,
        ensemble_settings(values),
        overrides=overrides,
        data_dir=data_dir,
        workers=int(workers),
        split=args.split,
    )
    print(f"{summary_line(record)}; written to {out / 'ensemble.json'}")
    return 0


@command("ensemble-report")
def ensemble_report_command(args: argparse.Namespace) -> int:
    from anymask.ensembles.report import write_ensemble_report

    path = write_ensemble_report([Path(d) for d in args.dirs], Path(args.out))
    print(f"wrote {path}")
    return 0


# Flags of `anymask ensemble` that are the ensemble's own settings (EnsembleSettings and workers).
ENSEMBLE_FLAGS = (
    "children",
    "pruning",
    "sparsity",
    "tune_epochs",
    "tune_lr",
    "tune_warmup",
    "tune_start",
    "recipe",
    "include_parent",
    "seed",
    "workers",
)


def add_ensemble_parsers(sub: Any) -> None:
    from anymask.ensembles.prune_and_tune import CHILD_OWNED, PARENT_ONLY

    ensemble = sub.add_parser(
        "ensemble",
        help="prune-and-tune children of a finished run, or measure a set of runs (--members)",
        description="Children of PARENT_RUN, each pruned its own way and tuned briefly as an ordinary run "
        "in OUT/child-<i>, measured with the parent in OUT/ensemble.json (accuracy, NLL, ECE, cost). "
        "With --members, a given set of finished runs (a deep ensemble) is measured instead.",
    )
    ensemble.add_argument("parent", nargs="?", help="finished run folder the children are made from")
    ensemble.add_argument(
        "--members", nargs="+", metavar="RUN", help="measure these finished runs as one ensemble"
    )
    ensemble.add_argument("--out", required=True, help="folder for the children and ensemble.json")
    ensemble.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="images the ensemble, its members and parent are measured on: test, or val (the validation "
        "images held out by --val-split: choose tuning settings there, never on test) (default: test)",
    )
    ensemble.add_argument(
        "--config", help="TOML or YAML file of ensemble settings and children's run settings"
    )
    own = ensemble.add_argument_group("ensemble settings (also valid as keys in --config files)")
    suppress = argparse.SUPPRESS
    own.add_argument(
        "--children", default=suppress, help="number of children (default: 6; even for anti-random)"
    )
    own.add_argument(
        "--pruning",
        default=suppress,
        help="'anti-random' (pairs of exact complements, each keeping half of what the parent keeps) or a "
        "mask method (random, magnitude, snip, synflow, erk...) at --sparsity, each child its own seed "
        "(default: anti-random)",
    )
    own.add_argument("--sparsity", default=suppress, help="each child's sparsity under a mask method")
    own.add_argument(
        "--tune-epochs", dest="tune_epochs", default=suppress, help="tuning epochs per child (default: 4)"
    )
    own.add_argument(
        "--tune-lr",
        dest="tune_lr",
        default=suppress,
        help="peak learning rate of the one-cycle tuning (default: 0.1)",
    )
    own.add_argument(
        "--tune-warmup",
        dest="tune_warmup",
        default=suppress,
        help="fraction of the tuning spent rising to the peak (default: 0.1)",
    )
    own.add_argument(
        "--tune-start",
        dest="tune_start",
        default=suppress,
        help="first learning rate as a fraction of the peak (default: 0.01)",
    )
    own.add_argument(
        "--recipe", default=suppress, help="recipe the children are tuned with (default: default)"
    )
    own.add_argument(
        "--include-parent",
        dest="include_parent",
        action=argparse.BooleanOptionalAction,
        default=suppress,
        help="count the parent as a member too (default: off)",
    )
    own.add_argument(
        "--seed", default=suppress, help="child i trains with seed + i (default: the parent's seed)"
    )
    own.add_argument("--workers", default=suppress, help="children trained at a time (processes; default: 1)")
    keys = [k for k in field_types() if k not in CHILD_OWNED and k not in PARENT_ONLY]
    add_config_flags(ensemble, keys, title="children's run settings (override the parent's)")

    report = sub.add_parser(
        "ensemble-report",
        help="ensembles against their parents and deep ensembles: tables and reliability plots",
    )
    report.add_argument("dirs", nargs="+", help="folders holding ensemble.json (anymask ensemble's --out)")
    report.add_argument(
        "--out",
        default="ensemble_report",
        help="folder for ensemble_report.md and PNGs (default: ensemble_report)",
    )


# -- parser ------------------------------------------------------------------------------------------
