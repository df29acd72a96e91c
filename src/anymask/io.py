"""Atomic file writes: a reader never sees a half-written file, an interrupted write leaves none.

Files get the mode a plain `open` would give them (0666 less the umask), not the 0600 of a
`tempfile.mkstemp` file: run folders and reports are meant to be read by others.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from anymask.errors import AnymaskError


def _create_temporary(path: Path) -> Path:
    """An empty new file beside `path`, created as `open(..., 'x')` would (the umask decides its mode)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # what the umask made of 0666
    try:
        yield tmp
        os.chmod(tmp, mode)  # some writers (safetensors) replace the file with a 0600 one of their own
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


# -- checking where output goes, before any work is done -----------------------------------------------
def _first_existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (what a mkdir -p would create folders in), written as
    the user wrote it (a relative path stays relative)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _cannot_write_in(folder: Path) -> str | None:
    """Why no file can be created in `folder`, or None when one can.

    Permission bits alone do not say it (root passes every access() check, yet a read-only mount or a
    kernel folder refuses), so a nameless temporary file is made and dropped (O_TMPFILE: it never
    appears in the folder).
    """
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as error:
        return error.strerror or type(error).__name__


def _check_creatable(path: Path, flag: str) -> None:
    """The folders above `path` exist or can be made, and the nearest existing one is writable."""
    base = _first_existing(path.parent)
    if not base.is_dir():
        raise AnymaskError(f"{flag} {path}: {base} is a file, not a folder; choose another {flag}")
    reason = _cannot_write_in(base)
    if reason:
        raise AnymaskError(f"{flag} {path}: cannot write in {base} ({reason}); choose another {flag}")


def check_output_folder(path: str | Path, flag: str = "--out", *, beside: bool = False) -> None:
    """One line, before anything is computed, when `path` cannot become a folder anymask writes into
    (`beside`: nor can a file be written beside it, as a run folder's lock is). The message names the
    path as the user gave it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AnymaskError(f"{flag} {path} is a file, not a folder; choose another {flag}")
    if path.is_dir():
        reason = _cannot_write_in(path)
        if reason:
            raise AnymaskError(f"{flag} {path}: cannot write in it ({reason}); choose another {flag}")
        if not beside:
            return
    _check_creatable(path, flag)


def check_output_file(path: str | Path, flag: str = "--out") -> None:
    """One line, before anything is computed, when `path` cannot be written as a file."""
    path = Path(path)
    if path.is_dir():
        raise AnymaskError(f"{flag} {path} is a folder; give a file name")
    _check_creatable(path, flag)
