"""Fetch and unpack the official dataset archives: checksummed, and atomic so a failure leaves nothing."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from anymask.errors import AnymaskError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str
    folder: str  # the one top-level folder the archive unpacks to


# Tests point these at a local server; keys are dataset names.
ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
    ),
    "cifar100": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
    ),
    "tinyimagenet": Archive(
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        "90528d7ca1a48142e341f4ef8d21d0de",
        "tiny-imagenet-200",
    ),
}


def download_and_extract(archive: Archive, data_dir: str | Path) -> Path:
    """`data_dir/archive.folder`, downloading and unpacking the archive first if that folder is missing."""
    data_dir = Path(data_dir)
    target = data_dir / archive.folder
    if target.exists():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=data_dir, prefix=".anymask-download-")
    os.close(fd)
    part = Path(name)
    try:
        _fetch(archive, part)
        _extract(part, data_dir, archive.folder)
    finally:
        part.unlink(missing_ok=True)
    return target


def _fetch(archive: Archive, dest: Path) -> None:
    """Stream the archive to `dest`, hashing as it arrives, and check the md5."""
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(archive.url, timeout=60) as response, dest.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {archive.folder}") as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        raise AnymaskError(
            f"download of {archive.url} failed ({e}); check the network, or download it yourself and "
            f"unpack it into {dest.parent.resolve()}"
        ) from None
    if md5.hexdigest() != archive.md5:
        raise AnymaskError(
            f"download of {archive.url} is corrupt (md5 {md5.hexdigest()}, expected {archive.md5}); "
            "run again to retry the download"
        )


def _extract(path: Path, data_dir: Path, folder: str) -> None:
    """Unpack into a temp dir beside the target, then move `folder` into place in one rename."""
    tmp = Path(tempfile.mkdtemp(dir=data_dir, prefix=".anymask-extract-"))
    try:
        if tarfile.is_tarfile(path):
            _extract_tar(path, tmp)
        elif zipfile.is_zipfile(path):
            _extract_zip(path, tmp)
        else:
            raise AnymaskError(f"{path.name} is neither a tar nor a zip archive; check the URL in ARCHIVES")
        if not (tmp / folder).is_dir():
            raise AnymaskError(f"the archive has no top-level folder '{folder}'; check the URL in ARCHIVES")
        os.replace(tmp / folder, data_dir / folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_member(name: str, dest: Path) -> None:
    # A member like '../x' or '/etc/x' would write outside the extraction folder.
    if not (dest / name).resolve().is_relative_to(dest.resolve()):
        raise AnymaskError(f"refusing to unpack archive member '{name}' that points outside {dest}")


def _extract_tar(path: Path, dest: Path) -> None:
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        for m in members:
            _check_member(m.name, dest)
            if not (m.isfile() or m.isdir()):  # links and devices have no place in a dataset archive
                raise AnymaskError(
                    f"refusing to unpack archive member '{m.name}': not a plain file or folder"
                )
        # The "data" filter re-checks the same things on Pythons that have it (3.10.12+, 3.11.4+).
        options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **options)


def _extract_zip(path: Path, dest: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            _check_member(name, dest)
        zf.extractall(dest)
