"""Small statistics helpers shared by the benchmark sections (no numpy needed)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["least_squares", "summarize"]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """``{"median", "min", "max", "n"}`` of ``values`` (NaNs for an empty sample)."""
    if not values:
        nan = float("nan")
        return {"median": nan, "min": nan, "max": nan, "n": 0}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """The ``(slope, intercept)`` of the least-squares line through the points ``(xs, ys)``."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("least_squares needs at least two (x, y) points")
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("least_squares needs at least two distinct x values")
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    return slope, mean_y - slope * mean_x
