"""Tests for the ToST recipe: schedules, ghost soft neurons, ghost skips, label smoothing (GradInit:
test_recipe_gradinit).

The invariant that matters most: ghost parts are truly temporary. Once removed, the model has the
original module tree, state-dict keys and outputs, and only the mask's weights are nonzero.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from anymask.config import RunConfig, field_help
from anymask.data import load_dataset
from anymask.errors import AnymaskError
from anymask.masks.mask import Mask
from anymask.models import create_model
from anymask.recipe import PRESETS, RECIPE_PARTS, Recipe, RecipeContext, parse_recipe
from anymask.recipe.base import check_choice
from anymask.recipe.config import RecipeConfig
from anymask.recipe.ghost_neurons import SOFT, GhostSoftNeuron, computes_relu
from anymask.recipe.ghost_skips import free_shortcut, unit_rms
from anymask.recipe.label_smoothing import smoothed_cross_entropy, smoothed_targets
from anymask.recipe.schedules import DEFAULT_GHOST_FRACTION, SHAPES, ghost_end, ramp
from recipe_support import EPOCHS, hooks_left, module_tree, prepared, run_config


# -- schedules ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_ramp_endpoints_and_clamping(shape: str) -> None:
    assert ramp(2.0, 2.0, 6.0, shape) == 0.0
    assert ramp(6.0, 2.0, 6.0, shape) == 1.0
    assert ramp(-5.0, 2.0, 6.0, shape) == 0.0
    assert ramp(60.0, 2.0, 6.0, shape) == 1.0
    middle = ramp(4.0, 2.0, 6.0, shape)
    assert middle == {"linear": 0.5, "cosine": pytest.approx(0.5), "step": 0.0}[shape]


def test_ramps_are_monotone_and_cosine_is_flat_at_the_ends() -> None:
    for shape in SHAPES:
        values = [ramp(e / 10, 0.0, 1.0, shape) for e in range(11)]
        assert values == sorted(values)
    assert ramp(0.01, 0.0, 1.0, "cosine") < ramp(0.01, 0.0, 1.0, "linear") / 10


def test_ramp_with_an_empty_interval_is_a_step() -> None:
    assert ramp(2.9, 3.0, 3.0, "linear") == 0.0
    assert ramp(3.0, 3.0, 3.0, "cosine") == 1.0


def test_ghost_end_default_and_bounds() -> None:
    assert ghost_end(None, 200) == DEFAULT_GHOST_FRACTION * 200
    assert ghost_end(7, 200) == 7.0
    assert ghost_end(0, 200) == 0.0
    for bad in (-1, 201):
        with pytest.raises(AnymaskError, match="ghost_epochs"):
            ghost_end(bad, 200)


# -- parsing and config ------------------------------------------------------------------------------
def test_parse_recipe_presets_lists_and_errors() -> None:
    assert parse_recipe("default") == ()
    assert parse_recipe(" TOST ") == ("gsn", "gsc", "lrsi", "ls") == PRESETS["tost"]
    assert parse_recipe("ls,gsn") == ("gsn", "ls")
    assert parse_recipe("gsc, gsc ,lrsi") == ("gsc", "lrsi")
    with pytest.raises(AnymaskError, match="unknown recipe part 'gsx'") as error:
        parse_recipe("gsn,gsx")
    assert "\n" not in str(error.value)
    with pytest.raises(AnymaskError, match="empty"):
        parse_recipe(" , ")


def test_every_recipe_setting_has_help_and_a_working_override() -> None:
    helps = field_help()
    for field in dataclasses.fields(RecipeConfig):
        assert helps.get(field.name), f"{field.name} has no help line"
    overrides = {"gsn_soft": "mish", "ghost_epochs": "3", "gradinit_normalize_grad": "false"}
    config = RunConfig().updated(overrides)
    assert (config.recipe.gsn_soft, config.recipe.ghost_epochs) == ("mish", 3.0)
    assert config.recipe.gradinit_normalize_grad is False


def test_every_recipe_setting_belongs_to_a_part() -> None:
    """The run hash leaves out the settings of parts not in use: a setting no part claims is a bug."""
    from anymask.recipe.config import PART_SETTINGS

    prefixes = tuple(prefix for owned in PART_SETTINGS.values() for prefix in owned)
    unclaimed = [f.name for f in dataclasses.fields(RecipeConfig) if not f.name.startswith(prefixes)]
    assert unclaimed == ["recipe"]
    assert set(PART_SETTINGS) == set(RECIPE_PARTS.names())


@pytest.mark.parametrize(
    ("key", "value"),
    [("gsn_soft", "relu6"), ("gsc_mode", "dense"), ("ghost_schedule", "exp"), ("ls_schedule", "cosine")],
)
def test_unknown_choices_fail_when_the_recipe_is_built(key: str, value: str) -> None:
    config = run_config("tost", **{key: value})
    with pytest.raises(AnymaskError, match=f"unknown {key} '{value}'"):
        Recipe.from_config(config.recipe, EPOCHS)


@pytest.mark.parametrize(
    ("key", "value"),
    [("ls_alpha", 1.0), ("ls_alpha", -0.1), ("gradinit_lr", 0.0), ("gradinit_iterations", -1)],
)
def test_out_of_range_settings_fail_when_the_recipe_is_built(key: str, value: float) -> None:
    config = run_config("tost", **{key: value})
    with pytest.raises(AnymaskError, match=key):
        Recipe.from_config(config.recipe, EPOCHS)


def test_check_choice_returns_the_value() -> None:
    assert check_choice("gsc_mode", "free", ("free", "learned")) == "free"


# -- ghost soft neurons -----------------------------------------------------------------------------
class LibraryReLU(nn.Module):
    """A library's own ReLU class, not an nn.ReLU: found by what it computes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp_min(0)


