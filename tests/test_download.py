"""anymask.data.download against a local HTTP server: checksums, atomic extraction, unsafe archives."""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from anymask.data import ARCHIVES, Archive, download_and_extract, load_dataset
from anymask.errors import AnymaskError


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder it serves) for a throwaway HTTP server on a free 127.0.0.1 port."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _pickle(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _fake_cifar10_tar(path: Path, extra: dict[str, bytes] | None = None) -> str:
    """A tar.gz shaped like the official one (1 train batch of 10, a test batch of 5); returns its md5."""
    rng = np.random.default_rng(0)
    files = {
        "cifar-10-batches-py/data_batch_1": _pickle(
            {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}
        ),
        "cifar-10-batches-py/test_batch": _pickle(
            {"data": rng.integers(0, 256, (5, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3, 4]}
        ),
        "cifar-10-batches-py/batches.meta": _pickle({"label_names": [f"c{i}" for i in range(10)]}),
        **(extra or {}),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else []


def test_download_extract_and_load(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, served = server
    md5 = _fake_cifar10_tar(served / "cifar.tar.gz")
    monkeypatch.setitem(ARCHIVES, "cifar10", Archive(f"{url}/cifar.tar.gz", md5, "cifar-10-batches-py"))
    data_dir = tmp_path / "data"
    ds = load_dataset("cifar10", data_dir, download=True)
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_y.tolist() == [0, 1, 2, 3, 4]
    assert _leftovers(data_dir) == ["cifar-10-batches-py"]  # no temp files or folders left behind
    # The folder now exists, so a second call must not download again (the server is gone for it).
    monkeypatch.setitem(ARCHIVES, "cifar10", Archive(f"{url}/missing.tar.gz", md5, "cifar-10-batches-py"))
    assert len(load_dataset("cifar10", data_dir, download=True).train_x) == 10


def test_wrong_md5_leaves_nothing(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    _fake_cifar10_tar(served / "cifar.tar.gz")
    data_dir = tmp_path / "data"
    with pytest.raises(AnymaskError, match="is corrupt") as err:
        download_and_extract(Archive(f"{url}/cifar.tar.gz", "0" * 32, "cifar-10-batches-py"), data_dir)
    assert "\n" not in str(err.value)
    assert _leftovers(data_dir) == []


def test_http_error(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    data_dir = tmp_path / "data"
    with pytest.raises(AnymaskError, match=r"download of .*/nothing-here\.tar\.gz failed .*404"):
        download_and_extract(Archive(f"{url}/nothing-here.tar.gz", "0" * 32, "x"), data_dir)
    assert _leftovers(data_dir) == []


@pytest.mark.parametrize("member", ["../escaped", "cifar-10-batches-py/../../escaped"])
def test_path_traversal_is_refused(server: tuple[str, Path], tmp_path: Path, member: str) -> None:
    url, served = server
    md5 = _fake_cifar10_tar(served / "evil.tar.gz", extra={member: b"boo"})
    data_dir = tmp_path / "data"
    with pytest.raises(AnymaskError, match="refusing to unpack"):
        download_and_extract(Archive(f"{url}/evil.tar.gz", md5, "cifar-10-batches-py"), data_dir)
    assert _leftovers(data_dir) == [] and not (tmp_path / "escaped").exists()


def test_zip_archive_and_missing_top_folder(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    with zipfile.ZipFile(served / "tiny.zip", "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n01443537\n")
    md5 = hashlib.md5((served / "tiny.zip").read_bytes()).hexdigest()
    data_dir = tmp_path / "data"
    target = download_and_extract(Archive(f"{url}/tiny.zip", md5, "tiny-imagenet-200"), data_dir)
    assert (target / "wnids.txt").read_text() == "n01443537\n"
    with pytest.raises(AnymaskError, match="no top-level folder 'other'"):
        download_and_extract(Archive(f"{url}/tiny.zip", md5, "other"), data_dir)
    assert _leftovers(data_dir) == ["tiny-imagenet-200"]
