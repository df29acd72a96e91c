"""The program's kernels never index outside their arrays: whole networks run under numba's bounds
checks (a fresh process with NUMBA_BOUNDSCHECK=1 and its own cache folder, so every kernel is compiled
checked). The kernels run on into a plane's bottom border to end on whole vectors and read a few rows
past their input's last plane (`program._arena_end` leaves room): an index past the arena raises here,
where without the checks it would read or write memory it does not own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anymask.deploy import KERNELS

pytestmark = pytest.mark.skipif(KERNELS.get("numba").unavailable() is not None, reason="numba not installed")

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch import fx

    from anymask.deploy import ModelSpec
    from anymask.deploy.inference import fold_batchnorm
    from anymask.deploy.program import compile_program
    from anymask.masks import MaskConfig, make_mask

    def chain():  # the third conv reads the arena's last slot: its last pass reads past that slot
        layers = [torch.nn.Conv2d(3, 8, 3, padding=1)]
        for _ in range(3):
            layers += [torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1)]
        return torch.nn.Sequential(*layers)

    for name, sparsity in (("chain", 0.5), ("mobilenetv2", 0.98), ("resnet20", 0.9), ("vgg16", 0.99)):
        torch.manual_seed(0)
        size = 8 if name == "chain" else 32
        model = chain() if name == "chain" else ModelSpec(name, 1.0, 10, (3, size, size)).build()
        make_mask(model, MaskConfig(mask_method="random", sparsity=sparsity)).apply(model)
        model.eval()
        program = compile_program(fold_batchnorm(fx.symbolic_trace(model)), (3, size, size))
        images = torch.randn(3, 3, size, size)
        with torch.no_grad():
            expected = model(images).numpy()
        for chunk, threads, shared in ((1, 1, False), (3, 1, False), (1, 2, False), (2, 2, True)):
            got = program(images.numpy(), chunk, threads, shared)
            assert np.abs(got - expected).reshape(-1).max() <= 1e-4, (name, chunk, threads, shared)
        print("checked", name)
    """
)


def test_whole_networks_stay_inside_their_arrays(tmp_path: Path) -> None:
    environment = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=environment, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = ["chain", "mobilenetv2", "resnet20", "vgg16"]
    assert result.stdout.split() == [word for name in names for word in ("checked", name)]
