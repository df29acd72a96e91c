"""Fuzzing what users hand anymask: damaged files of every kind (issue 28; numbers: test_fuzz_numbers).

For each kind of file, a pristine one (of a real finished or interrupted run, a mask file, an export)
is damaged in generated ways and given to every command that reads it. Each case asserts: one line on
stderr, no traceback, the documented outcome (an error and a non-zero exit, or, where skipping is the
right answer, as a report does with a damaged run, one warning and exit 0), nothing written where
output would have gone, and every input file unchanged.

`BEHAVIOUR` (fuzz_damage.py, beside the damage it does) is the table in docs/security.md ("Damaged
input"); `test_docs_tables_are_the_tested_ones` fails when the two differ (`ANYMASK_WRITE_DOCS=1`
rewrites the docs from it).

Deterministic and bounded by default (a few examples per case, under 90 s); `ANYMASK_FUZZ=long` runs
the long profile (random, many examples), `ANYMASK_FUZZ_EXAMPLES=N` sets the count.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from anymask.config import setting_bounds
from anymask.errors import AnymaskError
from fuzz_damage import BEHAVIOUR, DAMAGES, NOT_READ, Case
from fuzz_support import ERROR, FUZZ, check_one_line, engine_and_ensemble_bounds, run_cli, snapshot

DOCS = Path(__file__).parents[1] / "docs" / "security.md"


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
