"""Fuzzing the numbers users give anymask (issue 28): for each numeric setting, generated values outside
its declared range go through a flag, a config file and a sweep grid, and each is one line naming the
setting, before anything is written; values inside are accepted. Every setting is bounded, a switch, a
choice checked by name, or free text. Deterministic and bounded by default (fuzz_support says how to run
the long profile).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anymask.bounds import Bounds, check_setting
from anymask.config import field_types, setting_bounds
from anymask.errors import AnymaskError
from fuzz_support import ERROR, FUZZ, check_one_line, engine_and_ensemble_bounds, run_cli, typing_origin


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
