"""The official ToST variant (`--recipe tost-official`): smooth activations and dense skip branches for good.

What must hold: the branches sit where the official code puts them (two per BasicBlock, 1x1 convs
filled with 1e-4), the model stays smooth at evaluation, the mask covers only the plain model and its
pruned weights stay 0 while the branches train densely, the run folder says the model is not the plain
architecture (with the exact count of extra parameters), and every other recipe still saves the plain
model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from anymask.config import RunConfig
from anymask.errors import AnymaskError
from anymask.masks import Mask, enforce
from anymask.models import create_model
from anymask.models.resnet import BasicBlock
from anymask.recipe import PRESETS, RECIPE_PARTS, Recipe, RecipeContext, parse_recipe
from anymask.recipe.config import PART_SETTINGS
from anymask.recipe.ghost_neurons import SOFT
from anymask.recipe.official import BRANCH_FILL, SMOOTH_MODULES
from anymask.train import run_experiment

WIDTH = 0.25  # resnet20 stages of 4, 8 and 16 channels
# Hand count of the branches at WIDTH (each branch: a 1x1 conv in x out, then BN with 2 x out parameters):
#   stage 1, 3 blocks 4 -> 4:         3 x 2 x (4*4 + 8)                           =   144
#   stage 2, 4 -> 8, then 2 x 8 -> 8: (4*8 + 16) + (8*8 + 16) + 2 x 2 x (8*8 + 16)  =   448
#   stage 3, 8 -> 16, then 2 x 16:    (8*16 + 32) + (16*16 + 32) + 2 x 2 x 288      = 1,600
EXTRA_AT_WIDTH = 144 + 448 + 1600
EXTRA_AT_FULL_WIDTH = 31_040  # the same count for resnet20 at width 1 (docs/recipe.md)


def resnet(width: float = WIDTH, seed: int = 0, channels: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet20", 10, (channels, 16, 16), width)


def install(model: nn.Module, recipe: str = "smooth,dense-skips") -> Recipe:
    config = RunConfig()
    config.recipe = dataclasses.replace(config.recipe, recipe=recipe)
    built = Recipe.from_config(config.recipe, 10)
    built.prepare(RecipeContext(model, None, None, config, torch.device("cpu"), False, 0.0))
    return built


def random_mask(model: nn.Module, density: float = 0.1) -> Mask:
    generator = torch.Generator().manual_seed(1)
    weights = {n: p for n, p in model.named_parameters() if p.dim() > 1}
    return Mask({n: torch.rand(p.shape, generator=generator) < density for n, p in weights.items()})


# -- the preset --------------------------------------------------------------------------------------
def test_preset_order_settings_and_conflicts() -> None:
    assert (
        parse_recipe("tost-official") == ("smooth", "dense-skips", "lrsi", "ls") == PRESETS["tost-official"]
    )
    # written in any order, the network changes come before GradInit (its scales fit them)
    assert parse_recipe("ls,lrsi,dense-skips,smooth") == PRESETS["tost-official"]
    assert parse_recipe("lrsi,gsc,dense-skips") == ("gsc", "dense-skips", "lrsi")
    with pytest.raises(AnymaskError, match="both gsn and smooth") as error:
        parse_recipe("gsn,smooth")
    assert "\n" not in str(error.value)
    assert set(PART_SETTINGS) == set(RECIPE_PARTS.names())
    assert set(SMOOTH_MODULES) == set(SOFT)  # gsn_soft chooses the activation of both


def test_preset_is_a_new_hash_and_reads_only_its_parts_settings() -> None:
    official = RunConfig.from_flat({"recipe": "tost-official"})
    assert official.hash() != RunConfig.from_flat({"recipe": "tost"}).hash()
    inert = official.recipe.inert_settings()
    assert {"gsc_mode", "ghost_epochs", "ghost_schedule"} <= inert  # no ghost phase, no ghost skips
    assert not inert & {"gsn_soft", "gradinit_iterations", "ls_alpha"}
    assert official.updated({"gsc_mode": "free"}).hash() == official.hash()
    assert official.updated({"gsn_soft": "mish"}).hash() != official.hash()


# -- the model it trains -----------------------------------------------------------------------------
def test_two_branches_per_basic_block_where_the_official_code_has_them() -> None:
    model = resnet()
    install(model)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9
    for block in blocks:
        for number, (entry, exit_) in enumerate([(block.conv1, block.bn1), (block.conv2, block.bn2)], 1):
            conv, bn = getattr(block, f"dense_skip{number}")
            assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (
                entry.in_channels,
                exit_.num_features,
                (1, 1),
            )
            assert conv.stride == entry.stride and conv.bias is None
            assert torch.all(conv.weight == BRANCH_FILL)
            assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    strides = [block.dense_skip1[0].stride for block in blocks]
    assert strides.count((2, 2)) == 2  # the first block of stages 2 and 3


def test_block_output_is_the_official_blocks() -> None:
    """out = act(bn1(conv1 x) + b1(x)); act(bn2(conv2 out) + shortcut(x) + b2(out)), act = swish."""
    model = resnet()
    install(model)
    model.eval()
    block = model.body.layer2[0]  # strided, with a projection shortcut
    for branch in (block.dense_skip1, block.dense_skip2):  # non-trivial BN statistics
        branch[1].running_mean.uniform_(-1, 1)
        branch[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        # .forward skips the hooks that add the branches, so this is the plain path written out
        main1 = block.bn1.forward(block.conv1.forward(x))
        middle = F.silu(main1 + block.dense_skip1(x))
        main2 = block.bn2.forward(block.conv2.forward(middle))
        expected = F.silu(main2 + block.shortcut(x) + block.dense_skip2(middle))
        torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-6)


def test_smooth_activation_stays_at_evaluation() -> None:
    plain = resnet()
    model = copy.deepcopy(plain)
    install(model, "smooth")
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == 19  # stem + 2 per block
    assert model.state_dict().keys() == plain.state_dict().keys()  # activations hold no parameters
    plain.eval(), model.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(model(x), plain(x), atol=1e-3)
        # swap the activations back by hand: the only difference was the activation
        for parent in list(model.modules()):
            for name, child in parent.named_children():
                if isinstance(child, nn.SiLU):
                    setattr(parent, name, nn.ReLU())
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)


def test_extra_parameters_are_counted_exactly() -> None:
    for width, expected in ((WIDTH, EXTRA_AT_WIDTH), (1.0, EXTRA_AT_FULL_WIDTH)):
        model = resnet(width)
        before = sum(p.numel() for p in model.parameters())
        summary = install(model).architecture()
        assert summary["extra_parameters"] == expected == sum(p.numel() for p in model.parameters()) - before
        assert summary["plain_architecture"] is False
        assert f"18 dense 1x1 conv + BN skip branches ({expected} parameters" in summary["architecture"]
        assert "swish instead of ReLU" in summary["architecture"]
    assert install(resnet(), "gsn,gsc,ls").architecture() == {}  # every other part leaves the plain model


def test_pruned_weights_stay_zero_while_branches_train_densely() -> None:
    model = resnet()
    mask = random_mask(model)  # made on the plain model, as the run pipeline makes it
    mask.apply(model)
    install(model)
    assert not any("dense_skip" in name for name in mask)
    branch_weights = {n: p for n, p in model.named_parameters() if "dense_skip" in n and p.dim() > 1}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    enforce(model, mask, optimizer)
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        x, y = torch.randn(8, 3, 8, 8, generator=generator), torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    for name, keep in mask.items():
        assert not model.get_parameter(name)[~keep].any(), f"{name}: a pruned weight came back"
    for name, weight in branch_weights.items():
        assert weight.count_nonzero() == weight.numel(), f"{name} is not dense"
        assert not torch.all(weight == BRANCH_FILL), f"{name} did not train"


def test_models_without_basic_blocks_fail_before_anything_is_written(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cnn = create_model("cnn", 10, (1, 8, 8), 0.25)
    expected = r"dense-skips needs ResNet BasicBlocks.* apply: --recipe smooth,lrsi,ls"
    with pytest.raises(AnymaskError, match=expected) as error:
        install(cnn, "tost-official")
    assert "\n" not in str(error.value)
    install(cnn, "smooth")  # the activation part applies to any model with nn.ReLU modules
    config = RunConfig.from_flat(
        {"model": "cnn", "data": "digits", "recipe": "tost-official", "progress": False}
    )
    with pytest.raises(AnymaskError, match="dense-skips"):
        run_experiment(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# -- runs --------------------------------------------------------------------------------------------
QUICK = {
    "model": "resnet20",
    "width": WIDTH,
    "data": "digits",
    "train_subset": 128,
    "epochs": 2,
    "batch_size": 32,
    "eval_batch_size": 512,
    "mask_method": "random",
    "sparsity": 0.9,
    "gradinit_iterations": 2,
    "gradinit_batch_size": 16,
    "ghost_epochs": 1.0,
    "device": "cpu",
    "threads": 1,
    "progress": False,
}


def quick(recipe: str, **overrides: object) -> RunConfig:
    return RunConfig.from_flat({**QUICK, "recipe": recipe, **overrides})


def registry_resnet() -> nn.Module:
    return create_model("resnet20", 10, (1, 8, 8), WIDTH)


def test_official_run_says_its_model_is_not_the_plain_architecture(tmp_path: Path) -> None:
    result = run_experiment(quick("tost-official"), tmp_path / "run")
    folder, summary = result.out_dir, result.summary
    assert json.loads((folder / "summary.json").read_text()) == summary
    assert json.loads((folder / "config.json").read_text())["recipe"]["recipe"] == "tost-official"
    assert summary["plain_architecture"] is False and summary["extra_parameters"] == EXTRA_AT_WIDTH
    state = load_file(folder / "model.safetensors")
    with safe_open(folder / "model.safetensors", "pt") as saved:
        assert saved.metadata()["architecture"] == summary["architecture"]
    with pytest.raises(RuntimeError, match="dense_skip"):
        registry_resnet().load_state_dict(state, strict=True)
    model = registry_resnet()
    install(model, "smooth,dense-skips")  # the saved model is the plain one with the preset installed
    model.load_state_dict(state, strict=True)
    extra = sum(v.numel() for k, v in state.items() if "dense_skip" in k and k.endswith(("weight", "bias")))
    assert extra == EXTRA_AT_WIDTH
    mask = Mask.load(folder / "mask.safetensors")
    assert sum(int(model.get_parameter(n).count_nonzero()) for n in mask) <= mask.kept()
    assert all(torch.all(model.get_parameter(n)[~k] == 0) for n, k in mask.items())
    assert summary["nonzero_weights"] == sum(int(model.get_parameter(n).count_nonzero()) for n in mask)


@pytest.mark.parametrize("recipe", ["default", "tost"])
def test_other_presets_still_save_the_plain_model(tmp_path: Path, recipe: str) -> None:
    result = run_experiment(quick(recipe, epochs=1, ghost_epochs=0.5), tmp_path / recipe)
    registry_resnet().load_state_dict(load_file(result.out_dir / "model.safetensors"), strict=True)
    assert "plain_architecture" not in result.summary and "extra_parameters" not in result.summary


def test_official_run_resumes_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anymask.train import run as run_module

    config = quick("tost-official")
    reference = run_experiment(config, tmp_path / "reference")

    class Stop(Exception):
        """Stands for a kill right after the first epoch's checkpoint."""

    save = run_module.save_checkpoint

    def save_then_stop(path: Path, state: dict) -> None:
        save(path, state)
        raise Stop

    monkeypatch.setattr(run_module, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        run_experiment(config, tmp_path / "resumed")
    monkeypatch.setattr(run_module, "save_checkpoint", save)
    resumed = run_experiment(config, tmp_path / "resumed", resume=True)
    expected, actual = (load_file(r.out_dir / "model.safetensors") for r in (reference, resumed))
    assert expected.keys() == actual.keys() and any("dense_skip" in k for k in expected)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert resumed.summary["final_test_acc"] == reference.summary["final_test_acc"]


# -- the report --------------------------------------------------------------------------------------
def test_report_marks_runs_whose_model_is_not_the_plain_architecture(tmp_path: Path) -> None:
    from anymask.experiments.report import build_tables, collect_runs, table_markdown
    from test_report import make_run

    root = tmp_path / "runs"
    architecture = "not the plain architecture: 18 dense 1x1 conv + BN skip branches (31040 parameters)"
    for seed in (0, 1):
        make_run(root, "snip", 0.98, "default", seed, 0.60, 0.61)
        make_run(root, "snip", 0.98, "tost", seed, 0.62, 0.63)
        folder = make_run(root, "snip", 0.98, "tost-official", seed, 0.64, 0.65)
        summary = json.loads((folder / "summary.json").read_text())
        extra = {"plain_architecture": False, "extra_parameters": 31040, "architecture": architecture}
        (folder / "summary.json").write_text(json.dumps({**summary, **extra}))
    (table,) = build_tables(collect_runs([root]))
    text = table_markdown(table)
    row = next(line for line in text.splitlines() if line.startswith("| snip"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    header = next(line for line in text.splitlines() if line.startswith("| mask"))
    names = [cell.strip() for cell in header.strip("|").split("|")]
    assert cells[names.index("tost-official final")].endswith("‡")
    assert "‡" not in cells[names.index("tost final")] + cells[names.index("default final")]
    assert f"- tost-official: {architecture}" in text.splitlines()
    assert text.count("‡") == 2  # the cell and the note


# -- DDP -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_ranks_train_the_branches_as_one_process(tmp_path: Path) -> None:
    """The branches are in the model DDP wraps: gradients averaged, their BN global-batch, like the rest.

    Measured: parameters within 6.2e-5 of the one-process run, BN running statistics within 7.3e-4 (they
    are larger numbers); branches trained per rank without averaging would not stay this close.
    32+ channels: subprocesses keep oneDNN, which crashes now and then on tinier convs (conftest.py).
    """
    from test_distributed import check, launch

    flags = {**QUICK, "width": 2.0, "train_subset": 256, "batch_size": 128, "recipe": "tost-official"}
    flags.pop("progress")
    args = [f"--{key.replace('_', '-')}={value}" for key, value in flags.items()]
    for ranks in (1, 2):
        out = tmp_path / f"ranks{ranks}"
        check(launch(["-m", "anymask", "train", *args, "--no-progress", "--out", str(out)], ranks=ranks))
    single, ddp = (load_file(tmp_path / f"ranks{r}" / "model.safetensors") for r in (1, 2))
    assert any("dense_skip" in key for key in ddp)
    assert ddp.keys() == single.keys()
    for key, expected in single.items():
        tolerance = {"rtol": 1e-2, "atol": 1e-4} if "running" in key else {"rtol": 0.0, "atol": 2e-4}
        torch.testing.assert_close(ddp[key], expected, **tolerance, msg=lambda m, key=key: f"{key}: {m}")
    summaries = [json.loads((tmp_path / f"ranks{r}" / "summary.json").read_text()) for r in (1, 2)]
    assert summaries[0]["extra_parameters"] == summaries[1]["extra_parameters"] > 0