def test_gsn_finds_relu_modules_by_behaviour() -> None:
    model = nn.Sequential(nn.Linear(2, 4), LibraryReLU(), nn.Linear(4, 4), nn.ReLU6(), nn.Identity())
    recipe = prepared(model, "gsn")
    assert [type(m) for m in model] == [nn.Linear, GhostSoftNeuron, nn.Linear, nn.ReLU6, nn.Identity]
    recipe.remove_ghosts()
    assert type(model[1]) is LibraryReLU


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.just(0.0), st.floats(1e-6, 1.0), st.floats(-1.0, -1e-6)))
def test_leaky_relu_counts_as_relu_only_with_slope_zero(slope: float) -> None:
    """(Slopes so small that slope * x underflows in float32 do compute ReLU there, and would count.)"""
    assert computes_relu(nn.LeakyReLU(slope)) == (slope == 0)


@pytest.mark.parametrize("soft", sorted(SOFT))
def test_ghost_soft_neuron_blends_soft_into_relu(soft: str) -> None:
    x = torch.linspace(-4, 4, 101)
    neuron = GhostSoftNeuron(soft)
    assert torch.equal(neuron(x), SOFT[soft](x))
    neuron.blend.fill_(1.0)
    assert torch.equal(neuron(x), F.relu(x))
    neuron.blend.fill_(0.3)
    assert torch.allclose(neuron(x), 0.7 * SOFT[soft](x) + 0.3 * F.relu(x), atol=1e-6)
    assert "blend" not in neuron.state_dict()


