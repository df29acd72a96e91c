"""The whole-network program (anymask.deploy.program): every layer kind equals PyTorch, whole networks
equal the dense model, and it is what `auto` picks for a sparse network."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

from anymask.deploy import KERNELS, ModelSpec, sparse_inference_model
from anymask.deploy.inference import fold_batchnorm
from anymask.deploy.program import PHASES, ROWS, SAME, Unsupported, compile_program
from deploy_fixtures import trained_like

pytestmark = pytest.mark.skipif(KERNELS.get("numba").unavailable() is not None, reason="numba not installed")


class TwoConvs(nn.Module):
    """relu?(conv(x) + other(x)) or relu?(conv(x)): the residual is fused into one of the convs."""

    def __init__(self, conv: nn.Conv2d, other: nn.Conv2d | None, relu: bool) -> None:
        super().__init__()
        self.conv, self.other, self.relu = conv, other, nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.other is not None:
            out = out + self.other(x)
        return self.relu(out)


def _sparse_conv(
    generator: torch.Generator, channels: int, outputs: int, density: float, **options: int
) -> nn.Conv2d:
    conv = nn.Conv2d(channels, outputs, **options)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
        conv.weight.mul_(torch.rand(conv.weight.shape, generator=generator) < density)
        conv.bias.copy_(torch.randn(outputs, generator=generator))
    return conv


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 5),
    groups=st.sampled_from([1, 2, "depthwise"]),
    group_width=st.integers(1, 3),
    size=st.integers(1, 9),
    kernel_size=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2, 3]),
    pad_less=st.integers(0, 2),
    dilation=st.sampled_from([1, 2]),
    residual=st.booleans(),
    relu=st.booleans(),
    density=st.floats(0.0, 1.0),
    chunk=st.integers(1, 4),
    threads=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_program_conv_equals_torch_conv(
    batch: int,
    groups: int | str,
    group_width: int,
    size: int,
    kernel_size: int,
    stride: int,
    pad_less: int,
    dilation: int,
    residual: bool,
    relu: bool,
    density: float,
    chunk: int,
    threads: int,
    seed: int,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    count = 3 if groups == "depthwise" else int(groups)
    channels = count * (1 if groups == "depthwise" else group_width)
    outputs = count * group_width
    padding = min(3, max(0, kernel_size // 2 - pad_less) * dilation)  # program.MAX_PAD
    options = {"kernel_size": kernel_size, "stride": stride, "padding": padding, "dilation": dilation}
    size = max(size, dilation * (kernel_size - 1) + 1 - 2 * padding)  # a non-empty output
    conv = _sparse_conv(generator, channels, outputs, density, groups=count, **options)
    other = _sparse_conv(generator, channels, outputs, density, groups=count, **options) if residual else None
    module = TwoConvs(conv, other, relu).eval()
    x = torch.randn(batch, channels, size, size + 1, generator=generator)
    program = compile_program(fold_batchnorm(fx.symbolic_trace(module)), tuple(x.shape[1:]))
    got = torch.from_numpy(program(x.numpy(), chunk, threads))
    with torch.no_grad():
        expected = module(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_each_conv_geometry_has_its_mode() -> None:
    def mode(keep: float = 1.0, **options: int) -> int:
        conv = nn.Conv2d(4, 4, **options)
        with torch.no_grad():
            conv.weight.mul_(torch.rand(conv.weight.shape) < keep)
        program = compile_program(fx.symbolic_trace(nn.Sequential(conv, nn.Flatten())), (4, 8, 8))
        return int(program.ops[1][OP_MODE])

    assert mode(kernel_size=3, padding=1) == SAME
    assert mode(kernel_size=1) == SAME
    assert mode(kernel_size=3, padding=1, stride=2) == PHASES
    assert mode(keep=0.0, kernel_size=3, padding=1, stride=2, groups=4) == ROWS  # too few weights to split
    assert mode(kernel_size=1, stride=2) == PHASES
    assert mode(kernel_size=3) == ROWS  # no padding: the output is smaller than the input


OP_MODE = 16


def test_unsupported_graphs_say_what_and_still_run_layer_by_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    with pytest.raises(Unsupported, match="Sigmoid"):
        compile_program(fx.symbolic_trace(model), (3, 8, 8))
    sparse = sparse_inference_model(model, kernel="numba")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(sparse(x), model(x), atol=1e-5)
    assert sparse.program((3, 8, 8)) is None
    assert set(sparse.plan(2).values()) == {"numba"}  # the per-layer numba kernels


def _trained_like(name: str, sparsity: float) -> nn.Module:
    return trained_like(ModelSpec(name, 1.0, 10, (3, 32, 32)), sparsity)[0]


@pytest.mark.parametrize("name", ["mobilenetv2", "vgg16", "resnet32"])
def test_whole_networks_equal_the_dense_model(name: str) -> None:
    """Depthwise, pointwise, strided, pooled, residual with and without ReLU; chunks over 2 threads."""
    model = _trained_like(name, 0.95)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    program = compile_program(fold_batchnorm(fx.symbolic_trace(model)), (3, 32, 32))
    for chunk, threads in ((1, 1), (2, 2), (5, 1)):
        got = torch.from_numpy(program(x.numpy(), chunk, threads))
        assert (got - expected).abs().max().item() <= 1e-4, (chunk, threads)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert program.layers == convs + 1  # every conv and the classifier, BatchNorm folded


def test_auto_runs_a_sparse_network_as_one_program_and_a_dense_one_layer_by_layer() -> None:
    sparse = sparse_inference_model(_trained_like("resnet20", 0.98), threads=2)
    x = torch.randn(3, 3, 32, 32)
    sparse(x)
    assert sparse.program((3, 32, 32)) is not None
    dense = sparse_inference_model(ModelSpec("resnet20", 1.0, 10, (3, 32, 32)).build().eval())
    dense(x)
    assert dense.program((3, 32, 32)) is None  # no zeros: nothing for a sparse program to skip
    assert set(dense.plan(3).values()) == {"dense"}
