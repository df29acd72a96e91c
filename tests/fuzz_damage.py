"""The damage the fuzz tests do to files, and the table of which command reads which file and what it
does with a damaged one (`BEHAVIOUR`, the "Damaged input" table of docs/security.md).

Each damage is a name (for the docs table) and a strategy from the bytes of a pristine file to damaged
bytes.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from anymask.artifacts import ENSEMBLE_SCHEMA, METRICS_SCHEMA, SUMMARY_SCHEMA
from anymask.config import SECTIONS, setting_bounds
from fuzz_support import ERROR, RAISES, SKIP, typing_origin

# -- damage: each a name (for the docs table) and a strategy of (bytes of a file) -> damaged bytes --------
Damage = Callable[[bytes], st.SearchStrategy[bytes]]


def truncated(data: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, max(len(data.rstrip()) - 1, 0)).map(lambda k: data[:k])


def random_bytes(_: bytes) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=64)


def flipped_byte(data: bytes) -> st.SearchStrategy[bytes]:
    def flip(at: int, bit: int) -> bytes:
        out = bytearray(data)
        out[at] ^= 1 << bit
        return bytes(out)

    return st.builds(flip, st.integers(0, len(data) - 1), st.integers(0, 7))


def not_an_object(_: bytes) -> st.SearchStrategy[bytes]:
    values = st.sampled_from([[], [1, 2], "text", 3, 0.5, None, True])
    return values.map(lambda v: json.dumps(v).encode())


BAD_VALUES = [None, "x", [], {}, True, math.nan, math.inf, -math.inf, 1.5]


def _edit_entry(data: bytes, keys: list[str], value: Any, delete: bool) -> bytes:
    text = data.decode()
    lines = text.splitlines() if text.startswith("{") and "\n{" in text else [text]  # JSON lines or JSON
    records = [json.loads(line) for line in lines if line.strip()]
    if delete:
        del records[0][keys[0]]
    else:
        records[0][keys[0]] = value
    return "\n".join(json.dumps(r) for r in records).encode()


def entry_damaged(schema: dict[str, Any]) -> Damage:
    """A required entry deleted, or given a value of the wrong type (None, text, NaN...)."""

    def damage(data: bytes) -> st.SearchStrategy[bytes]:
        keys = sorted(schema)
        bad = [v for v in BAD_VALUES if v != 1.5]
        deleted = st.sampled_from(keys).map(lambda k: _edit_entry(data, [k], None, True))

        def wrong(key: str, value: Any) -> bytes:
            if value == 1.5 and schema[key] is not int:
                value = "1.5"
            return _edit_entry(data, [key], value, False)

        return deleted | st.builds(wrong, st.sampled_from(keys), st.sampled_from([*bad, 1.5]))

    return damage


def numeric_keys() -> list[str]:
    return sorted(k for k in setting_bounds() if typing_origin(k) is not list)


def setting_damaged(data: bytes) -> st.SearchStrategy[bytes]:
    """A numeric setting of config.json set to a wrong type, NaN or far out of its range."""

    def edit(key: str, value: Any) -> bytes:
        config = json.loads(data)
        section = next(name for name, cls in SECTIONS.items() if key in cls.__dataclass_fields__)
        config[section][key] = value
        return json.dumps(config).encode()

    values = st.sampled_from(["x", [], {}, True, math.nan, math.inf, -1e30, 1e30])
    return st.builds(edit, st.sampled_from(numeric_keys()), values)


def _tensors_edit(data: bytes, edit: Callable[[dict[str, torch.Tensor]], None]) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.safetensors"
        path.write_bytes(data)
        tensors = load_file(str(path))
        edit(tensors)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        return path.read_bytes()


def tensor_damaged(kinds: tuple[str, ...]) -> Damage:
    """One tensor of a safetensors file changed: shape, dtype, NaN values, values other than 0/1, an
    extra tensor, or no mask entries left."""

    def damage(data: bytes) -> st.SearchStrategy[bytes]:
        names = sorted(load_file_bytes(data))

        def edit(kind: str, name: str) -> bytes:
            def change(tensors: dict[str, torch.Tensor]) -> None:
                t = tensors[name]
                if kind == "shape":
                    tensors[name] = torch.zeros(t.numel() + 1, dtype=t.dtype)
                elif kind == "dtype":
                    tensors[name] = t.to(torch.float64 if t.dtype != torch.float64 else torch.float32)
                elif kind == "nan":
                    tensors[name] = torch.full(t.shape, math.nan)
                elif kind == "values":
                    tensors[name] = torch.full(t.shape, 0.5)
                elif kind == "extra":
                    tensors[name.replace(".", ".ghost.", 1)] = t.clone()
                elif kind == "no entries":
                    for key in list(tensors):
                        tensors[key.removesuffix("_mask")] = tensors.pop(key)

            return _tensors_edit(data, change)

        return st.builds(edit, st.sampled_from(kinds), st.sampled_from(names))

    return damage


def load_file_bytes(data: bytes) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "t.safetensors").write_bytes(data)
        return load_file(str(Path(folder) / "t.safetensors"))


def checkpoint_damaged(data: bytes) -> st.SearchStrategy[bytes]:
    """The checkpoint's entries: one deleted, an impossible epoch, a history or trainer state of the
    wrong kind, a model tensor of the wrong shape."""

    def edit(kind: str, value: Any) -> bytes:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "c.pt"
            path.write_bytes(data)
            state = torch.load(path, weights_only=True)
            if kind == "delete":
                del state[value]
            elif kind == "epoch":
                state["epoch"] = value
            elif kind == "history":
                state["history"] = value
            elif kind == "trainer":
                state["trainer"] = {} if value == "empty" else _reshaped_model_state(state["trainer"])
            torch.save(state, path)
            return path.read_bytes()

    return st.one_of(
        st.builds(edit, st.just("delete"), st.sampled_from(["epoch", "trainer", "history"])),
        st.builds(edit, st.just("epoch"), st.sampled_from([0, -1, 1.5, "1", 10**6])),
        st.builds(edit, st.just("history"), st.sampled_from(["x", [], [{}], [{"epoch": 1}]])),
        st.builds(edit, st.just("trainer"), st.sampled_from(["empty", "reshaped"])),
    )


def _reshaped_model_state(trainer: dict[str, Any]) -> dict[str, Any]:
    model = trainer["model"]
    name = next(k for k, v in model.items() if v.is_floating_point())
    model[name] = torch.zeros(model[name].numel() + 1)
    return trainer


def _pt_damaged(data: bytes) -> st.SearchStrategy[bytes]:
    """A torch file holding something else than named tensors."""

    def save(value: Any) -> bytes:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "m.pt"
            torch.save(value, path)
            return path.read_bytes()

    return st.sampled_from([[1, 2], "text", {}, {"a.weight_mask": "x"}, {"state_dict": 3}]).map(save)


def not_text(_: bytes) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=64).map(lambda b: b"\xff" + b)


def garbled(data: bytes) -> st.SearchStrategy[bytes]:
    """A line no TOML parser takes, at a line boundary of the file."""
    ends = [0, *(i + 1 for i, c in enumerate(data) if c == ord("\n"))]
    return st.sampled_from(ends).map(lambda at: data[:at] + b"[[= x\n" + data[at:])


DAMAGES: dict[str, Damage] = {
    "not text": not_text,
    "NaN weights": tensor_damaged(("nan",)),
    "a syntax error": garbled,
    "truncated": truncated,
    "random bytes": random_bytes,
    "empty": lambda _: st.just(b""),
    "one byte flipped": flipped_byte,
    "not a JSON object": not_an_object,
    "summary entry missing or of the wrong type (text, null, NaN, infinite)": entry_damaged(SUMMARY_SCHEMA),
    "epoch record's entry missing or of the wrong type": entry_damaged(METRICS_SCHEMA),
    "a setting of the wrong type, NaN or out of range": setting_damaged,
    "a weight of the wrong shape or dtype, NaN weights, an extra tensor": tensor_damaged(
        ("shape", "dtype", "nan", "extra")
    ),
    "a weight of the wrong shape, NaN weights, an extra tensor": tensor_damaged(("shape", "nan", "extra")),
    "values other than 0/1, NaN, no mask entries": tensor_damaged(("values", "nan", "no entries")),
    "record entry missing or of the wrong type": entry_damaged(ENSEMBLE_SCHEMA),
    "a mask of the wrong shape, an extra layer": tensor_damaged(("shape", "extra")),
    "an entry missing, an impossible epoch, a wrong history or model state": checkpoint_damaged,
    "not a dict of tensors": _pt_damaged,
}
BYTES = ("truncated", "random bytes", "empty")


# -- the table: which command reads which file, and what it does with a damaged one ----------------------
@dataclass(frozen=True)
class Case:
    file: str  # as the docs table names it
    command: str  # as the docs table shows it; {run} {file} {out} {config} {good} filled in
    damages: tuple[str, ...]
    outcome: str
    source: str  # the pristine file: a path under the fixture root
    folder: str = ""  # the run folder copied for each example (the file lies inside it)


JSON_BYTES = (*BYTES, "not a JSON object")
MASK_VALUES = "values other than 0/1, NaN, no mask entries"
MASK_SHAPES = "a mask of the wrong shape, an extra layer"
SETTINGS_DAMAGE = ("not text", "a syntax error")
RESUME = "train --config {config} --resume --out {run}"
BEHAVIOUR: list[Case] = [
    Case(
        "config.json",
        RESUME,
        (*JSON_BYTES, "a setting of the wrong type, NaN or out of range"),
        ERROR,
        "finished/config.json",
        "finished",
    ),
    Case(
        "config.json",
        "export {run} --out {out}",
        (*JSON_BYTES, "a setting of the wrong type, NaN or out of range"),
        ERROR,
        "finished/config.json",
        "finished",
    ),
    Case(
        "config.json", "report {run} {good} --out {out}", JSON_BYTES, SKIP, "finished/config.json", "finished"
    ),
    Case(
        "summary.json",
        RESUME,
        (*JSON_BYTES, "summary entry missing or of the wrong type (text, null, NaN, infinite)"),
        ERROR,
        "finished/summary.json",
        "finished",
    ),
    Case(
        "summary.json", "export {run} --out {out}", (*JSON_BYTES,), ERROR, "finished/summary.json", "finished"
    ),
    Case(
        "summary.json",
        "report {run} {good} --out {out}",
        (*JSON_BYTES, "summary entry missing or of the wrong type (text, null, NaN, infinite)"),
        SKIP,
        "finished/summary.json",
        "finished",
    ),
    Case(
        "metrics.jsonl",
        "report {run} {good} --out {out}",
        (*JSON_BYTES, "epoch record's entry missing or of the wrong type"),
        SKIP,
        "finished/metrics.jsonl",
        "finished",
    ),
    Case(
        "model.safetensors",
        "export {run} --out {out}",
        (*BYTES, "a weight of the wrong shape or dtype, NaN weights, an extra tensor"),
        ERROR,
        "finished/model.safetensors",
        "finished",
    ),
    Case(
        "mask.safetensors",
        "export {run} --out {out}",
        (*BYTES, MASK_VALUES, MASK_SHAPES),
        ERROR,
        "finished/mask.safetensors",
        "finished",
    ),
    Case(
        "mask.safetensors",
        "report {run} {good} --out {out}",
        (*BYTES, MASK_VALUES, MASK_SHAPES),
        SKIP,
        "finished/mask.safetensors",
        "finished",
    ),
    Case(
        "mask.safetensors",
        "train --config {config2} --resume --out {run}",
        (*BYTES, MASK_VALUES, MASK_SHAPES),
        ERROR,
        "interrupted/mask.safetensors",
        "interrupted",
    ),
    Case(
        "checkpoint.pt",
        "train --config {config2} --resume --out {run}",
        (*BYTES, "an entry missing, an impossible epoch, a wrong history or model state"),
        ERROR,
        "interrupted/checkpoint.pt",
        "interrupted",
    ),
    Case(
        "--mask file (.safetensors)",
        "train --config {config} --mask {file} --out {out}",
        (*BYTES, MASK_VALUES, MASK_SHAPES),
        ERROR,
        "mask.safetensors",
    ),
    Case(
        "--mask file (.pt)",
        "train --config {config} --mask {file} --out {out}",
        (*BYTES, "not a dict of tensors"),
        ERROR,
        "mask.pt",
    ),
    Case("mask file", "inspect {file} --plot {out}.png", (*BYTES, MASK_VALUES), ERROR, "mask.safetensors"),
    Case(
        "mask file",
        "compare {file} {good_mask}",
        (*BYTES, MASK_VALUES, MASK_SHAPES),
        ERROR,
        "mask.safetensors",
    ),
    Case("--config file", "train --config {file} --out {out}", SETTINGS_DAMAGE, ERROR, "config.toml"),
    Case("sweep file", "sweep {file} --out {out}", SETTINGS_DAMAGE, ERROR, "sweep.toml"),
    Case(
        "export file",
        "SparseInference.from_export / load_export (Python)",
        (*BYTES, "one byte flipped"),
        RAISES,
        "export.safetensors",
    ),
    Case(
        "--init-weights file",
        "train --config {config} --init-weights {file} --out {out}",
        (*BYTES, "a weight of the wrong shape, NaN weights, an extra tensor"),
        ERROR,
        "model.safetensors",
    ),
    Case(
        "tracking.json",
        "train --config {config2} --log tensorboard --resume --out {run}",
        JSON_BYTES,
        ERROR,
        "interrupted/tracking.json",
        "interrupted",
    ),
    Case(
        "summary.json",
        "ensemble --members {run} --out {out}",
        (*JSON_BYTES, "summary entry missing or of the wrong type (text, null, NaN, infinite)"),
        ERROR,
        "finished/summary.json",
        "finished",
    ),
    Case(
        "model.safetensors",
        "ensemble --members {run} --out {out}",
        (*BYTES, "a weight of the wrong shape, NaN weights, an extra tensor"),
        ERROR,
        "finished/model.safetensors",
        "finished",
    ),
    Case(
        "ensemble.json",
        "ensemble-report {run} --out {out}",
        (*JSON_BYTES, "record entry missing or of the wrong type"),
        ERROR,
        "ensemble/ensemble.json",
        "ensemble",
    ),
    Case(
        "ensemble --config file",
        "ensemble {good} --config {file} --out {out}",
        SETTINGS_DAMAGE,
        ERROR,
        "config.toml",
    ),
    Case(
        "teacher (a run folder)",
        "read_teacher(PATH).build_model(), Python; --teacher",
        (*BYTES, "a weight of the wrong shape or dtype, NaN weights, an extra tensor"),
        RAISES,
        "finished/model.safetensors",
        "finished",
    ),
    Case(
        "teacher (a .safetensors file)",
        "read_teacher(PATH), Python; --teacher",
        (*BYTES, "NaN weights"),
        RAISES,
        "model.safetensors",
    ),
]
NOT_READ = [
    ("model.safetensors", "train --resume of a finished run, report"),
    ("metrics.jsonl", "train --resume (rewritten from the checkpoint), export"),
]
