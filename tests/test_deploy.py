"""Deployment: the compressed export round trip, its size and errors, and sparse inference = dense."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from anymask.cli import main
from anymask.deploy import (
    KERNELS,
    LayerWeights,
    ModelSpec,
    SparseInference,
    export_model,
    export_run,
    load_export,
    load_exported_model,
    sparse_inference_model,
)
from anymask.deploy import inference as inference_module
from anymask.deploy.positions import LAYOUTS, cheapest_layout
from anymask.errors import AnymaskError
from anymask.masks import MaskConfig, make_mask
from anymask.models import create_model
from anymask.train.checkpoint import save_weights
from deploy_fixtures import trained_like, write_finished_run

RESNET20 = ModelSpec("resnet20", 1.0, 10, (3, 32, 32))
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
numba_only = pytest.mark.skipif(KERNELS.get("numba").unavailable() is not None, reason="numba not installed")


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, with -0.0 counted as +0.0 (the one thing an export does not keep)."""
    if tensor.is_floating_point():
        tensor = tensor + 0.0
    return tensor.contiguous().reshape(-1).view(torch.uint8)


# -- position layouts -----------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2000), max_size=40), st.integers(1, 3000))
def test_every_layout_decodes_what_it_encoded(positions: list[int], numel: int) -> None:
    kept = np.zeros(numel, dtype=bool)
    kept[[p for p in positions if p < numel]] = True
    for name in LAYOUTS:
        layout = LAYOUTS.get(name)()
        assert np.array_equal(layout.decode(layout.encode(kept), numel), kept), name


def test_cheapest_layout_is_delta_when_sparse_and_bitmap_when_dense() -> None:
    sparse = np.zeros(10_000, dtype=bool)
    sparse[::50] = True
    sparse[9_999] = True  # a gap of 249 and the last position
    assert cheapest_layout(sparse)[0] == "delta8"
    assert len(cheapest_layout(sparse)[1]) == 201
    assert cheapest_layout(np.ones(800, dtype=bool))[0] == "bitmap"
    far = np.zeros(1_000, dtype=bool)
    far[[0, 600]] = True  # gap 600 = two escape bytes (510) + 90
    assert LAYOUTS.get("delta8")().encode(far).tolist() == [1, 0, 0, 90]


# -- export ---------------------------------------------------------------------------------------------
def test_export_round_trip_is_bit_exact_and_loads_strict(tmp_path: Path) -> None:
    model, mask = trained_like(RESNET20, 0.95, method="random")
    result = export_model(model, tmp_path / "m.safetensors", mask, RESNET20)
    state, spec = load_export(result.path)
    original = model.state_dict()
    assert spec == RESNET20 and set(state) == set(original)
    for name, tensor in original.items():
        assert state[name].dtype == tensor.dtype and state[name].shape == tensor.shape, name
        assert torch.equal(bits(state[name]), bits(tensor)), name
    assert result.compressed == len(mask) and result.kept == mask.kept()
    fresh = create_model("resnet20")
    fresh.load_state_dict(state, strict=True)
    rebuilt = load_exported_model(result.path)
    assert all(
        torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), original.values(), strict=True)
    )


def test_resnet20_at_98_percent_is_at_least_20x_smaller_than_model_safetensors(tmp_path: Path) -> None:
    for method in ("erk", "random"):
        model, mask = trained_like(RESNET20, 0.98, method=method)
        save_weights(model, tmp_path / "model.safetensors")  # what a finished run writes
        result = export_model(model, tmp_path / "export.safetensors", mask, RESNET20)
        dense = (tmp_path / "model.safetensors").stat().st_size
        assert result.file_bytes * 20 <= dense, (method, result.file_bytes, dense)
        assert abs(result.dense_bytes - dense) < 100  # the reported ratio is against that file


def test_a_weight_too_dense_to_compress_is_stored_plainly(tmp_path: Path) -> None:
    model = create_model("cnn", 10, (1, 8, 8), 0.25)
    result = export_model(model, tmp_path / "dense.safetensors")  # no zeros: nothing to compress
    assert result.compressed == 0
    state, spec = load_export(result.path)
    assert spec is None and all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_export_refuses_nonzero_pruned_weights(tmp_path: Path) -> None:
    model = create_model("cnn", 10, (1, 8, 8), 0.25)
    mask = make_mask(model, MaskConfig(mask_method="random", sparsity=0.9))  # not applied
    with pytest.raises(AnymaskError, match="nonzero weights where the mask prunes them"):
        export_model(model, tmp_path / "x.safetensors", mask)
    assert not (tmp_path / "x.safetensors").exists()


