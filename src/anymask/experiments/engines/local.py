"""The local engine: runs go to worker processes on this machine, N at a time (`--workers N`).

A crash costs one run, not the sweep: a worker that dies fails its run and is replaced. Each worker gets
`cpus / N` threads unless the sweep file sets `threads`, and with several GPUs a GPU of its own.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import warnings
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

import torch

from anymask.errors import one_line_warning
from anymask.experiments.engines.base import (
    ENGINES,
    REFRESH_SECONDS,
    Engine,
    EngineSettings,
    SweepProgress,
    run_config,
    train_run,
)

if TYPE_CHECKING:
    from anymask.experiments.sweep import PlannedRun


@ENGINES.register("local")
class LocalEngine(Engine):
    def __init__(self, settings: EngineSettings) -> None:
        super().__init__(settings)
        self.workers = settings.workers

    def run(self, runs: list[PlannedRun], progress: SweepProgress) -> None:
        size = min(self.workers, len(runs))
        threads = max(1, cpu_count() // size)
        pool = _Pool(size, gpu_slots(runs))
        pending = deque(runs)
        try:
            while pending or pool.busy:
                while pending and pool.idle:
                    pool.submit(pending.popleft(), threads)
                progress.running(list(pool.busy.values()))
                for run, error in pool.collect(timeout=REFRESH_SECONDS):
                    progress.done(run, error)
        finally:
            pool.close()


def cpu_count() -> int:
    """CPUs this process may use (respects taskset/cgroup affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gpu_slots(runs: list[PlannedRun]) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each worker slot: one GPU per worker when several exist.

    Pinning by environment, not by the `device` setting, keeps `device` (which is hashed) the same for
    every run, so a run's folder does not depend on which worker happened to train it.
    """
    count = torch.cuda.device_count()
    if count < 2 or any(run.config.train.device not in {"auto", "cuda"} for run in runs):
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",") if visible else [str(i) for i in range(count)]


class _Pool:
    """Worker processes fed one run at a time; a worker that dies fails its run and is replaced."""

    def __init__(self, size: int, gpus: list[str | None]) -> None:
        self.context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has threads
        self.idle = [_Worker.start(self.context, gpus[i % len(gpus)]) for i in range(size)]
        self.busy: dict[_Worker, PlannedRun] = {}

    def submit(self, run: PlannedRun, threads: int) -> None:
        worker = self.idle.pop()
        worker.conn.send((run_config(run, threads), run.folder))
        self.busy[worker] = run

    def collect(self, timeout: float) -> list[tuple[PlannedRun, str | None]]:
        """(run, error or None) for each busy worker that answered or died within `timeout` seconds."""
        ready = set(wait([w.conn for w in self.busy] + [w.process.sentinel for w in self.busy], timeout))
        done = []
        for worker in [w for w in self.busy if w.conn in ready or w.process.sentinel in ready]:
            run = self.busy.pop(worker)
            error = worker.result()
            if not worker.process.is_alive():
                worker = _Worker.start(self.context, worker.gpu)
            self.idle.append(worker)
            done.append((run, error))
        return done

    def close(self) -> None:
        """Stop idle workers politely and interrupt busy ones (their runs resume next time)."""
        for worker in self.idle:
            with contextlib.suppress(OSError):  # a worker that died while idle
                worker.conn.send(None)
        for worker in self.busy:
            worker.process.terminate()
        for worker in [*self.idle, *self.busy]:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()


@dataclass(eq=False)
class _Worker:
    process: Any
    conn: Connection
    gpu: str | None

    @classmethod
    def start(cls, context: Any, gpu: str | None) -> _Worker:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_worker_main, args=(child_end, gpu), daemon=True)
        process.start()
        child_end.close()  # so a dead worker reads as end-of-file here instead of blocking forever
        return cls(process, parent_end, gpu)

    def result(self) -> str | None:
        try:
            return self.conn.recv()
        except EOFError:
            self.process.join()
            return f"worker process died (exit code {self.process.exitcode}) while training this run"


# -- inside a worker process ---------------------------------------------------------------------------
def _worker_main(conn: Connection, gpu: str | None) -> None:
    """Train the runs sent over `conn` until told to stop (None); answers None or an error per run."""
    _prepare_worker(gpu)
    while (task := conn.recv()) is not None:
        conn.send(train_run(*task))


def _prepare_worker(gpu: str | None) -> None:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before the first CUDA call of this process
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle: it stops the workers
    signal.signal(signal.SIGTERM, _exit_cleanly)
    warnings.showwarning = one_line_warning  # type: ignore[assignment]  # as the CLI shows them
    _exit_with_parent()


def _exit_cleanly(*_: Any) -> None:
    """SIGTERM from the sweep: exit through Python, so multiprocessing releases what it holds."""
    raise SystemExit(1)


def _exit_with_parent() -> None:
    """Die when the sweep process dies (even by SIGKILL), so no orphan keeps writing a run folder."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
