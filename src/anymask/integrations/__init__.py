"""Callbacks that run `anymask.SparseTraining` inside other libraries' trainers.

- `anymask.integrations.lightning.SparseTrainingCallback` for `lightning.Trainer` (extra `anymask[lightning]`)
- `anymask.integrations.huggingface.SparseTrainingCallback` for `transformers.Trainer`
  (extra `anymask[huggingface]`)

Each takes `SparseTraining`'s settings; the trainer supplies the model, the optimizer, the length of
training and the batches that masks and GradInit score on. docs/own-loop.md shows both.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from anymask.errors import AnymaskError


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AnymaskError(
            f"this callback needs {module}, which is not installed: pip install 'anymask[{extra}]'"
        ) from None


def missing_loss_message(trainer: str, how: str) -> str:
    return (
        f"recipe part 'ls' (label smoothing) needs the recipe's loss, but {trainer} computed its own: {how} "
        "(docs/own-loop.md), or leave 'ls' out of recipe"
    )
