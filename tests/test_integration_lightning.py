"""The Lightning callback with the real `lightning.Trainer` on CPU: a few steps, a tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from anymask.errors import AnymaskError
from anymask.models import create_model
from integration_helpers import SETTINGS, assert_plain_with_the_mask, images

lightning = pytest.importorskip("lightning.pytorch")


class Classifier(lightning.LightningModule):
    def __init__(self, callback: Any, use_recipe_loss: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = create_model("cnn", 10, (1, 8, 8), 0.5)
        self.callback, self.use_recipe_loss = callback, use_recipe_loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.use_recipe_loss:
            return self.callback.loss(self(x), y)
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)}


def lightning_trainer(callback: Any, **options: Any) -> Any:
    return lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def test_lightning_trainer_trains_with_mask_recipe_and_rigl() -> None:
    from anymask.integrations.lightning import SparseTrainingCallback

    callback = SparseTrainingCallback(**SETTINGS)
    module = Classifier(callback)
    plain_keys = set(module.state_dict())
    lightning_trainer(callback).fit(module, DataLoader(images(), batch_size=16, shuffle=True))
    sparse = callback.sparse
    assert sparse is not None and sparse.step_count == 12  # 6 batches x 2 epochs
    assert_plain_with_the_mask(module, plain_keys, sparse)


def test_lightning_says_how_to_use_the_recipes_loss() -> None:
    from anymask.integrations.lightning import SparseTrainingCallback

    callback = SparseTrainingCallback(**SETTINGS)
    with pytest.raises(AnymaskError, match=r"return callback\.loss\(logits, labels\) from training_step"):
        lightning_trainer(callback).fit(
            Classifier(callback, use_recipe_loss=False), DataLoader(images(), batch_size=16)
        )


DDP_SCRIPT = """
import sys
import torch
import lightning.pytorch as lightning
from torch.utils.data import DataLoader
sys.path.insert(0, sys.argv[2])
from integration_helpers import SETTINGS, images
from test_integration_lightning import Classifier
from anymask.integrations.lightning import SparseTrainingCallback

class Record(lightning.Callback):
    def on_train_end(self, trainer, module):  # runs after the sparse callback's (list order)
        sparse = next(c for c in trainer.callbacks if isinstance(c, SparseTrainingCallback))
        torch.save({"weights": module.state_dict(), "mask": dict(sparse.sparse.mask)},
                   f"{sys.argv[1]}/rank{trainer.global_rank}.pt")

if __name__ == "__main__":
    torch.backends.mkldnn.enabled = False
    sparse = SparseTrainingCallback(**SETTINGS)
    trainer = lightning.Trainer(
        max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_spawn", callbacks=[sparse, Record()],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Classifier(sparse), DataLoader(images(), batch_size=8, shuffle=True))
"""


@pytest.mark.slow
def test_lightning_ddp_ranks_share_one_mask_and_end_with_equal_weights(tmp_path: Path) -> None:
    """Two CPU processes (gloo): SNIP on each rank's own batches, yet one mask (rank 0's) and one model."""
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    tests = str(Path(__file__).parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([tests, *sys.path])}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), tests],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, keep in ranks[0]["mask"].items():
        assert torch.equal(keep, ranks[1]["mask"][name])
        assert not ranks[0]["weights"][name][~keep].any()
    for name, weight in ranks[0]["weights"].items():  # BatchNorm statistics are each rank's own (DDP)
        if "running_" not in name and "num_batches_tracked" not in name:
            assert torch.equal(weight, ranks[1]["weights"][name]), name
