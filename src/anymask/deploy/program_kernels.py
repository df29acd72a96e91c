"""The whole network in one numba call: an interpreter over a lowered program (see `program.py`).

Imported only when numba is installed. `run_serial` runs the program on every chunk of images in the
calling thread; `run_parallel` gives each thread its own arena and its own chunks, so one parallel
region covers the whole batch and the threads never wait for each other between layers.

Activations live in one float32 arena per thread, each tensor in a padded CHWN block: (channels,
height + 2P, width + 2P, n) for a chunk of n images, batch innermost, with a zero border of P pixels
(P = the largest convolution padding of the network). The border makes padding free: a kept weight
(a "tap": input channel c, offsets dy, dx) of output channel o adds ``w * x[c, i + dy, j + dx, :]`` to
``out[o, i, j, :]`` and never has to test the image edge. For a stride-1 convolution whose output has
its input's size, input and output have the same row pitch, so one tap is ONE contiguous multiply-add
over the whole channel plane shifted by ``(dy * pitch + dx) * n`` (1,024 floats for a 32x32 image at
batch 1): the columns this wrongly computes are exactly the border columns, zeroed afterwards. The plane
is walked in blocks that stay in L1 while every tap of the channel is added, then the residual and ReLU.

Every producer rewrites its whole output block, border included, so arena slots can be reused.
"""

from __future__ import annotations

import numba
import numpy as np

from anymask.deploy.numba_kernels import prefer_passive_threads

prefer_passive_threads()

_JIT = {"fastmath": True, "cache": True, "nogil": True}
BLOCK = 4096
"""Floats of an output plane computed together (16 KiB: inside L1 with the input rows it reads)."""

# op kinds (column 0 of the ops table); the column layout is `program.OP_FIELDS`
INPUT, CONV, MAXPOOL, MEANPOOL, LINEAR, ADD, RELU, OUTPUT = range(8)
SAME, PHASES, ROWS = range(3)  # how a conv runs (column 16): see `program.conv_mode`


@numba.njit(**_JIT)
def _zero_border(arena, base, channels, height, width, pad, n):  # pragma: no cover
    """Zero the P-pixel border of every channel plane of the block at `base` (absolute offset)."""
    pitch = width + 2 * pad
    plane = (height + 2 * pad) * pitch * n
    for c in range(channels):
        start = base + c * plane
        arena[start : start + pad * pitch * n] = 0.0
        tail = start + (pad + height) * pitch * n
        arena[tail : start + plane] = 0.0
        for i in range(pad, pad + height):
            row = start + i * pitch * n
            arena[row : row + pad * n] = 0.0
            arena[row + (pad + width) * n : row + pitch * n] = 0.0


@numba.njit(**_JIT)
def _finish(out, arena, residual_at, relu):  # pragma: no cover
    if residual_at >= 0:
        skip = arena[residual_at : residual_at + out.shape[0]]
        for k in range(out.shape[0]):
            out[k] += skip[k]
    if relu:
        for k in range(out.shape[0]):
            out[k] = max(out[k], np.float32(0.0))


@numba.njit(**_JIT)
def _conv_flat(arena, n, pad, op, src_at, indptr, offset, weight, bias):  # pragma: no cover
    """Each tap is one shifted multiply-add over the output plane; `src_at` holds planes of the
    output's geometry (the input itself for a same-size stride-1 conv, else its phase planes)."""
    dst_at, outputs, out_h, out_w = op[5] * n, op[6], op[7], op[8]
    residual_at = op[9] * n if op[9] >= 0 else -1
    first_tap, first_bias, relu = op[10], op[11], op[14] != 0
    pitch = out_w + 2 * pad
    plane = (out_h + 2 * pad) * pitch * n
    first = (pad * pitch + pad) * n  # the first interior pixel
    last = ((pad + out_h - 1) * pitch + pad + out_w) * n  # one past the last one
    for o in range(outputs):
        base = dst_at + o * plane
        lo, hi = indptr[first_tap + o], indptr[first_tap + o + 1]
        for start in range(first, last, BLOCK):
            length = min(BLOCK, last - start)
            out = arena[base + start : base + start + length]
            out[:] = bias[first_bias + o]
            t = lo
            while t + 4 <= hi:  # four taps per pass: a quarter of the loads and stores of `out`
                s0 = arena[src_at + offset[t] * n + start : src_at + offset[t] * n + start + length]
                s1 = arena[src_at + offset[t + 1] * n + start : src_at + offset[t + 1] * n + start + length]
                s2 = arena[src_at + offset[t + 2] * n + start : src_at + offset[t + 2] * n + start + length]
                s3 = arena[src_at + offset[t + 3] * n + start : src_at + offset[t + 3] * n + start + length]
                w0, w1, w2, w3 = weight[t], weight[t + 1], weight[t + 2], weight[t + 3]
                for k in range(length):
                    out[k] += w0 * s0[k] + w1 * s1[k] + w2 * s2[k] + w3 * s3[k]
                t += 4
            while t < hi:
                src = arena[src_at + offset[t] * n + start : src_at + offset[t] * n + start + length]
                w = weight[t]
                for k in range(length):
                    out[k] += w * src[k]
                t += 1
            _finish(out, arena, residual_at + o * plane + start if residual_at >= 0 else -1, relu)
    _zero_border(arena, dst_at, outputs, out_h, out_w, pad, n)


