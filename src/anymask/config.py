"""Typed run configuration: sections as dataclasses, a config file plus command-line overrides.

Every field name is unique across sections, so a setting has one flat key (`sparsity`, `lr`) that works
the same in a config file (flat or under `[mask]`, `[train]`...), on the command line (`--sparsity`) and
in a sweep grid. The resolved config is saved with every run and its hash names sweep folders.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anymask.bounds import Bounds, bounded, bounds_of, check_setting, check_settings
from anymask.dst.config import DstConfig
from anymask.errors import AnymaskError
from anymask.masks.config import MaskConfig
from anymask.recipe.config import RecipeConfig
from anymask.tracking.config import TrackingConfig


@dataclass
class ModelConfig:
    model: str = "cnn"
    """Architecture from the model registry (resnet20, resnet18, vgg16, mobilenetv2, cnn, ...), or your own
    factory as package.module:function (docs/own-model.md)."""
    width: float = bounded(1.0, low=0, high=64, low_open=True)
    """Channel width multiplier."""
    init: str = "default"
    """Weight initialisation: 'default' (the model's own: kaiming_fan_in for vgg16, as Synaptic-Flow;
    kaiming_fan_out for the others), 'kaiming_fan_out' or 'kaiming_fan_in'."""
    init_weights: str | None = None
    """Start from these weights instead of an initialisation: a model.safetensors (a finished run's) that
    loads into the model exactly; the mask is then made on them (prune-and-tune children, fine-tuning)."""


@dataclass
class DataConfig:
    data: str = "digits"
    """Dataset: digits, cifar10, cifar100, tinyimagenet (held in memory), imagefolder (your images under
    data_dir/train/<class>/, streamed from disk), or your own factory as package.module:function
    (docs/own-loop.md)."""
    data_dir: str = "data"
    """Folder that contains the dataset's official folder (e.g. cifar-10-batches-py), or the image folder."""
    download: bool = False
    """Fetch the official archive when the dataset folder is missing."""
    val_split: int = bounded(0, low=0, high=100_000_000)
    """Hold out this many training images for validation (the paper holds out 5,000)."""
    train_subset: int | None = bounded(None, low=1, high=100_000_000)
    """Train on the first N training images only (quick runs)."""
    augment: bool = True
    """Random crop with padding and horizontal flip (as the dataset defines them)."""
    image_size: int | None = bounded(None, low=1, high=100_000)
    """imagefolder: resize every image to NxN (shorter side, then a centre crop); default: the images'
    own size, which must then be the same for all."""
    data_mean: list[float] | None = bounded(None, low=0, high=1)
    """imagefolder: per-channel mean of the pixels in [0, 1] (default: computed from 1,000 images)."""
    data_std: list[float] | None = bounded(None, low=0, high=1, low_open=True)
    """imagefolder: per-channel standard deviation of the pixels in [0, 1] (default: computed)."""
    data_workers: int = bounded(2, low=0, high=1024)
    """imagefolder and user datasets: DataLoader worker processes decoding images (0: in the main one)."""


@dataclass
class TrainConfig:
    epochs: int = bounded(10, low=1, high=100_000)
    """Training epochs."""
    batch_size: int = bounded(128, low=1, high=1_000_000)
    """Global batch size (split across processes under torchrun)."""
    lr: float = bounded(0.1, low=0, high=1000, low_open=True)
    """Peak learning rate."""
    momentum: float = bounded(0.9, low=0, high=1, high_open=True)
    """SGD momentum."""
    nesterov: bool = False
    """Nesterov momentum."""
    weight_decay: float = bounded(5e-4, low=0, high=10)
    """L2 weight decay (pruned weights are 0 and stay 0)."""
    masked_weight_decay: float | None = bounded(None, low=0, high=10)
    """Weight decay of the weights the mask covers (the prunable Conv2d/Linear weights), when it should
    differ from `weight_decay` (which then applies to the rest: BatchNorm, biases); unset: the same."""
    lr_schedule: str = "cosine"
    """'cosine', 'step', 'onecycle' or 'constant'."""
    lr_milestones: list[float] = bounded(low=0, high=1, default_factory=lambda: [0.5, 0.75])
    """Step schedule: fractions of the run at which the learning rate is multiplied by lr_gamma."""
    lr_gamma: float = bounded(0.1, low=0, high=1000, low_open=True)
    """Step schedule: multiplier at each milestone."""
    warmup_epochs: float = bounded(0.0, low=0, high=100_000)
    """Linear learning-rate warm-up (cosine and step schedules)."""
    onecycle_warmup: float = bounded(0.3, low=0, high=1, low_open=True, high_open=True)
    """One-cycle schedule: fraction of the run over which the learning rate rises to its peak (lr)."""
    onecycle_start: float = bounded(0.04, low=0, high=1, low_open=True)
    """One-cycle schedule: the first learning rate, as a fraction of the peak (OneCycleLR's 1/div_factor)."""
    seed: int = bounded(0, low=0, high=2**32 - 1)
    """Seed for weights, data order and augmentation; the same seed reproduces a CPU run."""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1', ..."""
    channels_last: bool = True
    """channels_last memory format for conv nets (faster on CPU and GPU)."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    compile: bool = False
    """torch.compile the model."""
    eval_batch_size: int = bounded(500, low=1, high=1_000_000)
    """Batch size for evaluation."""
    bn_recalibration_batches: int = bounded(0, low=0, high=100_000)
    """While ghost parts are in the model, evaluate with BatchNorm statistics recomputed from this many
    training batches (training itself is unchanged); 0 evaluates with the running statistics."""
    threads: int | None = bounded(None, low=1, high=4096)
    """CPU threads for this run (default: PyTorch's choice)."""
    progress: bool = True
    """Show progress bars."""


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "mask": MaskConfig,
    "recipe": RecipeConfig,
    "train": TrainConfig,
    "dst": DstConfig,
    "tracking": TrackingConfig,
}

# Settings that change how a run is displayed or scheduled, never its numbers: left out of the hash.
NOT_HASHED = frozenset({"progress", "threads", "data_workers"})

# Settings added after runs were already made, each with the value that trains as anymask did before the
# setting existed. At that value a setting is left out of the hash, so adding it renames no run folder
# and retrains nothing. A new setting belongs here (tests/test_config_hash.py fails until it is).
ADDED_SETTINGS: dict[str, Any] = {
    "bn_recalibration_batches": 0,
    "dst": "none",
    "dst_interval": 100,
    "dst_fraction": 0.3,
    "dst_end": 0.75,
    "prune_bn_mode": "train",
    "init": "default",
    "masked_weight_decay": None,
    "gw_lambda": 0.05,
    "gw_form": "fade",
    "fold_at": "ghost",
    "fold_branches": "kxk,1x1",
    "teacher": None,
    "kd_temperature": 4.0,
    "kd_weight": 0.9,
    "init_weights": None,
    "onecycle_warmup": 0.3,
    "onecycle_start": 0.04,
    # trackers (issue 23): never hashed anyway (TrackingConfig.inert_settings), listed for the rule
    "log": [],
    "log_project": "anymask",
    "mlflow_uri": None,
    "image_size": None,
    "data_mean": None,
    "data_std": None,
}

# Architectures changed after runs were made, with their current revision. A run of such a model hashes
# the revision too, so a folder trained on the old architecture is never resumed or reported as the new
# one (vgg16 2: Synaptic-Flow's VGG16-bn, four max-pools and its init, since issue 11).
MODEL_REVISIONS: dict[str, int] = {"vgg16": 2}


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dst: DstConfig = field(default_factory=DstConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_flat(self) -> dict[str, Any]:
        return {key: getattr(getattr(self, section), key) for key, section in field_sections().items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The settings by section, automatic values resolved (what a run folder saves)."""
        resolved = self.resolved()
        return {name: dataclasses.asdict(getattr(resolved, name)) for name in SECTIONS}

    def resolved(self) -> RunConfig:
        """A copy with automatic values made concrete (`prune_bn_mode = 'auto'`: the method's reference
        mode); `to_flat` keeps them, so a config that later changes method resolves again."""
        return dataclasses.replace(self, mask=self.mask.resolved())

    def get(self, key: str) -> Any:
        return getattr(getattr(self, section_of(key)), key)

    def updated(self, overrides: dict[str, Any]) -> RunConfig:
        """A copy with flat-key overrides applied (values coerced and checked)."""
        new = RunConfig.from_flat(self.to_flat())
        for key, value in overrides.items():
            setattr(getattr(new, section_of(key)), key, coerce(key, value))
        return new

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> RunConfig:
        config = cls()
        for key, value in values.items():
            setattr(getattr(config, section_of(key)), key, coerce(key, value))
        return config

    def read_settings(self) -> dict[str, Any]:
        """The flat settings that can change this run's numbers: display settings and the settings of
        recipe parts, mask methods or dynamic sparse training not in use are left out."""
        sections = (self.mask, self.recipe, self.dst, self.tracking)
        inert = NOT_HASHED.union(*(section.inert_settings() for section in sections))
        return {k: v for k, v in self.resolved().to_flat().items() if k not in inert}

    def hashed_settings(self) -> dict[str, Any]:
        """`read_settings()` less the added settings at the value that trains as before they existed,
        plus the model's architecture revision where it has one."""
        settings = {
            k: v
            for k, v in self.read_settings().items()
            if not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])
        }
        if self.model.model in MODEL_REVISIONS:
            settings["model_revision"] = MODEL_REVISIONS[self.model.model]
        return settings

    def hash(self) -> str:
        """Short stable hash of `hashed_settings()`: two configs that train the same share a folder."""
        return hashlib.sha256(json.dumps(self.hashed_settings(), sort_keys=True).encode()).hexdigest()[:12]


def field_sections() -> dict[str, str]:
    """Flat key -> section name, for every setting."""
    return {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


@functools.cache
def field_types() -> dict[str, Any]:
    return {name: hint for cls in SECTIONS.values() for name, hint in typing.get_type_hints(cls).items()}


@functools.cache  # reads the source of every section: once per process, not once per parser
def field_help() -> dict[str, str]:
    """Flat key -> the docstring written under the field (used as --help text)."""
    return {key: text for cls in SECTIONS.values() for key, text in documented_fields(cls).items()}


def documented_fields(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it, for one dataclass."""
    import ast
    import inspect

    helps: dict[str, str] = {}
    body = ast.parse(inspect.getsource(cls)).body[0].body  # type: ignore[attr-defined]
    for stmt, nxt in itertools.pairwise(body):
        documented = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
        if isinstance(stmt, ast.AnnAssign) and documented and isinstance(nxt.value.value, str):
            helps[stmt.target.id] = nxt.value.value  # type: ignore[union-attr]
    return helps


def section_of(key: str) -> str:
    sections = field_sections()
    if key not in sections:
        close = difflib.get_close_matches(key, list(sections), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "; see `anymask train --help` for settings"
        raise AnymaskError(f"unknown config key '{key}'{hint}")
    return sections[key]


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce_scalar(key: str, kind: type, value: Any) -> Any:
    expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool and text in _TRUE | _FALSE:
            return text in _TRUE
        try:
            return kind(text) if kind is not bool else _fail(key, expected, value)
        except ValueError:
            _fail(key, expected, value)
    if kind is bool:
        return value if isinstance(value, bool) else _fail(key, expected, value)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    return _fail(key, expected, value)


def _fail(key: str, expected: str, value: Any) -> Any:
    raise AnymaskError(f"config key '{key}' expects {expected}, got {value!r}")


def coerce(key: str, value: Any) -> Any:
    """Convert a value from a file or the command line to the type the field declares, within the range
    the field declares (`anymask.bounds`)."""
    kind, optional = _unwrap_optional(field_types()[key])
    if value is None or (optional and isinstance(value, str) and value.lower() in {"none", "null", ""}):
        if optional:
            return None
        _fail(key, "a value", value)
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        # "a, b" on the command line; an empty string is the empty list (`--log ""` turns trackers off)
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            _fail(key, "a list", value)
        result: Any = [_coerce_scalar(key, item, v) for v in items]
    else:
        result = _coerce_scalar(key, kind, value)
    check_setting(key, result, setting_bounds().get(key))
    return result


@functools.cache
def setting_bounds() -> dict[str, Bounds]:
    """Flat key -> the range its field declares, for every numeric setting."""
    return bounds_of(SECTIONS.values())


def check_bounds(config: RunConfig) -> None:
    """Every numeric setting of `config` within its declared range: one line for the first that is not."""
    check_settings(config.to_flat(), setting_bounds())


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Flat settings from a TOML or YAML file; sections ([mask], [train]...) are optional."""
    from anymask.artifacts import read_settings_file

    return flat_settings(read_settings_file(path, "config file"), f"config file {path}")


def flat_settings(table: Any, where: str) -> dict[str, Any]:
    """Flat keys from a table of settings; section sub-tables ([train], [base.train]) are optional."""
    if not isinstance(table, dict):
        raise AnymaskError(f"{where} must be a table of settings")
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if (right := section_of(sub_key)) != key:
                    raise AnymaskError(f"config key '{sub_key}' belongs in [{right}], not [{key}]")
                flat[sub_key] = sub_value
        else:
            section_of(key)
            flat[key] = value
    return flat


def save_config(config: RunConfig, path: Path) -> None:
    """The resolved config as JSON (sections), written atomically; a model whose architecture changed
    since runs were made also gets its revision (`MODEL_REVISIONS`), so the folder says which it trained."""
    from anymask.io import atomic_write_text

    data: dict[str, Any] = config.to_dict()
    if config.model.model in MODEL_REVISIONS:
        data["model_revision"] = MODEL_REVISIONS[config.model.model]
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def load_run_config(path: Path) -> RunConfig:
    """A saved config; a setting it predates takes the value it trained with (`ADDED_SETTINGS`), which
    is not always today's default (prune_bn_mode: saved runs scored in 'train', the default is 'eval').
    Top-level entries that are not sections (`start_step`, `model_revision`) are not settings."""
    from anymask.artifacts import damaged, read_saved_config

    data = read_saved_config(path)
    flat = {k: v for section in data.values() if isinstance(section, dict) for k, v in section.items()}
    try:
        return RunConfig.from_flat({**ADDED_SETTINGS, **flat})
    except AnymaskError as error:  # an edited or foreign file: name it, not just the setting
        raise damaged(path, "config.json", str(error)) from None


def saved_model_revision(path: Path) -> int:
    """The architecture revision a saved run trained (1: before its model was first changed)."""
    from anymask.artifacts import read_saved_config

    return int(read_saved_config(path).get("model_revision", 1))
