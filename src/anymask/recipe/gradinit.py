"""Layer-wise rescaled initialisation (lrsi): GradInit (Zhu et al., 2021) run on the masked network.

A sparse network initialised for its dense version starts with badly scaled layers. GradInit learns
one scale per parameter tensor so that the first SGD step lowers the loss as much as possible while
the gradient norm stays bounded. Scales multiply whole tensors, so pruned weights stay exactly 0.

This follows the official implementation (zhuchen03/gradinit, `gradinit_utils.gradinit` and
`RescaleAdam`) step by step: BN layers use batch statistics without updating running ones, the
look-ahead step is detached (first-order), biases whose norm is 0 are left alone, weight scales are
bounded below by min_scale and bias scales by 0. One change makes it fit sparse training: the
simulated step and the gradient norm use the masked gradient, the step that training will take.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from anymask.errors import AnymaskError
from anymask.memory import return_freed_memory
from anymask.models.calling import ModelCall, OutputFn, twice_differentiable
from anymask.recipe.base import RECIPE_PARTS, RecipeContext, RecipePart

Batch = tuple[torch.Tensor, torch.Tensor]
BETAS = (0.9, 0.999)
EPS = 1e-8
SCALES_FILE = "gradinit_scales.json"
RECALIBRATION_BATCHES = 10  # of gradinit_batch_size images: BN statistics of the rescaled network
ANNOUNCE_AFTER_SECONDS = 60.0
POSITIVE = ("gradinit_lr", "gradinit_eta", "gradinit_gamma", "gradinit_batch_size")
NON_NEGATIVE = ("gradinit_iterations", "gradinit_min_scale", "gradinit_grad_clip")


@dataclass
class Moments:
    """Adam's bias-corrected moments of one scalar gradient."""

    steps: int = 0
    mean: float = 0.0
    mean_sq: float = 0.0

    def direction(self, grad: float) -> float:
        self.steps += 1
        self.mean = BETAS[0] * self.mean + (1 - BETAS[0]) * grad
        self.mean_sq = BETAS[1] * self.mean_sq + (1 - BETAS[1]) * grad * grad
        corrected_sq = self.mean_sq / (1 - BETAS[1] ** self.steps)
        return self.mean / (1 - BETAS[0] ** self.steps) / (math.sqrt(corrected_sq) + EPS)


@dataclass
class Scale:
    """One tensor's scale. The two kinds of step (objective, constraint) keep separate moments."""

    init_norm: float
    min_scale: float
    alpha: float = 1.0
    moments: dict[bool, Moments] = field(default_factory=lambda: {False: Moments(), True: Moments()})


