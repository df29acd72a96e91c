"""anymask: train sparse neural networks well, whatever mask they come with.

`anymask.SparseTraining` brings a mask, the ToST recipe and SET/RigL into your own training loop
(docs/own-loop.md); the subpackages hold the rest (masks, recipe, dst, data, models, train, deploy).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SparseTraining"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import anymask` stays light for the command line.
    if name == "SparseTraining":
        from anymask.sparse_training import SparseTraining

        return SparseTraining
    raise AttributeError(f"module 'anymask' has no attribute {name!r}")
