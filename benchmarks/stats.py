"""Percentiles of latency samples (ms), by the nearest-rank method: a p99 is a sample that happened."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of already sorted samples; NaN if none."""
    if not sorted_ms:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_ms)))
    return sorted_ms[rank - 1]


def summary(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99, max and count of latency samples in ms."""
    ordered = sorted(samples_ms)
    return {
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else math.nan,
        "count": float(len(ordered)),
    }