class RescaleAdam:
    """Adam on one scale per tensor: the tensor is kept at norm `alpha * ||p0||`.

    The scale's gradient is `<grad p, p> * ||p0|| / ||p||` (dL/dalpha, as p = alpha ||p0|| p/||p||).
    """

    def __init__(
        self, named: list[tuple[str, nn.Parameter]], lr: float, min_scale: float, clip: float
    ) -> None:
        self.params = [p for _, p in named]
        norms = torch.stack([p.detach().norm() for p in self.params]).tolist()
        self.scales = [
            Scale(norm, 0.0 if name.endswith("bias") else min_scale)
            for (name, _), norm in zip(named, norms, strict=True)
        ]
        self.lr, self.clip = lr, clip

    @torch.no_grad()
    def step(self, grads: tuple[torch.Tensor, ...], constraint: bool) -> None:
        dots = torch.stack([(g * p).sum() for g, p in zip(grads, self.params, strict=True)]).tolist()
        norms = torch.stack([p.norm() for p in self.params]).tolist()
        for p, scale, dot, norm in zip(self.params, self.scales, dots, norms, strict=True):
            if scale.init_norm == 0 or norm == 0:
                continue  # zero-initialised biases: a scale cannot move them
            grad = dot * scale.init_norm / norm
            if self.clip > 0:
                grad = min(max(grad, -self.clip), self.clip)
            alpha = scale.alpha - self.lr * scale.moments[constraint].direction(grad)
            scale.alpha = max(alpha, scale.min_scale)
            p.mul_(scale.alpha * scale.init_norm / norm)


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout), but BN layers normalise with batch statistics and leave running ones alone."""
    training = {module: module.training for module in model.modules()}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracked = [m.track_running_stats for m in norms]
    model.eval()
    for norm in norms:
        norm.training, norm.track_running_stats = True, False
    try:
        yield
    finally:
        for norm, track in zip(norms, tracked, strict=True):
            norm.track_running_stats = track
        for module, mode in training.items():
            module.training = mode


class GradInit:
    """Learns the scales of `model`'s trainable tensors in place.

    `config` holds the gradinit_* settings (a RecipeConfig); `masks` maps parameter names to 0/1 float
    tensors: pruned entries take no part in the simulated step nor in the gradient norm. `output_fn`
    reads the logits from the model's output when it is not a tensor (`anymask.models.calling`).
    """

    def __init__(
        self, model: nn.Module, config: Any, masks: dict[str, torch.Tensor], output_fn: OutputFn | None = None
    ) -> None:
        self.model, self.config, self.masks = model, config, masks
        self.call = ModelCall.of(model, output_fn)
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.optimizer = RescaleAdam(
            self.named, config.gradinit_lr, config.gradinit_min_scale, config.gradinit_grad_clip
        )

    def run(
        self, batches: Iterator[Batch], progress: bool = False, announce: bool = False
    ) -> dict[str, float]:
        """All iterations; returns each tensor's learned scale by parameter name.

        `announce` prints how long the iterations will take once two are timed, when that is over a minute
        (on a CPU the default 180 iterations of a ResNet-20 take most of an hour).
        """
        total = self.config.gradinit_iterations
        begin = time.perf_counter()
        with batch_statistics(self.model), twice_differentiable():
            for index in tqdm(range(total), "gradinit", disable=not progress, leave=False):
                self.iteration(batches)
                if announce and index == 1:
                    _announce(total, (time.perf_counter() - begin) / 2 * total)
        return {name: scale.alpha for (name, _), scale in zip(self.named, self.optimizer.scales, strict=True)}

    def iteration(self, batches: Iterator[Batch]) -> None:
        """A constraint step while ||g(S)|| > gamma, else an objective step on S~ = half S + a new batch."""
        (x0, y0), (x1, y1) = next(batches), next(batches)
        loss = F.cross_entropy(self.call(self.model, torch.cat([x0, x1])), torch.cat([y0, y1]))
        grads = self.grad(loss, create_graph=True)
        grads = tuple(
            g * self.masks[n] if n in self.masks else g for (n, _), g in zip(self.named, grads, strict=True)
        )
        gnorm = torch.stack([g.square().sum() for g in grads]).sum().sqrt()
        if gnorm.item() > self.config.gradinit_gamma:
            self.optimizer.step(self.grad(gnorm), constraint=True)
            return
        length = gnorm.detach() if self.config.gradinit_normalize_grad else 1.0
        x2, y2 = next(batches)
        objective = self.lookahead_loss(
            [g.detach() / length for g in grads], torch.cat([x0, x2]), torch.cat([y0, y2])
        )
        self.optimizer.step(self.grad(objective), constraint=False)

    def lookahead_loss(
        self, step: list[torch.Tensor], images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """L(S~; theta - eta * step) / eta: the loss after one simulated SGD step, per unit of step length.

        The step is a constant (detached), as in the official code: the scales get first-order credit.
        """
        eta = self.config.gradinit_eta
        moved = {n: p - eta * s for (n, p), s in zip(self.named, step, strict=True)}
        return F.cross_entropy(self.call.functional(self.model, moved, images), labels) / eta

    def grad(self, value: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, ...]:
        """d value / d params, zeros for parameters that do not reach it."""
        return torch.autograd.grad(
            value, self.params, create_graph=create_graph, allow_unused=True, materialize_grads=True
        )


def _announce(iterations: int, seconds: float) -> None:
    if seconds >= ANNOUNCE_AFTER_SECONDS:
        print(
            f"anymask: GradInit (lrsi) runs {iterations} iterations before training, about "
            f"{seconds / 60:.0f} min here; on a CPU --gradinit-iterations 60 is usually enough "
            "(docs/recipe.md)",
            file=sys.stderr,
        )


@torch.no_grad()
def recalibrate_running_stats(
    model: nn.Module,
    batches: Iterator[Batch],
    count: int,
    output_fn: OutputFn | None = None,
    outside: Sequence[nn.Module] = (),
) -> None:
    """BatchNorm running statistics recomputed from `count` training batches of the network as it now is.

    GradInit shrinks or grows whole tensors, so the running statistics of the network at init (mean 0,
    variance 1, only slowly decayed by training) no longer describe it: a 3-epoch digits run evaluated
    one class for nearly every test image. Only running statistics change: the batches come from
    GradInit's own generator, dropout stays off (eval mode) and `num_batches_tracked` is put back, so
    training takes exactly the steps it took before. `outside` are modules the forward runs through
    that the model does not hold (learned ghost-skip branches): their BatchNorms are recomputed too.
    """
    every = [m for root in (model, *outside) for m in root.modules()]
    norms = [m for m in every if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    training = {module: module.training for module in every}
    saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches
        norm.train()
    call = ModelCall.of(model, output_fn)
    try:
        for _ in range(count):
            call(model, next(batches)[0])
    finally:
        for norm, (momentum, tracked) in zip(norms, saved, strict=True):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(tracked)
        for module, mode in training.items():
            module.training = mode


def training_batches(context: RecipeContext, batch_size: int) -> Iterator[Batch]:
    """Endless augmented training batches, drawn from a generator seeded with the run's seed; from a
    user's iterable of batches (`SparseTraining(batches=...)`), its own batches, pass after pass."""
    from anymask.data import shuffled_train_batches
    from anymask.data.iterable import as_data, is_dataset

    data = as_data(context.data)
    if data is None:
        raise AnymaskError("lrsi (GradInit) needs training batches; pass batches= (or data=) with the recipe")
    if not is_dataset(data):
        for x, y in data.endless():
            yield x.to(context.device), y.to(context.device)
    generator = torch.Generator().manual_seed(context.config.train.seed)
    size = min(batch_size, data.split_size("train"))
    while True:
        for x, y in shuffled_train_batches(
            data, size, generator, augment=context.config.data.augment, drop_last=True
        ):
            yield x.to(context.device), y.to(context.device)


