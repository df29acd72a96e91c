"""The contract between the training loop and the recipe's parts.

A recipe is a list of parts (`gsn`, `gsc`, `lrsi`, `ls`; `smooth`, `dense-skips` for the official
variant), each registered in `RECIPE_PARTS`. The trainer talks only to `Recipe`, which fans each call
out to the parts. Times are in epochs as floats (`epoch + step / steps_per_epoch`), so schedules are
independent of batch size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anymask.errors import AnymaskError
from anymask.registry import Registry


@dataclass
class RecipeContext:
    """What a part may use when it is prepared, before the optimizer exists."""

    model: nn.Module
    mask: Any  # anymask.masks.Mask | None
    data: Any  # anymask.data.ImageDataset
    config: Any  # anymask.config.RunConfig
    device: torch.device
    resuming: bool  # weights come from a checkpoint: do not re-initialise them
    start_epoch: float  # where training (re)starts
    channels_last: bool = False
    out_dir: Path | None = None  # the run folder: parts may write reports there (gradinit_scales.json)
    output_fn: Any = None  # anymask.models.calling.OutputFn: reads logits from the model's output
    # Modules the parts prepared so far keep outside the model (learned ghost-skip branches): a later
    # part that must reach every BatchNorm the forward runs through (GradInit's recalibration) finds
    # them here, as model.modules() cannot.
    outside_modules: list[nn.Module] = field(default_factory=list)
    # The masked weights as initialised, before pruning zeroed them (ghost weights start from them).
    initial_weights: dict[str, torch.Tensor] | None = None


class RecipePart:
    """One switchable part. Defaults do nothing, so a part overrides only what it changes."""

    name: str = ""
    ghost: bool = False  # a ghost part is temporary: `remove()` must leave the plain model

    def __init__(self, config: Any, total_epochs: float) -> None:
        self.config = config  # anymask.recipe.config.RecipeConfig
        self.total_epochs = total_epochs

    def check(self, context: RecipeContext) -> str | None:
        """What the model lacks for this part, as a short phrase, or None when the part applies to it."""
        return None

    def prepare(self, context: RecipeContext) -> None:
        """Install into the model (ghost modules/hooks) or re-initialise it (GradInit)."""

    def parameters(self) -> list[nn.Parameter]:
        """Extra trainable parameters the part adds (they get their own optimizer group)."""
        return []

    def modules(self) -> list[nn.Module]:
        """Extra modules the part runs outside the model's tree (their BN must sync under DDP too)."""
        return []

    def update(self, epoch: float) -> None:
        """Move schedules to `epoch`; called before every training step and before evaluation."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, epoch: float) -> torch.Tensor | None:
        """The training loss, or None to leave it to another part (cross-entropy by default)."""
        return None

    def mix_loss(
        self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, epoch: float
    ) -> torch.Tensor:
        """The loss with this part's term mixed in (a distillation term); `loss` by default."""
        return loss

    def penalty(self) -> torch.Tensor | None:
        """A term added to the training loss after any mixing (a squeeze on pruned weights), or None."""
        return None

    def enforced_mask(self, mask: Any) -> Any:
        """The mask the trainer should enforce from the start (ghost weights keep every weight alive)."""
        return mask

    def bind(self, optimizer: torch.optim.Optimizer, enforcer: Any) -> None:
        """Called once the trainer has built its optimizer and mask enforcer (anymask.masks.MaskEnforcer,
        or None without a mask), before any checkpoint is loaded: for parts that change what the enforcer
        keeps or clear optimizer state when they leave."""

    def ghost_end(self) -> float:
        """Epoch at which a ghost part is removed (inf for non-ghost parts)."""
        return float("inf")

    def remove(self) -> None:
        """Take the part out of the model for good; idempotent."""

    def metrics(self) -> dict[str, float]:
        """Values to log with each epoch (schedule positions, learned scales...)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Entries for the run's summary.json (a teacher's training cost, what a ghost left behind)."""
        return {}

    def model_change(self) -> str:
        """What the part leaves in the trained model, in words; '' when it leaves the plain architecture."""
        return ""

    def extra_parameters(self) -> int:
        """Parameters the part adds to the trained (saved) model."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (called after `prepare` on resume)."""


