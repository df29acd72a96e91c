"""One process at a time per run folder.

Two sweeps that share an out folder (the evidence and ablation presets do) or a sweep started twice would
otherwise train the same run side by side and overwrite each other's checkpoints. The lock is a file
beside the folder (`.<name>.lock`), so a folder that never gets created leaves nothing behind, and it is
taken before the folder's state is read, so the second process sees the first one's finished run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from anymask.errors import AnymaskError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded there
    fcntl = None  # type: ignore[assignment]


def lock_path(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.lock"


@contextlib.contextmanager
def run_folder_lock(out_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `out_dir` for the block; fail at once if another process holds it."""
    if not enabled or fcntl is None:
        yield
        return
    parent_existed = out_dir.parent.exists()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(out_dir)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AnymaskError(
                f"{out_dir} is being trained by another process right now; let it finish (this command "
                "will then skip the run) or choose another --out"
            ) from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still locked: a waiter then re-checks a settled folder
    if not parent_existed:
        with contextlib.suppress(OSError):
            out_dir.parent.rmdir()  # only if empty: nothing else was written there