@RECIPE_PARTS.register("lrsi")
class RescaledInit(RecipePart):
    """Runs GradInit once when training starts fresh (a resumed run's weights are already rescaled)."""

    name = "lrsi"

    def __init__(self, config: Any, total_epochs: float) -> None:
        super().__init__(config, total_epochs)
        _check_settings(config)
        self.scales: dict[str, float] = {}
        self._logged = False

    def prepare(self, context: RecipeContext) -> None:
        if context.resuming:
            return
        masks = {n: m.to(context.device, torch.float32) for n, m in (context.mask or {}).items()}
        # Double backward through channels_last convolutions is ~3x slower on CPU: run contiguous.
        context.model.to(memory_format=torch.contiguous_format)
        batches = training_batches(context, self.config.gradinit_batch_size)
        gradinit = GradInit(context.model, self.config, masks, context.output_fn)
        self.scales = gradinit.run(
            batches, context.config.train.progress, announce=context.out_dir is not None
        )
        recalibrate_running_stats(
            context.model, batches, RECALIBRATION_BATCHES, context.output_fn, context.outside_modules
        )
        return_freed_memory()  # the double backward's peak, otherwise resident for the rest of the run
        if context.channels_last:
            context.model.to(memory_format=torch.channels_last)
        if context.out_dir is not None:
            from anymask.io import atomic_write_text

            atomic_write_text(context.out_dir / SCALES_FILE, json.dumps(self.scales, indent=2) + "\n")

    def metrics(self) -> dict[str, float]:
        """Every tensor's scale, with the first epoch's record only (they do not change afterwards)."""
        if self._logged:
            return {}
        self._logged = True
        return {f"scale/{name}": value for name, value in self.scales.items()}


def _check_settings(config: Any) -> None:
    for key in (*POSITIVE, *NON_NEGATIVE):
        value = getattr(config, key)
        if not (value > 0 if key in POSITIVE else value >= 0):
            bound = "positive" if key in POSITIVE else "0 or more"
            raise AnymaskError(f"{key} must be {bound}, got {value}")
