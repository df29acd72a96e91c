"""The Hugging Face callback with the real `transformers.Trainer` on CPU: a few steps, a tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from anymask.errors import AnymaskError
from integration_helpers import SETTINGS, assert_plain_with_the_mask, images

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it


class Pixels(Dataset):
    """Items as Hugging Face image datasets give them: dicts of pixel_values and labels."""

    def __init__(self, n: int = 64) -> None:
        self.data = images(n, (3, 16, 16))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        x, y = self.data[index]
        return {"pixel_values": x, "labels": y}


def hf_resnet() -> nn.Module:
    config = transformers.ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=10,
    )
    torch.manual_seed(0)
    return transformers.ResNetForImageClassification(config)


def hf_trainer(model: nn.Module, callback: Any, tmp_path: Path, recipe_loss: bool) -> Any:
    class RecipeLossTrainer(transformers.Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):  # the docs' override
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = callback.loss(outputs, labels)
            return (loss, outputs) if return_outputs else loss

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=2,
        per_device_train_batch_size=16,
        learning_rate=0.05,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    kind = RecipeLossTrainer if recipe_loss else transformers.Trainer
    return kind(model=model, args=args, train_dataset=Pixels(), callbacks=[callback])


def test_hugging_face_trainer_trains_with_mask_recipe_and_rigl(tmp_path: Path) -> None:
    from anymask.integrations.huggingface import SparseTrainingCallback

    callback = SparseTrainingCallback(**SETTINGS)
    model = hf_resnet()
    plain_keys = set(model.state_dict())
    hf_trainer(model, callback, tmp_path, recipe_loss=True).train()
    sparse = callback.sparse
    assert sparse is not None and sparse.step_count == 8  # 4 batches x 2 epochs
    assert_plain_with_the_mask(model, plain_keys, sparse)


def test_hugging_face_says_how_to_use_the_recipes_loss(tmp_path: Path) -> None:
    from anymask.integrations.huggingface import SparseTrainingCallback

    callback = SparseTrainingCallback(**SETTINGS)
    with pytest.raises(AnymaskError, match="override the Trainer's compute_loss"):
        hf_trainer(hf_resnet(), callback, tmp_path, recipe_loss=False).train()
