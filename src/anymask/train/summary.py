"""What a finished run's summary.json says: accuracies, the mask's counts, connectivity, training cost."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from anymask.config import RunConfig
from anymask.flops import forward_macs
from anymask.masks import Mask
from anymask.masks.connectivity import connectivity
from anymask.train.trainer import Trainer


def training_cost(
    trainer: Trainer, plain: nn.Module, mask: Mask, input_shape: tuple[int, ...]
) -> dict[str, Any]:
    """This run's training FLOPs and those of the default protocol on the same mask (train/cost.py)."""
    from anymask.models.calling import ModelCall

    mask.apply(plain)
    example = torch.zeros((1, *input_shape), device=next(plain.parameters()).device)
    default = forward_macs(plain, example, ModelCall.of(plain, trainer.call.output_fn))
    return trainer.cost.summary(default)


def nonzero_count(model: nn.Module, mask: Mask) -> int:
    """Nonzero prunable weights: never more than the mask keeps."""
    return sum(int(model.get_parameter(name).count_nonzero()) for name in mask)


def connectivity_summary(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Effective density and reachable classes of the run's mask, for summary.json (and `report`)."""
    try:
        return connectivity(model, mask, input_shape).summary()
    except Exception:  # a model that cannot be traced on one image: the summary just lacks these keys
        return {}


def machine_summary() -> dict[str, Any]:
    """What a seed's bits depend on beyond the config: a run is reproduced bit for bit only with the same
    PyTorch build, CPU vector instructions (another CPU picks other kernels, which round differently) and
    thread count (another summation order)."""
    return {
        "torch_version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def summarize(
    config: RunConfig, mask: Mask, history: list[dict[str, Any]], model: nn.Module
) -> dict[str, Any]:
    last = history[-1]
    # A model evaluated with ghost parts inside is not the architecture that ships: never pick it as best.
    final_model = [r for r in history if not r.get("ghost_phase")] or history
    best_test = max(final_model, key=lambda r: r["test_acc"])
    summary: dict[str, Any] = {
        "model": config.model.model,
        "data": config.data.data,
        "mask_method": "file" if config.mask.mask_file else config.mask.mask_method,
        "sparsity": config.mask.sparsity,
        "recipe": config.recipe.recipe,
        "seed": config.train.seed,
        "epochs": config.train.epochs,
        "final_test_acc": last["test_acc"],
        "best_test_acc": best_test["test_acc"],
        "best_test_epoch": best_test["epoch"],
        "mask_kept": mask.kept(),
        "mask_total": mask.total(),
        "mask_density": mask.density(),
        "nonzero_weights": nonzero_count(model, mask),
        "train_seconds": sum(r["seconds"] for r in history),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config_hash": config.hash(),
        **machine_summary(),
    }
    if "val_acc" in last:
        best_val = max(final_model, key=lambda r: r["val_acc"])
        summary.update(
            best_val_acc=best_val["val_acc"],
            test_acc_at_best_val=best_val["test_acc"],
            best_val_epoch=best_val["epoch"],
        )
    return summary
