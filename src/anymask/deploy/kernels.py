"""Inference kernels for one convolution or linear layer, in a registry.

Every kernel computes ``relu?(conv2d(x, weight, bias) + residual?)`` (or the linear equivalent) for a
layer whose BatchNorm is already folded in; the residual is a ResNet block's shortcut, fused so that
the sum and the ReLU cost no extra pass over memory. ``dense`` is PyTorch's own and runs everywhere;
the sparse ones skip the zeros. Which one a layer uses is decided in `anymask.deploy.inference` (by
timing them on the layer's real input, or by the caller's choice); docs/performance.md has the
measurements behind the candidates kept here.

A kernel class says whether it can run on this machine (`unavailable`) and on which layers
(`supports`), and is built once per layer from its weights.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anymask.errors import AnymaskError
from anymask.registry import Registry


@dataclass(frozen=True)
class LayerWeights:
    """One folded layer: a Conv2d (4-D weight) or Linear (2-D weight), float32, with a bias."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    relu: bool = False  # applied last, after the residual when there is one
    residual: bool = False  # the layer is called as layer(x, residual) and adds it before the ReLU

    @property
    def is_conv(self) -> bool:
        return self.weight.dim() == 4

    @property
    def density(self) -> float:
        return int(self.weight.count_nonzero()) / max(1, self.weight.numel())

    def fused(self, relu: bool = False, residual: bool = False) -> LayerWeights:
        return dataclasses.replace(self, relu=self.relu or relu, residual=self.residual or residual)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        kh, kw = self.weight.shape[2:]
        return (
            (height + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1,
            (width + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1,
        )


def layer_weights(module: nn.Module) -> LayerWeights:
    """The folded weights of a Conv2d or Linear, float32, with a bias (zeros when it has none)."""
    weight = module.weight.detach().float().contiguous()
    bias = module.bias
    bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().float()
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise AnymaskError(
                f"sparse inference supports numeric zero padding only; this model has a conv with "
                f"padding={module.padding!r}, padding_mode={module.padding_mode!r}"
            )
        return LayerWeights(
            weight, bias, tuple(module.stride), tuple(module.padding), tuple(module.dilation), module.groups
        )
    return LayerWeights(weight, bias)


class Kernel(Protocol):
    sparse: ClassVar[bool]
    auto: ClassVar[bool]  # a candidate when the kernel is chosen by timing (kernel="auto")

    @staticmethod
    def unavailable() -> str | None:
        """Why this kernel cannot run here (a missing package), or None when it can."""
        ...

    @staticmethod
    def supports(layer: LayerWeights) -> bool: ...

    def __init__(self, layer: LayerWeights) -> None: ...

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor: ...


KERNELS: Registry[type[Kernel]] = Registry("inference kernel")


def _finish(out: torch.Tensor, residual: torch.Tensor | None, relu: bool) -> torch.Tensor:
    if residual is not None:
        out = out.add_(residual)
    return out.relu_() if relu else out


def _plain(layer: LayerWeights) -> bool:
    """No groups, no dilation: what the sparse kernels implement."""
    return not layer.is_conv or (layer.groups == 1 and layer.dilation == (1, 1))


@KERNELS.register("dense")
class Dense:
    """PyTorch's own convolution (oneDNN on x86) or matrix product, zeros multiplied like any weight."""

    sparse: ClassVar[bool] = False
    auto: ClassVar[bool] = True

    @staticmethod
    def unavailable() -> str | None:
        return None

    @staticmethod
    def supports(layer: LayerWeights) -> bool:
        return True

    def __init__(self, layer: LayerWeights) -> None:
        self.layer = layer

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        layer = self.layer
        if layer.is_conv:
            out = F.conv2d(
                x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
            )
        else:
            out = F.linear(x, layer.weight, layer.bias)
        return _finish(out, residual, layer.relu)


def _csr_rows(matrix: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, column, value) of a 2-D tensor's nonzeros, row by row, columns ascending."""
    rows, cols = matrix.nonzero(as_tuple=True)
    indptr = np.zeros(matrix.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows.numpy(), minlength=matrix.shape[0]), out=indptr[1:])
    return indptr, cols.numpy().astype(np.int64), matrix[rows, cols].numpy().astype(np.float32)


@KERNELS.register("numba")
class NumbaSparse:
    """Direct sparse convolution: per output channel, one shifted axpy per kept weight (numba_kernels)."""

    sparse: ClassVar[bool] = True
    auto: ClassVar[bool] = True

    @staticmethod
    def unavailable() -> str | None:
        try:
            importlib.import_module("anymask.deploy.numba_kernels")
        except Exception as error:  # ImportError, or numba failing to initialise on this machine
            return f"numba cannot be used ({str(error).splitlines()[0][:120]}); pip install numba"
        return None

    @staticmethod
    def supports(layer: LayerWeights) -> bool:
        return _plain(layer)

    def __init__(self, layer: LayerWeights) -> None:
        self.layer = layer
        self.impl = importlib.import_module("anymask.deploy.numba_kernels")
        weight = layer.weight.detach().float()
        self.outputs = weight.shape[0]
        self.bias = layer.bias.detach().float().numpy().copy()
        self.indptr, columns, self.values = _csr_rows(weight.reshape(self.outputs, -1))
        if layer.is_conv:
            _, _, kh, kw = weight.shape
            self.channel = columns // (kh * kw)
            self.dy = (columns // kw) % kh - layer.padding[0]
            self.dx = columns % kw - layer.padding[1]
        else:
            self.column = columns

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.layer.is_conv:
            return self._conv(x, residual)
        out = self._linear(x)
        return out if residual is None else _finish(out, residual, self.layer.relu)

    def _conv(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        n, channels, height, width = x.shape
        out_h, out_w = self.layer.output_size(height, width)
        # CHWN: a no-op when the previous layer was this kernel too (its output is a CHWN view).
        chwn = x.detach().float().permute(1, 2, 3, 0).contiguous()
        out = torch.empty((self.outputs, out_h, out_w, n), dtype=torch.float32)
        if residual is None:
            skip = np.zeros((1, 1, 1), dtype=np.float32)
        else:
            skip = residual.detach().float().permute(1, 2, 3, 0).contiguous().numpy()
            skip = skip.reshape(self.outputs, out_h, out_w * n)
        self.impl.conv2d_chwn(
            chwn.numpy().reshape(channels, height, width * n),
            n,
            width,
            self.indptr,
            self.channel,
            self.dy,
            self.dx,
            self.values,
            self.bias,
            self.layer.stride[0],
            self.layer.stride[1],
            skip,
            residual is not None,
            self.layer.relu,
            out.numpy().reshape(self.outputs, out_h, out_w * n),
        )
        return out.permute(3, 0, 1, 2)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        """Without a residual; __call__ adds one (and then the ReLU) in torch."""
        xt = x.detach().float().t().contiguous()
        out = torch.empty((self.outputs, x.shape[0]), dtype=torch.float32)
        relu = self.layer.relu and not self.layer.residual
        self.impl.linear_tn(xt.numpy(), self.indptr, self.column, self.values, self.bias, relu, out.numpy())
        return out.t()

    @staticmethod
    def set_threads(count: int) -> None:
        importlib.import_module("anymask.deploy.numba_kernels").set_threads(count)


class _SparseMatrixTimesColumns:
    """A convolution as (sparse weight matrix) x (unfolded input columns): the im2col route.

    Subclasses supply the sparse matrix product; the unfold (a 9x copy of the input for 3x3 kernels)
    is what makes this route slow next to a direct kernel. Kept as measured baselines, not auto choices.
    """

    sparse: ClassVar[bool] = True
    auto: ClassVar[bool] = False

    @staticmethod
    def supports(layer: LayerWeights) -> bool:
        return _plain(layer)

    def __init__(self, layer: LayerWeights) -> None:
        self.layer = layer
        weight = layer.weight.detach().float()
        self.outputs = weight.shape[0]
        self.bias = layer.bias.detach().float().view(-1, 1)
        self.matrix = self.sparse_matrix(weight.reshape(self.outputs, -1))

    def sparse_matrix(self, dense: torch.Tensor) -> object:
        raise NotImplementedError

    def multiply(self, columns: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        layer, x = self.layer, x.detach().float()
        if layer.is_conv:
            n, _, height, width = x.shape
            out_h, out_w = layer.output_size(height, width)
            columns = F.unfold(x, layer.weight.shape[2:], layer.dilation, layer.padding, layer.stride)
            columns = columns.transpose(0, 1).reshape(columns.shape[1], -1)  # (C*KH*KW, N*L)
            out = (self.multiply(columns) + self.bias).view(self.outputs, n, out_h, out_w)
            out = out.permute(1, 0, 2, 3)
        else:
            out = (self.multiply(x.t().contiguous()) + self.bias).t()
        return _finish(out, residual, layer.relu)


@KERNELS.register("torch-csr")
class TorchCsr(_SparseMatrixTimesColumns):
    """torch.sparse CSR weight times the unfolded input."""

    @staticmethod
    def unavailable() -> str | None:
        return None

    def sparse_matrix(self, dense: torch.Tensor) -> object:
        with warnings.catch_warnings():  # "sparse CSR support is in beta": nothing the user can act on
            warnings.simplefilter("ignore", UserWarning)
            return dense.to_sparse_csr()

    def multiply(self, columns: torch.Tensor) -> torch.Tensor:
        return torch.mm(self.matrix, columns)  # type: ignore[arg-type]


@KERNELS.register("scipy-csr")
class ScipyCsr(_SparseMatrixTimesColumns):
    """scipy.sparse CSR weight times the unfolded input (single-threaded C++)."""

    @staticmethod
    def unavailable() -> str | None:
        try:
            importlib.import_module("scipy.sparse")
        except ImportError:
            return "scipy is not installed; pip install scipy"
        return None

    def sparse_matrix(self, dense: torch.Tensor) -> object:
        from scipy.sparse import csr_matrix

        return csr_matrix(dense.numpy())

    def multiply(self, columns: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.matrix @ columns.numpy()))  # type: ignore[operator]


def set_num_threads(count: int) -> None:
    """Threads for PyTorch and for every kernel that keeps its own pool (numba)."""
    torch.set_num_threads(count)
    for name in KERNELS:
        kernel = KERNELS.get(name)
        if hasattr(kernel, "set_threads") and kernel.unavailable() is None:
            kernel.set_threads(count)  # type: ignore[attr-defined]
