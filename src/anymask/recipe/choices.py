"""Every recipe setting that takes one of a few names, checked whether or not its part is on.

Each part checks its own settings when it is built, which a part that is off never is: so a typo in
`gw_form` under `--recipe tost` went through unseen (the setting is inert, and out of the run's hash,
but the user meant something by it). `check_recipe_choices` runs in `train.run.validate` for every run.
"""

from __future__ import annotations

from collections.abc import Iterable

from anymask.recipe.base import check_choice
from anymask.recipe.config import RecipeConfig
from anymask.recipe.fold import FOLD_AT, parse_branches
from anymask.recipe.ghost_neurons import SOFT
from anymask.recipe.ghost_skips import MODES
from anymask.recipe.ghost_weights import FORMS
from anymask.recipe.label_smoothing import SCHEDULES
from anymask.recipe.official import SMOOTH_MODULES
from anymask.recipe.schedules import SHAPES

CHOICES: dict[str, Iterable[str]] = {
    "ghost_schedule": SHAPES,
    "gsn_soft": dict.fromkeys([*SOFT, *SMOOTH_MODULES]),  # gsn's and smooth's names, in order, once each
    "gsc_mode": MODES,
    "ls_schedule": SCHEDULES,
    "gw_form": FORMS,
    "fold_at": FOLD_AT,
}


def check_recipe_choices(config: RecipeConfig) -> None:
    """One line for the first named setting that is not one of its names (and for a bad fold_branches)."""
    for key, choices in CHOICES.items():
        check_choice(key, getattr(config, key), choices)
    parse_branches(config.fold_branches)
