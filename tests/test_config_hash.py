"""Run folders are named by a config hash: it must not move when anymask gains a setting."""

from __future__ import annotations

import pytest

from anymask import config as config_module
from anymask.config import RunConfig

# The committed evidence (docs/results/evidence/runs) lives in folders with these names.
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
FROZEN = [
    ({"recipe": "default"}, "d674b14a3df3"),
    ({"recipe": "tost"}, "3da79d284124"),
    ({"recipe": "default", "mask_method": "lth", "sparsity": 0.9, "lth_epochs": 2}, "656264625e0e"),
]


@pytest.mark.parametrize(("overrides", "folder"), FROZEN)
def test_existing_run_folders_keep_their_names(overrides: dict[str, object], folder: str) -> None:
    assert RunConfig.from_flat({**EVIDENCE, **overrides}).hash() == folder, (
        "the hash of an existing run changed: a new setting needs its before-it-existed value in "
        "anymask.config.ADDED_SETTINGS (or, for a change that really trains differently, update this test)"
    )


def test_an_added_setting_is_hashed_only_away_from_its_old_behaviour(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend `ls_alpha` was added later, with 0.1 training as before it existed."""
    tost = RunConfig.from_flat({**EVIDENCE, "recipe": "tost"})
    before = tost.hash()
    monkeypatch.setattr(config_module, "ADDED_SETTINGS", {"ls_alpha": 0.1})
    assert "ls_alpha" not in tost.hashed_settings() and "ls_alpha" in tost.read_settings()
    assert tost.hash() != before  # (the key really left the hash)
    changed = tost.updated({"ls_alpha": 0.2})
    assert changed.hashed_settings()["ls_alpha"] == 0.2 and changed.hash() != tost.hash()
