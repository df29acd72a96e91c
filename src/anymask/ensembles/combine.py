"""Predictions of one model or many: softmax probabilities over a set of images, and their mean.

An ensemble's prediction is the mean of its members' softmax probabilities (not of their logits), as
deep ensembles and prune-and-tune ensembles combine them. `Ensemble` wraps any models (your own
`nn.Module`s included) and answers with those mean probabilities.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from anymask.errors import AnymaskError
from anymask.models.calling import ModelCall, OutputFn

COMBINATION = "mean of softmax"


def mean_probabilities(members: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean of the members' N x C probabilities (all for the same images, in the same order)."""
    if not members:
        raise AnymaskError("an ensemble needs at least one member")
    shapes = {tuple(p.shape) for p in members}
    if len(shapes) != 1:
        raise AnymaskError(
            f"members predicted different shapes {sorted(shapes)}: not the same images or classes"
        )
    return torch.stack([p.double() for p in members]).mean(0)


def disagreement(members: Sequence[torch.Tensor]) -> float:
    """Mean over member pairs of the fraction of images whose top-1 classes differ (0 for one member):
    how different the members are, which is what averaging can gain from."""
    predicted = [p.argmax(1) for p in members]
    pairs = [(a, b) for i, a in enumerate(predicted) for b in predicted[i + 1 :]]
    if not pairs:
        return 0.0
    return float(sum((a != b).double().mean() for a, b in pairs) / len(pairs))


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]],
    *,
    output_fn: OutputFn | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Softmax probabilities (float64, on the CPU) of `model` in eval mode over `batches` of images (or of
    (images, labels) pairs, as a DataLoader yields them), in order. The model's mode is restored after."""
    was_training = model.training
    model.eval()
    call = ModelCall.of(model, output_fn)
    outputs = []
    try:
        for batch in batches:
            images = batch[0] if isinstance(batch, tuple | list) else batch
            if device is not None:
                images = images.to(device)
            outputs.append(torch.softmax(call(model, images).double(), dim=1).cpu())
    finally:
        model.train(was_training)
    if not outputs:
        raise AnymaskError("no images to predict: the batches were empty")
    return torch.cat(outputs)


class Ensemble(nn.Module):
    """Several models that answer as one: the mean of their softmax probabilities.

    `forward(images)` returns those probabilities (N x C); `log_probabilities(images)` their log, for a
    loss such as `nn.functional.nll_loss`. Members are called through anymask's model calling, so a model
    that returns a tuple, a mapping or an object with `.logits` works, or give `output_fn`.
    """

    def __init__(self, members: Sequence[nn.Module], output_fn: OutputFn | None = None) -> None:
        super().__init__()
        if not members:
            raise AnymaskError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.output_fn = output_fn

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probabilities = [
            torch.softmax(ModelCall.of(m, self.output_fn)(m, images).float(), dim=1) for m in self.members
        ]
        return torch.stack(probabilities).mean(0)

    def log_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images).clamp_min(1e-12).log()
