"""Deploy-test fixtures: masked registry models whose BatchNorms hold non-trivial statistics, and finished
run folders written around them (the files `anymask export` and `read_run` read)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from anymask.config import RunConfig, save_config
from anymask.deploy import ModelSpec
from anymask.masks import Mask, MaskConfig, make_mask
from anymask.train.checkpoint import save_weights


def trained_like(
    spec: ModelSpec, sparsity: float, method: str = "erk", seed: int = 0
) -> tuple[nn.Module, Mask]:
    """A registry model with a mask applied and BatchNorms holding non-trivial statistics, in eval mode."""
    torch.manual_seed(seed)
    model = spec.build()
    mask = make_mask(model, MaskConfig(mask_method=method, sparsity=sparsity, mask_seed=seed))
    mask.apply(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.num_batches_tracked.fill_(123)
    return model.eval(), mask


def write_finished_run(
    folder: Path, model: nn.Module, mask: Mask, model_name: str, data: str, width: float = 0.25
) -> Path:
    """A finished run folder (config, mask, weights, summary) holding `model`."""
    folder.mkdir(parents=True)
    config = RunConfig.from_flat({"model": model_name, "data": data, "width": width})
    save_config(config, folder / "config.json")
    mask.save(folder / "mask.safetensors")
    save_weights(model, folder / "model.safetensors")
    summary = {"config_hash": config.hash(), "model": model_name, "data": data, "mask_method": "random"}
    summary |= {"sparsity": 0.9, "recipe": "default", "seed": 0, "epochs": 1, "final_test_acc": 0.5}
    summary |= {"best_test_acc": 0.5, "nonzero_weights": mask.kept(), "mask_total": mask.total()}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder
