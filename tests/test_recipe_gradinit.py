"""GradInit after masking: kept weights rescaled, pruned ones still zero, deterministic by seed, scales
logged once, skipped on resume, run through installed ghost parts, BatchNorm statistics recalibrated
wherever the modules are."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from anymask.data import load_dataset
from anymask.masks.mask import Mask
from anymask.models import create_model
from anymask.recipe import Recipe, RecipeContext
from anymask.recipe.gradinit import SCALES_FILE, recalibrate_running_stats
from recipe_support import EPOCHS, hooks_left, prepared, run_config


@pytest.fixture(scope="module")
def digits() -> object:
    return load_dataset("digits", train_subset=256)


def gradinit_setup(digits: object, seed: int = 0) -> tuple[nn.Module, Mask]:
    torch.manual_seed(seed)
    model = create_model("cnn", 10, (1, 8, 8), 0.25)
    generator = torch.Generator().manual_seed(1)
    weights = {n: p for n, p in model.named_parameters() if p.dim() > 1}
    mask = Mask({n: torch.rand(p.shape, generator=generator) < 0.3 for n, p in weights.items()})
    mask.apply(model)
    return model, mask


GRADINIT = {"gradinit_iterations": 5, "gradinit_batch_size": 16}


def test_gradinit_rescales_kept_weights_and_keeps_pruned_ones_zero(digits: object) -> None:
    model, mask = gradinit_setup(digits)
    model.train()
    before = copy.deepcopy(model)
    recipe = prepared(model, "lrsi", digits, mask, **GRADINIT)
    for name, param in model.named_parameters():
        if name in mask:
            assert not param[~mask[name]].any(), f"{name}: a pruned weight came back"
    ratios = {
        n: float(p.detach().norm() / before.get_parameter(n).detach().norm())
        for n, p in model.named_parameters()
        if before.get_parameter(n).norm() > 0
    }
    assert any(abs(r - 1) > 1e-3 for r in ratios.values())
    scales = recipe.parts[0].scales
    assert all(ratios[n] == pytest.approx(scales[n], rel=1e-4) for n in ratios)
    assert all(scales[n] >= 0.01 for n in scales if not n.endswith("bias"))
    # zero-initialised BN biases cannot be scaled; modes, grads and batch counts are as before, while the
    # running statistics now describe the rescaled network (tests/test_failure.py checks their values)
    assert all(not model.get_parameter(n).any() for n in scales if n.endswith("bn.bias"))
    assert all(m.training for m in model.modules())
    buffers = [(n, a, before.get_buffer(n)) for n, a in model.named_buffers()]
    assert all(torch.equal(a, b) != n.endswith(("running_mean", "running_var")) for n, a, b in buffers)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_gradinit_is_deterministic_given_the_seed(digits: object) -> None:
    first, mask = gradinit_setup(digits)
    second, _ = gradinit_setup(digits)
    prepared(first, "lrsi", digits, mask, **GRADINIT)
    prepared(second, "lrsi", digits, mask, **GRADINIT)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True))


def test_gradinit_logs_scales_once_and_writes_them(digits: object, tmp_path: object) -> None:
    model, mask = gradinit_setup(digits)
    config = run_config("lrsi", **GRADINIT)
    recipe = Recipe.from_config(config.recipe, EPOCHS)
    context = RecipeContext(model, mask, digits, config, torch.device("cpu"), False, 0.0, out_dir=tmp_path)
    recipe.prepare(context)
    logged = recipe.metrics()
    assert set(logged) == {f"lrsi/scale/{n}" for n, _ in model.named_parameters()}
    assert recipe.metrics() == {}
    written = json.loads((tmp_path / SCALES_FILE).read_text())
    assert written == {k.removeprefix("lrsi/scale/"): v for k, v in logged.items()}


def test_gradinit_skips_a_resumed_run(digits: object) -> None:
    model, mask = gradinit_setup(digits)
    before = copy.deepcopy(model.state_dict())
    config = run_config("lrsi", **GRADINIT)
    recipe = Recipe.from_config(config.recipe, EPOCHS)
    recipe.prepare(RecipeContext(model, mask, digits, config, torch.device("cpu"), True, 2.0))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_gradinit_runs_through_installed_ghosts(digits: object) -> None:
    model, mask = gradinit_setup(digits)
    fresh_keys = model.state_dict().keys()
    recipe = prepared(model, "gsn,gsc,lrsi", digits, mask, gsc_mode="learned", **GRADINIT)
    for name, param in model.named_parameters():
        if name in mask:
            assert not param[~mask[name]].any()
    recipe.remove_ghosts()
    assert model.state_dict().keys() == fresh_keys and hooks_left(model) == 0


def test_recalibration_reaches_batchnorms_outside_the_model() -> None:
    """A learned ghost-skip branch lives outside the model tree; after GradInit its BatchNorm statistics
    are recomputed with the model's: the plain average of each batch's statistics, with the momentum,
    the batch count and the training mode put back."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    branch = nn.BatchNorm2d(3, momentum=0.3)
    branch.running_mean.fill_(5.0)  # stale, as after GradInit's rescaling
    model[1].register_forward_hook(lambda module, args, out: out + branch.train(module.training)(args[0]))
    batches = [(torch.randn(4, 2, 5, 5) * k + k, torch.zeros(4)) for k in (1.0, 2.0, 3.0)]
    model.train()
    recalibrate_running_stats(model, iter(batches), 3, outside=[branch])
    with torch.no_grad():
        inputs = [model[0](x) for x, _ in batches]
    means = torch.stack([z.mean((0, 2, 3)) for z in inputs]).mean(0)
    variances = torch.stack([z.var((0, 2, 3)) for z in inputs]).mean(0)  # unbiased, as BatchNorm keeps
    for norm in (branch, model[1]):
        torch.testing.assert_close(norm.running_mean, means)
        torch.testing.assert_close(norm.running_var, variances)
        assert int(norm.num_batches_tracked) == 0 and norm.training
    assert branch.momentum == 0.3 and model[1].momentum == 0.1


def test_gradinit_is_told_the_modules_ghost_parts_keep_outside_the_model(digits: object) -> None:
    model, mask = gradinit_setup(digits)
    config = run_config("gsn,gsc,lrsi", gsc_mode="learned", **GRADINIT)
    recipe = Recipe.from_config(config.recipe, EPOCHS)
    context = RecipeContext(model, mask, digits, config, torch.device("cpu"), False, 0.0)
    recipe.prepare(context)
    assert context.outside_modules == recipe.modules() and len(recipe.modules()) > 0
