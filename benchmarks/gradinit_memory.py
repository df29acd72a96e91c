"""Host memory around GradInit: its peak, what stays resident afterwards, and what returning the freed
pages to the system (`anymask.memory.return_freed_memory`, as `lrsi` does after GradInit) gives back.

Resident set sizes come from /proc/self/statm and the peak from ru_maxrss, so this runs on Linux. The
three figures are read in one process, side by side: after building the model, after GradInit (freed
tensors still held by glibc), and after handing them back.

    python benchmarks/gradinit_memory.py                    # ResNet-20, 40 iterations of 2 x 128 images
    python benchmarks/gradinit_memory.py --model resnet18 --iterations 5
"""

from __future__ import annotations

import argparse
import resource

import torch

from anymask.memory import return_freed_memory
from anymask.models import create_model
from anymask.recipe import RecipeConfig
from anymask.recipe.gradinit import GradInit


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def random_batches(batch_size: int):
    generator = torch.Generator().manual_seed(0)
    while True:
        yield torch.randn(batch_size, 3, 32, 32, generator=generator), torch.randint(0, 10, (batch_size,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128, help="gradinit_batch_size: images per half")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.model, 10)
    start = resident_mb()
    config = RecipeConfig(gradinit_iterations=args.iterations, gradinit_batch_size=args.batch_size)
    GradInit(model, config, {}).run(random_batches(args.batch_size))
    held, peak = resident_mb(), peak_mb()
    returned = return_freed_memory()
    after = resident_mb()
    shape = f"{args.iterations} GradInit iterations of 2 x {args.batch_size} images"
    print(f"{args.model}, {shape} (MB resident)")
    print(f"before GradInit        {start:8.0f}")
    print(f"peak during GradInit   {peak:8.0f}")
    print(f"after, pages held      {held:8.0f}")
    print(f"after, pages returned  {after:8.0f}" + ("" if returned else "  (not glibc: nothing to return)"))
    print(f"ratio held/returned {held / after:.2f}")


if __name__ == "__main__":
    main()
