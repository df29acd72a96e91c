"""Every Python example of docs/own-loop.md (and the README's loop example) runs as written."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "own-loop.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)\n```", DOC, flags=re.S)


def block(containing: str) -> str:
    (found,) = [code for code in BLOCKS if containing in code]
    return found


def run(code: str, where: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.chdir(where)
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(code, "docs/own-loop.md", "exec"), namespace)
    return namespace


def assert_masked(model: torch.nn.Module, mask: Any) -> None:
    for name, keep in mask.items():
        assert not model.get_parameter(name)[~keep].any()


def test_every_python_block_is_covered() -> None:
    markers = [
        "st.prepare(model, optimizer)",
        "checkpoint.pt",
        "lightning",
        "transformers",
        "# my_data.py",
        "synflow",
    ]
    assert len(BLOCKS) == len(markers) and all(sum(m in b for b in BLOCKS) >= 1 for m in markers)


def test_the_plain_loop_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run(block("scheduler = torch.optim.lr_scheduler.CosineAnnealingLR"), tmp_path, monkeypatch)
    st, model = ns["st"], ns["model"]
    assert st.step_count == 12 and st.summary()["dst_updates"] > 0
    assert not any(isinstance(m, torch.nn.SiLU) for m in model.modules())
    assert_masked(model, st.mask)


def test_the_checkpoint_example_resumes_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run(block("checkpoint.pt"), tmp_path, monkeypatch)
    model, optimizer, st = ns["build"]()
    st.prepare(model, optimizer)
    ns["train"](model, optimizer, st, ns["batches"])
    whole = st.finish(model).state_dict()
    resumed = ns["model"].state_dict()
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="needs lightning")
def test_the_lightning_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run(block("import lightning.pytorch as pl"), tmp_path, monkeypatch)
    sparse = ns["sparse"].sparse
    assert sparse.step_count == 8 and sparse.summary()["dst_updates"] > 0
    assert_masked(ns["module"], sparse.mask)


@pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("accelerate") is None,
    reason="needs transformers and accelerate",
)
def test_the_hugging_face_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run(block("from transformers import"), tmp_path, monkeypatch)
    sparse = ns["sparse"].sparse
    assert sparse.step_count == 8 and sparse.summary()["dst_updates"] > 0
    assert_masked(ns["model"], sparse.mask)


def test_the_dataset_factory_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anymask.data import load_dataset

    (tmp_path / "my_data.py").write_text(block("# my_data.py"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_data", raising=False)
    data = load_dataset("my_data:make", tmp_path, workers=0)
    assert (data.num_classes, data.input_shape, data.split_size("train"), data.split_size("test")) == (
        10,
        (3, 16, 16),
        448,
        64,
    )
    assert data.split_labels("train") is not None


def test_the_iterable_of_batches_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run(block("synflow = make_mask"), tmp_path, monkeypatch)
    for mask in (ns["snip"], ns["synflow"]):
        assert mask.kept() == round(0.1 * mask.total())


def test_the_readme_loop_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### From Python") :]
    (code,) = [c for c in re.findall(r"```python\n(.*?)\n```", section, flags=re.S) if "SparseTraining" in c]
    ns = run(code, tmp_path, monkeypatch)
    assert_masked(ns["model"], ns["st"].mask)
