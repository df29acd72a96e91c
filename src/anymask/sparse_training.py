"""`SparseTraining`: a mask, the sparse-training recipe and dynamic sparse training inside any training loop.

    st = SparseTraining(mask_method="snip", sparsity=0.98, recipe="tost", dst="rigl",
                        epochs=30, steps_per_epoch=len(loader), batches=loader)
    model = st.prepare(model, optimizer)     # mask, ghost parts, GradInit; the ghosts' own param group
    for epoch in range(30):
        for x, y in loader:
            loss = st.loss(model(x), y)     # the recipe's loss (label smoothing where it has it)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            st.step()                       # schedules, ghost removal; DST ran inside optimizer.step()
    model = st.finish(model)                # the plain architecture holding exactly the mask's weights

`anymask train` is built on it: its `Trainer` (anymask.train.trainer) keeps the loop, evaluation and
checkpoints and hands the mask, the recipe and DST to this object (`config=` the run's whole config), so
the command and a user's loop are one code path and end with the same weights on the same batches
(tests/test_sparse_training_equivalence.py). Inside: `make_mask`, `Recipe.prepare`, a `MaskEnforcer` on
the optimizer, the registered trainer extensions (dynamic sparse training) and the recipe's schedules
advanced once per step. Settings take the names `anymask train` gives them (`mask_method`, `sparsity`,
`recipe`, `gradinit_iterations`, `dst`, `dst_interval`, `seed`, ...).

Two hooks go on the optimizer, in this order: before each step the extensions run (RigL reads the dense
gradient) and the ghost group takes the first group's learning rate (so any LR scheduler drives it
too); then the enforcer zeroes pruned gradients, and after the step pruned weights. The loop itself calls
only `loss` and `step`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle

from anymask.collectives import average_gradients, broadcast_from_rank_zero, distributed
from anymask.config import SECTIONS, RunConfig, section_of
from anymask.data.iterable import as_data
from anymask.errors import AnymaskError
from anymask.extensions import ExtensionContext, TrainerExtension, create_extensions, validate_extensions
from anymask.flops import CostMeter
from anymask.masks import METHODS, Mask, MaskEnforcer, check_sparsity, make_mask
from anymask.models.calling import ModelCall, OutputFn
from anymask.recipe import Recipe, RecipeContext

# The run settings SparseTraining takes: every mask, recipe and DST setting, and these two.
OWN_SECTIONS = ("mask", "recipe", "dst")
TRAIN_SETTINGS = ("seed", "augment")
STATE_VERSION = 1


def accepted_settings() -> list[str]:
    """Every setting name `SparseTraining(...)` accepts, as `anymask train` spells it."""
    names = [f.name for s in OWN_SECTIONS for f in dataclasses.fields(SECTIONS[s])]
    return [*names, *TRAIN_SETTINGS]


class SparseTraining:
    """Brings an anymask mask, the recipe and DST into a training loop of your own (see the module doc).

    mask: a ready `Mask`, or a mask file's path (as `mask_file=`); otherwise `mask_method` and `sparsity`
    make one on the model `prepare` receives, scored on `batches` where the method needs data.
    epochs, steps_per_epoch: the length of training, for the recipe's schedules and DST's updates
    (needed unless the recipe is 'default' and dst is 'none').
    batches: an anymask dataset or any iterable of (images, labels) batches (a DataLoader): SNIP and
    GraSP score on it, GradInit (lrsi) trains its scales on it, SynFlow reads the input shape from it.
    output_fn: reads the logits from the model's output when it is neither a tensor nor has `logits`.
    ghost_group: the ghost parameters join the optimizer as a group of their own (True), or the first
    group (False: for an LR scheduler made before `prepare`, which counts the groups when it is made).
    optimizer_hooks: run the pre-step work (DST, pruned gradients zeroed) in a hook on `optimizer.step()`
    (True), or leave it to whoever calls `before_optimizer_step()` after the backward pass (False: for
    trainers that compute the gradients inside `optimizer.step(closure)`, as Lightning does).
    config: a whole `RunConfig` to read every setting from (as `anymask train` does: the recipe's parts
    then also see its training settings); keyword settings, if any, override it.
    out_dir: a run folder the recipe and the extensions may write to (GradInit's scales, DST's masks).
    channels_last: whether the model trains in channels_last (None: read from its first conv weight).
    """

    def __init__(
        self,
        *,
        mask: Mask | str | Path | None = None,
        epochs: float | None = None,
        steps_per_epoch: int | None = None,
        batches: Any = None,
        output_fn: OutputFn | None = None,
        ghost_group: bool = True,
        optimizer_hooks: bool = True,
        config: RunConfig | None = None,
        out_dir: str | Path | None = None,
        channels_last: bool | None = None,
        **settings: Any,
    ) -> None:
        if isinstance(mask, str | Path):
            settings["mask_file"] = str(mask)
            mask = None
        if settings.get("dst", "none") is None:
            settings["dst"] = "none"
        self.config = _config(settings, config)
        self.given_mask = mask
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.channels_last = channels_last
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        _check_length(self.config, epochs, steps_per_epoch)
        self.batches = as_data(batches)
        self.output_fn = output_fn
        self.ghost_group, self.optimizer_hooks = ghost_group, optimizer_hooks
        self.step_count = 0
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.mask: Mask | None = None
        self.recipe = Recipe.from_config(self.config.recipe, epochs or 1.0)
        self.enforcer: MaskEnforcer | None = None
        self.extensions: list[TrainerExtension] = []
        self._handles: list[RemovableHandle] = []
        self._pending_state: dict[str, Any] | None = None
        self._checked: nn.Module | None = None  # the model `check` found fit (prepare need not ask again)
        self._finished = False

    # -- set-up ------------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return round((self.epochs or 0) * (self.steps_per_epoch or 0))

    @property
    def epoch(self) -> float:
        """Where training stands, in epochs (step / steps_per_epoch): the recipe's clock."""
        return self.step_count / self.steps_per_epoch if self.steps_per_epoch else 0.0

    def check(self, model: nn.Module) -> None:
        """One `AnymaskError` line if a recipe part cannot apply to `model`, before any mask is made or
        anything written (`prepare` checks again with the mask; `anymask train` calls this first)."""
        resuming = self._pending_state is not None
        self.recipe.check_fits(self._recipe_context(model, None, _device_of(model), resuming))
        self._checked = model

    def prepare(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        mask: Mask | None = None,
        start_step: int = 0,
        cost: CostMeter | None = None,
    ) -> nn.Module:
        """Mask `model`, install the recipe (GradInit runs here), add the ghost parameters to `optimizer`
        as their own group and hook the optimizer. Returns `model` (changed in place).

        A state loaded before `prepare` (`load_state_dict`) resumes: its mask, no GradInit, ghost parts
        only if their phase is not over, so `optimizer.load_state_dict` then fits.
        mask: the mask to train, when it was made after this object (overrides `mask=` of the constructor).
        start_step: the step training starts at, where it is not 0 (a lottery ticket rewound to step k).
        cost: the trainer's `anymask.flops.CostMeter`, for extensions whose steps cost more than the
            masked network's (RigL's dense gradient); a user's loop that counts no cost leaves it out.
        """
        if self.model is not None:
            raise AnymaskError("SparseTraining.prepare was already called; make one SparseTraining per model")
        if mask is not None:
            self.given_mask = mask
        resuming = self._pending_state is not None
        if not resuming:
            self.step_count = start_step
        device = _device_of(model)
        if self._checked is not model:
            self.check(model)
        mask = self._resumed_mask(model) if resuming else self._build_mask(model, device)
        initial = {name: model.get_parameter(name).detach().clone() for name in mask}  # ghost weights' start
        mask.apply(model)
        context = self._recipe_context(model, mask, device, resuming)
        context.initial_weights = initial
        had = {id(p) for p in model.parameters()}
        self.recipe.prepare(context)
        _train_added_parameters(optimizer, model, had)  # tost-official's dense skips live in the model
        ghosts = self.recipe.parameters()
        if ghosts and self.ghost_group:
            optimizer.add_param_group({"params": ghosts, "ghost": True})
        elif ghosts:
            optimizer.param_groups[0]["params"].extend(ghosts)
        broadcast_from_rank_zero(model, self.recipe.modules())  # under DDP: GradInit saw each rank's batches
        if self.optimizer_hooks:  # registered before the enforcer's: runs first, on the dense gradient
            self._handles.append(optimizer.register_step_pre_hook(lambda *_: self.before_optimizer_step()))
            self.enforcer = MaskEnforcer(model, self.recipe.enforced_mask(mask), optimizer)
        else:
            self.enforcer = MaskEnforcer(model, self.recipe.enforced_mask(mask))
            enforcer = self.enforcer
            self._handles.append(optimizer.register_step_post_hook(lambda *_: enforcer.zero_weights()))
        self.recipe.bind(optimizer, self.enforcer)  # parts that change what is enforced (ghost weights)
        self.model, self.optimizer, self.mask = model, optimizer, mask
        context = ExtensionContext(
            self.config,
            model,
            mask,
            optimizer,
            self.enforcer,
            self.total_steps,
            self.steps_per_epoch or 1,
            self.out_dir,
            resuming,
            cost,
        )
        self.extensions = create_extensions(context)
        if resuming:
            assert self._pending_state is not None
            self._load(self._pending_state)
            self._pending_state = None
        else:
            for extension in self.extensions:
                extension.start()
        self._advance()
        return model

    def _build_mask(self, model: nn.Module, device: torch.device) -> Mask:
        if self.given_mask is not None:
            self.given_mask.check_fits(model)
            return Mask(dict(self.given_mask.items()))
        if self.config.mask.mask_method == "lth" and not self.config.mask.mask_file:
            raise AnymaskError(
                "mask_method 'lth' trains the network several times to find its ticket; make it with "
                "`anymask prune --method lth ...` and pass the file as mask="
            )
        mask = make_mask(
            model,
            self.config.mask,
            data=self.batches,
            device=device,
            seed=self.config.train.seed,
            extras={"steps_per_epoch": self.steps_per_epoch} if self.steps_per_epoch else {},
            output_fn=self.output_fn,
        )
        if distributed():  # rank 0's mask everywhere: SNIP on each rank's own batches would differ
            shared = [mask.to("cpu")]
            dist.broadcast_object_list(shared, src=0)
            mask = shared[0]
        return mask

    def _resumed_mask(self, model: nn.Module) -> Mask:
        assert self._pending_state is not None
        mask = Mask(self._pending_state["mask"])
        mask.check_fits(model)
        return mask

    def _recipe_context(
        self, model: nn.Module, mask: Mask | None, device: torch.device, resuming: bool
    ) -> RecipeContext:
        step = self._pending_state["step"] if resuming and self._pending_state else self.step_count
        start = step / self.steps_per_epoch if self.steps_per_epoch else 0.0
        channels_last = _is_channels_last(model) if self.channels_last is None else self.channels_last
        return RecipeContext(
            model,
            mask,
            self.batches,
            self.config,
            device,
            resuming,
            start,
            channels_last,
            self.out_dir,
            output_fn=self.output_fn,
        )

    # -- each step ---------------------------------------------------------------------------------
    def loss(self, output: Any, labels: torch.Tensor) -> torch.Tensor:
        """The recipe's training loss for the model's output (a tensor, or anything with logits):
        label-smoothed cross-entropy under `ls`, plain cross-entropy otherwise."""
        logits = ModelCall(None, self.output_fn).logits(output)
        return self.recipe.loss(logits.float(), labels, self.epoch)

    def step(self) -> None:
        """Call once after each `optimizer.step()`: moves the recipe's schedules to the next step and
        removes ghost parts whose phase is over (their parameter group leaves the optimizer)."""
        self._require_prepared("step")
        self.step_count += 1
        self._advance()

    def _advance(self) -> None:
        dropped = self.recipe.update(self.epoch)
        if dropped and self.optimizer is not None:
            drop_parameters(self.optimizer, dropped)

    def before_optimizer_step(self) -> None:
        """The work between the backward pass and the optimizer's update: ghost gradients averaged
        across processes, the ghost group's learning rate, the extensions (DST reads the dense gradient)
        and, without optimizer hooks, the pruned gradients zeroed. A hook calls it unless
        `optimizer_hooks=False`."""
        optimizer = self.optimizer
        assert optimizer is not None and self.enforcer is not None
        average_gradients(self.recipe.parameters())
        lr = optimizer.param_groups[0]["lr"]
        for group in optimizer.param_groups:
            if group.get("ghost"):
                group["lr"] = lr
        for extension in self.extensions:
            extension.after_backward(self.step_count, None)
        if not self.optimizer_hooks:
            self.enforcer.zero_gradients()

    # -- the end -----------------------------------------------------------------------------------
    def finish(self, model: nn.Module | None = None) -> nn.Module:
        """Remove the ghost parts and the optimizer hooks: the model is the plain architecture with the
        mask's (final, under DST) weights and nothing else. Returns the model."""
        self._require_prepared("finish")
        assert self.model is not None and self.optimizer is not None and self.enforcer is not None
        if model is not None and model is not self.model:
            raise AnymaskError("finish got another model than the one prepared")
        if not self._finished:
            drop_parameters(self.optimizer, self.recipe.parameters())
            self.recipe.remove_ghosts()
            self.enforcer.zero_weights()
            for extension in self.extensions:
                extension.finish()
            self.enforcer.remove()
            for handle in self._handles:
                handle.remove()
            self._finished = True
        return self.model

    def summary(self) -> dict[str, Any]:
        """The mask's counts, the recipe's architecture note (tost-official) and the extensions' entries
        (DST: updates, in-time over-parameterisation rate)."""
        self._require_prepared("summary")
        assert self.mask is not None
        summary: dict[str, Any] = {
            "mask_kept": self.mask.kept(),
            "mask_total": self.mask.total(),
            "mask_density": self.mask.density(),
            **self.recipe.architecture(),
            **self.recipe.summary(),
        }
        for extension in self.extensions:
            summary.update(extension.summary())
        return summary

    def metrics(self) -> dict[str, Any]:
        """The recipe's schedule positions and scales now (as `anymask train` logs per epoch)."""
        return self.recipe.metrics()

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything to resume bit for bit besides the model's and the optimizer's own states."""
        self._require_prepared("state_dict")
        assert self.mask is not None
        return {
            "version": STATE_VERSION,
            "settings": self.config.read_settings(),
            "step": self.step_count,
            "mask": {name: m.detach().cpu().clone() for name, m in self.mask.items()},
            "recipe": self.recipe.state_dict(),
            "extensions": {extension.name: extension.state_dict() for extension in self.extensions},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state_dict()`. Before `prepare` (recommended): `prepare` then skips GradInit and
        the ghost parts whose phase is over, so the optimizer's saved groups fit. After `prepare`: the
        mask, step and recipe state are restored and finished ghost phases end now."""
        state = dict(state)
        settings = self.config.read_settings()
        if state.get("settings") != settings:
            differ = [k for k in settings if state.get("settings", {}).get(k) != settings[k]]
            raise AnymaskError(
                f"the saved SparseTraining state has other settings ({', '.join(differ[:5])} differ); "
                "create SparseTraining with the settings it was saved with"
            )
        if self.model is None:
            self._pending_state = state
            return
        self._load(state)
        self._advance()

    def _load(self, state: dict[str, Any]) -> None:
        assert self.mask is not None and self.enforcer is not None
        self.step_count = int(state["step"])
        changed = any(not torch.equal(saved, self.mask[name].cpu()) for name, saved in state["mask"].items())
        for name, saved in state["mask"].items():
            self.mask[name] = saved.to(self.mask[name].device)
        if changed:  # loaded after prepare made another mask (SNIP on shuffled batches, say)
            self.enforcer.set_mask(self.recipe.enforced_mask(self.mask))
        self.recipe.load_state_dict(state["recipe"])
        for extension in self.extensions:
            if extension.name not in state["extensions"]:
                raise AnymaskError(f"the saved state holds no '{extension.name}' state to resume from")
            extension.load_state_dict(state["extensions"][extension.name])
        self.enforcer.zero_weights()

    def _require_prepared(self, call: str) -> None:
        if self.model is None:
            raise AnymaskError(f"SparseTraining.{call}() before prepare(model, optimizer)")


