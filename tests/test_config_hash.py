"""Run folders are named by a config hash: it must not move when anymask gains a setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anymask import config as config_module
from anymask.config import RunConfig, load_run_config, save_config, saved_model_revision
from anymask.errors import AnymaskError

# The settings of the committed evidence runs (docs/results/evidence/runs).
EVIDENCE = {
    "model": "resnet20",
    "data": "cifar10",
    "data_dir": "../shared/data",
    "epochs": 30,
    "batch_size": 128,
    "lr": 0.1,
    "lr_schedule": "cosine",
    "weight_decay": 5e-4,
    "gradinit_iterations": 40,
    "seed": 0,
    "mask_method": "erk",
    "sparsity": 0.98,
}


KEPT_RUNS = sorted((Path(__file__).parents[1] / "docs" / "results").glob("*/runs/*/config.json"))


@pytest.mark.parametrize("config_file", KEPT_RUNS, ids=lambda path: f"{path.parts[-4]}/{path.parent.name}")
def test_every_committed_run_keeps_its_folder_name(config_file: Path) -> None:
    """Every run in docs/results (all mask methods, both recipes, the ablation) was saved under its hash;
    its config, read back by today's code (new settings at their defaults), must hash to the same name."""
    assert load_run_config(config_file).hash() == config_file.parent.name, (
        "a run's hash changed: give the new setting its before-it-existed value in "
        "anymask.config.ADDED_SETTINGS (or, for a change that really trains differently, say so)"
    )


def test_the_committed_runs_cover_every_mask_method_and_recipe() -> None:
    configs = [load_run_config(path) for path in KEPT_RUNS]
    methods = {"random", "er", "erk", "magnitude", "snip", "grasp", "synflow", "lth"}
    assert {c.mask.mask_method for c in configs} >= methods
    assert {c.recipe.recipe for c in configs} >= {"default", "tost", "gsn", "gsc", "lrsi", "ls"}


def test_an_added_setting_is_hashed_only_away_from_its_old_behaviour(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend `ls_alpha` was added later, with 0.1 training as before it existed."""
    tost = RunConfig.from_flat({**EVIDENCE, "recipe": "tost"})
    before = tost.hash()
    monkeypatch.setattr(config_module, "ADDED_SETTINGS", {"ls_alpha": 0.1})
    assert "ls_alpha" not in tost.hashed_settings() and "ls_alpha" in tost.read_settings()
    assert tost.hash() != before  # (the key really left the hash)
    changed = tost.updated({"ls_alpha": 0.2})
    assert changed.hashed_settings()["ls_alpha"] == 0.2 and changed.hash() != tost.hash()


def test_prune_bn_mode_is_hashed_only_for_the_methods_that_read_it(tmp_path: Path) -> None:
    """SNIP/GraSP runs now score in eval mode (a new folder); other methods keep theirs; a saved SNIP
    config from before the setting existed reads back as the 'train' mode it was scored in."""
    for method in ("erk", "synflow", "magnitude", "random"):
        config = RunConfig.from_flat({**EVIDENCE, "mask_method": method})
        assert "prune_bn_mode" not in config.read_settings()
        assert config.hash() == config.updated({"prune_bn_mode": "train"}).hash()
    snip = RunConfig.from_flat({**EVIDENCE, "mask_method": "snip"})
    old_snip = snip.updated({"prune_bn_mode": "train"})
    assert (
        snip.hashed_settings()["prune_bn_mode"] == "eval"
        and "prune_bn_mode" not in old_snip.hashed_settings()
    )
    saved = old_snip.to_dict()
    del saved["mask"]["prune_bn_mode"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert load_run_config(tmp_path / "config.json").mask.prune_bn_mode == "train"


def test_auto_prune_bn_mode_saves_and_hashes_as_the_methods_reference_mode() -> None:
    """'auto' (the default) is GraSP's train mode and SNIP's eval mode: the same folder as the explicit
    mode, saved as it, and resolved again when a config changes method (a sweep grid over methods)."""
    for method, mode in (("grasp", "train"), ("snip", "eval")):
        auto = RunConfig.from_flat({**EVIDENCE, "mask_method": method})
        explicit = auto.updated({"prune_bn_mode": mode})
        assert auto.mask.prune_bn_mode == "auto" and auto.to_dict()["mask"]["prune_bn_mode"] == mode
        assert auto.hash() == explicit.hash()
        assert RunConfig.from_flat({**EVIDENCE, "mask_method": "erk"}).updated(
            {"mask_method": method}
        ).hash() == (explicit.hash())
    grasp = RunConfig.from_flat({**EVIDENCE, "mask_method": "grasp"})
    assert grasp.hash() != grasp.updated({"prune_bn_mode": "eval"}).hash()


def test_vgg16_runs_hash_the_architecture_revision_and_the_init_only_when_not_default() -> None:
    vgg = RunConfig.from_flat({**EVIDENCE, "model": "vgg16"})
    assert vgg.hashed_settings()["model_revision"] == config_module.MODEL_REVISIONS["vgg16"]
    assert "model_revision" not in RunConfig.from_flat(EVIDENCE).hashed_settings()
    resnet = RunConfig.from_flat(EVIDENCE)
    assert "init" not in resnet.hashed_settings()
    assert resnet.updated({"init": "kaiming_fan_in"}).hash() != resnet.hash()


def test_a_folder_of_the_old_vgg16_is_never_taken_for_the_new_one(tmp_path: Path) -> None:
    """The revision is saved with the config; a folder without it trained revision 1 and is refused."""
    from anymask.train.run import check_folder

    config = RunConfig.from_flat({**EVIDENCE, "model": "vgg16"})
    folder = tmp_path / "run"
    folder.mkdir()
    save_config(config, folder / "config.json")
    (folder / "summary.json").write_text("{}")
    assert json.loads((folder / "config.json").read_text())["model_revision"] == 2
    assert saved_model_revision(folder / "config.json") == 2
    assert check_folder(folder, config, resume=False) == "finished"
    old = json.loads((folder / "config.json").read_text())
    del old["model_revision"]
    (folder / "config.json").write_text(json.dumps({**old, "start_step": 4}))  # lth rewinds add this
    assert load_run_config(folder / "config.json").hash() == config.hash()  # top-level extras are skipped
    with pytest.raises(AnymaskError, match="older vgg16 architecture \\(revision 1\\)"):
        check_folder(folder, config, resume=False)
