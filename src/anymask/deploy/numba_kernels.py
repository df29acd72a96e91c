"""Sparse convolution and linear kernels compiled by numba (imported only when numba is installed).

Activations are in CHWN layout here: (channels, height, width, batch), batch innermost. One kept weight
(a "tap": input channel c, offsets dy, dx) of output channel o adds ``w * x[c, i + dy, j + dx, :]`` to
``out[o, i, j, :]``; with stride 1 a whole output row of taps is then one contiguous axpy of length
width x batch (2,048 floats for a 32-pixel row at batch 64), which LLVM vectorises. Zeros are never
touched, there is no im2col buffer, and each output row stays in L1 cache while all of its channel's
taps are added to it, then a residual (a ResNet block's shortcut) and the ReLU, in the same pass.
Threads split the output channels (`prange`).

Arrays arrive reshaped so that a row is one 1-D contiguous slice: x as (C, H, W*N), out as
(O, OH, OW*N). Loops over slices start at 0 so that numba can drop its negative-index checks and the
loop vectorises.
"""

from __future__ import annotations

import numba
import numpy as np


def prefer_passive_threads() -> None:
    """Use numba's workqueue threads, which sleep when idle, unless the user chose a layer.

    The default (OpenMP where available) lets idle workers spin for milliseconds after every parallel
    region, on the cores that PyTorch's own OpenMP threads (or anything else running next) need. Only
    effective before numba's first parallel launch in the process.
    """
    if numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"


prefer_passive_threads()
_JIT = {"parallel": True, "fastmath": True, "cache": True, "nogil": True}


@numba.njit(**_JIT)
def conv2d_chwn(  # pragma: no cover
    x, n, width, indptr, chan, dy, dx, weight, bias, sh, sw, residual, add_residual, relu, out
):
    height = x.shape[1]
    outputs, out_h, row_len = out.shape
    out_w = row_len // n
    for o in numba.prange(outputs):
        for i in range(out_h):
            row = out[o, i]
            row[:] = bias[o]
            for t in range(indptr[o], indptr[o + 1]):
                y = i * sh + dy[t]
                if y < 0 or y >= height:
                    continue
                ox = dx[t]
                j0 = max(0, (sw - 1 - ox) // sw)  # first output column whose input column is >= 0
                j1 = min(out_w, (width - 1 - ox) // sw + 1)  # one past the last inside the image
                if j1 <= j0:
                    continue
                w = weight[t]
                src = x[chan[t], y]
                if sw == 1:
                    dst = row[j0 * n : j1 * n]
                    part = src[(j0 + ox) * n : (j1 + ox) * n]
                    for k in range(dst.shape[0]):
                        dst[k] += w * part[k]
                else:
                    for j in range(j0, j1):
                        dst = row[j * n : (j + 1) * n]
                        part = src[(j * sw + ox) * n : (j * sw + ox + 1) * n]
                        for k in range(n):
                            dst[k] += w * part[k]
            if add_residual:
                skip = residual[o, i]
                for k in range(row_len):
                    row[k] += skip[k]
            if relu:
                for k in range(row_len):
                    row[k] = max(row[k], np.float32(0.0))


@numba.njit(**_JIT)
def linear_tn(xt, indptr, col, weight, bias, relu, out):  # pragma: no cover
    """out (O, N) = W x + b for x given transposed, xt (I, N); W as CSR rows."""
    outputs, n = out.shape
    for o in numba.prange(outputs):
        row = out[o]
        row[:] = bias[o]
        for t in range(indptr[o], indptr[o + 1]):
            w = weight[t]
            src = xt[col[t]]
            for k in range(n):
                row[k] += w * src[k]
        if relu:
            for k in range(n):
                row[k] = max(row[k], np.float32(0.0))


def set_threads(count: int) -> None:
    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
