"""Prune-and-tune ensembles (Whitaker & Whitley, AAAI 2022) from a finished run: `anymask ensemble PARENT`.

Each child is an ordinary run (`anymask.train.run_experiment`) in OUT/child-<i>: it starts from the
parent's weights (`init_weights`), is pruned with its own mask (an anti-random half of the parent, or any
mask method at `sparsity`, made on the parent's weights with the child's own seed) and is tuned for a few
epochs on a one-cycle schedule with any recipe. So a child resumes, exports and reports like any run, and
running the same command again finishes what is missing and measures the ensemble again.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anymask.bounds import bounded, bounds_of, check_setting
from anymask.config import RunConfig
from anymask.ensembles.evaluate import evaluate_ensemble, summary_line, training_cost, write_ensemble_json
from anymask.ensembles.members import SPLITS, MemberRun, evaluation_data, read_member
from anymask.ensembles.pruning import ANTI_RANDOM, anti_random_within
from anymask.ensembles.untuned import untuned_children
from anymask.errors import AnymaskError
from anymask.experiments.engines.base import engine_bounds
from anymask.io import check_output_folder
from anymask.masks import METHODS, Mask, check_sparsity, prunable_from_config

MASKS = "masks"
NOT_FOR_CHILDREN = frozenset({"dense", "file"})  # a child must be pruned, each its own way

# Run settings the ensemble decides for every child; the others come from the parent (or overrides).
CHILD_OWNED = (
    "init_weights",
    "epochs",
    "lr",
    "lr_schedule",
    "warmup_epochs",
    "onecycle_warmup",
    "onecycle_start",
    "mask_method",
    "mask_file",
    "sparsity",
    "mask_seed",
    "recipe",
    "seed",
)


# Run settings a child always takes from its parent: it starts from the parent's weights.
PARENT_ONLY = ("model", "width", "init", "data")


@dataclass
class EnsembleSettings:
    """How the children are made and tuned (`anymask ensemble --help`)."""

    children: int = bounded(6, low=1, high=1000)
    """Number of children (even for anti-random: pairs of exact complements)."""
    pruning: str = ANTI_RANDOM
    """'anti-random' (each pair splits what the parent keeps in half, exactly), or a mask method (random,
    magnitude, snip, synflow, erk, ...) at --sparsity, each child with its own seed."""
    sparsity: float | None = bounded(None, low=0, high=1, high_open=True)
    """Sparsity of each child under a mask method (anti-random children keep half of the parent's weights)."""
    tune_epochs: int = bounded(4, low=1, high=100_000)
    """Tuning epochs per child."""
    tune_lr: float = bounded(0.1, low=0, high=1000, low_open=True)
    """Peak learning rate of the one-cycle tuning schedule."""
    tune_warmup: float = bounded(0.1, low=0, high=1, low_open=True, high_open=True)
    """Fraction of the tuning spent rising to the peak (prune-and-tune's code: 0.1)."""
    tune_start: float = bounded(0.01, low=0, high=1, low_open=True)
    """First learning rate as a fraction of the peak (prune-and-tune's code: 1/100)."""
    recipe: str = "default"
    """Recipe the children are tuned with (default, tost, or a list of parts such as gsn,ls)."""
    include_parent: bool = False
    """Count the parent as one more member of the ensemble."""
    seed: int | None = bounded(None, low=0, high=2**32 - 1)
    """Child i trains with seed + i (default: the parent's seed); it also draws anti-random pairs."""

    def check(self, parent: MemberRun) -> None:
        """Every setting checked against the parent before anything is written."""
        import anymask.masks.catalog  # noqa: F401  (registers every mask method)

        for key, bounds in ENSEMBLE_BOUNDS.items():  # each number within its declared range
            check_setting(flag_name(key), getattr(self, key), bounds)
        if self.pruning == ANTI_RANDOM:
            if self.children % 2:
                raise AnymaskError(
                    f"anti-random children come in pairs of exact complements: --children must be even, "
                    f"got {self.children}"
                )
            if self.sparsity is not None:
                raise AnymaskError(
                    "--sparsity is for mask methods: anti-random children keep exactly half of what the "
                    "parent keeps; drop --sparsity or choose --pruning METHOD"
                )
            return
        METHODS.get(self.pruning)  # unknown names fail with the list of methods
        if self.pruning in NOT_FOR_CHILDREN:
            raise AnymaskError(
                f"--pruning {self.pruning} does not prune each child its own way; use anti-random or a "
                "mask method such as random, magnitude, snip or synflow"
            )
        if self.sparsity is None:
            raise AnymaskError(f"--pruning {self.pruning} needs --sparsity (the fraction each child prunes)")
        check_sparsity(self.sparsity)
        parent_sparsity = 1 - float(parent.summary.get("mask_density", 1.0))
        if self.sparsity < parent_sparsity:
            raise AnymaskError(
                f"--sparsity {self.sparsity:g} is below the parent's {parent_sparsity:.4g}: children "
                "prune the parent further; give a sparsity at or above it"
            )


ENSEMBLE_BOUNDS = bounds_of([EnsembleSettings])


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def ensemble_settings(values: dict[str, Any]) -> EnsembleSettings:
    """Settings from flat keys (a config file or flags; strings are converted to each field's type)."""
    types = typing.get_type_hints(EnsembleSettings)
    converted = {}
    for key, value in values.items():
        if key not in types:
            raise AnymaskError(f"unknown ensemble setting '{key}'; see `anymask ensemble --help`")
        converted[key] = _convert(key, types[key], value)
        check_setting(flag_name(key), converted[key], ENSEMBLE_BOUNDS.get(key))
    return EnsembleSettings(**converted)


def _convert(key: str, hint: Any, value: Any) -> Any:
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    kind, optional = kinds[0], type(None) in typing.get_args(hint)
    if optional and (value is None or (isinstance(value, str) and value.lower() in {"none", ""})):
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}:
                return str(value).lower() in {"true", "1", "yes", "on"}
            raise ValueError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]
        raise AnymaskError(f"ensemble setting '{key}' expects {expected}, got {value!r}") from None


