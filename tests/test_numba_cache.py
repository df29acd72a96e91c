"""The program's numba functions are cached on the fingerprint of every file compiled into them, not
only their own (`anymask.deploy.numba_cache`): a changed kernel file must not load stale code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anymask.deploy import KERNELS

pytestmark = pytest.mark.skipif(KERNELS.get("numba").unavailable() is not None, reason="numba not installed")

MODULE = textwrap.dedent(
    """
    import os
    import sys

    import numba

    from anymask.deploy.numba_cache import key_on_sources


    @numba.njit(cache=True)
    def add_one(x):
        return x + 1


    key_on_sources(sys.modules[__name__], os.environ["FINGERPRINT"])
    """
)
CALL = (
    "import cached; cached.add_one(1); stats = cached.add_one.stats; "
    "print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))"
)


def _hits_and_misses(folder: Path, fingerprint: str) -> tuple[int, int]:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder), *sys.path]),
        "NUMBA_CACHE_DIR": str(folder / "cache"),
        "FINGERPRINT": fingerprint,
    }
    result = subprocess.run(
        [sys.executable, "-c", CALL], env=environment, capture_output=True, text=True, timeout=300, check=True
    )
    hits, misses = result.stdout.split()[-2:]
    return int(hits), int(misses)


def test_a_changed_fingerprint_compiles_afresh(tmp_path: Path) -> None:
    (tmp_path / "cached.py").write_text(MODULE)
    first = _hits_and_misses(tmp_path, "kernels-a")
    again = _hits_and_misses(tmp_path, "kernels-a")
    changed = _hits_and_misses(tmp_path, "kernels-b")
    assert first == (0, 1) and again == (1, 0) and changed == (0, 1)


def test_the_program_loop_is_keyed_on_its_kernels_sources() -> None:
    from anymask.deploy import program_kernels, program_loop
    from anymask.deploy.numba_cache import sources_fingerprint

    keyed = [program_loop.run_serial, program_loop.share_batch, program_kernels._conv_flat]
    assert all(f._cache.anymask_fingerprint == sources_fingerprint() for f in keyed)
