"""A trained sparse network as a fast CPU inference module.

`sparse_inference_model(model, mask)` traces the model (torch.fx) and folds every BatchNorm that
directly follows a convolution into that convolution's weight and bias (a pruned weight stays exactly
zero: it is only scaled). Then it can run two ways, chosen per input shape:

- the whole network as ONE numba call (`anymask.deploy.program`): no per-layer dispatch, no layout
  conversions, residual sums and ReLUs fused into the convolutions, every layer kind (first conv,
  3x3, strided, depthwise and pointwise convs, pooling, the classifier) on kernels that skip zeros;
- layer by layer: each Conv2d and Linear becomes an `InferenceLayer` with a ReLU that follows it (or a
  residual sum and the ReLU after it, as in a ResNet block) fused in, running one kernel from
  `anymask.deploy.kernels.KERNELS`.

``kernel="auto"`` (the default) times the program (at every chunk size in `CHUNKS`) against the dense
layer-by-layer graph on the first batch of each shape and keeps the fastest; ``kernel="numba"`` runs
the program (timing only chunk sizes); ``kernel="dense"`` is the fair dense baseline, the same folded,
fused graph in PyTorch eager; another kernel name forces it on every layer it supports. A graph the
program cannot express (an operation it does not know) runs layer by layer, where `auto` times the
dense kernel against the per-layer sparse ones (above `MAX_SPARSE_DENSITY` only dense). Where numba
cannot run, every layer runs dense and one line says why.
"""

from __future__ import annotations

import contextlib
import copy
import operator
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from anymask.deploy.kernels import KERNELS, Kernel, LayerWeights, layer_weights
from anymask.errors import AnymaskError
from anymask.masks import Mask

if TYPE_CHECKING:
    from anymask.deploy.program import Program

AUTO = "auto"
PROGRAM = "numba"  # the whole-network program; layers it runs report this kernel in `plan`
LAYERS = "layers"
CHUNKS = (1, 2, 4, 8, 16, 32)
"""Images per chunk `auto` times for the program (each thread runs whole chunks in its own arena)."""
_NOTICES: set[str] = set()
MAX_SPARSE_DENSITY = 0.5
"""Above this density `auto` does not even time the sparse kernels: a kernel that skips zeros does the
dense kernel's work there, less efficiently (docs/performance.md)."""
TUNE_REPEATS = 5
"""Timed calls per candidate when a layer or the program first sees a batch shape (after one untimed
call); `auto` compares their medians."""


def notice(message: str) -> None:
    """One line on stderr, once per process and message."""
    if message not in _NOTICES:
        _NOTICES.add(message)
        print(f"anymask: notice: {message}", file=sys.stderr)


def sparse_kernels(policy: str = AUTO) -> dict[str, type[Kernel]]:
    """The sparse kernels `policy` may use that can run here; one notice says why, when none can."""
    wanted = [
        n
        for n in KERNELS
        if KERNELS.get(n).sparse and (n == policy or (policy == AUTO and KERNELS.get(n).auto))
    ]
    usable, missing = {}, []
    for name in wanted:
        reason = KERNELS.get(name).unavailable()
        if reason is None:
            usable[name] = KERNELS.get(name)
        else:
            missing.append(f"{name}: {reason}")
    if wanted and not usable:
        notice(f"sparse kernels unavailable, running dense PyTorch kernels instead ({'; '.join(missing)})")
    return usable


class InferenceLayer(nn.Module):
    """One folded Conv2d or Linear, computed by the kernel chosen for each batch size."""

    def __init__(self, weights: LayerWeights, kernels: dict[str, Kernel], policy: str) -> None:
        super().__init__()
        self.weights = weights
        self.kernels = kernels  # name -> built kernel; always holds "dense"
        self.policy = policy  # AUTO or a kernel name
        self.choice: dict[int, str] = {}  # batch size -> kernel name

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[0]
        if batch not in self.choice:
            self.choice[batch] = self._choose(x, residual)
        return self.kernels[self.choice[batch]](x, residual)

    def _choose(self, x: torch.Tensor, residual: torch.Tensor | None) -> str:
        if self.policy != AUTO:
            return self.policy if self.policy in self.kernels else "dense"
        if len(self.kernels) == 1:
            return "dense"
        timings = {
            name: _typical_time(lambda k=kernel: k(x, residual)) for name, kernel in self.kernels.items()
        }
        return min(timings, key=timings.__getitem__)

    def extra_repr(self) -> str:
        shape = "x".join(str(d) for d in self.weights.weight.shape)
        return f"{shape}, density {self.weights.density:.4f}, relu={self.weights.relu}, kernels={self.choice}"


def _typical_time(run: Callable[[], object]) -> float:
    """Median seconds of TUNE_REPEATS calls, after one untimed call (it compiles or loads numba code
    and warms the caches). The median, not the best: threads sharing an image wait for a helper to
    wake, which varies from call to call, and the best of a few calls made that look faster than it
    is on the run that matters."""
    run()
    times = []
    for _ in range(TUNE_REPEATS):
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


