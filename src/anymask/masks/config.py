"""Settings for building a mask (the `[mask]` section of a run config)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from anymask.bounds import bounded


@dataclass
class MaskConfig:
    mask_method: str = "dense"
    """How the mask is made: dense, random, er, erk, magnitude, snip, grasp, synflow, lth, file."""
    sparsity: float = bounded(0.0, low=0, high=1, high_open=True)
    """Fraction of prunable weights removed, in [0, 1); 0.95 keeps 5%."""
    mask_file: str | None = None
    """A saved mask (torch.nn.utils.prune naming) or a checkpoint whose zeros define it; implies 'file'."""
    scope: str = "global"
    """'global': one threshold over all prunable weights; 'layer': the same density in every layer.
    Random, ER and ERK set per-layer densities themselves: 'global' makes their total exact, 'layer'
    rounds each layer on its own."""
    prune_first_conv: bool = True
    """Prune the first convolution (Synaptic-Flow does; some papers keep it dense)."""
    prune_classifier: bool = True
    """Prune the final Linear layer."""
    prune_shortcuts: bool = True
    """Prune 1x1 projection shortcuts of residual blocks."""
    prune_samples_per_class: int = bounded(10, low=1, high=100_000)
    """Images per class fed to data-dependent scorers (SNIP, GraSP): 10 x classes as Synaptic-Flow."""
    prune_balanced: bool = True
    """Draw the prune images class-balanced rather than as the first images of a shuffle."""
    prune_bn_mode: str = "auto"
    """BatchNorm mode while SNIP and GraSP score: 'eval' (running statistics, which at initialisation
    normalise nothing), 'train' (each prune batch's statistics), or 'auto': each method's reference,
    GraSP 'train' (its authors' code scores a freshly built network, in train mode) and SNIP 'eval' (as
    Synaptic-Flow scores). Saved and hashed as the mode it resolves to."""
    synflow_iterations: int = bounded(100, low=1, high=100_000)
    """SynFlow pruning iterations (exponential schedule d^((k+1)/n))."""
    float64: bool = False
    """Score SynFlow in float64 (deep networks underflow in float32)."""
    lth_rate: float = bounded(0.2, low=0, high=1, low_open=True, high_open=True)
    """Lottery ticket: fraction of the remaining weights pruned per round."""
    lth_rewind: str = "0it"
    """Lottery ticket: rewind point, '0it' (initial weights), '500it' or '2ep'."""
    lth_epochs: int | None = bounded(None, low=1, high=100_000)
    """Lottery ticket: training epochs per pruning round (default: the run's epochs)."""
    strict: bool = False
    """Fail, instead of warn, when a layer is left with no weights (layer collapse) or the mask disconnects
    the network (a class unreachable from the input, or most kept weights on no input-output path)."""
    mask_seed: int | None = bounded(None, low=0, high=2**32 - 1)
    """Seed for random masks and prune batches (default: the run's seed)."""

    def bn_mode(self) -> str:
        """`prune_bn_mode` with 'auto' resolved to the method's reference mode ('eval' or 'train')."""
        if self.prune_bn_mode != "auto":
            return self.prune_bn_mode
        method = "file" if self.mask_file else self.mask_method
        return REFERENCE_BN_MODES.get(method, "eval")

    def resolved(self) -> MaskConfig:
        """A copy with automatic values made concrete: what a run saves, hashes and reports."""
        return dataclasses.replace(self, prune_bn_mode=self.bn_mode())

    def inert_settings(self) -> set[str]:
        """Settings only other mask methods read: left out of the run's hash."""
        method = "file" if self.mask_file else self.mask_method
        owned = {name for names in METHOD_SETTINGS.values() for name in names}
        return owned - set(METHOD_SETTINGS.get(method, ()))


BN_MODES = ("auto", "eval", "train")
"""Values of `prune_bn_mode`."""

REFERENCE_BN_MODES: dict[str, str] = {"grasp": "train", "snip": "eval"}
"""The BatchNorm mode each data-dependent scorer's reference scores in (what 'auto' resolves to). GraSP's
authors' code scores in train mode; scored in eval mode on ResNet-20 its masks keep about half the
channels alive and train ~11 points worse (docs/masks.md). SNIP follows Synaptic-Flow's eval mode."""

# Settings read by one or a few mask methods only.
METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    "snip": ("prune_samples_per_class", "prune_balanced", "prune_bn_mode"),
    "grasp": ("prune_samples_per_class", "prune_balanced", "prune_bn_mode"),
    "synflow": ("synflow_iterations", "float64"),
    "lth": ("lth_rate", "lth_rewind", "lth_epochs"),
}
