"""The range of every numeric setting, declared beside its config dataclass field and checked in one place.

A field declares its range where it is defined::

    epochs: int = bounded(10, low=1, high=100_000)

and `check_setting` checks a value against it. `anymask.config.coerce` calls it for every value that comes
from a flag, a config file, a sweep grid or a saved config, and `train.run.validate` calls
`check_settings` on a whole config (Python users build dataclasses directly), so all of them share one
check and one message. A value outside its range, or not finite, is one line naming the setting, the
value and the range. The ranges are generous for real use (a few thousand epochs is real; 10^23 is not).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from anymask.errors import AnymaskError

METADATA_KEY = "anymask_bounds"


@dataclass(frozen=True)
class Bounds:
    """A closed, open or half-open interval; `low_open` / `high_open` exclude the end itself."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False  # (an int of any size compares exactly; converting 10**400 to float would fail)
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def interval(self) -> str:
        """The range as a reader writes it: [1, 100000], (0, 1)."""
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{left}{_number(self.low)}, {_number(self.high)}{right}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else f"{value:g}"


def bounded(
    default: Any = dataclasses.MISSING,
    *,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field whose numeric value (or each item of a list of numbers) must lie in the range."""
    metadata = {METADATA_KEY: Bounds(low, high, low_open, high_open)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def bounds_of(classes: Iterable[type]) -> dict[str, Bounds]:
    """Flat key -> declared range, for every bounded field of the dataclasses."""
    return {
        f.name: f.metadata[METADATA_KEY]
        for cls in classes
        for f in dataclasses.fields(cls)
        if METADATA_KEY in f.metadata
    }


def check_setting(key: str, value: Any, bounds: Bounds | None) -> None:
    """One line when `value` (a number, a list of numbers or None) lies outside `bounds`."""
    if bounds is None or value is None:
        return
    for item in value if isinstance(value, list | tuple) else [value]:
        if isinstance(item, bool) or not isinstance(item, int | float):
            continue  # a type mistake; coerce reports those
        if not bounds.contains(item):
            raise AnymaskError(
                f"invalid {key}: {item!r} is outside {bounds.interval()}; give a value in that range"
            )


def check_settings(values: dict[str, Any], bounds: dict[str, Bounds]) -> None:
    """Every bounded setting of a flat config checked."""
    for key, value in values.items():
        check_setting(key, value, bounds.get(key))