def check_choice(key: str, value: str, choices: Iterable[str]) -> str:
    """`value` if it is one of `choices`, else a one-line AnymaskError naming the setting and the options."""
    options = list(choices)
    if value not in options:
        raise AnymaskError(f"unknown {key} '{value}'; choose one of: {', '.join(options)}")
    return value


RECIPE_PARTS: Registry[type[RecipePart]] = Registry("recipe part")
PRESETS: dict[str, tuple[str, ...]] = {
    "default": (),
    "tost": ("gsn", "gsc", "lrsi", "ls"),
    # What the official ToST code does: smooth activations and dense skip branches kept for good.
    "tost-official": ("smooth", "dense-skips", "lrsi", "ls"),
    # Chosen on validation to train a fixed mask better at exactly its weights (docs/results.md, issue 22):
    # folded conv+BN branches for the whole run, and a dense teacher's outputs (needs --teacher).
    "kd-fold": ("fold", "kd"),
}
# Parts run in this order whatever order --recipe lists them in: what changes the network comes before
# GradInit, so its scales fit the network that trains.
ORDER = ("sparse-init", "gw", "gsn", "smooth", "gsc", "dense-skips", "fold", "lrsi", "ls", "kd")
EXCLUSIVE = {("gsn", "smooth"): "both replace every ReLU module"}


def parse_recipe(spec: str) -> tuple[str, ...]:
    """A preset ('default', 'tost', 'tost-official', 'kd-fold') or a comma list of parts ('gsn,ls') -> part
    names in canonical order."""
    import anymask.recipe.parts  # noqa: F401  (registers the parts)

    spec = spec.strip().lower()
    if spec in PRESETS:
        return PRESETS[spec]
    names = [part for n in spec.split(",") if n.strip() for part in PRESETS.get(n.strip(), (n.strip(),))]
    for name in names:
        if name not in RECIPE_PARTS:
            choices = ", ".join([*PRESETS, *RECIPE_PARTS.names()])
            raise AnymaskError(f"unknown recipe part '{name}' in --recipe {spec!r}; choose from: {choices}")
    if not names:
        raise AnymaskError(
            "--recipe is empty; use 'default', 'tost', 'tost-official' or a list such as 'gsn,ls'"
        )
    for pair, why in EXCLUSIVE.items():
        if set(pair) <= set(names):
            raise AnymaskError(f"--recipe {spec!r} has both {' and '.join(pair)}, which {why}; keep one")
    return tuple(sorted(set(names), key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)))


