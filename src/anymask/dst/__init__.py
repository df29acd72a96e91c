"""Dynamic sparse training: a mask that evolves at a fixed budget (SET, RigL), from any starting mask.

`DynamicSparsity` is the updater for your own training loop; inside `anymask train` the package's trainer
extension (registered here, on import) runs it. docs/dst.md explains the update and its settings.
"""

from anymask.dst import extension  # noqa: F401  (registers the "dst" trainer extension)
from anymask.dst.config import DstConfig
from anymask.dst.growth import GROWTH
from anymask.dst.schedule import UpdateSchedule
from anymask.dst.updater import DynamicSparsity, top_positions

__all__ = ["GROWTH", "DstConfig", "DynamicSparsity", "UpdateSchedule", "top_positions"]
