"""Batch 1 of the whole-network program: one thread against threads sharing the image, beside onnxruntime.

Per model (ERK 98%, random weights): the program run in the calling thread, the program shared by 2
threads (`shared=True`: the calling thread plus a helper, `program_run`), and onnxruntime on the dense
ONNX file with 2 threads; in rounds, each case a burst of 10 calls after a pause of
`sparse_inference.GAP` and one untimed call (onnxruntime's threads spin for tens of ms after a call).
Prints the median ms per image of each. `--steps` instead prints each step's CPU time in one thread (each step
alone in a loop over the arena the whole network left) and the whole network's, the profile
docs/performance.md quotes; `--chunk N` profiles a chunk of N images instead of one.

    python benchmarks/program_batch1.py                       # resnet20, mobilenetv2, vgg16
    python benchmarks/program_batch1.py --steps mobilenetv2
    python benchmarks/program_batch1.py --steps resnet20 --chunk 16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sparse_inference import GAP, masked_model, onnx_session

from anymask.deploy import sparse_inference_model


def program_of(name: str):  # type: ignore[no-untyped-def]
    model = masked_model(name, 0.98, "erk")
    return model, sparse_inference_model(model, kernel="numba").program((3, 32, 32))


def compare(name: str, rounds: int) -> None:
    model, program = program_of(name)
    with tempfile.TemporaryDirectory() as folder:
        session = onnx_session(model, 2, Path(folder))
    image = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    cases = {
        "one thread": lambda: program(image, 1, 2, False),
        "shared": lambda: program(image, 1, 2, True),
        "onnxruntime": lambda: session.run(None, {"images": image}),  # type: ignore[attr-defined]
    }
    times: dict[str, list[float]] = {case: [] for case in cases}
    for run in cases.values():
        for _ in range(20):
            run()
    for _ in range(rounds):
        for case, run in cases.items():
            time.sleep(GAP)
            run()  # untimed: wakes the case's own threads, as a stream of requests keeps them awake
            begin = time.perf_counter()
            for _ in range(10):
                run()
            times[case].append((time.perf_counter() - begin) / 10 * 1e3)
    print(name, ", ".join(f"{case} {statistics.median(t):.3f} ms" for case, t in times.items()))


def steps(name: str, chunk: int) -> None:
    from anymask.deploy import program_loop

    torch.set_num_threads(1)
    _, program = program_of(name)
    images = np.random.default_rng(0).random((chunk, 3, 32, 32), dtype=np.float32)
    arena = np.zeros(program.floats_per_image * chunk, np.float32)
    logits = np.zeros((chunk, program.outputs), np.float32)
    arrays = (program.pad, program.indptr, program.chan, program.dy, program.dx, program.offset)
    arrays += (program.weight, program.bias)

    def cpu_us(ops: np.ndarray, repeats: int) -> float:
        program_loop.run_serial(ops, *arrays, images, chunk, arena, logits)
        best = float("inf")
        for _ in range(3):
            begin = time.process_time()
            for _ in range(repeats):
                program_loop.run_serial(ops, *arrays, images, chunk, arena, logits)
            best = min(best, (time.process_time() - begin) / repeats * 1e6)
        return best

    empty = cpu_us(program.ops[:0], 20_000)
    total = 0.0
    for index, op in enumerate(program.ops):
        us = cpu_us(program.ops[index : index + 1], max(5, 400 // chunk)) - empty
        total += us
        print(
            f"step {index:2d} kind {op[0]} in {op[2]}x{op[3]} out {op[6]}x{op[7]} mode {op[16]}: {us:7.1f} us"
        )
    whole = cpu_us(program.ops, max(3, 200 // chunk)) - empty
    print(
        f"{name}: steps sum to {total / 1e3:.2f} ms of CPU, "
        f"the whole network {whole / 1e3:.2f} ms (chunk {chunk})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", default=["resnet20", "mobilenetv2", "vgg16"])
    parser.add_argument("--steps", action="store_true", help="per-step CPU time in one thread instead")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--chunk", type=int, default=1, help="images per chunk for --steps (default: 1)")
    args = parser.parse_args()
    for name in args.models:
        if args.steps:
            steps(name, args.chunk)
        else:
            compare(name, args.rounds)


if __name__ == "__main__":
    main()
