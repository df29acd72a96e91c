"""Statistics of the report: mean and standard deviation over seeds, and paired gains with their 95%
Student-t confidence interval. Pure functions of numbers; nothing here knows about runs or tables."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Gain:
    """A recipe's accuracy minus the baseline's: paired over common seeds, else a difference of means."""

    mean: float
    seeds: int  # differences the mean is paired over; 0 for an unpaired difference of means
    half_width: float | None = None  # of the 95% confidence interval; None below two paired differences

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.half_width is None:
            return None
        return self.mean - self.half_width, self.mean + self.half_width


def paired_gain(differences: Sequence[float]) -> Gain:
    """Mean of paired differences with a 95% Student-t confidence interval over them.

    The interval is mean ± t(0.975, n - 1) * sd / sqrt(n): it treats the pairs (same mask, same seed) as
    independent draws, so a pooled interval over masks says how the recipe does on masks like these.
    """
    n = len(differences)
    if n == 0:
        raise ValueError("no paired differences")
    mean = statistics.fmean(differences)
    if n < 2:
        return Gain(mean, n)
    from scipy.stats import t  # imported here: scipy is slow to import and only reports need it

    return Gain(mean, n, float(t.ppf(0.975, n - 1)) * statistics.stdev(differences) / math.sqrt(n))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None
