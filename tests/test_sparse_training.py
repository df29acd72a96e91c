"""`anymask.SparseTraining` in a plain loop: the same weights as `anymask train`, resume, any optimizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import anymask
from anymask.config import RunConfig
from anymask.data import ImageDataset, load_dataset, num_batches, shuffled_train_batches
from anymask.errors import AnymaskError
from anymask.masks import Mask
from anymask.models import create_model
from anymask.train.lr import lr_at
from anymask.train.trainer import epoch_generator

SETTINGS: dict[str, Any] = {
    "mask_method": "snip",
    "sparsity": 0.9,
    "recipe": "tost",
    "gradinit_iterations": 2,
    "gradinit_batch_size": 32,
    "ghost_epochs": 1.0,
    "dst": "rigl",
    "dst_interval": 4,
    "seed": 0,
}
RUN = {
    "model": "cnn",
    "width": 0.5,
    "data": "digits",
    "epochs": 2,
    "batch_size": 64,
    "channels_last": False,
    "progress": False,
}


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits", train_subset=512)  # 8 steps an epoch


@pytest.fixture(scope="module")
def whole_run(digits: ImageDataset) -> tuple[nn.Module, anymask.SparseTraining]:
    model, st, _ = plain_loop(digits, SETTINGS)
    return model, st


def plain_loop(
    data: ImageDataset,
    settings: dict[str, Any],
    *,
    stop_after: int | None = None,
    resume: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
) -> tuple[nn.Module, anymask.SparseTraining, dict[str, Any] | None]:
    """A user's loop, written against the object, fed `anymask train`'s batches and learning rates.
    Stops after `stop_after` steps with a checkpoint; `resume` continues from one. `run`: model settings
    over RUN's."""
    config = RunConfig.from_flat({**RUN, **(run or {}), **settings})
    spe = num_batches(data.split_size("train"), config.train.batch_size, False)
    torch.manual_seed(config.train.seed)
    model = create_model(config.model.model, data.num_classes, data.input_shape, config.model.width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    st = anymask.SparseTraining(epochs=config.train.epochs, steps_per_epoch=spe, batches=data, **settings)
    if resume is not None:
        st.load_state_dict(resume["sparse"])  # before prepare: no GradInit, ghosts only if still on
    st.prepare(model, optimizer)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
    step = st.step_count
    for epoch in range(step // spe, config.train.epochs):
        batches = shuffled_train_batches(data, config.train.batch_size, epoch_generator(0, epoch))
        for index, (images, labels) in enumerate(batches):
            if epoch * spe + index < step:
                continue  # a resumed epoch replays its batches up to where it stopped
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, spe * config.train.epochs, config.train)
            loss = st.loss(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            st.step()
            step += 1
            if step == stop_after:
                saved = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "sparse": st.state_dict(),
                }
                return model, st, torch.utils._pytree.tree_map(_clone, saved)
    return st.finish(model), st, None


def _clone(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_a_plain_loop_ends_with_anymask_trains_weights(
    digits: ImageDataset, whole_run, tmp_path: Path
) -> None:
    """SNIP 90%, tost (ghost neurons and skips, GradInit, label smoothing) and RigL: bit for bit."""
    from anymask.train import run_experiment

    result = run_experiment(RunConfig.from_flat({**RUN, **SETTINGS}), tmp_path / "run", data=digits)
    model, st = whole_run
    assert_same_weights(load_file(tmp_path / "run" / "model.safetensors"), model.state_dict())
    summary = st.summary()
    assert summary["mask_kept"] == result.summary["mask_kept"]
    assert summary["dst_updates"] == result.summary["dst_updates"] > 0
    assert summary["itop_rate"] == result.summary["itop_rate"]


ARMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {  # (SparseTraining settings, model settings)
    "default": ({"mask_method": "random", "sparsity": 0.9, "seed": 0}, {}),
    "tost": ({**SETTINGS, "dst": "none"}, {}),
    "rigl": ({"mask_method": "erk", "sparsity": 0.9, "dst": "rigl", "dst_interval": 4, "seed": 0}, {}),
    "set-gsn-ls": ({"mask_method": "erk", "sparsity": 0.9, "recipe": "gsn,ls", "dst": "set", "seed": 0}, {}),
    # The official variant's dense skip branches join the model: the optimizer must train them too.
    "tost-official": (
        {
            "mask_method": "erk",
            "sparsity": 0.9,
            "recipe": "tost-official",
            "gradinit_iterations": 2,
            "seed": 0,
        },
        {"model": "resnet20", "width": 0.25},
    ),
}


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_each_arm_of_a_plain_loop_equals_anymask_train(
    digits: ImageDataset, arm: str, tmp_path: Path
) -> None:
    """The same batches through a user's loop and through `anymask train` (whose trainer is built on
    SparseTraining): the same weights, bit for bit, and the same final mask."""
    from anymask.train import run_experiment

    settings, run = ARMS[arm]
    model, st, _ = plain_loop(digits, settings, run=run)
    config = RunConfig.from_flat({**RUN, **run, **settings})
    run_experiment(config, tmp_path / "run", data=digits)
    assert_same_weights(load_file(tmp_path / "run" / "model.safetensors"), model.state_dict())
    final_mask = Mask.load(tmp_path / "run" / "mask.safetensors")
    assert st.mask is not None and all(torch.equal(final_mask[n], st.mask[n].cpu()) for n in final_mask)


@pytest.mark.parametrize("stop_after", [5, 12])  # in the ghost phase (8 steps an epoch), and after it
def test_a_checkpointed_loop_resumes_bit_for_bit(digits: ImageDataset, whole_run, stop_after: int) -> None:
    _, st, checkpoint = plain_loop(digits, SETTINGS, stop_after=stop_after)
    assert checkpoint is not None and st.step_count == stop_after
    assert st.recipe.in_ghost_phase(st.epoch) == (stop_after < 8)
    resumed, _, _ = plain_loop(digits, SETTINGS, resume=checkpoint)
    assert_same_weights(whole_run[0].state_dict(), resumed.state_dict())


def test_any_optimizer_and_finish_leaves_the_plain_model_with_the_masks_weights(digits: ImageDataset) -> None:
    torch.manual_seed(0)
    model = create_model("cnn", 10, (1, 8, 8), 0.5)
    plain_keys = set(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset((digits.train_x.float() - 80) / 80, digits.train_y),
        batch_size=64,
        shuffle=True,
    )
    st = anymask.SparseTraining(
        mask_method="grasp",
        sparsity=0.8,
        recipe="gsn,gsc,lrsi,ls",
        gradinit_iterations=1,
        ghost_epochs=0.5,
        dst="set",
        dst_interval=5,
        epochs=1,
        steps_per_epoch=len(loader),
        batches=loader,
    )
    st.prepare(model, optimizer)
    assert len(optimizer.param_groups) == 2 and optimizer.param_groups[1]["ghost"]  # learned ghost skips
    ghost_groups = []
    for images, labels in loader:
        loss = st.loss(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        st.step()
        ghost_groups.append(len(optimizer.param_groups))
    assert ghost_groups[0] == 2 and ghost_groups[-1] == 1  # the ghost group left at the phase's end
    model = st.finish(model)
    assert set(model.state_dict()) == plain_keys
    assert all(type(m) is not nn.SiLU for m in model.modules())
    mask = st.mask
    for name, keep in mask.items():
        weight = model.get_parameter(name)
        assert not weight[~keep].any() and int(weight.count_nonzero()) <= int(keep.sum())
    assert mask.kept() == round(0.2 * mask.total()) and st.summary()["dst_updates"] > 0


def test_a_scheduler_made_before_prepare_drives_the_ghosts_in_the_first_group() -> None:
    torch.manual_seed(0)
    model = create_model("cnn", 10, (1, 8, 8), 1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
    st = anymask.SparseTraining(
        mask_method="random",
        sparsity=0.5,
        recipe="gsc",
        ghost_epochs=0.5,
        epochs=1,
        steps_per_epoch=4,
        ghost_group=False,
    )
    st.prepare(model, optimizer)
    ghosts = {id(p) for p in st.recipe.parameters()}
    assert len(optimizer.param_groups) == 1 and ghosts <= {id(p) for p in optimizer.param_groups[0]["params"]}
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(4):
        optimizer.zero_grad()
        st.loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()
        st.step()
    assert not ghosts & {id(p) for p in optimizer.param_groups[0]["params"]}
    assert not ghosts & {id(p) for p in optimizer.state}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sparsty": 0.9}, "unknown config key 'sparsty'; did you mean 'sparsity'"),
        ({"lr": 0.1}, "does not take 'lr' \\(a \\[train\\] setting"),
        ({"recipe": "tost", "mask_method": "erk", "sparsity": 0.9}, "pass epochs= and steps_per_epoch="),
        ({"mask_method": "erk", "sparsity": 1.5}, "sparsity: 1.5 is outside"),
        ({"mask_method": "erk", "sparsity": 0.9, "dst": "magic"}, "unknown --dst 'magic'"),
        ({"mask_method": "lth", "sparsity": 0.9}, "make it with `anymask prune --method lth"),
    ],
)
def test_bad_settings_are_one_line(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(AnymaskError, match=message):
        st = anymask.SparseTraining(**settings)
        model = create_model("cnn", 10, (1, 8, 8), 1.0)
        st.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_a_ready_mask_or_a_mask_file(tmp_path: Path) -> None:
    model = create_model("cnn", 10, (1, 8, 8), 1.0)
    mask = anymask.masks.make_mask(model, anymask.masks.MaskConfig(mask_method="erk", sparsity=0.9))
    mask.save(tmp_path / "mask.safetensors")
    for given in (mask, tmp_path / "mask.safetensors"):
        copy = create_model("cnn", 10, (1, 8, 8), 1.0)
        st = anymask.SparseTraining(mask=given)
        st.prepare(copy, torch.optim.SGD(copy.parameters(), lr=0.1))
        assert all(torch.equal(st.mask[name], mask[name]) for name in mask)


def test_a_missing_extra_is_one_line_naming_it() -> None:
    from anymask.integrations import require

    with pytest.raises(
        AnymaskError, match=r"needs no_such_trainer_xyz, .*pip install 'anymask\[lightning\]'"
    ):
        require("no_such_trainer_xyz", "lightning")
