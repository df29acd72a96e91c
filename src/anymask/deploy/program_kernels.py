"""The kernels of the whole-network program: one numba function per kind of step (see `program.py`;
`program_loop.py` runs them in order). Each works on a range lo..hi-1 of its step's channels, so
threads can share a step.

Activations live in one float32 arena per thread, each tensor in a padded CHWN block: (channels,
height + 2P, width + 2P, n) for a chunk of n images, batch innermost, with a zero border of P pixels
(P = the largest convolution padding of the network). The border makes padding free: a kept weight
(a "tap": input channel c, offsets dy, dx) of output channel o adds ``w * x[c, i + dy, j + dx, :]`` to
``out[o, i, j, :]`` and never has to test the image edge. For a stride-1 convolution whose output has
its input's size, input and output have the same row pitch, so one tap is ONE contiguous multiply-add
over the whole channel plane shifted by ``(dy * pitch + dx) * n`` (1,024 floats for a 32x32 image at
batch 1): the columns this wrongly computes are exactly the border columns, zeroed afterwards. The plane
is walked in blocks that stay in L1 while every tap of the channel is added, four per pass, the first
pass writing the bias and the last applying the ReLU (after a residual, a pass of its own).

A producer zeroes its output's border only when some step reads it (`program._read_with_border`);
stale values elsewhere in a border never reach an output, so arena slots are reused once a tensor is
dead.
"""

from __future__ import annotations

import sys

import numba
import numpy as np

from anymask.deploy.numba_cache import key_on_sources
from anymask.deploy.numba_kernels import prefer_passive_threads
from anymask.deploy.program_run import VECTOR

prefer_passive_threads()

_JIT = {"fastmath": True, "cache": True, "nogil": True}
BLOCK = 4096
"""Floats of an output plane computed together (16 KiB: inside L1 with the input rows it reads)."""
_U = numba.uint64
"""Arena indices are cast to unsigned: numba then drops the negative-index wrap-around test, which
kept LLVM from vectorising a loop over `arena[at + k]` (and slices, the other way round it, cost a
reference count each; on 4x4 planes at batch 1 either cost more than the arithmetic: measured)."""


@numba.njit(**_JIT)
def _zero_border(arena, base, lo, hi, height, width, pad, n):  # pragma: no cover
    """Zero the P-pixel border of channel planes lo..hi-1 of the block at `base` (absolute offset).
    A row's right border and the next row's left border are one run of memory, and so are a plane's
    bottom rows and the next plane's top rows: one loop each (loops, not slices: on 4x4 planes a
    slice's reference count cost more than the zeroing)."""
    if hi <= lo:
        return
    pitch = (width + 2 * pad) * n
    plane = (height + 2 * pad) * pitch
    edge = _U(2 * pad * n)
    first = pad * pitch + pad * n  # the first interior float
    tail = first + (height - 1) * pitch + width * n  # the last row's right border onwards
    _fill(arena, _U(base + lo * plane), _U(first), np.float32(0.0))
    for c in range(lo, hi):
        start = base + c * plane
        gaps = _U(start + first + width * n)
        if edge < VECTOR:  # a few floats per gap: column by column, not one memset call per gap
            for e in range(edge):
                for i in range(_U(height - 1)):
                    arena[gaps + i * _U(pitch) + e] = np.float32(0.0)
        else:
            for i in range(_U(height - 1)):
                _fill(arena, gaps + i * _U(pitch), edge, np.float32(0.0))
        end = start + plane + first if c + 1 < hi else start + plane
        _fill(arena, _U(start + tail), _U(end - start - tail), np.float32(0.0))


@numba.njit(**_JIT)
def _fill(arena, at, length, value):  # pragma: no cover
    for k in range(length):
        arena[at + k] = value


