"""Run the `anymask` command in a subprocess, as a user would (shared by the CLI test modules)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A one-epoch CNN run on 64 digits images: the smallest real `anymask train`.
QUICK_TRAIN = ("--model", "cnn", "--epochs", "1", "--train-subset", "64", "--no-progress")


def anymask(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anymask", *args], capture_output=True, text=True, cwd=cwd)


def quick_train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return anymask("train", *QUICK_TRAIN, *extra, "--out", str(out))
