"""Run the `anymask` command in a subprocess, as a user would (shared by the CLI test modules)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import warnings
from pathlib import Path

# A one-epoch CNN run on 64 digits images: the smallest real `anymask train`.
QUICK_TRAIN = ("--model", "cnn", "--epochs", "1", "--train-subset", "64", "--no-progress")


def anymask(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anymask", *args], capture_output=True, text=True, cwd=cwd)


def quick_train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return anymask("train", *QUICK_TRAIN, *extra, "--out", str(out))


def anymask_in_process(*args: str) -> subprocess.CompletedProcess:
    """`anymask` called in this process, for bad input that stops before any work: no interpreter and
    torch to start (seconds each). Work that trains sets process-wide state (threads, seeds): use
    `anymask` for that."""
    stdout, stderr = io.StringIO(), io.StringIO()
    from anymask.cli import main

    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
        try:
            code = main(list(args))
        except SystemExit as exit_info:  # argparse's own errors
            code = exit_info.code if isinstance(exit_info.code, int) else 1
    return subprocess.CompletedProcess(["anymask", *args], code, stdout.getvalue(), stderr.getvalue())
