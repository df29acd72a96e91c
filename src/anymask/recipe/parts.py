"""Imports every recipe part so that each registers itself in RECIPE_PARTS."""
