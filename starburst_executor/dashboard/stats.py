"""The dashboard's figures, computed from task runs: duration histogram and throughput series.

Pure functions over plain numbers, so they are tested without a store or a browser. Bin widths
and time steps are "nice" numbers (1, 2 or 5 times a power of ten; for time also 15 s, 30 s,
minutes), so the charts' axes read naturally.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Bin", "Series", "histogram", "nice_step", "throughput", "time_step"]

# Steps a throughput series may use (seconds): round numbers on a clock.
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200)


@dataclass(frozen=True)
class Bin:
    """One histogram bar: ``count`` values in ``[lo, hi)`` (the last bin also holds ``hi``)."""

    lo: float
    hi: float
    count: int


@dataclass(frozen=True)
class Series:
    """Tasks finished per second, one point per ``step`` seconds from ``start``.

    ``rates[i]`` is the mean rate over ``[start + i * step, start + (i + 1) * step)``.
    """

    start: float
    step: float
    rates: tuple[float, ...]


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``raw`` (> 0)."""
    if raw <= 0 or not math.isfinite(raw):
        raise ValueError(f"a step must be a positive number, not {raw!r}")
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0, 10.0):
        step = factor * power
        # A relative tolerance: 0.3 / 0.1 is 2.9999999999999996 in floating point.
        if step >= raw * (1 - 1e-9):
            return step
    return 10.0 * power  # pragma: no cover - the loop always returns


def histogram(values: Sequence[float], max_bins: int = 20) -> list[Bin]:
    """Bins of equal, nice width from 0 covering every value (durations are never negative).

    Args:
        values: the durations (seconds).
        max_bins: at most this many bins; fewer when there are few values (about the square
            root of their count, so a handful of tasks is not spread over empty bars).

    Returns:
        The bins in order, empty ones included; no bins for no values.
    """
    if not values:
        return []
    if max_bins < 1:
        raise ValueError(f"max_bins must be at least 1, not {max_bins}")
    top = max(values)
    wanted = max(1, min(max_bins, math.ceil(math.sqrt(len(values)))))
    width = nice_step(top / wanted) if top > 0 else 1.0
    # width >= top / wanted, so at most ``wanted`` (<= max_bins) bins cover every value.
    nbins = max(1, math.ceil(top / width))
    counts = [0] * nbins
    for v in values:
        counts[min(nbins - 1, int(max(0.0, v) // width))] += 1
    return [Bin(i * width, (i + 1) * width, c) for i, c in enumerate(counts)]


def time_step(span: float, max_points: int = 60) -> float:
    """The smallest clock-round step that cuts ``span`` seconds into at most ``max_points``."""
    for step in _TIME_STEPS:
        if span / step <= max_points:
            return float(step)
    return float(math.ceil(span / max_points / 86400) * 86400)  # days


def throughput(ends: Sequence[float], start: float, now: float, max_points: int = 60) -> Series:
    """Tasks finished per second over ``[start, now]``, from the tasks' end times.

    Args:
        ends: when each finished task ended (POSIX seconds); those outside the window are
            counted in the nearest point.
        start: the beginning of the series (the session's creation).
        now: its end (the store's clock now); the last point covers a partial step, and its
            rate is over the part that has passed, so a live chart does not dip at its end.
        max_points: at most this many points.
    """
    span = max(now - start, 1e-9)
    step = time_step(span, max_points)
    npoints = max(1, math.ceil(span / step))
    counts = [0] * npoints
    for end in ends:
        i = int((end - start) // step)
        counts[min(npoints - 1, max(0, i))] += 1
    rates = [c / step for c in counts]
    last = span - (npoints - 1) * step  # the part of the last step that has passed
    rates[-1] = counts[-1] / max(last, min(step, 1.0))
    return Series(start, step, tuple(rates))
