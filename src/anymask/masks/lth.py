"""Lottery ticket by iterative magnitude pruning with rewinding (Frankle et al.; open_lth style).

Round 0 trains the dense network from its initial weights and captures the rewind weights at the rewind
step. Round k >= 1 prunes `lth_rate` of the remaining weights by the magnitude of the weights trained in
the previous round (density 0.8^k for the default rate; the last round lands on the target exactly), then,
unless it was the last round, trains the new mask from the rewind weights starting at the rewind step.

lth is the one method that changes the model: it leaves the rewind weights in `context.model`, and the
run then trains the final ticket from the rewind point (its learning-rate schedule and data order resume
at the rewind step too).

The trainer supplies the training as `context.train`:

    train(mask: Mask, state: dict[str, Tensor], start_step: int, capture_step: int | None) -> TrainedRound

It loads `state` into a fresh copy of the model, keeps `mask` enforced, trains from iteration
`start_step` to the end of the round's schedule, and returns the final state dict, the state dict at
iteration `capture_step` (None when not asked), and the final test accuracy. `context.extras` must
hold "steps_per_epoch" when the rewind point is given in epochs ("2ep").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from anymask.errors import AnymaskError
from anymask.masks.allocate import mask_from_scores
from anymask.masks.config import MaskConfig
from anymask.masks.mask import Mask
from anymask.masks.methods import METHODS, PruneContext
from anymask.masks.scoring import magnitude_scores
from anymask.steps import Step

ROUNDS_LOG = "lth_rounds.jsonl"


@dataclass
class TrainedRound:
    """What one training round hands back to the lottery-ticket loop."""

    state: dict[str, torch.Tensor]  # state dict at the end of the round
    captured: dict[str, torch.Tensor] | None  # state dict at capture_step, None if none was asked
    test_acc: float


def round_densities(density: float, rate: float) -> list[float]:
    """Density after each pruning round: (1 - rate)^k until the target, the last one clipped to it."""
    if not 0.0 < rate < 1.0:
        raise AnymaskError(
            f"lth_rate must be in (0, 1), the fraction of remaining weights pruned per round; got {rate}"
        )
    densities: list[float] = []
    current = 1.0
    while current > density * (1 + 1e-9):
        current *= 1.0 - rate
        densities.append(current)
    if densities:
        densities[-1] = density
    return densities


def rewind_step(config: MaskConfig, steps_per_epoch: int | None) -> int:
    """The iteration the ticket is rewound to (and the final run starts from)."""
    return Step.parse(config.lth_rewind).iterations(steps_per_epoch)


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def trained_weights(round_: TrainedRound, names: list[str]) -> dict[str, torch.Tensor]:
    missing = [name for name in names if name not in round_.state]
    if missing:
        raise AnymaskError(
            f"the lth training round returned a state without '{missing[0]}'; it must be "
            "the model's full state_dict"
        )
    return {name: round_.state[name] for name in names}


@METHODS.register("lth")
def lth(context: PruneContext) -> Mask:
    if context.train is None:
        raise AnymaskError(
            "mask method 'lth' (lottery ticket) trains the network between pruning rounds, so it needs "
            "the trainer: run `anymask train --mask-method lth` (library users: pass train= to make_mask)"
        )
    config, names = context.config, list(context.params)
    densities = round_densities(context.density, config.lth_rate)
    mask = Mask.dense(context.params)
    if not densities:
        return mask
    rewind = rewind_step(config, context.extras.get("steps_per_epoch"))
    initial = clone_state(context.model)
    log = RoundLog(context.out_dir)
    trained = context.train(mask, initial, 0, rewind or None)
    rewind_state = initial if rewind == 0 else trained.captured
    if rewind_state is None:
        raise AnymaskError(
            f"lth: round 0 returned no weights at the rewind step {rewind}; is the rewind "
            "point beyond the length of a training round?"
        )
    for k, density in enumerate(densities, start=1):
        scores = magnitude_scores(trained_weights(trained, names))
        mask = mask_from_scores(scores, density, config.scope, previous=mask)
        log.write(k, mask, trained.test_acc)
        if k < len(densities):
            trained = context.train(mask, rewind_state, rewind, None)
    context.model.load_state_dict(rewind_state)
    return mask


class RoundLog:
    """`lth_rounds.jsonl` and `lth_round_<k>.safetensors`, when an out_dir is set.

    One line per pruning round: its sparsity and kept count, and the test accuracy of the trained
    network whose weights the round's magnitudes came from.
    """

    def __init__(self, out_dir: str | Path | None) -> None:
        self.out_dir = None if out_dir is None else Path(out_dir)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / ROUNDS_LOG).write_text("")

    def write(self, round_: int, mask: Mask, pruned_from_acc: float) -> None:
        if self.out_dir is None:
            return
        record = {
            "round": round_,
            "sparsity": mask.sparsity(),
            "kept": mask.kept(),
            "total": mask.total(),
            "test_acc": pruned_from_acc,
        }
        with (self.out_dir / ROUNDS_LOG).open("a") as log:
            log.write(json.dumps(record) + "\n")
        mask.save(self.out_dir / f"lth_round_{round_}.safetensors")
