"""Fuzzing what users hand anymask: damaged files of every kind and out-of-range numbers (issue 28).

For each kind of file, a pristine one (of a real finished or interrupted run, a mask file, an export)
is damaged in generated ways and given to every command that reads it. Each case asserts: one line on
stderr, no traceback, the documented outcome (an error and a non-zero exit, or, where skipping is the
right answer, as a report does with a damaged run, one warning and exit 0), nothing written where
output would have gone, and every input file unchanged. For each numeric setting, generated values
outside its declared range go through a flag, a config file and a sweep grid, with the same checks.

`BEHAVIOUR` is the table in docs/security.md ("Damaged input"); `test_docs_tables_are_the_tested_ones`
fails when the two differ (`ANYMASK_WRITE_DOCS=1` rewrites the docs from it).

Deterministic and bounded by default (a few examples per case, under 90 s); `ANYMASK_FUZZ=long` runs
the long profile (random, many examples), `ANYMASK_FUZZ_EXAMPLES=N` sets the count.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from anymask.artifacts import ENSEMBLE_SCHEMA, METRICS_SCHEMA, SUMMARY_SCHEMA
from anymask.bounds import Bounds, check_setting
from anymask.cli import main
from anymask.config import SECTIONS, field_types, setting_bounds
from anymask.errors import AnymaskError
from quick_runs import quick_config

LONG = os.environ.get("ANYMASK_FUZZ") == "long"
EXAMPLES = int(os.environ.get("ANYMASK_FUZZ_EXAMPLES", "0")) or (300 if LONG else 5)
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=not LONG,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DOCS = Path(__file__).parents[1] / "docs" / "security.md"

ERROR = "one-line error, exit 2"
RAISES = "raises AnymaskError, one line"
SKIP = "one-line warning naming the run, which is left out; exit 0"


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


def typing_origin(key: str) -> Any:
    import typing

    hint = field_types()[key]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is not list and len(args) == 1:  # Optional[X] (X | None): X's origin
        hint = args[0]
    return typing.get_origin(hint)


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


# -- the pristine runs ----------------------------------------------------------------------------------
class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run, a second finished run (a report's good neighbour), an interrupted run after its
    first epoch, their configs as flag files, a mask in both formats, a config and a sweep file, an
    export."""
    from anymask.deploy import export_run
    from anymask.ensembles.evaluate import evaluate_runs
    from anymask.train import run as run_module
    from anymask.train import run_experiment

    root = tmp_path_factory.mktemp("pristine")
    config = quick_config(epochs=1, train_subset=64, mask_method="random", sparsity=0.5)
    run_experiment(config, root / "finished")
    run_experiment(config.updated({"seed": 1}), root / "good")
    two_epochs = config.updated({"epochs": 2})
    save = run_module.save_checkpoint

    def save_then_stop(path: Path, state: dict[str, Any]) -> None:
        save(path, state)
        raise _Stop  # as a kill after the first checkpoint

    with mock.patch.object(run_module, "save_checkpoint", save_then_stop), pytest.raises(_Stop):
        run_experiment(two_epochs, root / "interrupted")
    for name, folder in (("config.json", "finished"), ("config2.json", "interrupted")):
        shutil.copy(root / folder / "config.json", root / name)
    shutil.copy(root / "finished" / "mask.safetensors", root / "mask.safetensors")
    shutil.copy(root / "good" / "mask.safetensors", root / "good_mask.safetensors")
    shutil.copy(root / "finished" / "model.safetensors", root / "model.safetensors")
    torch.save(load_file(str(root / "mask.safetensors")), root / "mask.pt")
    (root / "config.toml").write_text("epochs = 1\ntrain_subset = 64\n")
    (root / "sweep.toml").write_text('[base]\nmask_method = "random"\n[grid]\nsparsity = [0.5, 0.9]\n')
    export_run(root / "finished", root / "export.safetensors")
    evaluate_runs([root / "finished", root / "good"], root / "ensemble")
    # what `--log tensorboard` leaves after the first epoch; read when the run resumes with it
    (root / "interrupted" / "tracking.json").write_text('{"tensorboard": {"epochs": 1, "started": true}}\n')
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@contextmanager
def damaged_copy(pristine: Path, case: Case, data: bytes) -> Iterator[tuple[Path, Path]]:
    """A fresh working folder holding a copy of the case's folder (or file) with the file damaged."""
    work = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        if case.folder:
            shutil.copytree(pristine / case.folder, work / case.folder)
        target = work / case.source
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        yield work, target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code  # type: ignore[assignment]
    return int(code or 0), capsys.readouterr().err


