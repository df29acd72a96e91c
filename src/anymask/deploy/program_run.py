"""Running a compiled program (`program.compile_program`): arenas, threads, and how threads share a step.

Two ways to use T threads. `shared=False`: the batch is cut into chunks and each thread runs whole
chunks through the whole network in its own arena, in one numba parallel region (no thread ever waits
for another; the way for batches of at least T chunks). `shared=True`: the calling thread and T - 1
helper threads work on the same chunk, one step after the other, each claiming channel ranges
("units") of the step until none is left and waiting at the end of the step for the units others
claimed (the way for batch 1, which is one chunk). Units are cut so that each carries about the same
work (kept weights x output pixels for a convolution), a few per thread.

Why helpers and not a numba parallel region for `shared`: a region's threads sleep between calls,
and waking them took about 90 us on this project's 2-core VM, with the calling thread idle meanwhile.
Here the calling thread starts at once and a helper joins when the OS has woken it; nothing spins
between calls, and nothing waits for a helper that never comes (claiming, not assigning).
"""

from __future__ import annotations

import importlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# op kinds (column 0 of the ops table) and conv modes (column 16), for lowering and the numba kernels alike
INPUT, CONV, MAXPOOL, MEANPOOL, LINEAR, ADD, RELU, OUTPUT = range(8)
SAME, PHASES, ROWS = range(3)  # how a conv runs: see `program.conv_mode`
VECTOR = 8
"""Floats in one AVX2 register: a conv's pass over a short plane is rounded up to whole vectors
(`program_kernels._conv_flat`), and the arena leaves room for it (`program._arena_end`)."""
UNITS_PER_THREAD = 4
"""Most units a step is cut into, per thread: enough to even out threads that run at unequal speed."""
MIN_UNIT_WORK = 4096
"""Least work (multiply-adds or floats moved) worth a unit: below it, claiming costs more than it saves."""

Shape = tuple[int, int, int]  # channels, height, width of one image