def _train_added_parameters(optimizer: torch.optim.Optimizer, model: nn.Module, had: set[int]) -> None:
    """Parameters a recipe part added into the model (permanent branches) join the optimizer's first
    group, which then lists its parameters in the model's order: as an optimizer made after the recipe
    was installed would (`anymask train` before it was built on this object), so checkpoints match."""
    listed = {id(p) for group in optimizer.param_groups for p in group["params"]}
    added = [p for p in model.parameters() if p.requires_grad and id(p) not in had and id(p) not in listed]
    if not added:
        return
    first = optimizer.param_groups[0]
    members = {id(p) for p in first["params"]} | {id(p) for p in added}
    in_model = [p for p in model.parameters() if id(p) in members]
    placed = {id(p) for p in in_model}
    first["params"] = in_model + [p for p in first["params"] if id(p) not in placed]


def drop_parameters(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> None:
    """Forget parameters of removed ghost parts: their state, their place in any group, and the ghost
    group itself."""
    gone = {id(p) for p in params}
    if not gone:
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in gone:
                optimizer.state.pop(p, None)
        group["params"] = [p for p in group["params"] if id(p) not in gone]
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"] or not g.get("ghost")]


def _config(settings: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """A RunConfig from the mask, recipe and DST settings (and seed, augment) on top of `base`, checked as
    `anymask train` checks them; any other name is a one-line error."""
    allowed = set(accepted_settings())
    for key in settings:
        section = section_of(key)  # unknown names: "did you mean ..."
        if key not in allowed:
            raise AnymaskError(
                f"SparseTraining does not take '{key}' (a [{section}] setting of `anymask train`): your loop "
                "owns the model, data and optimizer"
            )
    config = (base or RunConfig()).updated(settings) if settings or base is None else base
    _validate(config)
    return config


def _validate(config: RunConfig) -> None:
    import anymask.masks.catalog  # noqa: F401  (registers every mask method)

    mask = config.mask
    check_sparsity(mask.sparsity)
    method = "file" if mask.mask_file else mask.mask_method
    METHODS.get(method)
    if method == "dense" and mask.sparsity > 0:
        raise AnymaskError(
            f"sparsity {mask.sparsity:g} with mask_method 'dense' would train every weight; give mask_method "
            "(random, er, erk, magnitude, snip, grasp, synflow) or mask="
        )
    if mask.mask_file and not Path(mask.mask_file).is_file():
        raise AnymaskError(f"mask file not found: {mask.mask_file}")
    if mask.scope not in {"global", "layer"}:
        raise AnymaskError(f"unknown scope '{mask.scope}'; use 'global' or 'layer'")
    validate_extensions(config)


def _check_length(config: RunConfig, epochs: float | None, steps_per_epoch: int | None) -> None:
    timed = config.recipe.recipe != "default" or config.dst.dst != "none"
    if timed and (not epochs or not steps_per_epoch):
        raise AnymaskError(
            f"recipe '{config.recipe.recipe}' / dst '{config.dst.dst}' follow schedules over the run: "
            "pass epochs= and steps_per_epoch= (e.g. len(loader))"
        )
    if (epochs is not None and epochs <= 0) or (steps_per_epoch is not None and steps_per_epoch < 1):
        raise AnymaskError(f"epochs and steps_per_epoch must be positive, got {epochs} and {steps_per_epoch}")


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _is_channels_last(model: nn.Module) -> bool:
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    return (
        weight is not None
        and weight.is_contiguous(memory_format=torch.channels_last)
        and not (weight.is_contiguous())
    )
