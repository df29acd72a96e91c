"""Sparse CPU inference against the dense baselines a deployer would use: PyTorch and onnxruntime.

For every model x sparsity x batch size: a registry model with an ERK mask (random weights, non-trivial
BatchNorm statistics: speed does not depend on the values), run three ways on the same real CIFAR-10
images, in one process, in interleaved rounds of timed bursts (`bursts`):

- dense:        `sparse_inference_model(model, mask, kernel="dense")`, PyTorch eager with BatchNorm
                folded into the convolutions (oneDNN), i.e. the fair dense PyTorch baseline;
- onnxruntime:  the plain model exported with `anymask.deploy.onnx_export` (what `anymask export
                --format onnx` writes), run by onnxruntime's default CPU provider, dense, with
                intra_op_num_threads = the thread count;
- sparse:       `sparse_inference_model(model, mask)` (`auto`: the whole-network numba program or the
                dense graph, whichever it timed faster on the first batch; the warm-up does that).

No environment variable is needed or set by this script: it prints the OMP_/MKL_/NUMBA_ variables it
finds in its header ("none" on a plain shell). Times are medians of the rounds; the speedups are
medians of per-round ratios. The last four lines are ResNet-20, ERK 98%, 2 threads:
`speedup` (batch 64, over dense PyTorch), `speedup_batch1`, `speedup_vs_onnxruntime` (batch 64) and
`speedup_batch1_vs_onnxruntime`.

    python benchmarks/sparse_inference.py --quick     # the goal's rows: ResNet-20, VGG-16, MobileNetV2 at 98%
    python benchmarks/sparse_inference.py --plot docs/img   # every model, 90-99%, batch 1 and 64, + plots
    python benchmarks/sparse_inference.py --models resnet20 --sparsities 0.98 --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import Summary, cifar_or_synthetic, machine, paired_ratio
from torch import nn

from anymask.deploy import ModelSpec, set_num_threads, sparse_inference_model
from anymask.deploy.onnx_export import export_onnx_model
from anymask.masks import MaskConfig, make_mask

MODELS = ("resnet20", "resnet32", "vgg16", "mobilenetv2")
QUICK_MODELS = ("resnet20", "vgg16", "mobilenetv2")
HEADLINE = ("resnet20", 0.98, 2)  # model, sparsity, threads of the last four lines
PLOT_LABELS = {
    "dense": "dense PyTorch (BN folded)",
    "onnxruntime": "onnxruntime (dense)",
    "sparse": "anymask SparseInference",
}
GAP = 0.1
"""Seconds of pause before each timed burst (see `bursts`): longer than any case's threads spin after
a call (measured: onnxruntime's about 40 ms of CPU, PyTorch's OpenMP about 10 ms; 20 ms was too short
and onnxruntime's spinning took a core from whichever case came next)."""
BURST = 0.02
"""Seconds of calls per timed burst (at least one call)."""
LABELS = {"resnet20": "ResNet-20", "resnet32": "ResNet-32", "vgg16": "VGG-16", "mobilenetv2": "MobileNetV2"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="ResNet-20, VGG-16, MobileNetV2 at 98%%, batch 1 and 64, 2 threads",
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma list (default: %(default)s)")
    parser.add_argument(
        "--sparsities", default="0.9,0.95,0.98,0.99", help="comma list (default: %(default)s)"
    )
    parser.add_argument("--batches", default="1,64", help="comma list (default: %(default)s)")
    parser.add_argument("--threads", default="2", help="comma list (default: %(default)s)")
    parser.add_argument("--mask-method", default="erk", help="mask method (default: %(default)s)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="timing budget per row after warm-up (default: %(default)s)",
    )
    parser.add_argument("--plot", default=None, help="folder for one latency-vs-sparsity plot per model")
    args = parser.parse_args()
    if args.quick:
        args.models, args.sparsities, args.batches, args.threads = ",".join(QUICK_MODELS), "0.98", "1,64", "2"
        args.seconds = min(args.seconds, 2.0)
    return args


def masked_model(name: str, sparsity: float, method: str) -> nn.Module:
    torch.manual_seed(0)
    model = ModelSpec(name, 1.0, 10, (3, 32, 32)).build()
    make_mask(model, MaskConfig(mask_method=method, sparsity=sparsity)).apply(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def onnx_session(model: nn.Module, threads: int, folder: Path) -> object:
    import onnxruntime

    path = folder / "model.onnx"
    export_onnx_model(model, (3, 32, 32), path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class Row:
    model: str
    sparsity: float
    batch: int
    threads: int
    ms: dict[str, float]  # case -> median milliseconds per batch
    vs_dense: Summary
    vs_onnx: Summary
    engine: str

    def cells(self) -> str:
        times = " | ".join(f"{self.ms[c]:,.2f}" for c in ("dense", "onnxruntime", "sparse"))
        slower = " (slower than onnxruntime)" if self.vs_onnx.median < 1 else ""
        return (
            f"| {LABELS.get(self.model, self.model)} | {self.sparsity:.0%} | {self.batch} | {self.threads} | "
            f"{times} | {self.vs_dense.median:.2f}x | **{self.vs_onnx.median:.2f}x**{slower} | "
            f"{self.engine} |"
        )


def measure(
    name: str, sparsity: float, batch: int, threads: int, images: torch.Tensor, args: argparse.Namespace
) -> Row:
    set_num_threads(threads)
    model = masked_model(name, sparsity, args.mask_method)
    x = images.repeat(-(-batch // len(images)), 1, 1, 1)[:batch].contiguous()
    dense = sparse_inference_model(model, kernel="dense")
    sparse = sparse_inference_model(model)
    with tempfile.TemporaryDirectory() as folder:
        session = onnx_session(model, threads, Path(folder))
    feed = {"images": x.numpy()}
    expected = dense(x)
    if (sparse(x) - expected).abs().max().item() > 1e-3:  # also: auto chooses here, outside the timing
        raise SystemExit(f"{name} {sparsity} batch {batch}: sparse output differs from dense")
    cases = {
        "dense": lambda: dense(x),
        "onnxruntime": lambda: session.run(None, feed),  # type: ignore[attr-defined]
        "sparse": lambda: sparse(x),
    }
    times = bursts(cases, args.seconds)
    choice = sparse.choices[tuple(x.shape)]
    engine = "dense layers"
    if choice.engine == "numba":
        engine = (
            f"program, {threads} threads on each image"
            if choice.shared
            else f"program, chunks of {choice.chunk}"
        )
    return Row(
        name,
        sparsity,
        batch,
        threads,
        {case: Summary.of(t).median * 1e3 for case, t in times.items()},
        paired_ratio(times["dense"], times["sparse"]),
        paired_ratio(times["onnxruntime"], times["sparse"]),
        engine,
    )


def bursts(cases: dict[str, Callable[[], object]], seconds: float) -> dict[str, list[float]]:
    """Seconds per call of every case: rounds of one timed burst per case, in a rotating order.

    Before each burst: a pause of GAP seconds, then one untimed call. The pause lets the thread pool
    of the case before stop spinning (onnxruntime's and PyTorch's OpenMP threads spin for a while
    after each call, and on 2 cores they take the next case's cores: timed back to back, onnxruntime
    measured 3.4 ms for MobileNetV2 at batch 1, and 1.2-1.4 ms in bursts; with a 20 ms pause,
    onnxruntime still spinning slowed the program at batch 64 from 3.9 to 6.7 ms); the untimed call
    wakes the case's own threads, as a stream of requests keeps them awake. So each case is timed as
    it would run alone in its own server process.
    """
    names = list(cases)
    per_call = {}
    for name in names:
        begin = time.perf_counter()
        cases[name]()
        per_call[name] = time.perf_counter() - begin
    calls = {name: max(1, int(BURST / max(per_call[name], 1e-6))) for name in names}
    round_seconds = sum(GAP + (calls[n] + 1) * per_call[n] for n in names)
    rounds = max(6, min(60, int(seconds / round_seconds)) // 6 * 6)
    orders = list(itertools.permutations(names))
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in orders[index % len(orders)]:
            time.sleep(GAP)
            cases[name]()
            begin = time.perf_counter()
            for _ in range(calls[name]):
                cases[name]()
            times[name].append((time.perf_counter() - begin) / calls[name])
    return times


def environment() -> str:
    found = [f"{k}={v}" for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "NUMBA_", "KMP_"))]
    return ", ".join(found) if found else "none"


def plot(rows: list[Row], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for model in dict.fromkeys(r.model for r in rows):
        batches = sorted({r.batch for r in rows if r.model == model})
        figure, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 3.6), squeeze=False)
        for axis, batch in zip(axes[0], batches, strict=True):
            mine = sorted(
                (r for r in rows if r.model == model and r.batch == batch), key=lambda r: r.sparsity
            )
            for case, style in (("dense", "s--"), ("onnxruntime", "o--"), ("sparse", "D-")):
                label = PLOT_LABELS[case]
                axis.plot([r.sparsity * 100 for r in mine], [r.ms[case] for r in mine], style, label=label)
            axis.set(xlabel="sparsity (%), ERK", ylabel="ms per batch", yscale="log")
            axis.set_title(f"{LABELS.get(model, model)}, batch {batch}, {mine[0].threads} threads")
            axis.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(folder / f"inference_latency_{model}.png", dpi=110)
        plt.close(figure)


def main() -> None:
    args = parse_args()
    data, source = cifar_or_synthetic()
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    images = (data.test_x[:64].float() / 255 - mean) / std
    import onnxruntime

    print(f"# {machine(torch.device('cpu'))}; onnxruntime {onnxruntime.__version__}; images: {source}")
    print(f"# environment variables (OMP_, MKL_, NUMBA_, KMP_): {environment()}")
    print(
        f"# {args.mask_method} masks; ms per batch (medians over rounds; each round times every case in a"
        f" burst of {BURST * 1e3:.0f} ms after a {GAP * 1e3:.0f} ms pause and one untimed call);"
        " speedups: paired medians"
    )
    print(
        "| model | sparsity | batch | threads | dense PyTorch ms | onnxruntime ms | anymask ms | vs dense "
        "| vs onnxruntime | anymask ran |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows: list[Row] = []
    for threads in (int(t) for t in args.threads.split(",")):
        for name in args.models.split(","):
            for sparsity in (float(s) for s in args.sparsities.split(",")):
                for batch in (int(b) for b in args.batches.split(",")):
                    rows.append(measure(name, sparsity, batch, threads, images, args))
                    print(rows[-1].cells(), flush=True)
    if args.plot:
        plot(rows, Path(args.plot))
    headline = {r.batch: r for r in rows if (r.model, r.sparsity, r.threads) == HEADLINE}
    if 64 in headline:
        print(f"speedup {headline[64].vs_dense.median:.2f}")
    if 1 in headline:
        print(f"speedup_batch1 {headline[1].vs_dense.median:.2f}")
    if 64 in headline:
        print(f"speedup_vs_onnxruntime {headline[64].vs_onnx.median:.2f}")
    if 1 in headline:
        print(f"speedup_batch1_vs_onnxruntime {headline[1].vs_onnx.median:.2f}")


if __name__ == "__main__":
    main()
