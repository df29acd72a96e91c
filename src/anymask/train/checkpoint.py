"""Checkpoints: everything needed to continue a run bit for bit, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from anymask.io import atomic_path

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's tensors and plain values; a file holding anything else is refused unread.

    Every object a checkpoint holds (model, optimizer and recipe state, the metrics history) is a
    tensor, number, string or container of them, so weights_only=True reads all of it and a planted
    pickle cannot run code (`anymask.artifacts.read_checkpoint`).
    """
    from anymask.artifacts import read_checkpoint

    return read_checkpoint(path)


def save_weights(model: nn.Module, path: Path, architecture: str | None = None) -> None:
    """The model's state dict as safetensors (loads into the plain registry model unless `architecture`
    says how the recipe changed it; the text goes into the file's metadata)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "anymask-model", **({"architecture": architecture} if architecture else {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(model: nn.Module, path: str | Path, kind: str = "init_weights") -> None:
    """Weights a run starts from (`init_weights`) or an ensemble member's (`kind` "model.safetensors"): a
    safetensors state dict (a run's model.safetensors) that must fit the model exactly; anything else
    fails in one line."""
    from anymask.artifacts import damaged, read_model_weights

    state = read_model_weights(path, kind).tensors  # damage: one line naming the file
    _check_dtype_kinds(model, state, path, kind)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        reason = str(error).splitlines()[1].strip()[:200] if "\n" in str(error) else str(error)[:200]
        problem = f"it does not fit the model ({reason}); was it saved from another model?"
        raise damaged(path, kind, problem) from None


def _check_dtype_kinds(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, kind: str) -> None:
    """load_state_dict casts silently: integer (quantized) or boolean tensors would land in float weights
    as wrong numbers. Another float precision is fine (the values are the same weights)."""
    from anymask.artifacts import damaged

    for name, own in model.state_dict().items():
        given = state.get(name)
        if given is not None and given.dtype.is_floating_point != own.dtype.is_floating_point:
            problem = f"{name} holds {given.dtype} values where the model has {own.dtype} (quantized?)"
            raise damaged(path, kind, problem)
