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
from anymask.deploy.program_run import UNITS_PER_THREAD
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
    threads=st.integers(1, 3),
    shared=st.booleans(),
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
    shared: bool,
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
    got = torch.from_numpy(program(x.numpy(), chunk, threads, shared))
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
    for chunk, threads, shared in ((1, 1, False), (2, 2, False), (5, 1, False), (1, 2, True), (2, 3, True)):
        got = torch.from_numpy(program(x.numpy(), chunk, threads, shared))
        assert (got - expected).abs().max().item() <= 1e-4, (chunk, threads, shared)
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


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet20"])
def test_stale_arena_values_never_reach_the_output(name: str) -> None:
    """Borders that no step reads are left as the arena had them: fill every arena with NaN between
    calls and the logits are still exact (a border that must be zero and is not would spread NaN)."""
    model = _trained_like(name, 0.95)
    program = compile_program(fold_batchnorm(fx.symbolic_trace(model)), (3, 32, 32))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)
    for chunk, threads, shared in ((1, 1, False), (1, 2, False), (2, 2, True)):
        program(x.numpy(), chunk, threads, shared)
        for arena in program._arenas.values():
            arena[:] = float("nan")
        got = torch.from_numpy(program(x.numpy(), chunk, threads, shared))
        assert (got - expected).abs().max().item() <= 1e-4, (chunk, threads, shared)
    skipped = sum(1 for op in program.ops if op[OP_BORDER] == 0 and op[0] != 7)
    assert skipped > 0  # some outputs' borders are never read (1x1 convs' inputs, the pooled features)


OP_BORDER = 18


@settings(max_examples=30, deadline=None)
@given(chunk=st.integers(1, 8), threads=st.integers(1, 6))
def test_shared_units_cover_every_channel_once(chunk: int, threads: int) -> None:
    """Each step part's units are consecutive channel ranges from 0 to its channel count, no more than
    UNITS_PER_THREAD per thread; a step part with nothing to split has none."""
    program = _program_of("mobilenetv2")
    units, bounds = program.share_units(chunk, threads)
    assert len(units) == 2 * len(program.ops) + 1
    for index, op in enumerate(program.ops):
        for part in (0, 1):
            mine = bounds[units[2 * index + part] : units[2 * index + part + 1]]
            if part == 0 and not (op[0] == 1 and op[OP_MODE] == PHASES):
                assert len(mine) == 0
                continue
            channels = op[2] if part == 0 or op[0] == 7 else op[6]
            assert mine[0] == 0 and mine[-1] == channels
            assert (mine[1:] > mine[:-1]).all()
            assert len(mine) - 1 <= UNITS_PER_THREAD * threads


_PROGRAMS: dict[str, object] = {}


def _program_of(name: str):  # type: ignore[no-untyped-def]
    if name not in _PROGRAMS:
        model = _trained_like(name, 0.95)
        _PROGRAMS[name] = compile_program(fold_batchnorm(fx.symbolic_trace(model)), (3, 32, 32))
    return _PROGRAMS[name]


def test_auto_times_all_threads_on_one_image_below_a_chunk_per_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At batch 1 on 2 threads, `auto` also times both threads sharing the image, keeps it when it is
    the fastest, and its output is the dense model's; at batch 4 it does not time it."""
    import anymask.deploy.inference as inference

    timed: list[object] = []

    def fake_time(run):  # type: ignore[no-untyped-def]
        timed.append(run)
        return 0.5 if len(timed) == 2 else 1.0  # the second candidate, the shared run, is fastest

    monkeypatch.setattr(inference, "_typical_time", fake_time)
    model = _trained_like("resnet20", 0.98)
    sparse = sparse_inference_model(model, threads=2)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got, expected = sparse(x), model(x)
    assert sparse.choices[(1, 3, 32, 32)] == inference.Choice("numba", 1, shared=True)
    assert len(timed) == 3  # chunks of 1, shared, dense layers
    assert (got - expected).abs().max().item() <= 1e-4
    timed.clear()
    sparse(torch.randn(4, 3, 32, 32))
    assert len(timed) == 3  # chunks of 1 and 2, dense layers


def test_atomic_counter_loses_no_increment_across_threads() -> None:
    """Two threads raise one counter 200,000 times each through `fetch_add` (numba, without the GIL):
    the final count is exact and every returned old value is distinct, so no two claims collide."""
    import threading

    import numba
    import numpy as np

    from anymask.deploy.numba_atomics import fetch_add

    @numba.njit(nogil=True)
    def claim(counters, seen, count):  # type: ignore[no-untyped-def]
        for i in range(count):
            seen[i] = fetch_add(counters, 0, 1)

    counters = np.zeros(1, dtype=np.int64)
    seen = [np.zeros(200_000, dtype=np.int64) for _ in range(2)]
    claim(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), 1)  # compile outside the threads
    threads = [threading.Thread(target=claim, args=(counters, mine, len(mine))) for mine in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counters[0] == 400_000
    assert len(np.unique(np.concatenate(seen))) == 400_000
