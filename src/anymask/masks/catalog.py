"""Imports every mask-method module so that each registers itself in METHODS."""

import anymask.masks.file
import anymask.masks.lth
import anymask.masks.methods
import anymask.masks.random_graphs
import anymask.masks.scoring  # noqa: F401