def child_seed(settings: EnsembleSettings, parent: MemberRun, index: int) -> int:
    base = settings.seed if settings.seed is not None else int(parent.config.train.seed)
    return base + index


def child_config(
    parent: MemberRun,
    settings: EnsembleSettings,
    index: int,
    overrides: dict[str, Any],
    mask_file: Path | None = None,
    mask_sparsity: float | None = None,
) -> RunConfig:
    """Child `index`'s run config: the parent's settings, the overrides, then what the ensemble decides."""
    values: dict[str, Any] = {
        "dst": "none",  # a mask that moves would undo the children's pruning (an override may ask for it)
        **overrides,
        "init_weights": os.path.normpath(parent.weights),
        "epochs": settings.tune_epochs,
        "lr": settings.tune_lr,
        "lr_schedule": "onecycle",
        "warmup_epochs": 0.0,
        "onecycle_warmup": settings.tune_warmup,
        "onecycle_start": settings.tune_start,
        "recipe": settings.recipe,
        "seed": child_seed(settings, parent, index),
        "mask_seed": None,
    }
    if mask_file is not None:
        values.update(mask_method="file", mask_file=os.path.normpath(mask_file), sparsity=mask_sparsity)
    else:
        values.update(mask_method=settings.pruning, mask_file=None, sparsity=settings.sparsity)
    return parent.config.updated(values)


def check_overrides(overrides: dict[str, Any]) -> None:
    inherited = sorted(set(overrides) & set(PARENT_ONLY))
    if inherited:
        raise AnymaskError(f"'{inherited[0]}' cannot change: a child starts from the parent's weights")
    owned = sorted(set(overrides) & set(CHILD_OWNED))
    if owned:
        raise AnymaskError(
            f"'{owned[0]}' is set by the ensemble for every child; use the ensemble's own settings "
            "(--tune-epochs, --tune-lr, --pruning, --sparsity, --recipe, --seed)"
        )


def check_children(
    parent: MemberRun, settings: EnsembleSettings, overrides: dict[str, Any], data_dir: str | None
) -> None:
    """A child's config through the run pipeline's checks (recipe names, settings, data) before any mask
    is written; an anti-random child's mask file does not exist yet, so a dense stand-in is checked."""
    from anymask.train.run import validate

    if data_dir:
        overrides = {**overrides, "data_dir": data_dir}
    if settings.pruning == ANTI_RANDOM:
        settings = dataclasses.replace(settings, pruning="dense", sparsity=0.0)
    validate(child_config(parent, settings, 0, overrides))


def write_child_masks(
    parent: MemberRun, settings: EnsembleSettings, out: Path, data_dir: str | None, overrides: dict[str, Any]
) -> list[Path]:
    """Anti-random masks of the parent in OUT/masks/child-<i>.safetensors, splitting the layers the
    children's settings prune (`--no-prune-classifier` leaves the classifier whole); a mask already there
    must be the same (the same parent and seed), so a rerun never changes what a child trains."""
    data = evaluation_data([parent], data_dir)
    model = parent.model(data)
    prunable = set(prunable_from_config(model, parent.config.updated(overrides).mask))
    seed = child_seed(settings, parent, 0)
    masks = anti_random_within(parent.mask(model), prunable, settings.children, seed)
    paths = []
    for index, mask in enumerate(masks):
        path = out / MASKS / f"child-{index}.safetensors"
        if path.is_file():
            saved = Mask.load(path)
            if set(saved) != set(mask) or any(not saved[k].equal(mask[k]) for k in mask):
                raise AnymaskError(
                    f"{path} holds another mask (another parent or seed); choose another --out"
                )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            mask.save(path)
        paths.append(path)
    return paths


