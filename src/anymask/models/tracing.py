"""Ghost-skip sites of any model, found by running it once: each Conv2d whose output feeds a BatchNorm2d.

Registration order says nothing certain about data flow in a model someone else wrote; a forward pass
does. Hooks on every leaf module record what each one returned and received, and a (conv, BN) pair
is a site when the BN's input is the very tensor the conv returned (so nothing sits between them).
Hooks work on any model torch can run, where symbolic tracing (torch.fx) stops at data-dependent
Python in the forward, as in many Hugging Face models.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anymask.models.calling import ModelCall

SHORTCUT_NAMES = frozenset({"shortcut", "downsample"})
"""Submodule names of projection shortcuts, whose convs are never sites (as in masks.prunable)."""

TRACE_BATCH = 2
"""Images in the probe batch: BatchNorm in train mode would need more than one; eval mode is used anyway."""


def traced_ghost_skip_sites(
    model: nn.Module, input_shape: tuple[int, ...], call: ModelCall | None = None
) -> list[tuple[str, str]]:
    """(conv, BN) module paths where a BatchNorm2d takes a Conv2d's output directly, in execution order.

    The first conv to run (the stem) and convs under a `shortcut` or `downsample` submodule are left
    out. The model runs once in eval mode without gradients on a probe batch of `input_shape` images;
    its modes, weights, buffers and the global random state are left as they were.
    """
    pairs = traced_conv_norm_pairs(model, input_shape, call)
    stem = pairs.stem
    sites = [(conv, bn) for conv, bn in pairs if conv != stem and not SHORTCUT_NAMES & set(conv.split("."))]
    return list(dict.fromkeys(sites))  # a module run twice is one site


class ConvNormPairs(list):
    """(conv, BN) path pairs, in the order they ran; `stem` is the first conv that ran (or None)."""

    stem: str | None = None


def traced_conv_norm_pairs(
    model: nn.Module, input_shape: tuple[int, ...], call: ModelCall | None = None
) -> ConvNormPairs:
    """Every (conv, BN) pair of module paths where a BatchNorm2d takes a Conv2d's output directly (the
    stem and shortcuts included), found by running the model once as `traced_ghost_skip_sites` does."""
    names = {module: name for name, module in reversed(list(model.named_modules()))}  # first name wins
    convs: list[tuple[str, torch.Tensor]] = []  # (name, output), in the order they ran
    pairs = ConvNormPairs()

    def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if isinstance(module, nn.Conv2d) and isinstance(output, torch.Tensor):
            convs.append((names[module], output))  # keeping the output alive keeps its identity unique
        elif isinstance(module, nn.BatchNorm2d) and args and isinstance(args[0], torch.Tensor):
            producer = next((name for name, out in reversed(convs) if out is args[0]), None)
            if producer is not None and (producer, names[module]) not in pairs:
                pairs.append((producer, names[module]))

    watched = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    handles = [m.register_forward_hook(record) for m in watched]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            (call or ModelCall.of(model))(model, probe_batch(model, input_shape))
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    pairs.stem = convs[0][0] if convs else None
    return pairs


def probe_batch(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Fixed pseudo-random images on the model's device and in its floating dtype (values do not matter)."""
    reference = next((t for t in model.parameters() if t.is_floating_point()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    generator = torch.Generator().manual_seed(0)  # its own generator: the global random state is untouched
    return torch.randn((TRACE_BATCH, *input_shape), generator=generator).to(device, dtype)
