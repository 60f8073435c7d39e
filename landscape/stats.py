"""Correlation and bootstrap statistics for the gap-vs-sharpness analysis (Figure 1b), as pure functions.

Pearson measures linear association, Spearman and Kendall monotone association (robust to the
nonlinear way sharpness grows); bootstrap intervals resample (gap, sharpness) pairs with replacement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Correlation = Callable[[np.ndarray, np.ndarray], float]


def _check_pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two 1-D arrays of equal length, got {x.shape} and {y.shape}")
    return x, y


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """r = sum((x - mean x)(y - mean y)) / sqrt(sum (x - mean x)^2 sum (y - mean y)^2); NaN if constant."""
    x, y = _check_pairs(x, y)
    dx, dy = x - x.mean(), y - y.mean()
    den = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / den) if den > 0 else float("nan")


def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    a = np.asarray(a, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=float)
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the (tie-averaged) ranks."""
    x, y = _check_pairs(x, y)
    return pearson(rankdata(x), rankdata(y))


def kendall(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x)(n0 - ties_y)) over all pairs."""
    x, y = _check_pairs(x, y)
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), k=1)
    sx, sy = sx[iu], sy[iu]
    den = np.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy))
    return float((sx * sy).sum() / den) if den > 0 else float("nan")


CORRELATIONS: dict[str, Correlation] = {"pearson": pearson, "spearman": spearman, "kendall": kendall}


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap 95% interval."""

    value: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"


def bootstrap_correlation(
    x: np.ndarray, y: np.ndarray, fn: Correlation, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """`fn(x, y)` with a percentile bootstrap interval from resampling the pairs with replacement."""
    x, y = _check_pairs(x, y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    boots = np.array([fn(x[i], y[i]) for i in idx])
    boots = boots[np.isfinite(boots)]
    tail = (1 - level) / 2 * 100
    lo, hi = (np.percentile(boots, [tail, 100 - tail]) if len(boots) else (np.nan, np.nan))
    return Estimate(fn(x, y), float(lo), float(hi))


def correlations(x: np.ndarray, y: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Estimate]:
    """Pearson, Spearman and Kendall with bootstrap 95% intervals."""
    return {name: bootstrap_correlation(x, y, fn, n_boot=n_boot, seed=seed) for name, fn in CORRELATIONS.items()}


def paired_bootstrap_diff(
    a: np.ndarray, b: np.ndarray, *, n_boot: int = 5000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """mean(a) - mean(b) for per-example scores (e.g. 0/1 robust correctness of two models on the same
    test examples), with a paired percentile bootstrap interval over examples."""
    a, b = _check_pairs(a, b)
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    boots = d[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(boots, [tail, 100 - tail])
    return Estimate(float(d.mean()), float(lo), float(hi))


def verdict(est: Estimate) -> str:
    """'holds' when the whole interval is above 0, 'fails' when below, else 'not significant'."""
    if est.lo > 0:
        return "holds"
    if est.hi < 0:
        return "fails"
    return "not significant"
