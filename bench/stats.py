"""Small statistics for noisy, shared machines: medians, spreads, paired ratios."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Median and spread (10th to 90th percentile) of one set of samples."""

    median: float
    p10: float
    p90: float
    n: int

    def text(self, unit: str = "ms", digits: int = 1) -> str:
        """``median (p10–p90) unit``."""
        return f"{self.median:.{digits}f} ({self.p10:.{digits}f}–{self.p90:.{digits}f}) {unit}"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> Summary:
    """Median, p10 and p90 of ``values``."""
    if not values:
        return Summary(math.nan, math.nan, math.nan, 0)
    return Summary(
        statistics.median(values), percentile(values, 10), percentile(values, 90), len(values)
    )


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> Summary:
    """Ratios of samples taken side by side (same round), summarized.

    Pairing cancels most of a shared machine's drift: both sides of a pair saw the same load.
    """
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True) if d > 0]
    return summarize(ratios)


def geomean(values: Sequence[float]) -> float:
    """Geometric mean (the mean of ratios that does not favour either side)."""
    positive = [v for v in values if v > 0]
    if not positive:
        return math.nan
    return math.exp(sum(math.log(v) for v in positive) / len(positive))
