"""`DynamicSparsity`: a mask that evolves during training at a fixed budget (SET, RigL).

At each update step, per prunable layer with n active weights and k = floor(n * fraction):

1. **drop**: keep the n - k active weights of largest magnitude (ties: the earlier position stays);
2. **grow**: turn on the k highest-scoring positions among all the others (the growth rule's scores:
   random for SET, |dense gradient| for RigL; ties: the earlier position). As in the RigL reference
   code (`rigl/sparse_optimizers.py`, `_get_update_op`; `rigl_tf2/mask_updaters.py`), only the weights
   kept in step 1 are excluded, so a weight dropped in step 1 may be grown again in the same update:
   it then simply stays, with its value and momentum, and counts as neither dropped nor grown.
3. weights that left the mask and weights that entered it are set to exactly 0, and so is every
   optimizer state entry of theirs (momentum, Adam moments); the enforcer switches to the new mask.

Every layer keeps exactly its count, so the starting mask's per-layer and global densities hold.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from anymask.dst.config import DstConfig
from anymask.dst.growth import GROWTH
from anymask.dst.schedule import UpdateSchedule
from anymask.errors import AnymaskError
from anymask.masks import Mask, MaskEnforcer


def dst_seed(seed: int) -> int:
    """The SET generator's seed: derived from the run's seed, apart from every other stream it feeds."""
    return int.from_bytes(hashlib.sha256(f"anymask-dst-{seed}".encode()).digest()[:7], "big")


def top_positions(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor (flat), True at the k highest scores; among equal scores the earlier position wins."""
    chosen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k > 0:
        chosen[torch.sort(scores, descending=True, stable=True).indices[:k]] = True
    return chosen


class DynamicSparsity:
    """Updates `mask` in place every `config.dst_interval` steps; call `update(step)` once per step,
    after `loss.backward()` and before `optimizer.step()`:

        enforcer = enforce(model, mask, optimizer)
        dst = DynamicSparsity(model, mask, optimizer, enforcer, DstConfig(dst="rigl"), total_steps)
        for step, (x, y) in enumerate(batches):
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            dst.update(step)  # RigL reads the dense gradient here, before the step's hook masks it
            optimizer.step()
    """

    def __init__(
        self,
        model: nn.Module,
        mask: Mask,
        optimizer: torch.optim.Optimizer,
        enforcer: MaskEnforcer | None,
        config: DstConfig,
        total_steps: int,
        *,
        seed: int = 0,
    ) -> None:
        mask.check_fits(model)
        self.grow_scores = GROWTH.get(config.dst)
        self.method = config.dst
        self.schedule = UpdateSchedule.from_config(config, total_steps)
        self.mask, self.optimizer, self.enforcer = mask, optimizer, enforcer
        self.params = {name: model.get_parameter(name) for name in mask}
        self.generator = torch.Generator().manual_seed(dst_seed(seed))
        self.start_mask = {name: m.detach().cpu().clone() for name, m in mask.items()}
        self.ever_active = {name: m.detach().cpu().clone() for name, m in mask.items()}
        self.updates: list[dict[str, Any]] = []  # one record per update: step, fraction, dropped, grown

    # -- the update ----------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, step: int) -> dict[str, Any] | None:
        """Update the mask if `step` (0-based optimizer step) is an update step; returns its record."""
        if not self.schedule.is_update_step(step):
            return None
        fraction = self.schedule.fraction(step)
        proposals = {name: self._layer_proposal(name, fraction) for name in self.params}
        new_masks = _rank_zeros({name: new for name, (new, _) in proposals.items()})
        dropped, grown = self._apply(new_masks)
        chosen = sum(k for _, k in proposals.values())
        record = {"step": step, "fraction": fraction, "dropped": dropped, "grown": grown}
        record["regrown"] = chosen - dropped  # chosen for drop, grown back at once (kept as they were)
        self.updates.append(record)
        return record

    def _layer_proposal(self, name: str, fraction: float) -> tuple[torch.Tensor, int]:
        """The layer's next mask (flat, on the weight's device) and k, the number chosen for drop."""
        param = self.params[name]
        active = self.mask[name].to(param.device).reshape(-1)
        n = int(active.count_nonzero())
        k = int(n * fraction)  # floor, as the reference's cast to int32
        if k == 0:
            return active, 0
        magnitude = param.detach().abs().reshape(-1).float().masked_fill(~active, -float("inf"))
        kept = top_positions(magnitude, n - k)
        scores = self.grow_scores(param, self.generator).reshape(-1).float().nan_to_num(nan=0.0)
        grown = top_positions(scores.masked_fill(kept, -float("inf")), k)
        return kept | grown, k

    def _apply(self, new_masks: dict[str, torch.Tensor]) -> tuple[int, int]:
        """Switch every layer to its new mask; returns (weights that left, weights that entered)."""
        dropped = grown = 0
        for name, flat in new_masks.items():
            param = self.params[name]
            new = flat.view(param.shape)
            old = self.mask[name].to(param.device)
            changed = old ^ new
            param.masked_fill_(changed, 0.0)  # dropped weights leave as 0; grown ones start at 0
            for value in self.optimizer.state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value.masked_fill_(changed, 0)
            dropped += int((old & ~new).count_nonzero())
            grown += int((new & ~old).count_nonzero())
            self.mask[name] = new.to(self.mask[name].device)
            self.ever_active[name] |= new.cpu()
        if self.enforcer is not None:
            self.enforcer.set_mask(self.mask)
        return dropped, grown

    # -- records -------------------------------------------------------------------------------------
    def itop_rate(self) -> float:
        """In-time over-parameterisation rate: the fraction of prunable weights ever active so far."""
        total = sum(m.numel() for m in self.ever_active.values())
        return sum(int(m.count_nonzero()) for m in self.ever_active.values()) / max(total, 1)

    def start_final_iou(self) -> float:
        """Overlap of the starting and the current mask: |start & now| / |start | now|."""
        both = either = 0
        for name, start in self.start_mask.items():
            now = self.mask[name].cpu()
            both += int((start & now).count_nonzero())
            either += int((start | now).count_nonzero())
        return both / either if either else 1.0

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "mask": {name: m.detach().cpu().clone() for name, m in self.mask.items()},
            "start_mask": dict(self.start_mask),
            "ever_active": dict(self.ever_active),
            "generator": self.generator.get_state(),
            "updates": [dict(u) for u in self.updates],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["mask"]) != set(self.mask):
            raise AnymaskError("the checkpoint's DST mask covers other layers than this run's mask")
        for name, saved in state["mask"].items():
            self.mask[name] = saved.to(self.mask[name].device)
        self.start_mask = {name: m.clone() for name, m in state["start_mask"].items()}
        self.ever_active = {name: m.clone() for name, m in state["ever_active"].items()}
        self.generator.set_state(state["generator"])
        self.updates = [dict(u) for u in state["updates"]]
        if self.enforcer is not None:
            self.enforcer.set_mask(self.mask)


def _rank_zeros(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Under torchrun, rank 0's masks on every rank (one broadcast), so ranks cannot drift apart even
    where a kernel is not bitwise deterministic; in a single process, the masks as they are."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return masks
    flat = torch.cat(list(masks.values())).to(torch.uint8)
    dist.broadcast(flat, src=0)
    pieces = flat.bool().split([m.numel() for m in masks.values()])
    return dict(zip(masks, pieces, strict=True))
