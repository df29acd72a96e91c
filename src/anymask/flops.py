"""Training cost in multiply-adds, counted as the RigL paper counts it (used by the trainer and the recipe).

A layer's forward pass costs its output positions times its nonzero weights (a masked layer at its
density, a dense one in full: ghost weights count while they are alive, folding branches at the mask's
density, a teacher in full). A training step costs three forward passes of every layer that trains
(forward, gradient with respect to the inputs, gradient with respect to the weights) and one of every
layer run without gradients (a distillation teacher). Reported FLOPs are twice the multiply-adds.

The count is measured, not modelled: global module hooks watch every Conv2d and Linear call during one
step (the first of each epoch and the first after a recipe part leaves), and the steps in between cost
what the last measured one did per image. The one-off set-up before training (GradInit, probes) is
counted the same way while it runs; GradInit's second-order backward is counted as an ordinary
backward, so its share is a lower bound. A step whose weight gradient is taken in full (RigL's mask
updates read the dense gradient) costs, as the RigL paper counts it, the dense weight gradient in place
of the sparse one: the difference is added per image of that step (`CostMeter.add_dense_weight_gradient`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

BACKWARD_FACTOR = 3  # forward + input gradient + weight gradient
FLOPS_PER_MAC = 2


def layer_macs(module: nn.Module, output: torch.Tensor, dense: bool = False) -> float:
    """Multiply-adds per example of one Conv2d or Linear call: output positions x nonzero weights (every
    weight, zero or not, with `dense`)."""
    weight = module.weight
    weights = float(weight.numel()) if dense else float(torch.count_nonzero(weight.detach()))
    if isinstance(module, nn.Conv2d):
        positions = output.shape[-2] * output.shape[-1]
        return positions * weights
    positions = output[0].numel() // weight.shape[0]  # Linear over extra dims (tokens)
    return positions * weights


@contextlib.contextmanager
def counting_macs() -> Iterator[dict[str, float]]:
    """Counts the multiply-adds of every Conv2d/Linear call in the block (all examples of each call),
    split into layers that train ('train': gradients on, trainable weights) and that only run ('forward');
    'train_dense' is what the training layers would cost with every weight nonzero."""
    counts = {"train": 0.0, "forward": 0.0, "train_dense": 0.0}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(module, nn.Conv2d | nn.Linear) and isinstance(output, torch.Tensor) and output.dim():
            trains = torch.is_grad_enabled() and module.weight.requires_grad
            counts["train" if trains else "forward"] += layer_macs(module, output) * output.shape[0]
            if trains:
                counts["train_dense"] += layer_macs(module, output, dense=True) * output.shape[0]

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()


def step_macs(counts: dict[str, float]) -> float:
    """Multiply-adds of the forward passes counted and the backward passes of the layers that trained."""
    return BACKWARD_FACTOR * counts["train"] + counts["forward"]


@dataclass
class CostMeter:
    """Running totals of a run's training multiply-adds; in the checkpoint, so a resumed run adds on."""

    train_macs: float = 0.0
    examples: int = 0  # trained on, by all ranks together
    prepare_macs: float = 0.0
    prepare_seconds: float = 0.0
    dense_gradient_macs: float = 0.0  # the extra of steps whose weight gradient was taken in full
    dense_gradient_steps: int = 0
    step_macs_per_example: float = 0.0  # of the last measured step
    dense_extra_per_example: float = 0.0  # dense minus sparse weight gradient, of the last measured step
    last_step_examples: int = 0
    _measured_epoch: int = -1
    _measured_removals: int = -1

    def wants_measure(self, epoch: int, removals: int) -> bool:
        return epoch != self._measured_epoch or removals != self._measured_removals

    @contextlib.contextmanager
    def measuring(self, epoch: int, removals: int, examples: int) -> Iterator[None]:
        with counting_macs() as counts:
            yield
        self.step_macs_per_example = step_macs(counts) / max(examples, 1)
        self.dense_extra_per_example = (counts["train_dense"] - counts["train"]) / max(examples, 1)
        self._measured_epoch, self._measured_removals = epoch, removals

    def add_step(self, examples: int) -> None:
        self.train_macs += self.step_macs_per_example * examples
        self.examples += examples
        self.last_step_examples = examples

    def add_dense_weight_gradient(self) -> None:
        """The last step's weight gradient was taken in full (a RigL mask update): add the dense weight
        gradient's multiply-adds beyond the sparse one the step was counted with."""
        self.dense_gradient_macs += self.dense_extra_per_example * self.last_step_examples
        self.dense_gradient_steps += 1

    def summary(self, default_macs_per_example: float) -> dict[str, float]:
        """summary.json entries: FLOPs of this run and of the default protocol on the same mask and
        examples (the plain masked network's forward, three times per example)."""
        total = FLOPS_PER_MAC * (self.train_macs + self.prepare_macs + self.dense_gradient_macs)
        default = FLOPS_PER_MAC * BACKWARD_FACTOR * default_macs_per_example * self.examples
        summary = {
            "train_flops": total,
            "default_train_flops": default,
            "train_flops_vs_default": total / default if default else float("nan"),
            "prepare_seconds": self.prepare_seconds,
        }
        if self.dense_gradient_steps:
            summary["dense_gradient_flops"] = FLOPS_PER_MAC * self.dense_gradient_macs
            summary["dense_gradient_steps"] = self.dense_gradient_steps
        return summary

    def state_dict(self) -> dict[str, float]:
        return {
            "train_macs": self.train_macs,
            "examples": self.examples,
            "prepare_macs": self.prepare_macs,
            "prepare_seconds": self.prepare_seconds,
            "dense_gradient_macs": self.dense_gradient_macs,
            "dense_gradient_steps": self.dense_gradient_steps,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.train_macs = float(state.get("train_macs", 0.0))
        self.examples = int(state.get("examples", 0))
        self.prepare_macs = float(state.get("prepare_macs", 0.0))
        self.prepare_seconds = float(state.get("prepare_seconds", 0.0))
        self.dense_gradient_macs = float(state.get("dense_gradient_macs", 0.0))
        self.dense_gradient_steps = int(state.get("dense_gradient_steps", 0))


@torch.no_grad()
def forward_macs(model: nn.Module, example: torch.Tensor, call: Any) -> float:
    """Per-example multiply-adds of one forward pass of `model` (eval mode, modes restored)."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with counting_macs() as counts:
            call(model, example)
    finally:
        for module, mode in modes.items():
            module.training = mode
    return (counts["train"] + counts["forward"]) / len(example)
