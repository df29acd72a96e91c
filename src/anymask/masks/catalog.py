"""Imports every mask-method module so that each registers itself in METHODS."""

import anymask.masks.methods  # noqa: F401
