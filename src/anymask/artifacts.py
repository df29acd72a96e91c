"""Every file anymask reads, decoded in one function per kind, every failure one line.

Users hand anymask run folders that were copied, cut off, edited and synced. Each kind of file has one
reader here (`read_summary`, `read_metrics`, `read_mask_tensors`...), and every way it can be damaged
(missing, empty, not text, truncated, the wrong JSON type, a missing entry, NaN, a tensor of the wrong
kind) becomes one `AnymaskError`: `cannot read <what> <path>: <what is wrong>; <what to do>`. No other
module parses these files: the typed readers (`config.load_run_config`, `Mask.load`,
`train.checkpoint.load_checkpoint`, `deploy.load_export`, `finished_run.read_finished_run`) build their
objects from what these functions return.

`ARTIFACTS` lists the kinds with the sentence a damaged one ends with; docs/security.md's table of
damaged inputs is checked against it by tests/test_fuzz_files.py.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anymask.errors import AnymaskError

RUN_FOLDER_FIX = (
    "the run folder is damaged (cut off, edited or partly copied): restore the file from a copy or train "
    "the run again"
)


@dataclass(frozen=True)
class Artifact:
    """A kind of file: what a message calls it and what the user can do when it is damaged."""

    what: str
    fix: str


ARTIFACTS: dict[str, Artifact] = {
    "config.json": Artifact("run config", RUN_FOLDER_FIX),
    "summary.json": Artifact("run summary", RUN_FOLDER_FIX),
    "metrics.jsonl": Artifact("run metrics", RUN_FOLDER_FIX),
    "model.safetensors": Artifact("model weights", RUN_FOLDER_FIX),
    "mask.safetensors": Artifact("run mask", RUN_FOLDER_FIX),
    "checkpoint.pt": Artifact("checkpoint", "delete it to restart this run from its first epoch"),
    "layer_densities.json": Artifact(
        "layer densities", "copy the run's files again with `anymask report --keep-runs`"
    ),
    "mask file": Artifact(
        "mask file",
        "give a file written by `anymask prune` or Mask.save ('<module>.weight_mask' tensors) or a "
        "checkpoint whose zeros define the mask",
    ),
    "config file": Artifact("config file", "fix it: a table of settings in TOML, YAML or JSON"),
    "sweep file": Artifact("sweep file", "fix it: [base] settings and a [grid] of lists, in TOML"),
    "export": Artifact("export file", "export it again with `anymask export RUN_DIR --out FILE`"),
    "teacher": Artifact("teacher", "give a finished run folder or the model.safetensors file of one"),
    "init_weights": Artifact(
        "init_weights file", "give the model.safetensors of a finished run of the same model"
    ),
    "ensemble.json": Artifact("ensemble record", "measure the ensemble again with `anymask ensemble`"),
    "tracking.json": Artifact(
        "tracker state", "delete it: each tracker then starts its curves as a new run on the next resume"
    ),
}


def damaged(path: str | Path, kind: str, problem: str) -> AnymaskError:
    """The one line for a file of `kind` that cannot be used: what, where, what is wrong, what to do."""
    artifact = ARTIFACTS[kind]
    return AnymaskError(f"cannot read {artifact.what} {path}: {problem}; {artifact.fix}")


def first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] if text else type(error).__name__


# -- bytes and text ------------------------------------------------------------------------------------
def check_file(path: Path, kind: str) -> None:
    """A missing file or a folder in its place, in words."""
    if path.is_dir():
        raise damaged(path, kind, "it is a folder, not a file")
    if not path.is_file():
        artifact = ARTIFACTS[kind]
        raise AnymaskError(f"{artifact.what} not found: {path}; {artifact.fix}")


def read_bytes(path: str | Path, kind: str) -> bytes:
    path = Path(path)
    check_file(path, kind)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise damaged(path, kind, f"it cannot be read ({error.strerror or first_line(error)})") from None
    if not data.strip():
        raise damaged(path, kind, "it is empty")
    return data


def read_text(path: str | Path, kind: str) -> str:
    try:
        return read_bytes(path, kind).decode("utf-8")
    except UnicodeDecodeError:
        raise damaged(path, kind, "it is not text (binary bytes where text should be)") from None


# -- JSON ----------------------------------------------------------------------------------------------
NUMBER = (int, float)
Schema = Mapping[str, type | tuple[type, ...]]
"""Entry -> the JSON type(s) it must have; numbers must also be finite."""


def _json(text: str, path: Path, kind: str, where: str = "") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise damaged(
            path, kind, f"{where}it is not valid JSON ({error.msg}); it was probably cut off while written"
        ) from None
    except RecursionError:
        raise damaged(path, kind, f"{where}it nests too deeply to be anymask's") from None


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def check_entries(data: Any, schema: Schema, path: Path, kind: str, where: str = "") -> dict[str, Any]:
    """`data` is a JSON object with every schema entry of the right type (numbers finite)."""
    if not isinstance(data, dict):
        raise damaged(path, kind, f"{where}it holds {_type_name(data)}, not a JSON object")
    for key, types in schema.items():
        if key not in data:
            raise damaged(path, kind, f"{where}it lacks the entry '{key}'")
        value = data[key]
        types = types if isinstance(types, tuple) else (types,)
        is_number = isinstance(value, NUMBER) and not isinstance(value, bool)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise damaged(path, kind, f"{where}its entry '{key}' is {_type_name(value)}")
        if is_number and isinstance(value, float) and not math.isfinite(value):
            raise damaged(path, kind, f"{where}its entry '{key}' is {value}, not a finite number")
    return data


def read_json_object(path: str | Path, kind: str, schema: Schema | None = None) -> dict[str, Any]:
    path = Path(path)
    return check_entries(_json(read_text(path, kind), path, kind), schema or {}, path, kind)


def read_jsonl_objects(path: str | Path, kind: str, schema: Schema | None = None) -> list[dict[str, Any]]:
    """One JSON object per line (blank lines skipped); at least one."""
    path = Path(path)
    records = []
    for number, line in enumerate(read_text(path, kind).splitlines(), 1):
        if line.strip():
            where = f"line {number}: "
            records.append(check_entries(_json(line, path, kind, where), schema or {}, path, kind, where))
    return records


# -- the run folder's JSON files -----------------------------------------------------------------------
SUMMARY_SCHEMA: Schema = {
    "config_hash": str,
    "model": str,
    "data": str,
    "mask_method": str,
    "sparsity": NUMBER,
    "recipe": str,
    "seed": int,
    "epochs": int,
    "final_test_acc": NUMBER,
    "best_test_acc": NUMBER,
    "nonzero_weights": int,
    "mask_total": int,
}
METRICS_SCHEMA: Schema = {"epoch": int, "test_acc": NUMBER}


def read_saved_config(path: str | Path) -> dict[str, Any]:
    """config.json: an object of sections (objects) and a few top-level values (start_step...)."""
    path = Path(path)
    data = read_json_object(path, "config.json")
    if not any(isinstance(v, dict) for v in data.values()):
        raise damaged(path, "config.json", "it holds no settings sections")
    start = data.get("start_step", 0)
    revision = data.get("model_revision", 1)
    for key, value in (("start_step", start), ("model_revision", revision)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise damaged(path, "config.json", f"its entry '{key}' is not a whole number")
    return data


def read_summary(path: str | Path) -> dict[str, Any]:
    """summary.json: the finished run's marker and its headline numbers."""
    return read_json_object(path, "summary.json", SUMMARY_SCHEMA)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl: one record per finished epoch, in order (a lottery ticket rewound to epoch 2 starts
    at epoch 3)."""
    path = Path(path)
    records = read_jsonl_objects(path, "metrics.jsonl", METRICS_SCHEMA)
    if not records:
        raise damaged(path, "metrics.jsonl", "it holds no epoch records")
    for before, record in itertools.pairwise(records):
        if record["epoch"] != before["epoch"] + 1:
            raise damaged(path, "metrics.jsonl", f"epoch {record['epoch']} follows epoch {before['epoch']}")
    return records


def read_layer_densities(path: str | Path) -> dict[str, float]:
    """layer_densities.json of a kept run: layer name -> density in [0, 1]."""
    path = Path(path)
    data = read_json_object(path, "layer_densities.json")
    schema = {name: NUMBER for name in data}
    check_entries(data, schema, path, "layer_densities.json")
    if not all(0 <= v <= 1 for v in data.values()):
        raise damaged(path, "layer_densities.json", "a density lies outside [0, 1]")
    return data


ENSEMBLE_SCHEMA: Schema = {"kind": str, "ensemble": dict, "members": list, "cost": dict, "evaluated_on": dict}
ENSEMBLE_NUMBERS: Schema = {
    "members": int,
    "accuracy": NUMBER,
    "nll": NUMBER,
    "ece": NUMBER,
    "mean_member_accuracy": NUMBER,
    "reliability": dict,
}
COST_SCHEMA: Schema = {"epochs": NUMBER, "epochs_ratio": NUMBER, "seconds_ratio": (*NUMBER, type(None))}
UNTUNED_NUMBERS: Schema = {"accuracy": NUMBER, "nll": NUMBER, "ece": NUMBER, "mean_member_accuracy": NUMBER}


def read_ensemble_record(path: str | Path) -> dict[str, Any]:
    """ensemble.json (`anymask ensemble`): the ensemble's and each member's measurements and their cost."""
    path = Path(path)
    record = read_json_object(path, "ensemble.json", ENSEMBLE_SCHEMA)
    check_entries(record["ensemble"], ENSEMBLE_NUMBERS, path, "ensemble.json", "its 'ensemble': ")
    check_entries(record["cost"], COST_SCHEMA, path, "ensemble.json", "its 'cost': ")
    check_entries(record["evaluated_on"], {"data": str}, path, "ensemble.json", "its 'evaluated_on': ")
    if record["kind"] == "prune-and-tune":
        check_entries(record, {"parent": dict, "settings": dict}, path, "ensemble.json")
    if "untuned" in record:  # the children before tuning (ensemble.json files of older versions lack it)
        check_untuned(record["untuned"], path)
    if not record["members"]:
        raise damaged(path, "ensemble.json", "it lists no members")
    for number, member in enumerate(record["members"], 1):
        check_entries(member, {}, path, "ensemble.json", f"member {number}: ")
    return record


def check_untuned(untuned: Any, path: Path) -> None:
    """ensemble.json's 'untuned': its ensemble numbers, and those of its 'recalibrated' entry."""
    where = "its 'untuned': "
    check_entries(untuned, {"ensemble": dict, "recalibrated": dict}, path, "ensemble.json", where)
    for entry, name in ((untuned, "'untuned'"), (untuned["recalibrated"], "'untuned' recalibrated")):
        where = f"its {name} ensemble: "
        check_entries(entry, {"ensemble": dict}, path, "ensemble.json", f"its {name}: ")
        check_entries(entry["ensemble"], UNTUNED_NUMBERS, path, "ensemble.json", where)