@dataclass(frozen=True)
class Choice:
    """How a batch shape runs: the whole-network program on chunks of `chunk` images, or layer by layer."""

    engine: str  # PROGRAM or LAYERS
    chunk: int = 0
    shared: bool = False  # all threads on each chunk, step by step (`program_run`), not a chunk each


class SparseInference(nn.Module):
    """The folded network; call it on float32 NCHW images (no gradients).

    Two ways to run it, chosen per input shape: the whole network as one numba program (`program.py`;
    when the graph lowers and numba can run), or the fx graph layer by layer, each layer on its
    `InferenceLayer` kernel (dense PyTorch under `auto`). `threads` (default: torch.get_num_threads()
    at call time) is how many threads the program uses; it runs one parallel region per call in numba
    threads that sleep when idle, so nothing needs OMP_WAIT_POLICY.
    """

    def __init__(
        self, graph: fx.GraphModule, folded: fx.GraphModule | None, policy: str, threads: int | None = None
    ) -> None:
        super().__init__()
        self.graph_module = graph
        self.policy = policy
        self.threads = threads
        self._folded = folded  # lowered per image shape; None: layer by layer only
        self._programs: dict[tuple[int, ...], Program | None] = {}
        self.choices: dict[tuple[int, ...], Choice] = {}  # input shape (N, C, H, W) -> how it runs

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous()
        shape = tuple(x.shape)
        if shape not in self.choices:
            self.choices[shape] = self._choose(x)
        choice = self.choices[shape]
        if choice.engine == LAYERS:
            return self.graph_module(x).contiguous()
        return self._run_program(x, choice.chunk, choice.shared)

    def _run_program(self, x: torch.Tensor, chunk: int, shared: bool = False) -> torch.Tensor:
        program = self._programs[tuple(x.shape[1:])]
        assert program is not None
        return torch.from_numpy(program(x.numpy(), chunk, self._threads(), shared))

    def _threads(self) -> int:
        return max(1, self.threads or torch.get_num_threads())

    def program(self, image_shape: tuple[int, ...]) -> Program | None:
        """The whole-network program for images of `image_shape`, or None when it cannot be built."""
        if image_shape not in self._programs:
            self._programs[image_shape] = None
            if self._folded is not None and len(image_shape) == 3:
                from anymask.deploy.program import Unsupported, compile_program

                with contextlib.suppress(Unsupported):  # then layer by layer
                    self._programs[image_shape] = compile_program(self._folded, image_shape)  # type: ignore[arg-type]
        return self._programs[image_shape]

    def _chunks(self, batch: int) -> list[int]:
        """Chunk sizes worth timing: each thread gets at least one chunk."""
        per_thread = -(-batch // self._threads())
        return [c for c in CHUNKS if c <= per_thread] or [1]

    def _choose(self, x: torch.Tensor) -> Choice:
        if self.program(tuple(x.shape[1:])) is None:
            return Choice(LAYERS)
        batch = x.shape[0]
        runs: dict[Choice, Callable[[], object]] = {
            Choice(PROGRAM, chunk): (lambda c=chunk: self._run_program(x, c)) for chunk in self._chunks(batch)
        }
        if self._threads() > 1 and batch < 2 * self._threads():  # too few images for a chunk per thread
            runs[Choice(PROGRAM, batch, shared=True)] = lambda: self._run_program(x, batch, shared=True)
        if self.policy == AUTO:
            for layer in self.layers().values():  # the alternative run: every layer dense
                layer.choice.setdefault(batch, "dense")
            runs[Choice(LAYERS)] = lambda: self.graph_module(x)
        if len(runs) == 1:
            return next(iter(runs))
        timings = {choice: _typical_time(run) for choice, run in runs.items()}
        return min(timings, key=timings.__getitem__)

    def layers(self) -> dict[str, InferenceLayer]:
        return {n: m for n, m in self.graph_module.named_modules() if isinstance(m, InferenceLayer)}

    def plan(self, batch: int) -> dict[str, str]:
        """Layer name -> the kernel it runs at `batch` (known once a batch of that size has run);
        PROGRAM for every layer when the whole-network program runs that batch."""
        on_program = any(s[0] == batch and c.engine == PROGRAM for s, c in self.choices.items())
        return {
            name: PROGRAM if on_program else layer.choice.get(batch, "?")
            for name, layer in self.layers().items()
        }

    @classmethod
    def from_run(cls, run_dir: str | Path, kernel: str = AUTO) -> SparseInference:
        from anymask.deploy.run_folder import read_run

        run = read_run(run_dir)
        return sparse_inference_model(run.model(), run.mask, kernel)

    @classmethod
    def from_export(cls, path: str | Path, kernel: str = AUTO) -> SparseInference:
        from anymask.deploy.export import load_exported_model

        return sparse_inference_model(load_exported_model(path), None, kernel)


def sparse_inference_model(
    model: nn.Module, mask: Mask | None = None, kernel: str = AUTO, threads: int | None = None
) -> SparseInference:
    """`model` (with `mask` applied, if given) as a CPU inference module; see the module docstring."""
    if kernel != AUTO:
        KERNELS.get(kernel)  # one-line error for an unknown name
    model = copy.deepcopy(model).cpu().float().eval()
    if mask is not None:
        mask.apply(model)
    graph = fold_batchnorm(_trace(model))
    sparse = sparse_kernels(kernel)
    if kernel != AUTO and kernel not in sparse:
        kernel = "dense"  # asked for dense, or the notice above said why not
    folded = None
    if PROGRAM in sparse and (
        kernel == PROGRAM or (kernel == AUTO and _density(graph) <= MAX_SPARSE_DENSITY)
    ):
        folded = copy.deepcopy(graph)
    _replace_layers(graph, sparse, kernel)
    return SparseInference(graph, folded, kernel, threads)


def _density(graph: fx.GraphModule) -> float:
    """Kept fraction of all Conv2d and Linear weights."""
    weights = [m.weight for m in graph.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    return sum(int(w.count_nonzero()) for w in weights) / max(1, sum(w.numel() for w in weights))


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as error:
        first = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise AnymaskError(
            f"cannot trace {type(model).__name__} for inference with torch.fx ({first}); sparse inference "
            "needs a forward without data-dependent control flow"
        ) from None


def _set_module(graph: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(graph.get_submodule(parent) if parent else graph, leaf, module)


def _single_module_user(node: fx.Node, modules: dict[str, nn.Module], kind: type) -> fx.Node | None:
    """The one node using `node`'s output when it calls a module of type `kind`, else None."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.op == "call_module" and isinstance(modules[str(user.target)], kind):
        return user
    return None


def fold_batchnorm(graph: fx.GraphModule) -> fx.GraphModule:
    """Fold each BatchNorm2d whose input is a Conv2d's output (and nothing else's) into that Conv2d."""
    modules = dict(graph.named_modules())
    calls = _call_counts(graph)
    for node in list(graph.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        norm = _single_module_user(node, modules, nn.BatchNorm2d)
        if norm is None or calls[node.target] > 1 or calls[norm.target] > 1:
            continue
        fused = fuse_conv_bn_eval(modules[node.target], modules[norm.target])
        _set_module(graph, node.target, fused)
        modules[node.target] = fused
        norm.replace_all_uses_with(node)
        graph.graph.erase_node(norm)
    graph.graph.lint()
    graph.delete_all_unused_submodules()
    graph.recompile()
    return graph


def _call_counts(graph: fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module":
            counts[str(node.target)] = counts.get(str(node.target), 0) + 1
    return counts


def _replace_layers(graph: fx.GraphModule, sparse: dict[str, type[Kernel]], policy: str) -> None:
    """Each Conv2d / Linear becomes an InferenceLayer; a ReLU module right after it is fused in."""
    modules = dict(graph.named_modules())
    calls = _call_counts(graph)
    for node in list(graph.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d | nn.Linear):
            continue
        if calls[node.target] > 1:
            continue  # a module called twice would need one kernel per call site
        weights = _fuse_followers(graph, node, modules, layer_weights(modules[node.target]))
        kernels: dict[str, Kernel] = {"dense": KERNELS.get("dense")(weights)}
        for name, kernel in sparse.items():
            if kernel.supports(weights) and (policy == name or weights.density <= MAX_SPARSE_DENSITY):
                kernels[name] = kernel(weights)
        _set_module(graph, node.target, InferenceLayer(weights, kernels, policy))
    graph.graph.lint()
    graph.delete_all_unused_submodules()
    graph.recompile()


def _fuse_followers(
    graph: fx.GraphModule, node: fx.Node, modules: dict[str, nn.Module], weights: LayerWeights
) -> LayerWeights:
    """Fold what directly follows the layer into it: a ReLU, or a residual sum then a ReLU.

    The residual pattern is ``relu(layer(x) + other)``: the layer is called as ``layer(x, other)``,
    moved to just before the sum (where `other` exists), and the sum and the ReLU leave the graph.
    """
    relu = _single_module_user(node, modules, nn.ReLU)
    if relu is not None:
        relu.replace_all_uses_with(node)
        graph.graph.erase_node(relu)
        return weights.fused(relu=True)
    if not weights.is_conv or len(node.users) != 1:
        return weights
    add = next(iter(node.users))
    if add.op != "call_function" or add.target not in (operator.add, torch.add) or len(add.args) != 2:
        return weights
    others = [a for a in add.args if a is not node]
    relu = _single_module_user(add, modules, nn.ReLU)
    if relu is None or len(others) != 1 or not isinstance(others[0], fx.Node) or add.kwargs:
        return weights
    add.prepend(node)
    node.args = (*node.args, others[0])
    relu.replace_all_uses_with(node)
    graph.graph.erase_node(relu)
    graph.graph.erase_node(add)
    return weights.fused(relu=True, residual=True)