class Recipe:
    """The parts of one run, driven by the trainer."""

    def __init__(self, parts: list[RecipePart]) -> None:
        self.parts = parts
        self.prepared: list[
            RecipePart
        ] = []  # the parts `prepare` installed (a resumed run skips spent ghosts)
        self.removals = 0  # ghost parts taken out so far: the network's cost changes with each

    @classmethod
    def from_config(cls, config: Any, total_epochs: float) -> Recipe:
        names = parse_recipe(config.recipe)
        return cls([RECIPE_PARTS.get(name)(config, total_epochs) for name in names])

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parts]

    def _to_prepare(self, context: RecipeContext) -> list[RecipePart]:
        # resumed after a ghost phase: the checkpoint holds the plain model, the ghost part stays out
        return [p for p in self.parts if not (p.ghost and context.start_epoch >= p.ghost_end())]

    def check_fits(self, context: RecipeContext) -> None:
        """One `AnymaskError` naming every part the model cannot take and the parts that do apply.

        Runs before anything is installed (and, in a run, before any file is written), so a recipe that
        does not fit changes nothing.
        """
        problems = {part.name: part.check(context) for part in self._to_prepare(context)}
        missing = {name: problem for name, problem in problems.items() if problem}
        if not missing:
            return
        fitting = [name for name in self.names if name not in missing]
        advice = f"--recipe {','.join(fitting)}" if fitting else "--recipe default"
        raise AnymaskError(
            f"recipe part(s) {', '.join(missing)} do not apply to this model: "
            + "; ".join(f"{name} needs {problem}" for name, problem in missing.items())
            + f". Train with the parts that apply: {advice}"
        )

    def prepare(self, context: RecipeContext) -> None:
        # Checked again on purpose: a run checks before its mask exists (nothing written yet) and here
        # with the mask, which some parts need to judge (fold's sites, gw's and sparse-init's mask).
        self.check_fits(context)
        for part in self._to_prepare(context):
            part.prepare(context)
            context.outside_modules.extend(part.modules())
            self.prepared.append(part)

    def bind(self, optimizer: torch.optim.Optimizer, enforcer: Any) -> None:
        """Hand the trainer's optimizer and mask enforcer to every prepared part (RecipePart.bind)."""
        for part in self.prepared:
            part.bind(optimizer, enforcer)

    def parameters(self) -> list[nn.Parameter]:
        return [p for part in self.parts for p in part.parameters()]

    def modules(self) -> list[nn.Module]:
        return [m for part in self.parts for m in part.modules()]

    def update(self, epoch: float) -> list[nn.Parameter]:
        """Advance schedules; remove ghost parts whose phase is over. Returns parameters to drop."""
        dropped: list[nn.Parameter] = []
        for part in self.parts:
            if part.ghost and epoch >= part.ghost_end():
                if part in self.prepared:
                    self.removals += 1
                    self.prepared.remove(part)
                dropped += part.parameters()
                part.remove()
            else:
                part.update(epoch)
        return dropped

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, epoch: float) -> torch.Tensor:
        loss = next(
            (value for part in self.parts if (value := part.loss(logits, targets, epoch)) is not None), None
        )
        if loss is None:
            loss = nn.functional.cross_entropy(logits, targets)
        for part in self.parts:
            loss = part.mix_loss(loss, logits, targets, epoch)
        for part in self.parts:
            if (term := part.penalty()) is not None:
                loss = loss + term
        return loss

    def enforced_mask(self, mask: Any) -> Any:
        """What the trainer's enforcer keeps at first: `mask`, unless a prepared part widens it."""
        for part in self.prepared:
            mask = part.enforced_mask(mask)
        return mask

    def in_ghost_phase(self, epoch: float) -> bool:
        """True while some ghost part is still in the model: such a model is not the final one."""
        return any(part.ghost and epoch < part.ghost_end() for part in self.parts)

    def remove_ghosts(self) -> None:
        for part in self.parts:
            if part.ghost:
                if part in self.prepared:
                    self.removals += 1
                    self.prepared.remove(part)
                part.remove()

    def metrics(self) -> dict[str, float]:
        return {f"{part.name}/{k}": v for part in self.parts for k, v in part.metrics().items()}

    def summary(self) -> dict[str, Any]:
        return {k: v for part in self.parts for k, v in part.summary().items()}

    def architecture(self) -> dict[str, Any]:
        """Summary fields of a run whose trained model is not the plain architecture; {} when it is."""
        changes = [change for part in self.parts if (change := part.model_change())]
        if not changes:
            return {}
        return {
            "plain_architecture": False,
            "extra_parameters": sum(part.extra_parameters() for part in self.parts),
            "architecture": "not the plain architecture: " + "; ".join(changes),
        }

    def state_dict(self) -> dict[str, Any]:
        return {part.name: part.state_dict() for part in self.parts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part in self.parts:
            if part.name in state:
                part.load_state_dict(state[part.name])
