"""Settings for dynamic sparse training (the `[dst]` section of a run config)."""

from __future__ import annotations

from dataclasses import dataclass

from anymask.bounds import bounded


@dataclass
class DstConfig:
    dst: str = "none"
    """Dynamic sparse training: 'none' (the mask stays as it starts), 'set' (drop the smallest weights,
    regrow at random) or 'rigl' (regrow where the dense gradient is largest). docs/dst.md."""
    dst_interval: int = bounded(100, low=1, high=10_000_000)
    """DST: optimizer steps between mask updates."""
    dst_fraction: float = bounded(0.3, low=0, high=1, low_open=True)
    """DST: fraction of each layer's active weights replaced at the start, decayed to 0 by a cosine."""
    dst_end: float = bounded(0.75, low=0, high=1, low_open=True)
    """DST: fraction of training after which the mask is frozen."""

    def inert_settings(self) -> set[str]:
        """A static run reads none of the dst_ settings: they stay out of its hash."""
        if self.dst == "none":
            return {name for name in self.__dataclass_fields__ if name.startswith("dst_")}
        return set()