def check_one_line(code: int, err: str, outcome: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    if outcome == ERROR:
        assert code == 2 and lines[0].startswith("anymask: error: "), err
    else:
        assert code == 0 and lines[0].startswith("anymask: warning: skipping "), err


def fill(command: str, pristine: Path, work: Path, case: Case, file: Path) -> list[str]:
    values = {
        "run": str(work / case.folder) if case.folder else "",
        "file": str(file),
        "out": str(work / "out"),
        "config": str(pristine / "config.json"),
        "config2": str(pristine / "config2.json"),
        "good": str(pristine / "good"),
        "good_mask": str(pristine / "good_mask.safetensors"),
    }
    return [*command.format(**values).split(), *(["--no-progress"] if command.startswith("train") else [])]


def run_python_case(case: Case, file: Path) -> str:
    """The cases no command runs yet: one AnymaskError line."""
    from anymask.deploy import load_export
    from anymask.finished_run import read_teacher

    with pytest.raises(AnymaskError) as error:
        if case.file == "export file":
            load_export(file)
        elif case.file.startswith("teacher (a run"):  # read, then built as distillation builds it
            read_teacher(file.parent).build_model(10, (1, 8, 8))
        else:
            read_teacher(file)
    return str(error.value)


@pytest.mark.parametrize("case", BEHAVIOUR, ids=lambda c: f"{c.file}: {c.command.split()[0]}")
def test_damaged_files_are_one_line_and_change_nothing(
    case: Case, pristine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = (pristine / case.source).read_bytes()
    damage = st.one_of(*(DAMAGES[name](data) for name in case.damages)).filter(lambda d: d != data)

    @FUZZ
    @given(damaged=damage)
    def check(damaged: bytes) -> None:
        with damaged_copy(pristine, case, damaged) as (work, file):
            before = snapshot(work)
            if "Python" in case.command:
                message = run_python_case(case, file)
                assert "\n" not in message and message, message
            else:
                code, err = run_cli(fill(case.command, pristine, work, case, file), capsys)
                check_one_line(code, err, case.outcome)
                if case.outcome == ERROR:
                    assert not (work / "out").exists() and not (work / "out.png").exists()
                    assert not list(work.rglob(".*.tmp")), "a temporary file was left behind"
            after = snapshot(work)
            after.pop("out", None)
            assert {k: v for k, v in after.items() if not k.startswith("out/")} == before

    check()


# -- numbers -----------------------------------------------------------------------------------------
def outside(bounds: Bounds, integer: bool) -> st.SearchStrategy[Any]:
    """Values a setting must refuse: below, above (to absurd sizes), the open end itself, not finite."""
    low, high = bounds.low, bounds.high
    if integer:
        values = st.integers(max_value=math.ceil(low) - 1) | st.integers(min_value=math.floor(high) + 1)
        values |= st.sampled_from([10**23, -(10**23), 2**64])
    else:
        values = st.floats(max_value=low, exclude_max=not bounds.low_open, allow_nan=False)
        values |= st.floats(min_value=high, exclude_min=not bounds.high_open, allow_nan=False)
        values |= st.sampled_from([math.nan, math.inf, -math.inf, 1e300])
    return values


def _is_int(key: str) -> bool:
    import typing

    hint = field_types()[key]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    inner = typing.get_args(args[0]) or args
    return inner[0] is int


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("key", sorted(setting_bounds()))
def test_every_number_outside_its_range_is_one_line_before_anything_is_written(
    key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    @FUZZ
    @given(
        value=outside(setting_bounds()[key], _is_int(key)),
        route=st.sampled_from(["flag", "config file", "sweep grid", "prune flag"]),
    )
    def check(value: Any, route: str) -> None:
        refused_everywhere(key, value, route, capsys)

    check()


def refused_everywhere(key: str, value: Any, route: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`value` for `key` given by `route` is one line naming the setting, and nothing is written."""
    from anymask.cli import prune_settings

    if route == "prune flag" and key not in {*prune_settings()[0], *prune_settings()[1]}:
        route = "flag"  # a setting prune does not take (dst_, recipe settings)
    work = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        out = work / "out"
        # NaN and Infinity as Python's JSON writes them, which it also reads; a list setting gets a list
        text = json.dumps([value] if typing_origin(key) is list else value)
        flag = "--" + key.replace("_", "-")
        argv = {
            "flag": ["train", f"{flag}={value}", "--out", str(out)],
            "config file": [
                "train",
                "--config",
                str(_write(work / "c.json", f'{{"{key}": {text}}}')),
                "--out",
                str(out),
            ],
            "sweep grid": [
                "sweep",
                str(_write(work / "s.json", f'{{"grid": {{"{key}": [{text}]}}}}')),
                "--out",
                str(out),
            ],
            "prune flag": ["prune", f"{flag}={value}", "--method", "random", "--out", f"{out}.safetensors"],
        }[route]
        code, err = run_cli(argv, capsys)
        check_one_line(code, err, ERROR)
        assert key in err and "outside" in err, err
        assert sorted(p.name for p in work.iterdir()) == sorted(
            p.name for p in work.iterdir() if p.suffix == ".json"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


@FUZZ
@given(data=st.data())
def test_every_number_inside_its_range_is_accepted(data: st.DataObject) -> None:
    from anymask.config import coerce

    key = data.draw(st.sampled_from(sorted(setting_bounds())), label="setting")
    bounds = setting_bounds()[key]
    if _is_int(key):
        value: Any = data.draw(st.integers(math.ceil(bounds.low) + bounds.low_open, math.floor(bounds.high)))
    else:
        value = data.draw(
            st.floats(bounds.low, bounds.high, exclude_min=bounds.low_open, exclude_max=bounds.high_open)
        )
    value = [value] if typing_origin(key) is list else value
    assert coerce(key, value) == value
    check_setting(key, value, bounds)


def test_every_numeric_setting_declares_its_range() -> None:
    """A new number setting must say where it is valid (anymask.bounds.bounded beside its field)."""
    import typing

    numeric = set()
    for key, hint in field_types().items():
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        inner = typing.get_args(args[0]) or args
        if inner[0] in (int, float):
            numeric.add(key)
    assert numeric - set(setting_bounds()) == set()
    assert {"epochs", "batch_size", "lr", "sparsity", "ghost_epochs", "threads"} <= numeric


# Settings that are not numbers, each with the settings under which it is read (its part, method or
# tracker in use) or None for one that is always read; `validate` refuses an unknown value of each in
# one line. A new setting is either bounded (`anymask.bounds.bounded`) or listed here or in FREE_SETTINGS.
CHOICE_SETTINGS: dict[str, dict[str, Any] | None] = {
    "model": None,
    "init": None,
    "data": None,
    "mask_method": None,
    "scope": None,
    "prune_bn_mode": None,
    "lr_schedule": None,
    "device": None,
    "dst": None,
    "log": None,
    "recipe": None,
    "lth_rewind": {"mask_method": "lth", "sparsity": 0.5},
    "ghost_schedule": {"recipe": "tost"},
    "gsn_soft": {"recipe": "tost"},
    "gsc_mode": {"recipe": "tost"},
    "ls_schedule": {"recipe": "ls"},
    "gw_form": {"recipe": "gw"},
    "fold_at": {"recipe": "fold"},
    "fold_branches": {"recipe": "fold"},
    "teacher": {"recipe": "kd"},
    "init_weights": None,
    "mask_file": None,
}
FREE_SETTINGS = {
    "data_dir": "a folder; a missing dataset there is one line when the run loads it",
    "log_project": "any name; empty is refused",
    "mlflow_uri": "MLflow's own URI; MLflow reports a bad one when the tracker starts",
}


def test_every_setting_has_a_range_or_is_checked_by_name() -> None:
    """Every RunConfig field is bounded, a true/false switch, a choice `validate` checks, or free text."""
    import typing

    switches = {k for k, hint in field_types().items() if hint is bool}
    bounded_ = set(setting_bounds())
    named = set(CHOICE_SETTINGS) | set(FREE_SETTINGS)
    assert not (bounded_ & named) and not (switches & (bounded_ | named))
    unaccounted = set(field_types()) - bounded_ - switches - named
    assert unaccounted == set(), f"give these settings a range (bounded) or list them here: {unaccounted}"
    for key in named:
        hint = field_types()[key]
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        assert args[0] is str or typing.get_args(args[0]) == (str,), key


@pytest.mark.parametrize("key", sorted(CHOICE_SETTINGS))
def test_an_unknown_choice_is_one_line_before_anything_is_written(key: str) -> None:
    from anymask.config import RunConfig
    from anymask.train.run import validate

    value: Any = ["no-such-thing"] if typing_origin(key) is list else "no-such-thing"
    config = RunConfig.from_flat({**(CHOICE_SETTINGS[key] or {}), key: value})
    with pytest.raises(AnymaskError) as error:
        validate(config)
    assert "\n" not in str(error.value) and "no-such-thing" in str(error.value)


def engine_and_ensemble_bounds() -> list[tuple[str, str, Bounds]]:
    from anymask.ensembles.prune_and_tune import ENSEMBLE_BOUNDS
    from anymask.experiments.engines.base import engine_bounds

    return [("sweep", k, b) for k, b in sorted(engine_bounds().items())] + [
        ("ensemble", k, b) for k, b in sorted(ENSEMBLE_BOUNDS.items())
    ]


@pytest.mark.parametrize(
    ("command", "key", "bounds"), engine_and_ensemble_bounds(), ids=lambda v: getattr(v, "__name__", str(v))
)
def test_engine_and_ensemble_numbers_outside_their_range_are_one_line(
    command: str, key: str, bounds: Bounds, pristine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import typing

    from anymask.ensembles.prune_and_tune import EnsembleSettings
    from anymask.experiments.engines.base import EngineSettings

    cls = EngineSettings if command == "sweep" else EnsembleSettings
    hint = typing.get_type_hints(cls)[key]
    integer = ([a for a in typing.get_args(hint) if a is not type(None)] or [hint])[0] is int

    @FUZZ
    @given(value=outside(bounds, integer))
    def check(value: Any) -> None:
        work = Path(tempfile.mkdtemp(prefix="fuzz-"))
        try:
            flag = f"--{key.replace('_', '-')}={value}"
            target = str(pristine / "sweep.toml") if command == "sweep" else str(pristine / "finished")
            code, err = run_cli([command, target, flag, "--out", str(work / "out")], capsys)
            check_one_line(code, err, ERROR)
            assert f"--{key.replace('_', '-')}" in err and "outside" in err, err
            assert not any(work.iterdir())
        finally:
            shutil.rmtree(work, ignore_errors=True)

    check()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sweep", "s.toml", "--workers", "100000000000"], "--workers: 100000000000 is outside [1, 1024]"),
        (["demo", "--workers", "0"], "--workers: 0 is outside [1, 1024]"),
        (["inspect", "m.safetensors", "--width", "nan"], "invalid width: nan is outside (0, 64]"),
        (["inspect", "m.safetensors", "--width", "-1"], "invalid width: -1.0 is outside (0, 64]"),
    ],
)
def test_numbers_of_other_flags_are_bounded_too(
    argv: list[str],
    message: str,
    pristine: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(pristine / "sweep.toml", "s.toml")
    shutil.copy(pristine / "mask.safetensors", "m.safetensors")
    code, err = run_cli([*argv, "--out" if argv[0] in {"sweep", "demo"} else "--plot", "o.png"], capsys)
    check_one_line(code, err, ERROR)
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "s.toml"]


# -- the docs table -------------------------------------------------------------------------------------
def docs_table() -> str:
    rows = ["| file | command | damage the tests generate | what the command does |", "|---|---|---|---|"]
    for case in BEHAVIOUR:
        command = case.command.replace("{config2}", "{config}")
        for token in ("{config}", "{run}", "{file}", "{out}", "{good}", "{good_mask}"):
            command = command.replace(token, token.strip("{}").upper())
        rows.append(f"| `{case.file}` | `{command}` | {'; '.join(case.damages)} | {case.outcome} |")
    rows += [
        f"| `{file}` | {commands} | — | not read: damage there changes nothing |"
        for file, commands in NOT_READ
    ]
    return "\n".join(rows)


def ranges_table() -> str:
    rows = ["| setting | range |", "|---|---|"]
    rows += [f"| `{key}` | {bounds.interval()} |" for key, bounds in sorted(setting_bounds().items())]
    rows += [
        f"| `{key}` (`anymask {command}` {'engine' if command == 'sweep' else 'setting'}) | "
        f"{bounds.interval()} |"
        for command, key, bounds in engine_and_ensemble_bounds()
    ]
    return "\n".join(rows)


GENERATED = {
    ("<!-- damaged-input table: start -->", "<!-- damaged-input table: end -->"): docs_table,
    ("<!-- settings ranges: start -->", "<!-- settings ranges: end -->"): ranges_table,
}


def test_docs_tables_are_the_tested_ones() -> None:
    text = DOCS.read_text()
    expected = text
    for (start, end), render in GENERATED.items():
        assert start in text and end in text, f"docs/security.md lacks the {start} ... {end} markers"
        head, rest = expected.split(start)
        _, tail = rest.split(end)
        expected = f"{head}{start}\n{render()}\n{end}{tail}"
    if os.environ.get("ANYMASK_WRITE_DOCS") == "1":
        DOCS.write_text(expected)
    assert text == expected, "docs/security.md's generated tables are stale: rerun with ANYMASK_WRITE_DOCS=1"


# -- the six holes issue 28 found, each as the user met it ---------------------------------------------
def unwritable_folder(tmp_path: Path) -> Path:
    """A folder no file can be created in: a kernel folder for root (who passes every permission
    check), else a folder without write permission."""
    if os.geteuid() == 0:
        folder = Path("/sys/kernel")
        try:
            with tempfile.TemporaryFile(dir=folder):
                pytest.skip("/sys/kernel is writable here")
        except OSError:
            return folder
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def test_hole_export_of_a_summary_that_is_not_an_object(
    pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = shutil.copytree(pristine / "finished", tmp_path / "run")
    (run / "summary.json").write_text("[1, 2]\n")
    code, err = run_cli(["export", str(run), "--out", str(tmp_path / "x.safetensors")], capsys)
    check_one_line(code, err, ERROR)
    assert f"cannot read run summary {run}/summary.json: it holds a list, not a JSON object" in err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(
    ("flag", "value"), [("--epochs", "99999999999999999999999"), ("--batch-size", "100000000000")]
)
def test_hole_absurd_numbers_are_refused(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["train", flag, value, "--out", str(tmp_path / "run")], capsys)
    check_one_line(code, err, ERROR)
    assert f"invalid {flag[2:].replace('-', '_')}: {value} is outside [1, " in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["train", "prune", "export", "sweep", "report"])
def test_hole_an_unwritable_out_is_named_as_given_before_any_work(
    command: str, pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The message names the --out the user typed (not a lock or temporary file), and prune computes
    no mask first."""
    out = unwritable_folder(tmp_path) / "out"
    argv = {
        "train": ["train", "--out", str(out)],
        "prune": ["prune", "--method", "random", "--sparsity", "0.5", "--out", f"{out}.safetensors"],
        "export": ["export", str(pristine / "finished"), "--out", f"{out}.safetensors"],
        "sweep": ["sweep", str(pristine / "sweep.toml"), "--out", str(out)],
        "report": ["report", str(pristine / "good"), "--out", str(out)],
    }[command]
    with mock.patch("anymask.train.run.make_mask", side_effect=AssertionError("computed a mask first")):
        code, err = run_cli(argv, capsys)
    check_one_line(code, err, ERROR)
    given = argv[argv.index("--out") + 1]
    assert f"--out {given}: cannot write in {out.parent}" in err
    assert ".lock" not in err and ".tmp" not in err


def test_hole_export_under_a_file_says_what_is_wrong(
    pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("a file\n")
    code, err = run_cli(["export", str(pristine / "finished"), "--out", "afile/x.safetensors"], capsys)
    check_one_line(code, err, ERROR)
    assert "--out afile/x.safetensors: afile is a file, not a folder; choose another --out" in err


def test_hole_a_run_folder_without_config_says_it_is_not_a_finished_run(
    pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = shutil.copytree(pristine / "finished", tmp_path / "run")
    (run / "config.json").unlink()
    code, err = run_cli(["export", str(run), "--out", str(tmp_path / "x.safetensors")], capsys)
    check_one_line(code, err, ERROR)
    assert f"{run} is not a finished anymask run: it has no config.json;" in err and "Errno" not in err


# -- the finished-run reader others call (a distillation teacher) -----------------------------------------
def test_read_finished_run_and_teacher(pristine: Path, tmp_path: Path) -> None:
    from anymask.finished_run import read_finished_run, read_teacher

    run = read_finished_run(pristine / "finished")
    assert run.config is not None and run.summary is not None
    assert run.summary["config_hash"] == run.config.hash()
    model = run.build_model(10, (1, 8, 8))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in run.state.items())
    assert run.mask().kept() == run.summary["mask_kept"]
    assert read_teacher(pristine / "finished" / "model.safetensors").config is not None  # in its folder
    bare = read_teacher(pristine / "model.safetensors")
    assert bare.config is None and set(bare.state) == set(run.state)
    with pytest.raises(AnymaskError, match="unfinished run"):
        read_finished_run(pristine / "interrupted")
    with pytest.raises(AnymaskError, match="not an anymask run folder"):
        read_finished_run(tmp_path)
    with pytest.raises(AnymaskError, match=r"or a model \.safetensors file"):
        read_teacher(pristine / "mask.pt")