def child_folder(out: Path, index: int) -> Path:
    return out / f"child-{index}"


def plan_children(
    parent: MemberRun, settings: EnsembleSettings, out: Path, overrides: dict[str, Any], data_dir: str | None
) -> list[tuple[RunConfig, Path]]:
    """(config, folder) of every child; anti-random masks are written on the way."""
    if data_dir:
        overrides = {**overrides, "data_dir": data_dir}
    if settings.pruning != ANTI_RANDOM:
        return [
            (child_config(parent, settings, i, overrides), child_folder(out, i))
            for i in range(settings.children)
        ]
    paths = write_child_masks(parent, settings, out, data_dir, overrides)
    plans = []
    for index, path in enumerate(paths):
        sparsity = Mask.load(path).sparsity()
        plans.append(
            (child_config(parent, settings, index, overrides, path, sparsity), child_folder(out, index))
        )
    return plans


def train_children(plans: list[tuple[RunConfig, Path]], workers: int) -> None:
    """Each child trained (or resumed, or skipped when finished) as an ordinary run; with workers > 1 in
    the sweep's worker processes, N at a time."""
    from anymask.experiments.sweep import PlannedRun, train_planned
    from anymask.train.run import folder_state, run_experiment, validate

    for config, _ in plans:
        validate(config)  # every child's settings, before the first one trains
    todo = [(config, folder) for config, folder in plans if folder_state(folder) != "finished"]
    if not todo:
        return
    if workers > 1:
        runs = [PlannedRun(config, {"child": folder.name}, folder) for config, folder in todo]
        train_planned(runs, workers, f"children of {plans[0][1].parent}")
        return
    from anymask.data import load_dataset

    d = todo[0][0].data
    data = load_dataset(
        d.data, d.data_dir, download=d.download, val_split=d.val_split, train_subset=d.train_subset
    )
    for config, folder in todo:
        run_experiment(config, folder, resume=True, data=data)


def prune_and_tune(
    parent_folder: str | Path,
    out: str | Path,
    settings: EnsembleSettings | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    data_dir: str | None = None,
    workers: int = 1,
    device: str | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """Make, tune and measure a prune-and-tune ensemble of `parent_folder` in `out`; returns ensemble.json.

    `overrides` are run settings for the children on top of the parent's (batch_size, weight_decay,
    device, threads, ghost_epochs, ...); what the ensemble decides (`CHILD_OWNED`) cannot be overridden.
    `split` 'val' measures everything on the validation images the parent held out (--val-split), the
    images to choose tuning settings on; 'test' (default) on the test images.
    """
    settings = settings or EnsembleSettings()
    overrides = dict(overrides or {})
    out = Path(out)
    parent = read_member(parent_folder)
    settings.check(parent)
    check_overrides(overrides)
    checked = RunConfig().updated(overrides)  # unknown keys and bad values fail here, in one line
    overrides = {key: checked.get(key) for key in overrides}  # typed, as ensemble.json records them
    check_setting("--workers", workers, engine_bounds()["workers"])
    check_output_folder(out)
    check_split(parent, overrides, split)
    check_children(parent, settings, overrides, data_dir)
    plans = plan_children(parent, settings, out, overrides, data_dir)
    train_children(plans, workers)
    children = [read_member(folder) for _, folder in plans]
    members = [*children, *([parent] if settings.include_parent else [])]
    roles = [*(["child"] * len(children)), *(["parent"] if settings.include_parent else [])]
    eval_device = device or overrides.get("device", "auto")
    record: dict[str, Any] = {
        "kind": "prune-and-tune",
        "settings": {**dataclasses.asdict(settings), "overrides": overrides},
        "parent_is_member": settings.include_parent,
        **evaluate_ensemble(
            members, parent=parent, roles=roles, data_dir=data_dir, device=eval_device, split=split
        ),
    }
    for index, member in enumerate(record["members"][: len(children)]):
        member["child"] = index
        if settings.pruning == ANTI_RANDOM:
            member["pair"] = index // 2
    record["untuned"] = untuned_children(parent, children, data_dir=data_dir, device=eval_device, split=split)
    record["cost"] = training_cost(members, parent)
    write_ensemble_json(out, record)
    return record


def check_split(parent: MemberRun, overrides: dict[str, Any], split: str) -> None:
    """Before any child trains: the split exists, and 'val' has validation images that no child trains on."""
    if split not in SPLITS:
        raise AnymaskError(f"unknown split '{split}'; use 'test' or 'val'")
    held_out = parent.config.data.val_split
    if split == "val" and (held_out == 0 or overrides.get("val_split", held_out) != held_out):
        raise AnymaskError(
            "--split val measures on the validation images the parent held out: give a parent trained "
            "with --val-split above 0, and do not change the children's val_split"
        )


__all__ = ["EnsembleSettings", "ensemble_settings", "prune_and_tune", "summary_line"]