@dataclass
class Program:
    """The encoded steps and the arena they need, callable on a float32 NCHW numpy batch."""

    ops: np.ndarray  # (steps, len(OP_FIELDS)) int64
    pad: int
    indptr: np.ndarray
    chan: np.ndarray
    dy: np.ndarray
    dx: np.ndarray
    offset: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    floats_per_image: int  # arena size for one image
    outputs: int  # values per image
    output_shape: tuple[int, ...]  # of one image's output: (features,) or (C, H, W)
    shape: Shape
    layers: int  # convolutions and linears
    _arenas: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)
    _units: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _helpers: Helpers = field(default_factory=lambda: Helpers(), repr=False)

    def __call__(self, images: np.ndarray, chunk: int, threads: int, shared: bool = False) -> np.ndarray:
        kernels = importlib.import_module("anymask.deploy.program_loop")
        total = images.shape[0]
        chunk = max(1, min(chunk, total))
        logits = np.empty((total, self.outputs), dtype=np.float32)
        args = (
            self.ops,
            self.pad,
            self.indptr,
            self.chan,
            self.dy,
            self.dx,
            self.offset,
            self.weight,
            self.bias,
        )
        with self._lock:  # the arenas are shared; and numba's workqueue layer is not reentrant
            if shared and threads > 1:
                units, bounds = self.share_units(chunk, threads)
                counters = np.zeros(4 * len(self.ops) * -(-total // chunk), dtype=np.int64)
                job = (*args, images, chunk, self._arena(chunk, 1)[0], logits, units, bounds, counters)
                self._helpers.offer(job, threads - 1, kernels.share_batch)
                kernels.share_batch(*job)
                return logits.reshape(total, *self.output_shape)
            workers = max(1, min(threads, -(-total // chunk)))
            arena = self._arena(chunk, workers)
            if workers == 1:
                kernels.run_serial(*args, images, chunk, arena[0], logits)
            else:
                kernels.run_parallel(*args, images, chunk, arena, logits)
        return logits.reshape(total, *self.output_shape)

    def _arena(self, chunk: int, workers: int) -> np.ndarray:
        key = (chunk, workers)
        if key not in self._arenas:
            self._arenas[key] = np.zeros((workers, self.floats_per_image * chunk), dtype=np.float32)
        return self._arenas[key]

    def share_units(self, chunk: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        """(units, bounds): part k of the program (step k // 2; part 0 splits a strided conv's input,
        part 1 is the step) has units bounds[units[k]] .. bounds[units[k + 1] - 1], consecutive channel
        ranges; a part with fewer than two bounds is skipped."""
        key = (chunk, threads)
        if key not in self._units:
            parts = [self._part_bounds(op, part, chunk, threads) for op in self.ops for part in (0, 1)]
            starts = np.cumsum([0] + [len(b) for b in parts])
            bounds = np.concatenate(parts) if parts else np.zeros(0)
            self._units[key] = (starts.astype(np.int64), bounds.astype(np.int64))
        return self._units[key]

    def _part_bounds(self, op: np.ndarray, part: int, chunk: int, threads: int) -> np.ndarray:
        costs = self._channel_costs(op, part) * chunk
        if costs.size == 0:
            return np.zeros(0, dtype=np.int64)
        total = float(costs.sum())
        count = int(min(costs.size, UNITS_PER_THREAD * threads, max(1, total // MIN_UNIT_WORK)))
        cumulative = np.cumsum(costs)
        cuts = np.searchsorted(cumulative, total * np.arange(1, count) / count)
        return np.unique(np.concatenate([[0], cuts + 1, [costs.size]])).clip(0, costs.size)

    def _channel_costs(self, op: np.ndarray, part: int) -> np.ndarray:
        """Work per channel of one part (per image): what its units are balanced on."""
        kind, channels, height, width = op[0], op[2], op[3], op[4]
        outputs, out_h, out_w = op[6], op[7], op[8]
        if part == 0:
            if kind != CONV or op[16] != PHASES:
                return np.zeros(0)
            return np.full(channels, float((height + 2 * self.pad) * (width + 2 * self.pad)))
        if kind == OUTPUT:
            return np.full(channels, float(height * width))
        if kind in (CONV, LINEAR):
            first = op[10]
            taps = np.diff(self.indptr[first : first + outputs + 1]).astype(np.float64)
            return (taps + 2.0) * out_h * out_w  # + the bias, residual, ReLU and border passes
        return np.full(outputs, float((out_h + 2 * self.pad) * (out_w + 2 * self.pad)))


class Helpers:
    """Threads that join the calling thread on a shared batch; each sleeps on its queue between batches.

    `offer` hands a batch to the idle ones and never waits: a helper still busy with the previous batch
    (or never woken, as after a fork) is simply not counted on, since the calling thread claims
    whatever no helper has."""

    def __init__(self) -> None:
        self._queues: list[queue.SimpleQueue[tuple[Callable[..., None], tuple[object, ...]]]] = []
        self._idle: list[threading.Event] = []

    def offer(self, job: tuple[object, ...], count: int, run: Callable[..., None]) -> None:
        while len(self._queues) < count:
            self._start()
        for jobs, idle in zip(self._queues[:count], self._idle[:count], strict=True):
            if idle.is_set():
                idle.clear()
                jobs.put((run, job))

    def _start(self) -> None:
        jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[object, ...]]] = queue.SimpleQueue()
        idle = threading.Event()
        idle.set()
        thread = threading.Thread(target=_help, args=(jobs, idle), name="anymask-program-helper", daemon=True)
        thread.start()
        self._queues.append(jobs)
        self._idle.append(idle)


def _help(
    jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[object, ...]]], idle: threading.Event
) -> None:
    while True:
        run, job = jobs.get()
        run(*job)  # a numba function without the GIL
        idle.set()
