"""The recipe parts that keep their gain inside the mask: ghost weights (gw), folding branches (fold),
distillation (kd), sparse-aware initialisation (sparse-init), and the training-cost count.

The invariants: each ends with the plain architecture holding only the mask's weights; the fold is
exact in eval mode; ghost weights and their optimizer state are cut to exactly zero; a run resumes bit
for bit; bad settings fail in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

from anymask.config import RunConfig
from anymask.data.base import ImageDataset
from anymask.errors import AnymaskError
from anymask.flops import counting_macs, layer_macs
from anymask.masks import MaskConfig, MaskEnforcer, make_mask
from anymask.masks.mask import Mask
from anymask.models import create_model
from anymask.models.calling import ModelCall
from anymask.recipe import Recipe, RecipeContext
from anymask.recipe.choices import CHOICES
from anymask.recipe.distill import distillation_loss
from anymask.recipe.fold import centre_fits, parse_branches
from anymask.recipe.ghost_weights import outside_share
from anymask.recipe.sparse_init import unit_scales
from anymask.train import Trainer, run_experiment
from anymask.train.run import validate
from quick_runs import quick_config
from recipe_support import run_config

EPOCHS = 10


def synthetic_data(images: int = 64, shape: tuple[int, int, int] = (3, 32, 32)) -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, *shape), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 10, (images,), generator=generator)
    names = [str(i) for i in range(10)]
    return ImageDataset(
        "synthetic", x, y, x[:0], y[:0], x[:8], y[:8], 10, (0.5,) * 3, (0.25,) * 3, 4, True, names
    )


def normalised(data: ImageDataset) -> torch.Tensor:
    return (data.train_x.float() / 255 - 0.5) / 0.25


def masked_model(build, density_sparsity: float = 0.9) -> tuple[nn.Module, Mask]:
    torch.manual_seed(0)
    model = build()
    mask = make_mask(model, MaskConfig(mask_method="erk", sparsity=density_sparsity))
    initial = {name: model.get_parameter(name).detach().clone() for name in mask}
    mask.apply(model)
    model.initial = initial  # type: ignore[attr-defined]  (the test's own handle)
    return model, mask


def install(model: nn.Module, mask: Mask, recipe: str, data: ImageDataset, **options: object) -> Recipe:
    config = run_config(recipe, **options)
    built = Recipe.from_config(config.recipe, EPOCHS)
    context = RecipeContext(model, mask, data, config, torch.device("cpu"), False, 0.0)
    context.initial_weights = getattr(model, "initial", None)
    built.prepare(context)
    return built


def train_steps(model: nn.Module, recipe: Recipe, mask: Mask, data: ImageDataset, steps: int = 4):
    optimizer = torch.optim.SGD([*model.parameters(), *recipe.parameters()], lr=0.05, momentum=0.9)
    enforcer = MaskEnforcer(model, recipe.enforced_mask(mask), optimizer)
    recipe.bind(optimizer, enforcer)
    call, x = ModelCall.of(model), normalised(data)
    model.train()
    for step in range(steps):
        recipe.update(step / 10)
        loss = recipe.loss(call(model, x[:32]), data.train_y[:32], step / 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


def hf_resnet() -> nn.Module:
    pytest.importorskip("transformers")
    import foreign_models

    return foreign_models.hf_resnet(10, (3, 32, 32), 1.0)


FOLD_MODELS = {
    "resnet20": lambda: create_model("resnet20", 10, (3, 32, 32), 0.5),
    "vgg16": lambda: create_model("vgg16", 10, (3, 32, 32), 0.25),
    "hf_resnet": hf_resnet,
}


# -- fold ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FOLD_MODELS))
def test_fold_is_exact_and_leaves_the_plain_model_inside_the_mask(name: str) -> None:
    data = synthetic_data()
    model, mask = masked_model(FOLD_MODELS[name])
    plain_keys = list(model.state_dict())
    plain_tree = [(n, type(m)) for n, m in model.named_modules()]
    recipe = install(model, mask, "fold", data, fold_at="end")
    assert recipe.parameters(), "fold added no branch"
    train_steps(model, recipe, mask, data)  # branches and BN statistics move away from their start
    call, x = ModelCall.of(model), normalised(data)
    model.eval()
    with torch.no_grad():
        before = call(model, x)
    recipe.remove_ghosts()
    model.eval()
    with torch.no_grad():
        after = call(model, x)
    assert float((after - before).abs().max()) < 1e-5
    assert list(model.state_dict()) == plain_keys
    assert [(n, type(m)) for n, m in model.named_modules()] == plain_tree
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    for weight_name, kept in mask.items():
        assert torch.all(model.get_parameter(weight_name)[~kept] == 0), weight_name
    assert recipe.summary()["fold_max_logit_change"] < 1e-5


def test_fold_branches_change_the_function_before_the_fold() -> None:
    """A fold that changed nothing would pass the exactness test trivially: the branches must matter."""
    data = synthetic_data()
    model, mask = masked_model(FOLD_MODELS["resnet20"])
    call, x = ModelCall.of(model), normalised(data)
    model.eval()
    with torch.no_grad():
        plain = call(model, x)
    install(model, mask, "fold", data)
    model.eval()
    with torch.no_grad():
        with_branches = call(model, x)
    assert float((with_branches - plain).abs().max()) > 1e-3


def test_fold_branch_weights_stay_inside_the_mask_while_training() -> None:
    data = synthetic_data()
    model, mask = masked_model(FOLD_MODELS["resnet20"])
    recipe = install(model, mask, "fold", data)
    train_steps(model, recipe, mask, data, steps=3)
    part = recipe.parts[0]
    for site in part.sites:
        for branch in site.branches:
            assert torch.all(branch.conv.weight[branch.mask == 0] == 0)
            assert branch.conv.weight[branch.mask == 1].abs().sum() > 0


def test_fold_at_the_ghost_end_happens_during_training_and_at_end_after_the_last_epoch() -> None:
    ghost = Recipe.from_config(run_config("fold", ghost_epochs=2, fold_at="ghost").recipe, EPOCHS).parts[0]
    end = Recipe.from_config(run_config("fold", ghost_epochs=2).recipe, EPOCHS).parts[0]  # the default
    assert ghost.ghost_end() == 2 and end.ghost_end() == EPOCHS


def test_fold_settings_fail_in_one_line() -> None:
    with pytest.raises(AnymaskError, match="fold_branches"):
        Recipe.from_config(run_config("fold", fold_branches="3x3").recipe, EPOCHS)
    with pytest.raises(AnymaskError, match="fold_at"):
        Recipe.from_config(run_config("fold", fold_at="never").recipe, EPOCHS)
    assert parse_branches("1x1, kxk") == ("1x1", "kxk")


def test_centre_branch_only_where_the_centre_tap_lines_up() -> None:
    assert centre_fits(nn.Conv2d(4, 4, 3, padding=1))
    assert centre_fits(nn.Conv2d(4, 4, 5, stride=2, padding=2))
    assert not centre_fits(nn.Conv2d(4, 4, 3, padding=0))
    assert not centre_fits(nn.Conv2d(4, 4, 1))
    assert not centre_fits(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))


# -- ghost weights ---------------------------------------------------------------------------------
@given(st.floats(0.1, 10), st.integers(0, 1000))
@settings(max_examples=25, deadline=None, derandomize=True)
def test_relative_squeeze_ignores_each_units_scale(scale: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(6, 4, 3, 3, generator=generator, dtype=torch.float64)
    outside = (torch.rand(6, 4, 3, 3, generator=generator) < 0.9).double()
    unit = torch.ones(6, 1, 1, 1, dtype=torch.float64)
    unit[2] = scale
    assert torch.allclose(outside_share(weight * unit, outside), outside_share(weight, outside))
    expected = (weight**2 * outside).flatten(1).sum(1) / (weight**2).flatten(1).sum(1)
    assert torch.allclose(outside_share(weight, outside), expected)


@pytest.mark.parametrize("form", ["fade", "relative", "absolute"])
def test_ghost_weights_live_then_are_cut_with_their_momentum(form: str) -> None:
    data = synthetic_data()
    model, mask = masked_model(FOLD_MODELS["resnet20"])
    recipe = install(model, mask, "gw", data, gw_form=form, gw_lambda=0.5)
    outside = {n: ~k for n, k in mask.items()}
    alive = sum(int(model.get_parameter(n)[o].count_nonzero()) for n, o in outside.items())
    assert alive > 0.9 * sum(int(o.sum()) for o in outside.values())  # they start from their init
    optimizer = train_steps(model, recipe, mask, data, steps=3)
    part = recipe.parts[0]
    if form == "fade":  # no penalty: the weights outside the mask carry a factor fading to 0
        assert part.penalty() is None and 0 < part.level < 1
    else:
        penalty = part.penalty()
        assert penalty is not None and float(penalty.detach()) > 0
    assert any(model.get_parameter(n)[o].abs().sum() > 0 for n, o in outside.items())
    recipe.update(float(EPOCHS))  # past the ghost end: the cut
    for name, pruned in outside.items():
        weight = model.get_parameter(name)
        assert torch.all(weight[pruned] == 0)
        assert torch.all(optimizer.state[weight]["momentum_buffer"][pruned] == 0)
    at_cut = recipe.summary()
    assert 0 < at_cut["gw_outside_fraction_at_cut"] < 1 and at_cut["gw_outside_norm_at_cut"] > 0
    for _ in range(2):  # the enforcer keeps them zero from now on
        optimizer.zero_grad()
        F.cross_entropy(ModelCall.of(model)(model, normalised(data)[:16]), data.train_y[:16]).backward()
        optimizer.step()
    assert all(torch.all(model.get_parameter(n)[o] == 0) for n, o in outside.items())


def test_ghost_weights_refuse_dynamic_sparse_training(tmp_path: Path) -> None:
    with pytest.raises(AnymaskError, match="gw"):
        run_experiment(quick_config(mask_method="erk", sparsity=0.9, recipe="gw", dst="set"), tmp_path / "r")
    assert not (tmp_path / "r").exists()


# -- sparse-aware initialisation -----------------------------------------------------------------
def test_unit_scales_restore_each_units_fan_in() -> None:
    mask = torch.zeros(3, 2, 3, 3, dtype=torch.bool)
    mask[0].view(-1)[:18] = True  # all 18 inputs
    mask[1].view(-1)[:2] = True  # 2 of 18
    scales = unit_scales(mask).flatten()
    assert torch.allclose(scales, torch.tensor([1.0, 3.0, 1.0]))  # unit 2 keeps nothing: left alone


def test_sparse_init_restores_output_variance_of_a_linear_layer() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(2000, 50, bias=False)
    mask = Mask({"weight": torch.rand(50, 2000) < 0.05})
    x = torch.randn(512, 2000)
    dense_var = float(layer(x).detach().var())
    mask.apply(layer)
    config = run_config("sparse-init")
    recipe = Recipe.from_config(config.recipe, EPOCHS)
    recipe.prepare(RecipeContext(layer, mask, None, config, torch.device("cpu"), False, 0.0))
    assert abs(float(layer(x).detach().var()) / dense_var - 1) < 0.15
    assert torch.all(layer.weight[~mask["weight"]] == 0)


# -- distillation ----------------------------------------------------------------------------------
def test_distillation_loss_is_hintons() -> None:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 10, generator=generator), torch.randn(5, 10, generator=generator)
    t = 3.0
    p = F.softmax(teacher / t, 1)
    expected = (p * (p.log() - F.log_softmax(student / t, 1))).sum(1).mean() * t * t
    assert torch.allclose(distillation_loss(student, teacher, t), expected)
    assert float(distillation_loss(teacher, teacher, t)) == pytest.approx(0, abs=1e-6)


@pytest.fixture(scope="module")
def dense_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("teacher") / "run"
    run_experiment(quick_config(mask_method="dense", sparsity=0.0, epochs=1), folder)
    return folder


def test_kd_run_records_its_teacher_and_ends_with_the_mask(tmp_path: Path, dense_teacher: Path) -> None:
    config = quick_config(mask_method="erk", sparsity=0.9, recipe="kd", teacher=str(dense_teacher))
    result = run_experiment(config, tmp_path / "kd")
    summary = result.summary
    teacher_summary = json.loads((dense_teacher / "summary.json").read_text())
    assert summary["teacher_train_seconds"] == teacher_summary["train_seconds"]
    assert summary["teacher_train_flops"] == teacher_summary["train_flops"]
    assert summary["nonzero_weights"] <= summary["mask_kept"]
    # each step also runs the dense teacher forward: more than the default's three sparse passes
    assert summary["train_flops_vs_default"] > 1.2
    state = load_file(result.out_dir / "model.safetensors")
    create_model("cnn", 10, (1, 8, 8)).load_state_dict(state, strict=True)


def test_kd_weight_zero_is_the_plain_loss(tmp_path: Path, dense_teacher: Path) -> None:
    base = {"mask_method": "erk", "sparsity": 0.9, "epochs": 1}
    plain = run_experiment(quick_config(**base), tmp_path / "plain")
    kd = run_experiment(
        quick_config(**base, recipe="kd", teacher=str(dense_teacher), kd_weight=0.0), tmp_path / "kd"
    )
    expected, actual = (load_file(r.out_dir / "model.safetensors") for r in (plain, kd))
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_kd_fold_preset_is_fold_and_kd_ending_at_exactly_the_mask(
    tmp_path: Path, dense_teacher: Path
) -> None:
    base = {"mask_method": "erk", "sparsity": 0.9, "epochs": 2, "teacher": str(dense_teacher)}
    preset = run_experiment(quick_config(**base, recipe="kd-fold"), tmp_path / "preset")
    parts = run_experiment(quick_config(**base, recipe="kd,fold"), tmp_path / "parts")
    expected, actual = (load_file(r.out_dir / "model.safetensors") for r in (parts, preset))
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    # the branches lived the whole run (fold_at defaults to "end") and were folded exactly
    assert preset.summary["fold_max_logit_change"] < 1e-4
    assert preset.summary["nonzero_weights"] <= preset.summary["mask_kept"]
    create_model("cnn", 10, (1, 8, 8)).load_state_dict(actual, strict=True)
    mask = Mask.load(preset.out_dir / "mask.safetensors")
    for name, kept in mask.items():
        assert torch.all(actual[name][~kept] == 0)
    with pytest.raises(AnymaskError, match="needs a teacher"):
        run_experiment(quick_config(mask_method="erk", sparsity=0.9, recipe="kd-fold"), tmp_path / "r")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "needs a teacher"),
        ({"teacher": "no/such/run"}, "neither a run folder"),
        ({"teacher": "x", "kd_temperature": 0.0}, "kd_temperature|neither"),
    ],
)
def test_kd_settings_fail_in_one_line(tmp_path: Path, settings: dict, message: str) -> None:
    with pytest.raises(AnymaskError, match=message):
        run_experiment(quick_config(mask_method="erk", sparsity=0.9, recipe="kd", **settings), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_kd_teacher_of_other_data_is_refused_before_anything_is_written(
    tmp_path: Path, dense_teacher: Path
) -> None:
    config = json.loads((dense_teacher / "config.json").read_text())
    config["data"]["data"] = "cifar10"
    other = tmp_path / "other"
    other.mkdir()
    for name in ("model.safetensors", "summary.json"):
        (other / name).write_bytes((dense_teacher / name).read_bytes())
    (other / "config.json").write_text(json.dumps(config))
    student = quick_config(mask_method="erk", sparsity=0.9, recipe="kd", teacher=str(other))
    with pytest.raises(AnymaskError, match="trained on cifar10"):
        run_experiment(student, tmp_path / "r")
    assert not (tmp_path / "r").exists()


# -- cost ------------------------------------------------------------------------------------------
def test_layer_macs_count_nonzero_weights_at_each_output_position() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.weight[1, 2, 0, 0] = 1.0
    output = conv(torch.randn(2, 3, 5, 5))
    assert layer_macs(conv, output) == 2 * 25
    linear = nn.Linear(6, 3)
    with counting_macs() as counts:
        linear(torch.randn(4, 6))
        with torch.no_grad():
            linear(torch.randn(2, 6))
    assert counts == {"train": 4 * 18, "forward": 2 * 18, "train_dense": 4 * 18}
    linear.weight.data[0] = 0  # one output's 6 weights pruned: the dense count still pays for them
    with counting_macs() as counts:
        linear(torch.randn(4, 6))
    assert counts == {"train": 4 * 12, "forward": 0, "train_dense": 4 * 18}


@pytest.mark.parametrize(
    ("recipe", "low", "high"), [("default", 1.0, 1.0), ("fold", 1.2, 4.0), ("gw", 1.5, 12.0)]
)
def test_training_flops_against_the_default(tmp_path: Path, recipe: str, low: float, high: float) -> None:
    config = quick_config(mask_method="erk", sparsity=0.9, recipe=recipe, epochs=2, ghost_epochs=1)
    summary = run_experiment(config, tmp_path / recipe).summary
    assert low <= summary["train_flops_vs_default"] <= high
    assert summary["default_train_flops"] > 0


# -- resume ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["gw", "fold", "sparse-init,fold,gw,ls"])
def test_resume_is_bit_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipe: str) -> None:
    config = quick_config(mask_method="erk", sparsity=0.9, recipe=recipe, epochs=3, ghost_epochs=1.5)
    reference = run_experiment(config, tmp_path / "reference")
    train_epoch = Trainer.train_epoch

    def killed_in_epoch_2(self: Trainer, epoch: int, **kwargs: object) -> object:
        if epoch == 1:
            raise RuntimeError("killed")
        return train_epoch(self, epoch, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", killed_in_epoch_2)
    with pytest.raises(RuntimeError, match="killed"):
        run_experiment(config, tmp_path / "resumed")
    monkeypatch.undo()
    resumed = run_experiment(config, tmp_path / "resumed", resume=True)
    expected, actual = (load_file(r.out_dir / "model.safetensors") for r in (reference, resumed))
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert resumed.summary["train_flops"] == reference.summary["train_flops"]
    create_model("cnn", 10, (1, 8, 8)).load_state_dict(actual, strict=True)


def test_fade_scales_the_weights_outside_the_mask_to_the_schedule_and_to_zero_at_its_end() -> None:
    data = synthetic_data()
    model, mask = masked_model(FOLD_MODELS["resnet20"])
    recipe = install(model, mask, "gw", data, gw_form="fade", ghost_epochs=4, ghost_schedule="linear")
    name = next(iter(mask))
    outside, kept = ~mask[name], mask[name]
    start = model.get_parameter(name).detach().clone()
    recipe.update(1.0)  # a quarter of the phase: three quarters left
    weight = model.get_parameter(name)
    assert torch.allclose(weight[outside], 0.75 * start[outside]) and torch.equal(weight[kept], start[kept])
    recipe.update(3.0)
    assert torch.allclose(weight[outside], 0.25 * start[outside])
    recipe.update(4.0)
    assert torch.all(weight[outside] == 0) and torch.equal(weight[kept], start[kept])


@pytest.mark.parametrize("key", [*CHOICES, "fold_branches"])
@pytest.mark.parametrize("recipe", ["default", "tost"])
def test_a_misspelt_named_setting_is_one_line_even_when_its_part_is_off(key: str, recipe: str) -> None:
    """Under `default` no part is on, so no part would have read the setting: validate still says which
    setting and which names it takes."""
    config = RunConfig.from_flat({"recipe": recipe, key: "sqeeze"})
    with pytest.raises(
        AnymaskError, match=f"^(unknown {key} 'sqeeze'; choose one of: |{key} 'sqeeze': use )"
    ):
        validate(config)
    validate(RunConfig.from_flat({"recipe": recipe}))  # the defaults pass
