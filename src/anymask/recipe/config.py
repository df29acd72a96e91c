"""Settings for the sparse-training recipe (the `[recipe]` section of a run config).

Each part's settings carry its prefix (ghost_, gsn_, gsc_, gradinit_, ls_) so flat keys stay unique
across sections. docs/recipe.md explains every default.
"""

from __future__ import annotations

from dataclasses import dataclass

from anymask.bounds import bounded


@dataclass
class RecipeConfig:
    recipe: str = "default"
    """'default' (dense protocol), 'tost' (gsn, gsc, lrsi, ls), 'tost-official' (the official code's variant:
    smooth, dense-skips, lrsi, ls; the trained model is not the plain architecture), 'kd-fold' (fold, kd:
    train a fixed mask better at exactly its weights; needs teacher) or a comma list such as 'gsn,ls'."""
    ghost_epochs: float | None = bounded(None, low=0, high=100_000)
    """Length of the ghost phase in epochs, after which gsn and gsc are removed (default: 25% of the run)."""
    ghost_schedule: str = "cosine"
    """How ghost parts fade over the ghost phase: 'cosine', 'linear' or 'step' (full strength, then off)."""
    gsn_soft: str = "swish"
    """Smooth activation the ghost neurons start from (and that `smooth` keeps for good): swish (SiLU), mish,
    gelu, softplus or elu."""
    gsc_mode: str = "learned"
    """Ghost skips: 'learned' (1x1 conv + BN per site, starting as a no-op) or 'free' (identity/pooling/
    padding, no parameters). docs/recipe.md: why learned is the default."""
    gradinit_lr: float = bounded(1e-2, low=0, high=1000, low_open=True)
    """GradInit: Adam learning rate of the per-tensor scales."""
    gradinit_iterations: int = bounded(180, low=0, high=1_000_000)
    """GradInit: iterations (each uses two batches, plus a third for the look-ahead loss)."""
    gradinit_eta: float = bounded(0.1, low=0, high=1000, low_open=True)
    """GradInit: length of the simulated first SGD step."""
    gradinit_gamma: float = bounded(1.0, low=0, high=1e6, low_open=True)
    """GradInit: gradient-norm bound; above it a step shrinks the gradient norm instead."""
    gradinit_normalize_grad: bool = True
    """GradInit: normalise the gradient of the simulated step to unit norm."""
    gradinit_min_scale: float = bounded(0.01, low=0, high=100)
    """GradInit: lower bound of each weight tensor's scale (bias scales may reach 0)."""
    gradinit_grad_clip: float = bounded(1.0, low=0, high=1e6)
    """GradInit: clip each scale's gradient to [-clip, clip]; 0 turns clipping off."""
    gradinit_batch_size: int = bounded(128, low=1, high=1_000_000)
    """GradInit: images per half batch (the loss uses two such batches)."""
    ls_alpha: float = bounded(0.1, low=0, high=1, high_open=True)
    """Label smoothing: probability mass moved from the true class, spread evenly over the others."""
    ls_schedule: str = "constant"
    """Smoothing over time: 'constant', 'ghost' (only in the ghost phase) or 'linear' (to 0 at the end)."""
    gw_lambda: float = bounded(0.05, low=0, high=1e6)
    """Ghost weights: the squeeze's strength at the end of the ghost phase (it rises on ghost_schedule)."""
    gw_form: str = "fade"
    """Ghost weights: 'fade' scales the weights outside the mask by the ghost schedule's factor, to exactly 0
    at the cut; 'relative' squeezes each unit's share of its weight norm outside the mask (scale-free);
    'absolute' the plain L2 norm outside the mask (DLTH). gw_lambda sets the two squeezes' strength."""
    fold_at: str = "end"
    """Folding branches: fold only after the last epoch ('end', as RepVGG: the branches train all run) or at
    the end of the ghost phase ('ghost', 3.65 points behind 'end' in the validation search)."""
    fold_branches: str = "kxk,1x1"
    """Folding branches per masked conv: 'kxk' (a second conv under the same mask), '1x1' (on the centre
    taps the mask keeps), or both, comma-separated."""
    teacher: str | None = None
    """Distillation: a finished run folder (or its model.safetensors) of a network trained on the same
    data, whose softened outputs the student learns from."""
    kd_temperature: float = bounded(4.0, low=0, high=1000, low_open=True)
    """Distillation: softmax temperature of teacher and student (the KL term is scaled by its square)."""
    kd_weight: float = bounded(0.9, low=0, high=1)
    """Distillation: share of the loss from the teacher; the rest from the labels."""

    def inert_settings(self) -> set[str]:
        """Settings of the parts this recipe leaves out: they cannot change the run's numbers, so they stay
        out of the run's hash (a default run keeps its folder when a ghost default changes)."""
        from anymask.recipe.base import parse_recipe

        parts = parse_recipe(self.recipe)
        used = {prefix for part in parts for prefix in PART_SETTINGS.get(part, ())}
        if "ls" in parts and self.ls_schedule == "ghost":
            used.add("ghost_")
        unused = tuple({prefix for prefixes in PART_SETTINGS.values() for prefix in prefixes} - used)
        return {name for name in self.__dataclass_fields__ if name.startswith(unused)}


# The setting prefixes each recipe part reads (ghost_ is the shared ghost-phase length and shape).
PART_SETTINGS: dict[str, tuple[str, ...]] = {
    "gsn": ("gsn_", "ghost_"),
    "gsc": ("gsc_", "ghost_"),
    "lrsi": ("gradinit_",),
    "ls": ("ls_",),
    "smooth": ("gsn_",),  # the official variant's permanent activation is gsn_soft
    "dense-skips": (),
    "gw": ("gw_", "ghost_"),
    "fold": ("fold_", "ghost_"),
    "kd": ("kd_", "teacher"),
    "sparse-init": (),
}