class SequentialNet(nn.Module):
    """A user model: ReLUs directly inside nn.Sequential, one ReLU object used at two call sites."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(inplace=True))
        self.shared = nn.ReLU()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.features(x)
        return self.head(self.shared(hidden) - self.shared(-hidden))


@pytest.mark.parametrize("build", [SequentialNet, lambda: create_model("resnet20", 10, (3, 8, 8), 0.25)])
def test_gsn_replaces_every_relu_and_remove_restores_the_original_model(build: type) -> None:
    torch.manual_seed(0)
    model = build().eval()
    fresh = copy.deepcopy(model)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    x = torch.randn(4, 6) if isinstance(model, SequentialNet) else torch.randn(4, 3, 8, 8)
    recipe = prepared(model, "gsn")
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert model.state_dict().keys() == fresh.state_dict().keys()
    assert not torch.allclose(model(x), fresh(x))
    recipe.remove_ghosts()
    assert module_tree(model) == module_tree(fresh)
    assert [m for m in model.modules() if isinstance(m, nn.ReLU)] == relus  # the very same objects
    assert torch.equal(model(x), fresh(x))


def test_gsn_blend_follows_the_ghost_phase_and_is_removed_at_its_end() -> None:
    model = SequentialNet()
    recipe = prepared(model, "gsn", ghost_epochs=4.0, ghost_schedule="linear")
    neurons = [m for m in model.modules() if isinstance(m, GhostSoftNeuron)]
    assert len(neurons) == 3 and all(float(n.blend) == 0.0 for n in neurons)
    assert recipe.update(1.0) == []
    assert all(float(n.blend) == 0.25 for n in neurons)
    assert recipe.metrics() == {"gsn/blend": 0.25}
    recipe.update(4.0)
    assert not any(isinstance(m, GhostSoftNeuron) for m in model.modules())
    assert recipe.metrics() == {"gsn/blend": 1.0}


def test_gsn_needs_relu_modules() -> None:
    with pytest.raises(AnymaskError, match=r"gsn needs ReLU activation modules.*its activations: Tanh x1"):
        prepared(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), "gsn")


@pytest.mark.parametrize("soft", sorted(SOFT))
def test_gsn_trains_with_every_soft_function(soft: str) -> None:
    model = SequentialNet()
    prepared(model, "gsn", gsn_soft=soft)
    model(torch.randn(4, 6)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# -- ghost skips -------------------------------------------------------------------------------------
def test_free_shortcut_shapes() -> None:
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(free_shortcut(x, x.shape), unit_rms(x))
    pooled = free_shortcut(x, torch.Size([2, 4, 4, 4]))
    assert torch.allclose(pooled, unit_rms(F.avg_pool2d(x, 2)), atol=1e-6)
    grown = free_shortcut(x, torch.Size([2, 6, 8, 8]))
    assert torch.equal(grown[:, :4], unit_rms(x)) and not grown[:, 4:].any()
    shrunk = free_shortcut(x, torch.Size([2, 2, 8, 8]))
    assert torch.allclose(shrunk, unit_rms(x.view(2, 2, 2, 8, 8).mean(2)), atol=1e-6)
    uneven = free_shortcut(torch.randn(2, 5, 7, 7), torch.Size([2, 3, 4, 4]))
    assert uneven.shape == (2, 3, 4, 4)
    assert torch.allclose(unit_rms(x).square().mean(dim=(1, 2, 3)), torch.ones(2), atol=1e-4)


FAMILIES = {
    "resnet20": (0.25, (3, 16, 16)),
    "resnet18": (0.25, (3, 16, 16)),  # width 0.125 hits a torch CPU crash (1x1 stride-2 conv, 8 ch)
    "vgg16": (0.0625, (3, 16, 16)),
    "mobilenetv2": (0.125, (3, 8, 8)),
    "cnn": (0.25, (1, 8, 8)),
}


def family_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    width, shape = FAMILIES[name]
    torch.manual_seed(0)
    model = create_model(name, 10, shape, width).eval()
    return model, torch.randn(3, *shape).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gsc_works_on_every_family_and_leaves_no_trace(name: str) -> None:
    model, x = family_model(name)
    fresh = copy.deepcopy(model)
    plain = fresh(x)
    recipe = prepared(model, "gsc", ghost_epochs=4.0, gsc_mode="free")
    ghost = model(x)
    assert ghost.shape == plain.shape and torch.isfinite(ghost).all() and not torch.allclose(ghost, plain)
    model.train()
    model(x).sum().backward()  # gradients flow through the skips (and BN running stats move)
    model.eval()
    fresh.load_state_dict(model.state_dict())
    plain = fresh(x)
    recipe.parts[0].update(4.0)  # s = 0: the skips still run but add nothing
    assert torch.equal(model(x), plain)
    recipe.remove_ghosts()
    assert hooks_left(model) == 0
    assert model.state_dict().keys() == fresh.state_dict().keys()
    assert module_tree(model) == module_tree(fresh)
    assert torch.equal(model(x), plain)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet32", "resnet34", "resnet56", "resnet104"])
def test_gsc_on_the_other_registry_models(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 10, (3, 16, 16), 0.25).eval()
    x = torch.randn(2, 3, 16, 16)
    plain = model(x)
    recipe = prepared(model, "gsn,gsc", gsc_mode="learned")
    assert torch.isfinite(model(x)).all()
    recipe.remove_ghosts()
    assert hooks_left(model) == 0 and torch.equal(model(x), plain)


def test_gsc_on_a_user_model_with_discovered_sites() -> None:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
    layers += [nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten()]
    model = nn.Sequential(*layers).eval()
    x = torch.randn(2, 3, 8, 8)
    plain = model(x)
    recipe = prepared(model, "gsc", gsc_mode="free")  # learned branches start as a no-op
    assert model(x).shape == plain.shape and not torch.allclose(model(x), plain)
    recipe.remove_ghosts()
    assert hooks_left(model) == 0 and torch.equal(model(x), plain)


def test_gsc_scale_fades_from_one_to_zero() -> None:
    model, _ = family_model("cnn")
    recipe = prepared(model, "gsc", ghost_epochs=2.0, ghost_schedule="cosine")
    assert recipe.metrics() == {"gsc/scale": 1.0}
    recipe.update(1.0)
    assert recipe.metrics()["gsc/scale"] == pytest.approx(0.5)
    assert float(recipe.parts[0].scale) == pytest.approx(0.5)
    recipe.update(2.0)
    assert hooks_left(model) == 0 and recipe.metrics() == {"gsc/scale": 0.0}


def test_gsc_learned_branches_train_outside_the_model() -> None:
    model, x = family_model("resnet20")
    keys = model.state_dict().keys()
    n_params = len(list(model.parameters()))
    recipe = prepared(model, "gsc", gsc_mode="learned", ghost_epochs=4.0)
    branches = recipe.parameters()
    assert len(branches) == 18 * 3  # 18 sites x (conv weight, BN weight, BN bias)
    assert model.state_dict().keys() == keys and len(list(model.parameters())) == n_params
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is not None for p in branches)
    assert any(p.grad.abs().sum() > 0 for p in branches)
    state = recipe.state_dict()
    with torch.no_grad():
        for p in branches:
            p.add_(1.0)
    recipe.load_state_dict(state)
    assert all(torch.equal(p, s) for p, s in zip(branches, _saved_params(state["gsc"]), strict=True))
    assert recipe.update(4.0) == branches  # the trainer drops them from the optimizer
    assert recipe.parameters() == [] and recipe.state_dict() == {"gsc": {}}
    assert hooks_left(model) == 0


def _saved_params(state: dict) -> list[torch.Tensor]:
    return [t for branch in state["branches"] for k, t in branch.items() if k.endswith(("weight", "bias"))]


def test_gsc_learned_branches_start_as_a_no_op() -> None:
    model, x = family_model("cnn")
    plain = model(x)
    prepared(model, "gsc", gsc_mode="learned")
    assert torch.allclose(model(x), plain, atol=1e-6)


def test_learned_branches_sync_their_batchnorm_under_ddp(monkeypatch: pytest.MonkeyPatch, digits) -> None:
    """The branches live outside the model, so DDP's conversion of the model's BN must reach them too."""
    from anymask import SparseTraining
    from anymask.train import trainer as trainer_module
    from anymask.train.distributed import SyncBatchNorm2d, World

    monkeypatch.setattr(trainer_module, "DistributedDataParallel", lambda model, device_ids=None: model)
    model = create_model("cnn", 10, (1, 8, 8))
    config = run_config("gsc", gsc_mode="learned")
    sparse = SparseTraining(config=config, epochs=EPOCHS, steps_per_epoch=4, batches=digits)
    trainer_module.Trainer(model, digits, config, sparse=sparse, world=World(0, 0, 2))
    recipe = sparse.recipe
    norms = [m for branch in recipe.modules() for m in branch.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(type(m) is SyncBatchNorm2d for m in norms)


def test_gsc_needs_sites() -> None:
    with pytest.raises(AnymaskError, match="ghost-skip sites"):
        prepared(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "gsc")


def test_ghost_parts_resumed_after_their_phase_are_not_installed() -> None:
    model, _ = family_model("cnn")
    config = run_config("gsn,gsc", ghost_epochs=2.0)
    recipe = Recipe.from_config(config.recipe, EPOCHS)
    recipe.prepare(RecipeContext(model, None, None, config, torch.device("cpu"), True, 3.0))
    assert hooks_left(model) == 0 and not any(isinstance(m, GhostSoftNeuron) for m in model.modules())
    assert recipe.update(3.0) == []


# -- a dataset for the tests that train --------------------------------------------------------------
@pytest.fixture(scope="module")
def digits() -> object:
    return load_dataset("digits", train_subset=256)


# -- label smoothing ---------------------------------------------------------------------------------
def test_smoothed_targets_follow_the_paper_convention() -> None:
    targets = torch.tensor([0, 3, 4])
    rows = smoothed_targets(targets, 5, 0.1)
    assert torch.allclose(rows.sum(1), torch.ones(3))
    assert torch.allclose(rows[torch.arange(3), targets], torch.full((3,), 0.9))
    off = rows.clone()
    off[torch.arange(3), targets] = 0
    assert torch.allclose(off.sum(1), torch.full((3,), 0.1))
    assert torch.allclose(off[off > 0], torch.full((12,), 0.1 / 4))


def test_smoothed_cross_entropy_equals_a_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = torch.tensor([0, 2])
    expected = 0.0
    for row, target in zip(logits.tolist(), targets.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        expected -= sum((0.8 if c == target else 0.1) * (v - log_z) for c, v in enumerate(row))
    assert smoothed_cross_entropy(logits, targets, 0.2).item() == pytest.approx(expected / 2, rel=1e-6)
    assert torch.allclose(smoothed_cross_entropy(logits, targets, 0.0), F.cross_entropy(logits, targets))


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("constant", [0.1, 0.1, 0.1, 0.1]),
        ("ghost", [0.1, 0.1, 0.0, 0.0]),
        ("linear", [0.1, 0.075, 0.05, 0.0]),
    ],
)
def test_label_smoothing_schedules(schedule: str, expected: list[float]) -> None:
    config = run_config("ls", ls_schedule=schedule, ghost_epochs=4.0)
    recipe = Recipe.from_config(config.recipe, 8)
    logits, targets = torch.randn(4, 10), torch.randint(0, 10, (4,))
    for epoch, alpha in zip([0.0, 2.0, 4.0, 8.0], expected, strict=True):
        recipe.update(epoch)
        assert recipe.metrics()["ls/alpha"] == pytest.approx(alpha)
        loss = recipe.loss(logits, targets, epoch)
        assert loss.item() == pytest.approx(smoothed_cross_entropy(logits, targets, alpha).item())


def test_default_recipe_loss_is_cross_entropy() -> None:
    recipe = Recipe.from_config(run_config("default").recipe, EPOCHS)
    logits, targets = torch.randn(4, 10), torch.randint(0, 10, (4,))
    assert torch.equal(recipe.loss(logits, targets, 0.0), F.cross_entropy(logits, targets))


# -- end to end --------------------------------------------------------------------------------------
def test_tost_run_saves_the_plain_model_with_exactly_the_masks_weights(tmp_path: object) -> None:
    from safetensors.torch import load_file

    from anymask.train import run_experiment

    config = RunConfig().updated(
        {
            "data": "digits",
            "train_subset": 256,
            "model": "cnn",
            "width": 0.5,
            "epochs": 2,
            "batch_size": 64,
            "mask_method": "random",
            "sparsity": 0.8,
            "recipe": "tost",
            "ghost_epochs": 1.0,
            "gradinit_iterations": 4,
            "gradinit_batch_size": 32,
            "progress": False,
            "device": "cpu",
        }
    )
    result = run_experiment(config, tmp_path / "run")
    state = load_file(str(result.out_dir / "model.safetensors"))
    plain = create_model("cnn", 10, (1, 8, 8), 0.5)
    plain.load_state_dict(state, strict=True)
    mask = Mask.load(result.out_dir / "mask.safetensors")
    nonzero = sum(int(plain.get_parameter(name).count_nonzero()) for name in mask)
    assert nonzero == mask.kept()
    first, last = (json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines())
    assert first["gsc/scale"] == 0.0 and first["gsn/blend"] == 1.0 and first["ls/alpha"] == 0.1
    assert "lrsi/scale/classifier.weight" in first and "lrsi/scale/classifier.weight" not in last
