"""Folding ghost branches (fold): extra conv + BN branches inside the mask, folded into the plain model.

Parallel linear branches train beside a convolution and are merged into it afterwards, as in ACNet
(Ding et al., ICCV 2019) and RepVGG (Ding et al., CVPR 2021): in eval mode a BatchNorm is an affine
map, so conv+BN branches that read the same input sum to one convolution plus a bias. Each masked
Conv2d that feeds a BatchNorm2d directly (a "site") gets, per `fold_branches`:

- `kxk`: a second convolution of the same shape under the same mask, with its own BN;
- `1x1`: a 1x1 convolution on the centre taps the k x k mask keeps, with its own BN (odd square kernels
  with "same" padding only, where the centre tap lines up with the 1x1's input).

Every branch weight outside the mask is zero and its gradient is masked, so the folded kernel has
nonzero weights only where the mask keeps them. The branches live outside the model (forward hooks add
them to the site's BN output; no parameter of the model is renamed) and are trained in their own
optimizer group. At the fold (end of the ghost phase, or after the last epoch with `fold_at = "end"`,
as RepVGG keeps its branches for the whole run), the main conv gets the summed kernel and its BN the
summed shift, with running statistics measured on a fixed probe batch of training images, so that
training mode after an early fold normalises as before. In eval mode the model computes the same
function before and after the fold (within float rounding; the largest logit change on the probe batch
is recorded as `fold/max_logit_change`), and afterwards it is the plain architecture.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from anymask.errors import AnymaskError
from anymask.recipe.base import RECIPE_PARTS, RecipeContext
from anymask.recipe.schedules import GhostPart

BRANCH_KINDS = ("kxk", "1x1")
FOLD_AT = ("ghost", "end")
PROBE_IMAGES = 128
BRANCH_SEED_OFFSET = (
    7919  # branch weights draw from their own generator: the run's random stream is untouched
)


@dataclass
class Branch:
    """One parallel conv + BN and the mask its conv weight lives under."""

    conv: nn.Conv2d
    norm: nn.BatchNorm2d
    mask: torch.Tensor  # float, the conv weight's shape
    module: nn.Sequential = field(init=False)

    def __post_init__(self) -> None:
        self.module = nn.Sequential(self.conv, self.norm)


@dataclass
class Site:
    conv_name: str
    conv: nn.Conv2d
    norm: nn.BatchNorm2d
    branches: list[Branch] = field(default_factory=list)


def parse_branches(spec: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in spec.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in BRANCH_KINDS]
    if unknown or not kinds:
        raise AnymaskError(
            f"fold_branches {spec!r}: use 'kxk', '1x1' or both ('kxk,1x1'); "
            f"unknown: {', '.join(unknown) or 'none given'}"
        )
    return kinds


def centre_fits(conv: nn.Conv2d) -> bool:
    """A 1x1 branch on the centre taps reads the same inputs as those taps (odd square kernel, 'same'
    padding with zeros)."""
    k = conv.kernel_size
    return (
        k[0] == k[1]
        and k[0] % 2 == 1
        and k[0] > 1
        and conv.padding_mode == "zeros"
        and conv.padding == (conv.dilation[0] * (k[0] // 2), conv.dilation[1] * (k[1] // 2))
    )


def affine(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as y = a * x + c, per channel."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    gamma = norm.weight if norm.affine else torch.ones_like(scale)
    beta = norm.bias if norm.affine else torch.zeros_like(scale)
    a = gamma * scale
    return a, beta - a * norm.running_mean


def _centre_kernel(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A 1x1 kernel placed at the centre of a `size` kernel of zeros."""
    return F.pad(weight, [size[1] // 2, size[1] // 2, size[0] // 2, size[0] // 2])


def new_branch(conv: nn.Conv2d, mask: torch.Tensor, kind: str, generator: torch.Generator) -> Branch:
    """A branch for `conv` under `mask` (bool, conv weight's shape): weights drawn as the conv's
    Kaiming (fan-out) init and zeroed outside the mask; BN starts at unit scale, as RepVGG's."""
    if kind == "kxk":
        branch_mask = mask
        kernel, padding = conv.kernel_size, conv.padding
    else:
        k = conv.kernel_size
        branch_mask = mask[:, :, k[0] // 2, k[1] // 2, None, None]
        kernel, padding = (1, 1), (0, 0)
    branch = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel,
        stride=conv.stride,
        padding=padding,
        dilation=conv.dilation if kind == "kxk" else 1,
        groups=conv.groups,
        bias=False,
        device=conv.weight.device,
    )
    fan_out = conv.out_channels * kernel[0] * kernel[1] // conv.groups
    with torch.no_grad():
        weight = torch.randn(branch.weight.shape, generator=generator) * (2.0 / fan_out) ** 0.5
        branch_mask = branch_mask.to(conv.weight.device, conv.weight.dtype)
        branch.weight.copy_(weight.to(branch.weight) * branch_mask)
    branch.weight.register_hook(lambda grad, m=branch_mask: grad * m)  # stays exactly zero outside the mask
    norm = nn.BatchNorm2d(conv.out_channels, device=conv.weight.device)
    return Branch(branch, norm, branch_mask)


@RECIPE_PARTS.register("fold")
class FoldingBranches(GhostPart):
    """Branches beside every masked conv that feeds a BN; folded exactly into it at the end of the phase."""

    name = "fold"

    def __init__(self, config: Any, total_epochs: float) -> None:
        super().__init__(config, total_epochs)
        self.kinds = parse_branches(config.fold_branches)
        if config.fold_at not in FOLD_AT:
            raise AnymaskError(f"unknown fold_at '{config.fold_at}'; choose one of: {', '.join(FOLD_AT)}")
        if config.fold_at == "end":
            self.end = float(total_epochs)
        self.sites: list[Site] = []
        self.probe: torch.Tensor | None = None
        self.model: nn.Module | None = None
        self.call: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._handles: list[RemovableHandle] = []
        self._inputs: dict[int, torch.Tensor] = {}
        self.folded: dict[str, float] = {}

    def update(self, epoch: float) -> None:
        pass  # branches do not fade: the fold is exact, so nothing needs easing out

    def _site_pairs(self, context: RecipeContext) -> list[tuple[str, str]]:
        from anymask.models.calling import ModelCall
        from anymask.models.tracing import traced_conv_norm_pairs

        masked = {name.rsplit(".", 1)[0] for name in (context.mask or {}) if name.endswith(".weight")}
        shape = getattr(context.data, "input_shape", None)
        if shape is None:
            return []
        pairs = traced_conv_norm_pairs(context.model, shape, ModelCall.of(context.model, context.output_fn))
        return [(conv, norm) for conv, norm in pairs if conv in masked]

    def check(self, context: RecipeContext) -> str | None:
        if context.mask is None:
            return None  # the run-level check before the mask exists: sites are looked for in prepare
        if self._site_pairs(context):
            return None
        return "masked Conv2d layers that feed a BatchNorm2d directly (the branches fold into that pair)"

    def prepare(self, context: RecipeContext) -> None:
        from anymask.models.calling import ModelCall

        model, generator = (
            context.model,
            torch.Generator().manual_seed(context.config.train.seed + BRANCH_SEED_OFFSET),
        )
        memory_format = torch.channels_last if context.channels_last else torch.preserve_format
        for conv_name, norm_name in self._site_pairs(context):
            conv, norm = model.get_submodule(conv_name), model.get_submodule(norm_name)
            if not norm.track_running_stats:
                continue  # no eval-mode affine map to fold into
            site = Site(conv_name, conv, norm)
            mask = context.mask[f"{conv_name}.weight"]
            for kind in self.kinds:
                if kind == "1x1" and not centre_fits(conv):
                    continue
                branch = new_branch(conv, mask, kind, generator)
                branch.module.to(memory_format=memory_format)
                site.branches.append(branch)
            if site.branches:
                self.sites.append(site)
        if not self.sites:
            raise AnymaskError(f"fold needs {self.check(context)}; drop fold from --recipe")
        for index, site in enumerate(self.sites):
            self._handles.append(site.conv.register_forward_pre_hook(functools.partial(self._store, index)))
            self._handles.append(site.norm.register_forward_hook(functools.partial(self._add, index)))
        self.model, self.call = model, ModelCall.of(model, context.output_fn)
        self.probe = probe_images(context)

    def bind(self, optimizer: torch.optim.Optimizer, enforcer: Any) -> None:
        self.optimizer = optimizer

    def _store(self, index: int, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._inputs[index] = args[0]

    def _add(
        self, index: int, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        x = self._inputs.pop(index)
        total = output
        for branch in self.sites[index].branches:
            branch.norm.train(module.training)  # outside the model: model.train()/eval() cannot reach it
            total = total + branch.norm(branch.conv(x)).to(output.dtype)
        return total

    def parameters(self) -> list[nn.Parameter]:
        return [p for site in self.sites for b in site.branches for p in b.module.parameters()]

    def modules(self) -> list[nn.Module]:
        return [b.module for site in self.sites for b in site.branches]

    @torch.no_grad()
    def remove(self) -> None:
        """The fold (idempotent): each site's branches merged into its conv and BN, hooks taken away."""
        if not self.sites:
            self._detach()
            return
        before, inputs = self._probe_run(capture=True)
        for index, site in enumerate(self.sites):
            fold_site(site, inputs[index])
            self._forget_state(site)
        self._detach()
        after, _ = self._probe_run(capture=False)
        self.folded = {
            "max_logit_change": float((after - before).abs().max()),
            "sites": float(len(self.sites)),
        }
        self.sites = []

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._inputs = [], {}
        self.progress = 1.0

    def _probe_run(self, capture: bool) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Eval-mode logits on the probe images, and each site's conv input when `capture`."""
        assert self.model is not None and self.probe is not None
        captured: dict[int, torch.Tensor] = {}
        hooks = (
            [
                site.conv.register_forward_pre_hook(lambda m, a, i=i: captured.__setitem__(i, a[0]))
                for i, site in enumerate(self.sites)
            ]
            if capture
            else []
        )
        modes = {m: m.training for m in self.model.modules()}
        try:
            self.model.eval()
            logits = self.call(self.model, self.probe).float()
        finally:
            for hook in hooks:
                hook.remove()
            for module, mode in modes.items():
                module.training = mode
        return logits, captured

    def _forget_state(self, site: Site) -> None:
        """Momentum of the folded conv and BN belonged to the old parametrisation: start it afresh."""
        if self.optimizer is None:
            return
        for parameter in (site.conv.weight, site.norm.weight, site.norm.bias):
            if parameter is not None:
                self.optimizer.state.pop(parameter, None)

    def metrics(self) -> dict[str, float]:
        return (
            dict(self.folded)
            if self.folded
            else {"branches": float(sum(len(s.branches) for s in self.sites))}
        )

    def summary(self) -> dict[str, Any]:
        return {f"fold_{key}": value for key, value in self.folded.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "branches": [[b.module.state_dict() for b in site.branches] for site in self.sites],
            "folded": self.folded,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.folded = dict(state.get("folded", {}))
        for site, saved in zip(self.sites, state.get("branches", []), strict=False):
            for branch, branch_state in zip(site.branches, saved, strict=True):
                branch.module.load_state_dict(branch_state)


def fold_site(site: Site, conv_input: torch.Tensor) -> None:
    """Merge `site.branches` into its conv and BN so that eval mode computes the same function.

    With each branch's BN as y = a_i * z_i + c_i: the conv gets K = sum a_i K_i, and the BN is set to
    y = z + sum c_i for z = conv(x; K), written with running statistics (mean m, variance v) of z on the
    probe batch: weight sqrt(v + eps), bias sum c_i + m. Eval mode is then exact whatever m and v are;
    measuring them keeps training-mode normalisation close to what it was.
    """
    conv, norm = site.conv, site.norm
    a0, c0 = affine(norm)
    kernel = conv.weight * a0.view(-1, 1, 1, 1)
    shift = c0.clone()
    for branch in site.branches:
        a, c = affine(branch.norm)
        weight = branch.conv.weight * a.view(-1, 1, 1, 1)
        if weight.shape[-2:] != kernel.shape[-2:]:
            weight = _centre_kernel(weight, conv.kernel_size)
        kernel = kernel + weight
        shift = shift + c
    z = F.conv2d(conv_input, kernel, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    mean, var = z.mean(dim=(0, 2, 3)), z.var(dim=(0, 2, 3), unbiased=False)
    conv.weight.copy_(kernel)
    norm.running_mean.copy_(mean)
    norm.running_var.copy_(var)
    if not norm.affine:
        raise AnymaskError(f"fold: {site.conv_name}'s BatchNorm has no affine parameters to fold into")
    norm.weight.copy_(torch.sqrt(var + norm.eps))
    norm.bias.copy_(shift + mean)


def probe_images(context: RecipeContext) -> torch.Tensor:
    """The first training images, normalised, not augmented: the same batch in every run and rank (from
    a user's iterable of batches: its first batch, cut to PROBE_IMAGES)."""
    from anymask.data.iterable import as_data, is_dataset

    data = as_data(context.data)
    if not is_dataset(data):
        return data.first()[0][:PROBE_IMAGES].to(context.device)
    count = min(PROBE_IMAGES, data.split_size("train"))
    images, _ = next(iter(data.train_batches_at(torch.arange(count), count)))
    if context.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images.to(context.device)
