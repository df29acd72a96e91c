"""Shared fixtures: the real CIFAR-10 subset (skipped when absent), the fuzz tests' pristine run folders
and small cached models."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

# PyTorch 2.13's CPU oneDNN convolutions crash now and then (segfault) at the tiny channel counts the
# tests use (8 -> 16 channels): about one full run in three did. The native path is stable, so tests in
# this process use it; runs in subprocesses (CLI, sweeps, DDP) use models with 32+ channels.
torch.backends.mkldnn.enabled = False

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "cifar-10-batches-py" / "data_batch_1").is_file():
        pytest.skip("real CIFAR-10 subset not found at ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fuzz tests' real run folders (fuzz_support.make_pristine), built once for both fuzz files."""
    from fuzz_support import make_pristine

    return make_pristine(tmp_path_factory.mktemp("pristine"))


@cache
def cached_model(name: str, width: float = 1.0) -> nn.Module:
    """Build once per session; tests must not modify it (copy it first)."""
    from anymask.models import create_model

    torch.manual_seed(0)
    return create_model(name, 10, (3, 32, 32), width)
