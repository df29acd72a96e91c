"""What the recipe tests share: a run config with a recipe, a recipe installed into a model for a fresh
CPU run, and the model's module tree and hooks (ghost parts must leave neither changed)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from anymask.config import RunConfig
from anymask.masks.mask import Mask
from anymask.recipe import Recipe, RecipeContext

EPOCHS = 10


def run_config(recipe: str, **settings: object) -> RunConfig:
    config = RunConfig()
    config.recipe = dataclasses.replace(config.recipe, recipe=recipe, **settings)
    config.train.progress = False
    return config


def prepared(
    model: nn.Module, recipe: str, data: object = None, mask: Mask | None = None, **settings: object
) -> Recipe:
    """A recipe built from settings and installed into `model` for a fresh run on CPU."""
    config = run_config(recipe, **settings)
    built = Recipe.from_config(config.recipe, EPOCHS)
    built.prepare(RecipeContext(model, mask, data, config, torch.device("cpu"), False, 0.0))
    return built


def module_tree(model: nn.Module) -> list[tuple[str, type]]:
    return [(name, type(module)) for name, module in model.named_modules()]


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