@numba.njit(**_JIT)
def _split_phases(arena, n, pad, op):  # pragma: no cover
    """The input of a strided conv as stride_h x stride_w phase planes of the output's geometry:
    phase (py, px) of channel c holds x[c, s*a + py, s*b + px] at (a, b), zero outside the input."""
    src_at, channels, height, width = op[1] * n, op[2], op[3], op[4]
    out_h, out_w, sh, sw, dst_at = op[7], op[8], op[12], op[13], op[17] * n
    pitch, out_pitch = width + 2 * pad, out_w + 2 * pad
    plane, out_plane = (height + 2 * pad) * pitch * n, (out_h + 2 * pad) * out_pitch * n
    rows, cols = height + 2 * pad, width + 2 * pad
    used = op[15]  # bit (py * sw + px) set when a kept weight reads that phase
    for py in range(sh):
        for px in range(sw):
            if not (used >> (py * sw + px)) & 1:
                continue
            # columns b whose input column pad + sw * (b - pad) + px lies inside the padded input
            b_lo = max(0, -((px + pad - sw * pad) // sw))
            b_hi = min(out_pitch, (cols - 1 - pad - px + sw * pad) // sw + 1)
            for c in range(channels):
                base = dst_at + ((c * sh + py) * sw + px) * out_plane
                for a in range(out_h + 2 * pad):
                    y = pad + sh * (a - pad) + py
                    row = base + a * out_pitch * n
                    if y < 0 or y >= rows or b_hi <= b_lo:
                        arena[row : row + out_pitch * n] = 0.0
                        continue
                    arena[row : row + b_lo * n] = 0.0
                    arena[row + b_hi * n : row + out_pitch * n] = 0.0
                    src_row = src_at + c * plane + (y * pitch + pad - sw * pad + px) * n
                    if n == 1:
                        for b in range(b_lo, b_hi):
                            arena[row + b] = arena[src_row + sw * b]
                    else:
                        for b in range(b_lo, b_hi):
                            s0, d0 = src_row + sw * b * n, row + b * n
                            for k in range(n):
                                arena[d0 + k] = arena[s0 + k]


@numba.njit(**_JIT)
def _conv_rows(arena, n, pad, op, indptr, chan, dy, dx, weight, bias):  # pragma: no cover
    """Any stride and output size: output row by output row, each tap one (strided) row update."""
    src_at, height, width = op[1] * n, op[3], op[4]
    dst_at, outputs, out_h, out_w = op[5] * n, op[6], op[7], op[8]
    residual_at = op[9] * n if op[9] >= 0 else -1
    first_tap, first_bias, sh, sw, relu = op[10], op[11], op[12], op[13], op[14] != 0
    pitch = width + 2 * pad
    plane = (height + 2 * pad) * pitch * n
    out_pitch = out_w + 2 * pad
    out_plane = (out_h + 2 * pad) * out_pitch * n
    row_len = out_w * n
    for o in range(outputs):
        base = dst_at + o * out_plane
        lo, hi = indptr[first_tap + o], indptr[first_tap + o + 1]
        for i in range(out_h):
            at = base + ((pad + i) * out_pitch + pad) * n
            row = arena[at : at + row_len]
            row[:] = bias[first_bias + o]
            for t in range(lo, hi):
                src = src_at + chan[t] * plane + ((pad + i * sh + dy[t]) * pitch + pad + dx[t]) * n
                w = weight[t]
                if sw == 1:
                    part = arena[src : src + row_len]
                    for k in range(row_len):
                        row[k] += w * part[k]
                elif n == 1:
                    for j in range(out_w):
                        row[j] += w * arena[src + j * sw]
                else:
                    for j in range(out_w):
                        s = src + j * sw * n
                        for k in range(n):
                            row[j * n + k] += w * arena[s + k]
            _finish(row, arena, residual_at + (at - dst_at) if residual_at >= 0 else -1, relu)
    _zero_border(arena, dst_at, outputs, out_h, out_w, pad, n)


@numba.njit(**_JIT)
def _max_pool(arena, n, pad, op):  # pragma: no cover
    src_at, channels, height, width = op[1] * n, op[2], op[3], op[4]
    dst_at, out_h, out_w, size, stride = op[5] * n, op[7], op[8], op[15], op[12]
    pitch, out_pitch = width + 2 * pad, out_w + 2 * pad
    plane, out_plane = (height + 2 * pad) * pitch * n, (out_h + 2 * pad) * out_pitch * n
    for c in range(channels):
        for i in range(out_h):
            for j in range(out_w):
                dst = dst_at + c * out_plane + ((pad + i) * out_pitch + pad + j) * n
                for k in range(n):
                    arena[dst + k] = -np.inf
                for a in range(size):
                    for b in range(size):
                        src = src_at + c * plane + ((pad + i * stride + a) * pitch + pad + j * stride + b) * n
                        for k in range(n):
                            arena[dst + k] = max(arena[dst + k], arena[src + k])
    _zero_border(arena, dst_at, channels, out_h, out_w, pad, n)


@numba.njit(**_JIT)
def _mean_pool(arena, n, pad, op):  # pragma: no cover
    """Global average pool: (C, H, W) -> (C, 1, 1)."""
    src_at, channels, height, width, dst_at = op[1] * n, op[2], op[3], op[4], op[5] * n
    pitch = width + 2 * pad
    plane = (height + 2 * pad) * pitch * n
    out_plane = (1 + 2 * pad) * (1 + 2 * pad) * n
    centre = (pad * (1 + 2 * pad) + pad) * n
    scale = np.float32(1.0 / (height * width))
    for c in range(channels):
        dst = arena[dst_at + c * out_plane + centre : dst_at + c * out_plane + centre + n]
        dst[:] = 0.0
        for i in range(height):
            for j in range(width):
                src = src_at + c * plane + ((pad + i) * pitch + pad + j) * n
                for k in range(n):
                    dst[k] += arena[src + k]
        for k in range(n):
            dst[k] *= scale
    _zero_border(arena, dst_at, channels, 1, 1, pad, n)


@numba.njit(**_JIT)
def _linear(arena, n, pad, op, indptr, offset, weight, bias):  # pragma: no cover
    """(C, H, W) flattened -> (O, 1, 1); a tap's offset is its input column's place in the block."""
    src_at, dst_at, outputs = op[1] * n, op[5] * n, op[6]
    first_tap, first_bias, relu = op[10], op[11], op[14] != 0
    out_plane = (1 + 2 * pad) * (1 + 2 * pad) * n
    centre = (pad * (1 + 2 * pad) + pad) * n
    for o in range(outputs):
        dst = arena[dst_at + o * out_plane + centre : dst_at + o * out_plane + centre + n]
        dst[:] = bias[first_bias + o]
        for t in range(indptr[first_tap + o], indptr[first_tap + o + 1]):
            src = src_at + offset[t] * n
            w = weight[t]
            for k in range(n):
                dst[k] += w * arena[src + k]
        if relu:
            for k in range(n):
                dst[k] = max(dst[k], np.float32(0.0))
    _zero_border(arena, dst_at, outputs, 1, 1, pad, n)


@numba.njit(**_JIT)
def _add(arena, n, pad, op):  # pragma: no cover
    """out = a + b (then ReLU): whole blocks, borders included (0 + 0)."""
    a, channels, height, width, dst, b = op[1] * n, op[2], op[3], op[4], op[5] * n, op[9] * n
    size = channels * (height + 2 * pad) * (width + 2 * pad) * n
    for k in range(size):
        value = arena[a + k] + arena[b + k]
        arena[dst + k] = max(value, np.float32(0.0)) if op[14] != 0 else value


@numba.njit(**_JIT)
def _relu(arena, n, pad, op):  # pragma: no cover
    src, channels, height, width, dst = op[1] * n, op[2], op[3], op[4], op[5] * n
    size = channels * (height + 2 * pad) * (width + 2 * pad) * n
    for k in range(size):
        arena[dst + k] = max(arena[src + k], np.float32(0.0))


@numba.njit(**_JIT)
def _load(arena, n, pad, op, images, first):  # pragma: no cover
    """images[first : first + n] (N, C, H, W) into the padded CHWN block."""
    dst_at, channels, height, width = op[5] * n, op[6], op[7], op[8]
    pitch = width + 2 * pad
    plane = (height + 2 * pad) * pitch * n
    for c in range(channels):
        for i in range(height):
            row = dst_at + c * plane + ((pad + i) * pitch + pad) * n
            for j in range(width):
                for k in range(n):
                    arena[row + j * n + k] = images[first + k, c, i, j]
    _zero_border(arena, dst_at, channels, height, width, pad, n)


@numba.njit(**_JIT)
def _store(arena, n, pad, op, logits, first):  # pragma: no cover
    """The block at op's input into logits[first : first + n], flattened as (C, H, W)."""
    src_at, channels, height, width = op[1] * n, op[2], op[3], op[4]
    pitch = width + 2 * pad
    plane = (height + 2 * pad) * pitch * n
    for c in range(channels):
        for i in range(height):
            for j in range(width):
                src = src_at + c * plane + ((pad + i) * pitch + pad + j) * n
                column = (c * height + i) * width + j
                for k in range(n):
                    logits[first + k, column] = arena[src + k]


@numba.njit(**_JIT)
def run_chunk(
    ops, pad, indptr, chan, dy, dx, offset, weight, bias, images, first, n, arena, logits
):  # pragma: no cover
    """The program on images[first : first + n], in `arena`, into logits[first : first + n]."""
    for index in range(ops.shape[0]):
        op = ops[index]
        kind = op[0]
        if kind == CONV:
            if op[16] == SAME:
                _conv_flat(arena, n, pad, op, op[1] * n, indptr, offset, weight, bias)
            elif op[16] == PHASES:
                _split_phases(arena, n, pad, op)
                _conv_flat(arena, n, pad, op, op[17] * n, indptr, offset, weight, bias)
            else:
                _conv_rows(arena, n, pad, op, indptr, chan, dy, dx, weight, bias)
        elif kind == LINEAR:
            _linear(arena, n, pad, op, indptr, offset, weight, bias)
        elif kind == MAXPOOL:
            _max_pool(arena, n, pad, op)
        elif kind == MEANPOOL:
            _mean_pool(arena, n, pad, op)
        elif kind == ADD:
            _add(arena, n, pad, op)
        elif kind == RELU:
            _relu(arena, n, pad, op)
        elif kind == INPUT:
            _load(arena, n, pad, op, images, first)
        elif kind == OUTPUT:
            _store(arena, n, pad, op, logits, first)


@numba.njit(**_JIT)
def run_serial(
    ops, pad, indptr, chan, dy, dx, offset, weight, bias, images, chunk, arena, logits
):  # pragma: no cover
    total = images.shape[0]
    for first in range(0, total, chunk):
        n = min(chunk, total - first)
        run_chunk(ops, pad, indptr, chan, dy, dx, offset, weight, bias, images, first, n, arena, logits)


@numba.njit(parallel=True, **_JIT)
def run_parallel(
    ops, pad, indptr, chan, dy, dx, offset, weight, bias, images, chunk, arenas, logits
):  # pragma: no cover
    """One parallel region: thread t runs chunks t, t + T, t + 2T, ... in its own arena."""
    total = images.shape[0]
    chunks = (total + chunk - 1) // chunk
    workers = arenas.shape[0]
    for worker in numba.prange(workers):
        for index in range(worker, chunks, workers):
            first = index * chunk
            n = min(chunk, total - first)
            run_chunk(
                ops, pad, indptr, chan, dy, dx, offset, weight, bias, images, first, n, arenas[worker], logits
            )