def _one_line_error(path: Path, match: str) -> None:
    with pytest.raises(AnymaskError, match=match) as caught:
        load_export(path)
    assert "\n" not in str(caught.value)


def test_truncated_corrupt_and_foreign_files_get_one_line_errors(tmp_path: Path) -> None:
    model, mask = trained_like(RESNET20, 0.98)
    good = export_model(model, tmp_path / "good.safetensors", mask, RESNET20).path
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    _one_line_error(tmp_path / "cut.safetensors", "truncated or not a safetensors file")
    (tmp_path / "tiny.safetensors").write_bytes(data[:5])
    _one_line_error(tmp_path / "tiny.safetensors", "truncated or not a safetensors file")
    flipped = bytearray(data)
    flipped[-100] ^= 0x10  # one bit of a stored value
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    _one_line_error(tmp_path / "flip.safetensors", "corrupt: its tensors do not match the checksum")
    save_weights(model, tmp_path / "model.safetensors")
    _one_line_error(tmp_path / "model.safetensors", "not an anymask sparse export")
    _one_line_error(tmp_path / "missing.safetensors", "export file not found")


def test_cli_export_of_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = create_model("cnn", 10, (1, 8, 8), 0.25)
    mask = make_mask(model, MaskConfig(mask_method="random", sparsity=0.9))
    mask.apply(model)
    run = write_finished_run(tmp_path / "run", model, mask, "cnn", "digits")
    assert main(["export", str(run), "--out", str(tmp_path / "cnn.safetensors")]) == 0
    assert "smaller than the dense weights" in capsys.readouterr().out
    rebuilt = load_exported_model(tmp_path / "cnn.safetensors")
    for name, tensor in load_file(str(run / "model.safetensors")).items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    assert json.loads((run / "config.json").read_text())["model"]["width"] == 0.25
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.safetensors")]) == 2
    (run / "summary.json").rename(run / "summary.json.bak")
    assert main(["export", str(run), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "run folder not found" in err[0] and "holds an unfinished run" in err[1]


def test_export_refuses_a_factory_model_and_a_tost_official_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A factory named in a run folder is never imported (a canary module would run), and a model with
    permanent extra parts is refused rather than exported without them; each in one line."""
    (tmp_path / "canary_factory.py").write_text(
        f"open({str(tmp_path / 'ran')!r}, 'w').close()\ndef build(c, s, w):\n    raise SystemExit\n"
    )
    monkeypatch.chdir(tmp_path)  # where factories are imported from
    torch.manual_seed(0)
    model = create_model("cnn", 10, (1, 8, 8), 0.25)
    mask = make_mask(model, MaskConfig(mask_method="random", sparsity=0.9))
    run = write_finished_run(tmp_path / "plain", model, mask, "cnn", "digits")
    config = json.loads((run / "config.json").read_text())
    config["model"]["model"] = "canary_factory:build"
    (run / "config.json").write_text(json.dumps(config))
    assert main(["export", str(run), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "ran").exists() and not (tmp_path / "x.safetensors").exists()
    official = write_finished_run(tmp_path / "official", model, mask, "cnn", "digits")
    summary = json.loads((official / "summary.json").read_text())
    (official / "summary.json").write_text(json.dumps({**summary, "plain_architecture": False}))
    assert main(["export", str(official), "--out", str(tmp_path / "y.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "does not import code" in err[0] and "tost-official run" in err[1]


# -- kernels --------------------------------------------------------------------------------------------
@numba_only
@settings(max_examples=25, deadline=None)
@given(
    batch=st.sampled_from([1, 3, 8]),
    channels=st.integers(1, 6),
    outputs=st.integers(1, 6),
    size=st.integers(1, 9),
    kernel_size=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2]),
    relu=st.booleans(),
    residual=st.booleans(),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_numba_conv_equals_torch_conv(
    batch: int,
    channels: int,
    outputs: int,
    size: int,
    kernel_size: int,
    stride: int,
    relu: bool,
    residual: bool,
    density: float,
    seed: int,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(outputs, channels, kernel_size, kernel_size, generator=generator)
    weight *= torch.rand(weight.shape, generator=generator) < density
    bias = torch.randn(outputs, generator=generator)
    padding = kernel_size // 2
    layer = LayerWeights(weight, bias, (stride, stride), (padding, padding), relu=relu, residual=residual)
    x = torch.randn(batch, channels, size, size + 1, generator=generator)
    expected = F.conv2d(x, weight, bias, stride, padding)
    skip = torch.randn(expected.shape, generator=generator) if residual else None
    expected = expected + skip if residual else expected
    expected = expected.relu() if relu else expected
    got = KERNELS.get("numba")(layer)(x, skip)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


@numba_only
def test_numba_and_csr_linear_equal_torch_linear() -> None:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(7, 20, generator=generator) * (torch.rand(7, 20, generator=generator) < 0.3)
    bias = torch.randn(7, generator=generator)
    x = torch.randn(5, 20, generator=generator)
    for name in ("numba", "torch-csr", "scipy-csr"):
        got = KERNELS.get(name)(LayerWeights(weight, bias, relu=True))(x)
        assert torch.allclose(got, F.linear(x, weight, bias).relu(), atol=1e-5), name


# -- sparse inference -----------------------------------------------------------------------------------
def cifar_test_images(data_dir: Path, count: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    from anymask.data import load_dataset

    data = load_dataset("cifar10", data_dir)
    images, labels = data.test_x[:count].float() / 255, data.test_y[:count]
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    return (images - mean) / std, labels


def _same_predictions(
    model: nn.Module, sparse: SparseInference, images: torch.Tensor, labels: torch.Tensor
) -> None:
    with torch.no_grad():
        dense_out = torch.cat([model(chunk) for chunk in images.split(500)])
    sparse_out = torch.cat([sparse(chunk) for chunk in images.split(500)])
    assert (sparse_out - dense_out).abs().max().item() <= 1e-4
    assert torch.equal(sparse_out.argmax(1), dense_out.argmax(1))
    correct = int((sparse_out.argmax(1) == labels).sum())
    assert correct == int((dense_out.argmax(1) == labels).sum())


@numba_only
def test_sparse_resnet20_equals_dense_on_real_cifar10(shared_data: Path) -> None:
    model, mask = trained_like(RESNET20, 0.98)
    images, labels = cifar_test_images(shared_data, 64)
    sparse = sparse_inference_model(model, mask, kernel="numba")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in sparse.modules())  # all folded
    assert set(sparse.plan(64).values()) == {"?"}
    _same_predictions(model, sparse, images, labels)
    assert set(sparse.plan(64).values()) == {"numba"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet20", "vgg16"])
def test_sparse_model_has_the_dense_test_accuracy_on_all_5000_images(shared_data: Path, name: str) -> None:
    model, mask = trained_like(ModelSpec(name, 1.0, 10, (3, 32, 32)), 0.98)
    images, labels = cifar_test_images(shared_data, None)
    _same_predictions(model, sparse_inference_model(model, mask), images, labels)


def test_auto_keeps_dense_layers_on_the_dense_kernel() -> None:
    model = create_model("cnn", 10, (1, 8, 8), 0.25).eval()  # no zeros at all
    sparse = sparse_inference_model(model, kernel="auto")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(sparse(x), model(x), atol=1e-5)
    assert set(sparse.plan(2).values()) == {"dense"}
    assert all(set(layer.kernels) == {"dense"} for layer in sparse.layers().values())


def test_without_numba_every_layer_runs_dense_after_one_notice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` now raises ImportError
    monkeypatch.delitem(sys.modules, "anymask.deploy.numba_kernels", raising=False)
    monkeypatch.setattr(inference_module, "_NOTICES", set())
    model, mask = trained_like(ModelSpec("cnn", 0.25, 10, (1, 8, 8)), 0.9, method="random")
    for kernel in ("auto", "numba"):
        sparse = sparse_inference_model(model, mask, kernel=kernel)
        x = torch.randn(3, 1, 8, 8)
        with torch.no_grad():
            assert torch.allclose(sparse(x), model(x), atol=1e-5)
        assert set(sparse.plan(3).values()) == {"dense"}
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "numba" in notice[0] and "dense" in notice[0]


@numba_only
def test_from_run_and_from_export_give_the_run_model(tmp_path: Path) -> None:
    spec = ModelSpec("cnn", 0.25, 10, (1, 8, 8))
    model, mask = trained_like(spec, 0.9, method="random")
    run = write_finished_run(tmp_path / "run", model, mask, "cnn", "digits")
    export_run(run, tmp_path / "cnn.safetensors")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    for sparse in (SparseInference.from_run(run), SparseInference.from_export(tmp_path / "cnn.safetensors")):
        assert torch.allclose(sparse(x), expected, atol=1e-5)


def test_unknown_kernel_is_a_one_line_error() -> None:
    with pytest.raises(AnymaskError, match="unknown inference kernel 'cuda-magic'"):
        sparse_inference_model(create_model("cnn", 10, (1, 8, 8), 0.25), kernel="cuda-magic")
