"""Imports every recipe part so that each registers itself in RECIPE_PARTS."""

from anymask.recipe import (
    distill,
    fold,
    ghost_neurons,
    ghost_skips,
    ghost_weights,
    gradinit,
    label_smoothing,
    official,
    sparse_init,
)

__all__ = [
    "distill",
    "fold",
    "ghost_neurons",
    "ghost_skips",
    "ghost_weights",
    "gradinit",
    "label_smoothing",
    "official",
    "sparse_init",
]
