"""The ToST sparse-training recipe: ghost soft neurons, ghost skips, rescaled init, label smoothing."""

from anymask.recipe.base import PRESETS, RECIPE_PARTS, Recipe, RecipeContext, RecipePart, parse_recipe
from anymask.recipe.config import RecipeConfig

__all__ = ["PRESETS", "RECIPE_PARTS", "Recipe", "RecipeConfig", "RecipeContext", "RecipePart", "parse_recipe"]
