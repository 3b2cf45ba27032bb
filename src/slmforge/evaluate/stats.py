"""Statistics for eval summaries: bootstrap confidence intervals and paired comparisons.

Means get a 95% percentile-bootstrap interval (rows resampled with replacement). Two targets are
compared on the rows both answered: wins/ties/losses per row, the mean difference with its own
bootstrap interval, and a two-sided paired permutation test (random sign flips of the per-row
differences, as in approximate randomization tests for MT metrics). Every random draw comes from
a seeded generator, so a summary is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95
PERMUTATIONS = 10_000
TIE_TOLERANCE = 1e-9


@dataclass
class Estimate:
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_mean(values: Sequence[float], resamples: int = 1000, seed: int = 0) -> Estimate:
    """Mean and 95% percentile-bootstrap interval; one value gives a zero-width interval."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Estimate(None, None, None, 0)
    mean = float(data.mean())
    if data.size == 1 or np.all(data == data[0]):
        return Estimate(mean, mean, mean, int(data.size))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(mean, float(low), float(high), int(data.size))


def paired_permutation_p(diffs: Sequence[float], permutations: int = PERMUTATIONS, seed: int = 0):
    """Two-sided p-value that the mean paired difference is zero (sign-flip permutation)."""
    data = np.asarray(diffs, dtype=float)
    if data.size == 0 or np.all(np.abs(data) <= TIE_TOLERANCE):
        return 1.0
    observed = abs(data.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(permutations, data.size))
    flipped = np.abs((signs * data).mean(axis=1))
    # +1 on both sides: the observed assignment is one of the permutations (never p = 0)
    return float((np.sum(flipped >= observed - 1e-12) + 1) / (permutations + 1))


@dataclass
class Comparison:
    """`a` against `b` on one metric over the rows both have a score for."""

    a: str
    b: str
    metric: str
    n: int
    wins: int  # rows where a is better
    ties: int
    losses: int
    diff: Estimate  # mean of (a - b)
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "diff": self.diff.to_dict()}


def compare(
    a: str,
    b: str,
    metric: str,
    scores_a: Sequence[float | None],
    scores_b: Sequence[float | None],
    higher_is_better: bool | None,
    resamples: int = 1000,
    seed: int = 0,
) -> Comparison:
    paired = [
        (x, y) for x, y in zip(scores_a, scores_b, strict=True) if x is not None and y is not None
    ]
    diffs = [x - y for x, y in paired]
    sign = -1.0 if higher_is_better is False else 1.0
    better = sum(1 for d in diffs if sign * d > TIE_TOLERANCE)
    worse = sum(1 for d in diffs if sign * d < -TIE_TOLERANCE)
    return Comparison(
        a=a,
        b=b,
        metric=metric,
        n=len(diffs),
        wins=better,
        ties=len(diffs) - better - worse,
        losses=worse,
        diff=bootstrap_mean(diffs, resamples, seed),
        p_value=paired_permutation_p(diffs, seed=seed),
    )


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 90, 95)) -> dict[str, Any]:
    """min, mean, the given percentiles and max (None for no values)."""
    data = np.asarray([v for v in values if v is not None], dtype=float)
    if data.size == 0:
        return {"n": 0, "mean": None, "min": None, "max": None, **{f"p{p:g}": None for p in points}}
    stats: dict[str, Any] = {"n": int(data.size), "mean": float(data.mean())}
    stats["min"] = float(data.min())
    stats.update({f"p{p:g}": float(np.percentile(data, p)) for p in points})
    stats["max"] = float(data.max())
    return stats
