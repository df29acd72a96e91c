"""The loop that runs a lowered program's steps (`program.py`) with the kernels of `program_kernels`.

Imported only when numba is installed. Three ways to run a batch:

- `run_serial`: every chunk of images in the calling thread;
- `run_parallel`: one parallel region; each thread runs its own chunks through the whole network in its
  own arena, so the threads never wait for each other between layers (a batch of many images);
- `share_batch`: called at once by the calling thread and helper threads (`program_run`); all work on
  each chunk, step after step, each claiming channel ranges ("units") of the step until none is
  left, then waiting until every unit is done before the next step (batch 1 is one chunk: without
  this it runs in one thread).
"""

from __future__ import annotations

import sys

import numba

from anymask.deploy.numba_atomics import fetch_add, load_acquire, relax
from anymask.deploy.numba_cache import key_on_sources
from anymask.deploy.program_kernels import (
    _JIT,
    _add,
    _conv_flat,
    _conv_rows,
    _linear,
    _load,
    _max_pool,
    _mean_pool,
    _relu,
    _split_phases,
    _store,
)
from anymask.deploy.program_run import ADD, CONV, INPUT, LINEAR, MAXPOOL, MEANPOOL, OUTPUT, PHASES, RELU, SAME

SPINS_BEFORE_YIELD = 2000
"""Checks of a step's counter before a waiting thread gives its core away (a busy machine)."""


@numba.njit(**_JIT)
def _step(
    op, part, lo, hi, pad, indptr, chan, dy, dx, offset, weight, bias, images, first, n, arena, logits
):  # pragma: no cover
    """Channels lo..hi-1 of one part of one step: part 0 splits a PHASES conv's input (input
    channels), part 1 is the step itself (its output channels)."""
    kind = op[0]
    if part == 0:
        _split_phases(arena, n, pad, op, lo, hi)
    elif kind == CONV:
        if op[16] == SAME:
            _conv_flat(arena, n, pad, op, lo, hi, op[1] * n, indptr, offset, weight, bias)
        elif op[16] == PHASES:
            _conv_flat(arena, n, pad, op, lo, hi, op[17] * n, indptr, offset, weight, bias)
        else:
            _conv_rows(arena, n, pad, op, lo, hi, indptr, chan, dy, dx, weight, bias)
    elif kind == LINEAR:
        _linear(arena, n, pad, op, lo, hi, indptr, offset, weight, bias)
    elif kind == MAXPOOL:
        _max_pool(arena, n, pad, op, lo, hi)
    elif kind == MEANPOOL:
        _mean_pool(arena, n, pad, op, lo, hi)
    elif kind == ADD:
        _add(arena, n, pad, op, lo, hi)
    elif kind == RELU:
        _relu(arena, n, pad, op, lo, hi)
    elif kind == INPUT:
        _load(arena, n, pad, op, lo, hi, images, first)
    elif kind == OUTPUT:
        _store(arena, n, pad, op, lo, hi, logits, first)


@numba.njit(**_JIT)
def run_chunk(
    ops, pad, indptr, chan, dy, dx, offset, weight, bias, images, first, n, arena, logits
):  # pragma: no cover
    """The program on images[first : first + n], in `arena`, into logits[first : first + n]."""
    for index in range(ops.shape[0]):
        op = ops[index]
        channels = op[2] if op[0] == OUTPUT else op[6]  # what the step writes
        # fmt: off
        if op[0] == CONV and op[16] == PHASES:
            _step(op, 0, 0, op[2], pad, indptr, chan, dy, dx, offset, weight, bias, images, first, n, arena,
                  logits)
        _step(op, 1, 0, channels, pad, indptr, chan, dy, dx, offset, weight, bias, images, first, n, arena,
              logits)
        # fmt: on


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


# fmt: off
@numba.njit(**_JIT)
def _share_chunk(
    ops, pad, indptr, chan, dy, dx, offset, weight, bias, images, first, n, arena, logits, units, bounds,
    counters,
):  # pragma: no cover
    # fmt: on
    """One worker's share of one chunk: it claims units of each step until none is left, then waits
    until every unit of the step is done (by whichever thread claimed it) before the next step.
    Claiming, not assigning, is what makes this safe: a thread that never starts leaves its share to
    the others, so no thread waits for one that is not coming."""
    for part_index in range(2 * ops.shape[0]):
        count = units[part_index + 1] - units[part_index] - 1
        if count <= 0:
            continue
        op = ops[part_index // 2]
        claimed, done = 2 * part_index, 2 * part_index + 1
        while True:
            unit = fetch_add(counters, claimed, 1)
            if unit >= count:
                break
            at = units[part_index] + unit
            # fmt: off
            _step(
                op, part_index % 2, bounds[at], bounds[at + 1], pad, indptr, chan, dy, dx, offset, weight,
                bias, images, first, n, arena, logits,
            )
            # fmt: on
            fetch_add(counters, done, 1)
        spins = 0
        while load_acquire(counters, done) < count:
            spins += 1
            if spins >= SPINS_BEFORE_YIELD:
                relax()
                spins = 0


# fmt: off
@numba.njit(**_JIT)
def share_batch(
    ops, pad, indptr, chan, dy, dx, offset, weight, bias, images, chunk, arena, logits, units, bounds,
    counters,
):  # pragma: no cover
    # fmt: on
    """One thread's share of a batch that several threads run together, chunk after chunk, in one
    arena: the calling thread and each helper thread (`program_run`) call this on the same arrays.
    `units`/`bounds` cut each step part into channel ranges (`Program.share_units`); `counters`
    holds (claimed, done) per part and chunk, zeroed, and new for every batch: a helper that starts
    late finds a finished batch's units all claimed and touches nothing."""
    total = images.shape[0]
    per_chunk = 4 * ops.shape[0]
    for first in range(0, total, chunk):
        n = min(chunk, total - first)
        at = (first // chunk) * per_chunk
        # fmt: off
        _share_chunk(
            ops, pad, indptr, chan, dy, dx, offset, weight, bias, images, first, n, arena, logits, units,
            bounds, counters[at : at + per_chunk],
        )
        # fmt: on


key_on_sources(sys.modules[__name__])  # numba keys a cache on its own file only: see numba_cache