@numba.njit(**_JIT)
def _add_residual(arena, at, length, residual, relu):  # pragma: no cover
    """arena[at : at + length] += arena[residual : residual + length], then ReLU if relu, in one pass
    (without a residual the ReLU rides in the last tap pass instead)."""
    if relu:
        for k in range(length):
            arena[at + k] = max(arena[at + k] + arena[residual + k], np.float32(0.0))
    else:
        for k in range(length):
            arena[at + k] += arena[residual + k]


@numba.njit(**_JIT)
def _conv_flat(arena, n, pad, op, lo, hi, src_at, indptr, offset, weight, bias):  # pragma: no cover
    """Output channels lo..hi-1: each tap is one shifted multiply-add over the output plane; `src_at`
    holds planes of the output's geometry (the input itself for a same-size stride-1 conv, else its
    phase planes)."""
    dst_at, out_h, out_w = op[5] * n, op[7], op[8]
    residual_at = op[9] * n if op[9] >= 0 else -1
    first_tap, first_bias, relu = op[10], op[11], op[14] != 0
    pitch = out_w + 2 * pad
    plane = (out_h + 2 * pad) * pitch * n
    first = (pad * pitch + pad) * n  # the first interior pixel
    last = ((pad + out_h - 1) * pitch + pad + out_w) * n  # one past the last one
    # the ReLU rides in the last tap pass, unless a residual comes first
    floor = np.float32(0.0) if relu and residual_at < 0 else np.float32(-np.inf)
    for o in range(lo, hi):
        base = dst_at + o * plane
        for start in range(first, last, BLOCK):
            length = min(BLOCK, last - start)
            if start + length == last:
                # Whole vectors: the last block runs on into the plane's bottom border (zeroed after
                # when read, like the border columns), so a short plane's passes (22 floats for 4x4
                # at batch 1) do not end in scalar remainder loops.
                length = min((length + VECTOR - 1) // VECTOR * VECTOR, plane - start)
            out = _U(base + start)
            _taps(arena, out, _U(length), src_at + start, n, indptr[first_tap + o], indptr[first_tap + o + 1],
                  offset, weight, bias[first_bias + o], floor)  # fmt: skip
            if residual_at >= 0:
                _add_residual(arena, out, _U(length), _U(residual_at + o * plane + start), relu)
    if op[18]:
        _zero_border(arena, dst_at, lo, hi, out_h, out_w, pad, n)


@numba.njit(**_JIT)
def _taps(arena, out, length, src, n, tap_lo, tap_hi, offset, weight, value, floor):  # pragma: no cover
    """arena[out : out + length] = max(value + the sum of taps tap_lo..tap_hi-1, floor), each tap
    reading at src + offset * n; floor 0 is a fused ReLU, -inf none. Four taps per pass (a quarter of
    the loads and stores of `out`), the first pass writing the bias too, each pass clamped (so the last
    one leaves the ReLU done: a separate ReLU pass cost a third of a step on 4x4 planes at batch 1,
    where each pass has a fixed cost)."""
    count = tap_hi - tap_lo
    if count == 0:
        _fill(arena, out, length, max(value, floor))
        return
    t = tap_lo + min(count, 4)
    last = count - 1  # a missing tap reads the last one's plane, with weight 0 (not read at all below)
    a0, a1 = _U(src + offset[tap_lo] * n), _U(src + offset[tap_lo + min(last, 1)] * n)
    a2, a3 = _U(src + offset[tap_lo + min(last, 2)] * n), _U(src + offset[tap_lo + min(last, 3)] * n)
    w0 = weight[tap_lo]
    w1 = weight[tap_lo + 1] if count > 1 else np.float32(0.0)
    w2 = weight[tap_lo + 2] if count > 2 else np.float32(0.0)
    w3 = weight[tap_lo + 3] if count > 3 else np.float32(0.0)
    # max(x, floor) on a partial sum is harmless only if later passes cannot lower it: they can, so
    # every pass but the last uses -inf. (A ReLU after partial sums would be wrong.)
    clamp = floor if count <= 4 else np.float32(-np.inf)
    if count >= 4:
        for k in range(length):
            arena[out + k] = max(
                value + (w0 * arena[a0 + k] + w1 * arena[a1 + k] + w2 * arena[a2 + k] + w3 * arena[a3 + k]),
                clamp,
            )
    elif count == 3:
        for k in range(length):
            arena[out + k] = max(
                value + (w0 * arena[a0 + k] + w1 * arena[a1 + k] + w2 * arena[a2 + k]), clamp
            )
    elif count == 2:
        for k in range(length):
            arena[out + k] = max(value + (w0 * arena[a0 + k] + w1 * arena[a1 + k]), clamp)
    else:
        for k in range(length):
            arena[out + k] = max(value + w0 * arena[a0 + k], clamp)
    while t + 4 <= tap_hi:
        a0, a1 = _U(src + offset[t] * n), _U(src + offset[t + 1] * n)
        a2, a3 = _U(src + offset[t + 2] * n), _U(src + offset[t + 3] * n)
        w0, w1, w2, w3 = weight[t], weight[t + 1], weight[t + 2], weight[t + 3]
        clamp = floor if t + 4 == tap_hi else np.float32(-np.inf)
        for k in range(length):
            arena[out + k] = max(
                arena[out + k]
                + (w0 * arena[a0 + k] + w1 * arena[a1 + k] + w2 * arena[a2 + k] + w3 * arena[a3 + k]),
                clamp,
            )
        t += 4
    if t + 2 <= tap_hi:
        a0, a1, w0, w1 = _U(src + offset[t] * n), _U(src + offset[t + 1] * n), weight[t], weight[t + 1]
        clamp = floor if t + 2 == tap_hi else np.float32(-np.inf)
        for k in range(length):
            arena[out + k] = max(arena[out + k] + (w0 * arena[a0 + k] + w1 * arena[a1 + k]), clamp)
        t += 2
    if t < tap_hi:
        a0, w0 = _U(src + offset[t] * n), weight[t]
        for k in range(length):
            arena[out + k] = max(arena[out + k] + w0 * arena[a0 + k], floor)


@numba.njit(**_JIT)
def _split_phases(arena, n, pad, op, lo, hi):  # pragma: no cover
    """Input channels lo..hi-1 of a strided conv as stride_h x stride_w phase planes of the output's
    geometry: phase (py, px) of channel c holds x[c, s*a + py, s*b + px] at (a, b), zero outside."""
    src_at, height, width = op[1] * n, op[3], op[4]
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
            for c in range(lo, hi):
                base = dst_at + ((c * sh + py) * sw + px) * out_plane
                for a in range(out_h + 2 * pad):
                    y = pad + sh * (a - pad) + py
                    row = base + a * out_pitch * n
                    if y < 0 or y >= rows or b_hi <= b_lo:
                        _fill(arena, _U(row), _U(out_pitch * n), np.float32(0.0))
                        continue
                    _fill(arena, _U(row), _U(b_lo * n), np.float32(0.0))
                    _fill(arena, _U(row + b_hi * n), _U((out_pitch - b_hi) * n), np.float32(0.0))
                    src_row = src_at + c * plane + (y * pitch + pad - sw * pad + px) * n
                    if n == 1:
                        for b in range(b_lo, b_hi):
                            arena[_U(row + b)] = arena[_U(src_row + sw * b)]
                    else:
                        for b in range(b_lo, b_hi):
                            s0, d0 = _U(src_row + sw * b * n), _U(row + b * n)
                            for k in range(_U(n)):
                                arena[d0 + k] = arena[s0 + k]


@numba.njit(**_JIT)
def _conv_rows(arena, n, pad, op, lo, hi, indptr, chan, dy, dx, weight, bias):  # pragma: no cover
    """Output channels lo..hi-1, any stride and output size: row by row, each tap one (strided) row
    update (batch 1: pixel by pixel). Indices are unsigned (see `_conv_flat`)."""
    src_at, height, width = op[1] * n, op[3], op[4]
    dst_at, out_h, out_w = op[5] * n, op[7], op[8]
    residual_at = op[9] * n if op[9] >= 0 else -1
    first_tap, first_bias, sh, sw, relu = op[10], op[11], op[12], op[13], op[14] != 0
    pitch = width + 2 * pad
    plane = (height + 2 * pad) * pitch * n
    out_pitch = out_w + 2 * pad
    out_plane = (out_h + 2 * pad) * out_pitch * n
    row_len, columns, stride = _U(out_w * n), _U(out_w), _U(sw)
    floor = np.float32(0.0) if relu else np.float32(-np.inf)
    for o in range(lo, hi):
        base = dst_at + o * out_plane
        tap_lo, tap_hi = indptr[first_tap + o], indptr[first_tap + o + 1]
        value = bias[first_bias + o]
        for i in range(out_h):
            signed_at = base + ((pad + i) * out_pitch + pad) * n
            at = _U(signed_at)
            # the ReLU rides in the last tap's pass (each pass over a short row has a fixed cost)
            _fill(arena, at, row_len, value if tap_hi > tap_lo or residual_at >= 0 else max(value, floor))
            for t in range(tap_lo, tap_hi):
                src = _U(src_at + chan[t] * plane + ((pad + i * sh + dy[t]) * pitch + pad + dx[t]) * n)
                w = weight[t]
                clamp = floor if t + 1 == tap_hi and residual_at < 0 else np.float32(-np.inf)
                if sw == 1:
                    for k in range(row_len):
                        arena[at + k] = max(arena[at + k] + w * arena[src + k], clamp)
                elif n == 1 and sw == 2:  # LLVM vectorises this one as an interleaved load
                    for j in range(columns):
                        arena[at + j] = max(arena[at + j] + w * arena[src + _U(2) * j], clamp)
                elif n == 1:
                    for j in range(columns):
                        arena[at + j] = max(arena[at + j] + w * arena[src + j * stride], clamp)
                else:
                    for j in range(out_w):
                        for k in range(n):
                            index = at + _U(j * n + k)
                            arena[index] = max(arena[index] + w * arena[src + _U(j * sw * n + k)], clamp)
            if residual_at >= 0:
                _add_residual(arena, at, row_len, _U(residual_at + signed_at - dst_at), relu)
    if op[18]:
        _zero_border(arena, dst_at, lo, hi, out_h, out_w, pad, n)


@numba.njit(**_JIT)
def _max_pool(arena, n, pad, op, lo, hi):  # pragma: no cover
    src_at, height, width = op[1] * n, op[3], op[4]
    dst_at, out_h, out_w, size, stride = op[5] * n, op[7], op[8], op[15], op[12]
    pitch, out_pitch = width + 2 * pad, out_w + 2 * pad
    plane, out_plane = (height + 2 * pad) * pitch * n, (out_h + 2 * pad) * out_pitch * n
    for c in range(lo, hi):
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
    if op[18]:
        _zero_border(arena, dst_at, lo, hi, out_h, out_w, pad, n)


@numba.njit(**_JIT)
def _mean_pool(arena, n, pad, op, lo, hi):  # pragma: no cover
    """Global average pool of channels lo..hi-1: (C, H, W) -> (C, 1, 1)."""
    src_at, height, width, dst_at = op[1] * n, op[3], op[4], op[5] * n
    pitch = width + 2 * pad
    plane = (height + 2 * pad) * pitch * n
    out_plane = (1 + 2 * pad) * (1 + 2 * pad) * n
    centre = (pad * (1 + 2 * pad) + pad) * n
    scale = np.float32(1.0 / (height * width))
    for c in range(lo, hi):
        dst = _U(dst_at + c * out_plane + centre)
        if n == 1:  # one sum, in a register
            total = np.float32(0.0)
            for i in range(height):
                row = _U(src_at + c * plane + (pad + i) * pitch + pad)
                for j in range(_U(width)):
                    total += arena[row + j]
            arena[dst] = total * scale
            continue
        _fill(arena, dst, _U(n), np.float32(0.0))
        for i in range(height):  # batch innermost: n sums side by side, each in the same order
            row = _U(src_at + c * plane + ((pad + i) * pitch + pad) * n)
            for j in range(_U(width)):
                for k in range(_U(n)):
                    arena[dst + k] += arena[row + j * _U(n) + k]
        for k in range(_U(n)):
            arena[dst + k] *= scale
    if op[18]:
        _zero_border(arena, dst_at, lo, hi, 1, 1, pad, n)


@numba.njit(**_JIT)
def _linear(arena, n, pad, op, lo, hi, indptr, offset, weight, bias):  # pragma: no cover
    """Outputs lo..hi-1 of (C, H, W) flattened -> (O, 1, 1); a tap's offset is its input column's
    place in the block."""
    src_at, dst_at = op[1] * n, op[5] * n
    first_tap, first_bias, relu = op[10], op[11], op[14] != 0
    out_plane = (1 + 2 * pad) * (1 + 2 * pad) * n
    centre = (pad * (1 + 2 * pad) + pad) * n
    for o in range(lo, hi):
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
    if op[18]:
        _zero_border(arena, dst_at, lo, hi, 1, 1, pad, n)


@numba.njit(**_JIT)
def _add(arena, n, pad, op, lo, hi):  # pragma: no cover
    """out = a + b (then ReLU) on channels lo..hi-1: whole planes, borders included (0 + 0)."""
    a, height, width, dst, b = op[1] * n, op[3], op[4], op[5] * n, op[9] * n
    plane = (height + 2 * pad) * (width + 2 * pad) * n
    for k in range(lo * plane, hi * plane):
        value = arena[a + k] + arena[b + k]
        arena[dst + k] = max(value, np.float32(0.0)) if op[14] != 0 else value


@numba.njit(**_JIT)
def _relu(arena, n, pad, op, lo, hi):  # pragma: no cover
    src, height, width, dst = op[1] * n, op[3], op[4], op[5] * n
    plane = (height + 2 * pad) * (width + 2 * pad) * n
    for k in range(lo * plane, hi * plane):
        arena[dst + k] = max(arena[src + k], np.float32(0.0))


@numba.njit(**_JIT)
def _load(arena, n, pad, op, lo, hi, images, first):  # pragma: no cover
    """Channels lo..hi-1 of images[first : first + n] (N, C, H, W) into the padded CHWN block."""
    dst_at, height, width = op[5] * n, op[7], op[8]
    pitch = width + 2 * pad
    plane = (height + 2 * pad) * pitch * n
    flat = images.reshape(-1)
    channels = images.shape[1]
    for c in range(lo, hi):
        for i in range(height):
            row = _U(dst_at + c * plane + ((pad + i) * pitch + pad) * n)
            for k in range(_U(n)):  # read each image's row in order, write it batch-innermost
                src = _U((((first + k) * channels + c) * height + i) * width)
                for j in range(_U(width)):
                    arena[row + j * _U(n) + k] = flat[src + j]
    if op[18]:
        _zero_border(arena, dst_at, lo, hi, height, width, pad, n)


@numba.njit(**_JIT)
def _store(arena, n, pad, op, lo, hi, logits, first):  # pragma: no cover
    """Channels lo..hi-1 of the block at op's input into logits[first : first + n], flattened as
    (C, H, W)."""
    src_at, height, width = op[1] * n, op[3], op[4]
    pitch = width + 2 * pad
    plane = (height + 2 * pad) * pitch * n
    for c in range(lo, hi):
        for i in range(height):
            for j in range(width):
                src = src_at + c * plane + ((pad + i) * pitch + pad + j) * n
                column = (c * height + i) * width + j
                for k in range(n):
                    logits[first + k, column] = arena[src + k]


key_on_sources(sys.modules[__name__])  # numba keys a cache on its own file only: see numba_cache
