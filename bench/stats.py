"""Intervals for Dice over test cases and seeds: bootstrap means and paired differences between methods.

A method's score is the mean Dice over every (seed, test case) pair it was scored on. Its 95%
interval comes from a two-level bootstrap: seeds are drawn with replacement, then cases within
each drawn seed, so both the run-to-run spread (different initial weights and data order) and the
case-to-case spread widen it. A paired difference (method A minus method B) is taken case by case
within a seed, on the cases both scored, and bootstrapped the same way: it is much tighter than
comparing two separate intervals, because hard cases are hard for both methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

# Per method: {seed: [Dice of case 0, case 1, ...]}, the cases in the same order for every method
# (None or NaN where a case has no value, e.g. a class absent from both label and prediction).
Scores = Mapping[int, Sequence[float | None]]


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n_seeds: int
    n_cases: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def as_json(self) -> dict:
        return {"mean": round(self.mean, 4), "ci95": [round(self.low, 4), round(self.high, 4)],
                "seeds": self.n_seeds, "cases": self.n_cases}


def _clean(scores: Scores) -> dict[int, np.ndarray]:
    out = {}
    for seed, values in scores.items():
        arr = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
        if np.isfinite(arr).any():
            out[int(seed)] = arr
    return out


def _bootstrap(per_seed: dict[int, np.ndarray], resamples: int, rng: np.random.Generator) -> Interval:
    seeds = sorted(per_seed)
    if not seeds:
        return Interval(math.nan, math.nan, math.nan, 0, 0)
    finite = {s: per_seed[s][np.isfinite(per_seed[s])] for s in seeds}
    point = float(np.mean(np.concatenate([finite[s] for s in seeds])))
    means = np.empty(resamples)
    for r in range(resamples):
        drawn = rng.choice(seeds, size=len(seeds), replace=True)
        values = [rng.choice(finite[s], size=len(finite[s]), replace=True) for s in drawn]
        means[r] = np.mean(np.concatenate(values))
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(point, float(low), float(high), len(seeds), sum(len(finite[s]) for s in seeds))


def interval(scores: Scores, *, resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean Dice over every (seed, case) with a 95% two-level bootstrap interval (seeds, then cases)."""
    return _bootstrap(_clean(scores), resamples, np.random.default_rng(seed))


def paired_difference(a: Scores, b: Scores, *, resamples: int = 2000, seed: int = 0) -> Interval:
    """``a`` minus ``b`` case by case (same seed, same case, both finite), with its 95% bootstrap interval."""
    ca, cb = _clean(a), _clean(b)
    diffs = {}
    for s in sorted(set(ca) & set(cb)):
        if len(ca[s]) != len(cb[s]):
            raise ValueError(f"seed {s}: the two methods scored {len(ca[s])} and {len(cb[s])} cases; "
                             "a paired difference needs the same cases in the same order")
        d = ca[s] - cb[s]
        if np.isfinite(d).any():
            diffs[s] = d
    return _bootstrap(diffs, resamples, np.random.default_rng(seed))


def ratio(a: Interval, b: Interval) -> float:
    """``a.mean / b.mean`` (e.g. federated as a share of centralized)."""
    return a.mean / b.mean if b.mean else math.nan
