"""`Step`: a training position written as iterations ("500it") or epochs ("2ep"), as open_lth writes it.

Epoch counts depend on the dataset and batch size, so a step stays symbolic until `iterations` is given
the number of optimizer steps per epoch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from anymask.errors import AnymaskError

_PATTERN = re.compile(r"(\d+)\s*(it|ep)")


@dataclass(frozen=True)
class Step:
    count: int
    unit: Literal["it", "ep"]

    @classmethod
    def parse(cls, text: str) -> Step:
        """'500it' -> 500 iterations, '2ep' -> 2 epochs; anything else is a one-line AnymaskError."""
        match = _PATTERN.fullmatch(str(text).strip().lower())
        if match is None:
            raise AnymaskError(
                f"cannot read step '{text}': write a whole number followed by 'it' (iterations) or "
                "'ep' (epochs), e.g. '500it' or '2ep'"
            )
        unit: Literal["it", "ep"] = "it" if match.group(2) == "it" else "ep"
        return cls(int(match.group(1)), unit)

    def iterations(self, steps_per_epoch: int | None = None) -> int:
        """The step as an iteration count; epochs need `steps_per_epoch`."""
        if self.unit == "it":
            return self.count
        if steps_per_epoch is None or steps_per_epoch <= 0:
            raise AnymaskError(
                f"step '{self}' is in epochs but the number of steps per epoch is unknown; "
                "give the step in iterations instead (e.g. '500it')"
            )
        return self.count * steps_per_epoch

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"
