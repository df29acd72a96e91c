"""DST inside `anymask train`: the trainer extension that runs `DynamicSparsity` and fills the run folder.

A DST run folder holds `mask_start.safetensors` (the mask training started from) and, once finished,
`mask.safetensors` as the final mask (the model's zeros); until then `mask.safetensors` is the starting
mask, which a resumed run rebuilds from before the checkpoint restores the current one.
"""

from __future__ import annotations

from typing import Any

import torch

from anymask.dst.config import DstConfig
from anymask.dst.growth import DENSE_GRADIENT, GROWTH
from anymask.dst.updater import DynamicSparsity
from anymask.errors import AnymaskError
from anymask.extensions import TRAINER_EXTENSIONS, ExtensionContext, ExtensionKind, TrainerExtension

MASK_START, MASK_FINAL = "mask_start.safetensors", "mask.safetensors"


def dst_methods() -> list[str]:
    return ["none", *GROWTH.names()]


def validate_dst(config: DstConfig, mask_config: Any) -> None:
    """One-line errors for DST settings that cannot work (before anything is written)."""
    if config.dst not in dst_methods():
        raise AnymaskError(f"unknown --dst '{config.dst}'; choose one of: {', '.join(dst_methods())}")
    if config.dst == "none":
        return
    checks = {
        "dst_interval": config.dst_interval >= 1,
        "dst_fraction": 0 < config.dst_fraction <= 1,
        "dst_end": 0 < config.dst_end <= 1,
    }
    for key, ok in checks.items():
        if not ok:
            raise AnymaskError(f"invalid {key}: {getattr(config, key)!r}; see docs/dst.md")
    static_dense = not mask_config.mask_file and (
        mask_config.mask_method == "dense" or mask_config.sparsity == 0
    )
    if static_dense:
        raise AnymaskError(
            f"--dst {config.dst} moves the weights of a sparse mask, but this run's mask is dense; "
            "give a --mask-method and a --sparsity above 0 (or --dst none)"
        )


class DstExtension(TrainerExtension):
    name = "dst"

    def __init__(self, updater: DynamicSparsity, context: ExtensionContext) -> None:
        self.updater = updater
        self.steps_per_epoch = context.steps_per_epoch
        self.out_dir = context.out_dir
        # The trainer's cost meter, where the updates read the dense gradient (RigL) and a meter counts.
        self.cost = context.cost if updater.method in DENSE_GRADIENT else None

    def start(self) -> None:
        if self.out_dir is not None:
            self.updater.mask.save(self.out_dir / MASK_START)

    def after_backward(self, step: int, batch: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        if self.updater.update(step) is not None and self.cost is not None:
            self.cost.add_dense_weight_gradient()

    def epoch_metrics(self, epoch: int) -> dict[str, Any]:
        """Sums over the epoch's updates, each update's record, and the exploration so far."""
        first, end = epoch * self.steps_per_epoch, (epoch + 1) * self.steps_per_epoch
        updates = [u for u in self.updater.updates if first <= u["step"] < end]
        return {
            "dst/updates": len(updates),
            "dst/dropped": sum(u["dropped"] for u in updates),
            "dst/grown": sum(u["grown"] for u in updates),
            "dst/itop_rate": self.updater.itop_rate(),
            "dst/per_update": updates,
        }

    def summary(self) -> dict[str, Any]:
        updates = self.updater.updates
        return {
            "dst": self.updater.method,
            "dst_updates": len(updates),
            "dst_dropped": sum(u["dropped"] for u in updates),
            "itop_rate": self.updater.itop_rate(),
            "mask_start_final_iou": self.updater.start_final_iou(),
        }

    def finish(self) -> None:
        if self.out_dir is not None:
            self.updater.mask.save(self.out_dir / MASK_FINAL)

    def state_dict(self) -> dict[str, Any]:
        return self.updater.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updater.load_state_dict(state)


class DstKind(ExtensionKind):
    def validate(self, config: Any) -> None:
        validate_dst(config.dst, config.mask)

    def create(self, context: ExtensionContext) -> TrainerExtension | None:
        config = context.config
        if config.dst.dst == "none":
            return None
        if context.mask is None:
            raise AnymaskError("dynamic sparse training needs a mask; give a --mask-method and --sparsity")
        updater = DynamicSparsity(
            context.model,
            context.mask,
            context.optimizer,
            context.enforcer,
            config.dst,
            context.total_steps,
            seed=config.train.seed,
        )
        return DstExtension(updater, context)


TRAINER_EXTENSIONS.register("dst")(DstKind())