def read_tracking_state(path: str | Path) -> dict[str, dict[str, Any]]:
    """tracking.json of a run sent to trackers: tracker name -> what it has been sent (epochs, ids)."""
    path = Path(path)
    state = read_json_object(path, "tracking.json")
    for name, entry in state.items():
        check_entries(entry, {"epochs": int}, path, "tracking.json", f"tracker '{name}': ")
        if entry["epochs"] < 0:
            raise damaged(path, "tracking.json", f"tracker '{name}': its epochs count is negative")
    return state


# -- settings files (TOML, YAML, JSON) -----------------------------------------------------------------
def read_settings_file(path: str | Path, kind: str = "config file") -> Any:
    """The parsed table of a --config or sweep file (its keys are checked by the config module)."""
    path = Path(path)
    if not path.is_file():
        raise AnymaskError(f"{ARTIFACTS[kind].what} not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
        if path.suffix in {".yaml", ".yml"}:
            import yaml

            return yaml.safe_load(text) or {}
        if path.suffix == ".json":
            return json.loads(text)
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        return tomllib.loads(text)
    except Exception as error:  # each parser raises its own types; all mean "not this format"
        if isinstance(error, UnicodeDecodeError):
            error = ValueError("it is not text")
        raise AnymaskError(
            f"cannot parse {ARTIFACTS[kind].what} {path}: {first_line(error)}; {ARTIFACTS[kind].fix}"
        ) from None


# -- tensor files --------------------------------------------------------------------------------------
NESTED_KEYS = ("state_dict", "model_state_dict", "model")
"""Where training checkpoints commonly keep the model's tensors; the first one present is read."""


@dataclass
class TensorFile:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


def read_safetensors(path: str | Path, kind: str) -> TensorFile:
    """Every tensor of a .safetensors file, in the order its 'order' metadata gives (else by name)."""
    path = Path(path)
    check_file(path, kind)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            available = set(handle.keys())
            order = _order(metadata.get("order"))
            keys = [k for k in order if k in available] or sorted(available)
            keys += sorted(available - set(keys))
            tensors = {key: handle.get_tensor(key) for key in keys}
    except Exception as error:  # safetensors raises its own error types for every kind of damage
        raise damaged(
            path, kind, f"the file is corrupt: truncated or not a safetensors file ({first_line(error)})"
        ) from None
    return TensorFile(tensors, metadata)


def _order(text: str | None) -> list[str]:
    try:
        order = json.loads(text) if text else []
    except ValueError:
        return []
    return [k for k in order if isinstance(k, str)] if isinstance(order, list) else []


def read_torch_object(path: str | Path, kind: str) -> Any:
    """A torch.save file read with weights_only=True (tensors and plain values; nothing runs code)."""
    from anymask.safe_load import load_torch_file

    path = Path(path)
    check_file(path, kind)
    try:
        return load_torch_file(path, ARTIFACTS[kind].what)
    except AnymaskError as error:
        raise AnymaskError(f"{error}; {ARTIFACTS[kind].fix}") from None


def read_tensor_dict(path: str | Path, kind: str) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from .safetensors or a torch file (a checkpoint's nested state dict)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path, kind).tensors
    data = read_torch_object(path, kind)
    for key in NESTED_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data:
        raise damaged(path, kind, f"it holds {type(data).__name__}, not a dict of named tensors")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise damaged(path, kind, "it holds entries that are not named tensors")
    return data


def check_finite(tensors: Mapping[str, torch.Tensor], path: Path, kind: str) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise damaged(path, kind, f"tensor '{name}' holds NaN or infinite values")


def read_mask_tensors(path: str | Path, kind: str = "mask file") -> dict[str, torch.Tensor]:
    """A mask file's (or a checkpoint's) tensors; `Mask` checks the entries are 0/1."""
    path = Path(path)
    tensors = read_tensor_dict(path, kind)
    if not tensors:
        raise damaged(path, kind, "it holds no tensors")
    return tensors


def read_model_weights(path: str | Path, kind: str = "model.safetensors") -> TensorFile:
    """A trained model's state dict (model.safetensors): named tensors, every float finite."""
    path = Path(path)
    weights = read_safetensors(path, kind)
    if not weights.tensors:
        raise damaged(path, kind, "it holds no tensors")
    check_finite(weights.tensors, path, kind)
    return weights


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """checkpoint.pt of an unfinished run: epoch, trainer state and history."""
    path = Path(path)
    state = read_torch_object(path, "checkpoint.pt")
    if not isinstance(state, dict) or not {"epoch", "trainer", "history"} <= state.keys():
        raise damaged(path, "checkpoint.pt", "it is not an anymask checkpoint")
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise damaged(path, "checkpoint.pt", f"its epoch {epoch!r} is not a whole number of 1 or more")
    if not isinstance(state["trainer"], dict) or not isinstance(state["history"], list):
        raise damaged(path, "checkpoint.pt", "its trainer state or history has the wrong type")
    if not 1 <= len(state["history"]) <= epoch:
        raise damaged(
            path, "checkpoint.pt", f"it holds {len(state['history'])} epoch records for epoch {epoch}"
        )
    for number, record in enumerate(state["history"], 1):
        check_entries(record, METRICS_SCHEMA, path, "checkpoint.pt", f"history record {number}: ")
    return state


def read_export(path: str | Path) -> TensorFile:
    """An `anymask export` file (its format, checksum and layout are checked by deploy.load_export)."""
    return read_safetensors(path, "export")
