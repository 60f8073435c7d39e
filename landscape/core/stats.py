"""Inference for the gap-vs-sharpness analysis (Figure 1) and the demo's claims, as pure functions.

The units of a test are what is independent: runs (methods, seeds) are; the epochs of one run are not,
since both the gap and sharpness trend with the epoch and move a little from one epoch to the next.
So there are two tests, never a bootstrap over (run, epoch) points:

- across runs (Figure 1b): one point per run, Spearman's rho with a permutation p-value (exact for up
  to 7 runs) and a percentile bootstrap over runs;
- within runs (Figure 1a): Spearman's rho of the epoch-to-epoch *changes* (first differences), pooled
  over runs, with a p-value from permuting the changes of the gap within each run (stratified; exact
  under the null when a run's increments are exchangeable, e.g. random walks; widened for lag-1
  autocorrelation left in the changes) and a Fisher-z interval.

Differences of means come with paired bootstraps over examples, differences over random directions or
seeds with t intervals over those units (scipy.stats throughout, except the two resampling schemes
scipy has no option for: a permutation within strata).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as st

LEVEL = 0.95  # every interval the toolkit prints is a 95% interval
ALPHA = 0.05  # and every test is at 5%, two-sided
MIN_UNITS = 5  # a rank correlation of n < 5 units cannot reach p < 0.05 (exact minimum p = 2 / n!)

HOLDS, FAILS, NOT_SIGNIFICANT, NOT_MEASURABLE = "holds", "fails", "not significant", "not measurable"


@dataclass(frozen=True)
class Estimate:
    """A statistic with its 95% interval and, where the method gives one, its standard error."""

    value: float
    lo: float
    hi: float
    se: float = math.nan

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"


def _pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two 1-D arrays of equal length, got {x.shape} and {y.shape}")
    return x, y


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (scipy.stats.spearmanr); NaN when either side is constant."""
    x, y = _pairs(x, y)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(st.spearmanr(x, y).statistic)


def _row_spearman(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Pearson's r of rank rows [..., n] (Spearman's rho per row); NaN for a constant row."""
    dx = rx - rx.mean(axis=-1, keepdims=True)
    dy = ry - ry.mean(axis=-1, keepdims=True)
    den = np.sqrt((dx * dx).sum(-1) * (dy * dy).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (dx * dy).sum(-1) / np.where(den > 0, den, 1), np.nan)


def _spearman_along(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along `axis` (vectorized, for scipy's resampling functions)."""
    a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
    return _row_spearman(st.rankdata(a, axis=-1), st.rankdata(b, axis=-1))


# ---------------------------------------------------------------------------------------------
# Correlation tests
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorrelationTest:
    """A rank correlation with its p-value and interval, and the units it was computed over. With too
    few units `estimate` / `p` are None and `reason` says how many are needed."""

    scope: str  # "within runs" | "across runs"
    method: str  # the statistic, the p-value and the interval, in words
    units: str  # e.g. "19 epoch-to-epoch changes in 2 runs"
    n: int
    estimate: Estimate | None = None
    p: float | None = None
    reason: str | None = None

    @property
    def status(self) -> str:
        """'holds' (rho > 0, p < 0.05), 'fails' (rho < 0, p < 0.05), 'not significant', 'not measurable'."""
        if self.estimate is None or self.p is None or not math.isfinite(self.estimate.value):
            return NOT_MEASURABLE
        if self.p < ALPHA:
            return HOLDS if self.estimate.value > 0 else FAILS
        return NOT_SIGNIFICANT

    def summary(self) -> str:
        """One line: 'within runs: Spearman +0.41 [+0.02, +0.70], p = 0.031 (19 changes in 2 runs; ...)'."""
        if self.estimate is None:
            return f"{self.scope}: {self.reason}"
        return f"{self.scope}: Spearman {self.estimate}, p = {self.p:.3g} ({self.units}; {self.method})"


def across_runs(x: np.ndarray, y: np.ndarray, *, n_resamples: int = 9999, n_boot: int = 2000, seed: int = 0) -> CorrelationTest:
    """Figure 1b over independent runs: one (sharpness, gap) point per run. Spearman's rho, a two-sided
    permutation p-value (scipy.stats.permutation_test over pairings: exact when n! <= n_resamples, i.e. up to 7 runs)
    and a percentile bootstrap over runs (scipy.stats.bootstrap, paired)."""
    x, y = _pairs(x, y)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    method = "permutation p over pairings, bootstrap over runs"
    units = f"{len(x)} runs, one point each"
    if len(x) < MIN_UNITS:
        return CorrelationTest("across runs", method, units, len(x),
                               reason=f"{len(x)} runs; a test across runs needs at least {MIN_UNITS}")
    rho = spearman(x, y)
    if not math.isfinite(rho):
        return CorrelationTest("across runs", method, units, len(x), reason="sharpness or gap is the same for every run")
    rng = np.random.default_rng(seed)
    # Only the gaps are permuted (n! pairings: exact up to n = 7 with the default resamples).
    perm = st.permutation_test((y,), lambda b, axis=-1: _spearman_along(np.broadcast_to(x, b.shape), b, axis),
                               permutation_type="pairings", vectorized=True, n_resamples=n_resamples,
                               alternative="two-sided", random_state=rng)
    with warnings.catch_warnings():  # a resample of few runs may be constant: its rho is NaN and dropped
        warnings.simplefilter("ignore")
        boot = st.bootstrap((x, y), _spearman_along, paired=True, vectorized=True, n_resamples=n_boot,
                            method="percentile", confidence_level=LEVEL, random_state=rng)
    # A resample that repeats one run n times has no rho; the percentiles are over those that have one.
    dist = boot.bootstrap_distribution[np.isfinite(boot.bootstrap_distribution)]
    lo, hi = np.percentile(dist, [(1 - LEVEL) / 2 * 100, (1 + LEVEL) / 2 * 100]) if len(dist) else (math.nan, math.nan)
    return CorrelationTest("across runs", method, units, len(x), Estimate(rho, float(lo), float(hi)), float(perm.pvalue))


def first_differences(series: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per run, the changes (x[t+1] - x[t], y[t+1] - y[t]) between consecutive finite points."""
    out = []
    for x, y in series:
        x, y = _pairs(x, y)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if len(x) >= 2:
            out.append((np.diff(x), np.diff(y)))
    return out


def fisher_interval(rho: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """Bonett-Wright interval of Spearman's rho from n (effective) independent pairs:
    tanh(atanh(rho) +- z se), se^2 = (1 + rho^2 / 2) / (n - 3); NaN bounds for n <= 3."""
    if n <= 3:
        return math.nan, math.nan
    r = min(max(rho, -1 + 1e-9), 1 - 1e-9)
    se = math.sqrt((1 + r * r / 2) / (n - 3))
    z = float(st.norm.ppf(0.5 + level / 2))
    return math.tanh(math.atanh(r) - z * se), math.tanh(math.atanh(r) + z * se)


def lag1_autocorrelation(series: Sequence[np.ndarray]) -> float:
    """Lag-1 autocorrelation pooled over runs (each centred on its own mean, pairs never span runs)."""
    num = den = 0.0
    for s in series:
        c = np.asarray(s, float) - np.mean(s)
        num += float((c[:-1] * c[1:]).sum())
        den += float((c * c).sum())
    return num / den if den > 0 else 0.0


def variance_inflation(dx: Sequence[np.ndarray], dy: Sequence[np.ndarray]) -> float:
    """How much serial correlation widens the null spread of a correlation of two independent series:
    f = 1 + 2 r1(x) r1(y) (Bartlett; Pyper and Peterman 1998, lag 1 only), never below 1. First
    differences of a trend plus white noise have r1 = -1/2 each, so f = 1.5."""
    return max(1.0, 1.0 + 2.0 * lag1_autocorrelation(dx) * lag1_autocorrelation(dy))


def within_runs(
    series: Sequence[tuple[np.ndarray, np.ndarray]], *, n_resamples: int = 9999, seed: int = 0
) -> CorrelationTest:
    """Figure 1a over epochs: does the gap change with sharpness? `series` holds per run (sharpness,
    gap) at its probed epochs, in epoch order. Spearman's rho of the pooled first differences (which
    removes the common trend and makes a random walk's steps independent). The p-value permutes the
    gap's changes within each run (stratified: scipy's permutation_test has no strata); since changes
    that are still serially correlated (a trend plus white noise gives r1 = -1/2) make that null too
    narrow, it is widened by sqrt(f) of `variance_inflation`, and the Bonett-Wright interval uses n / f
    pairs. A moving-block bootstrap within runs was tried and excluded 0 in 11% of null simulations
    (2 runs x 11 points), so it is not used."""
    diffs = first_differences(series)
    n = sum(len(dx) for dx, _ in diffs)
    method = "p from permutations within runs, corrected for lag-1 autocorrelation; Fisher-z interval"
    units = f"{n} epoch-to-epoch changes in {len(diffs)} run{'s' if len(diffs) != 1 else ''}"
    if n < MIN_UNITS:
        return CorrelationTest("within runs", method, units, n,
                               reason=f"{n} epoch-to-epoch changes; a test within runs needs at least {MIN_UNITS} "
                                      f"(probe more epochs)")
    dx = np.concatenate([d[0] for d in diffs])
    dy = np.concatenate([d[1] for d in diffs])
    rho = spearman(dx, dy)
    if not math.isfinite(rho):
        return CorrelationTest("within runs", method, units, n, reason="sharpness or gap does not change")
    f = variance_inflation([d[0] for d in diffs], [d[1] for d in diffs])
    rng = np.random.default_rng(seed)
    rx, ry = st.rankdata(dx), st.rankdata(dy)
    # Permutations within runs: sort random keys offset by the run index (runs are contiguous in the pool).
    run_of = np.concatenate([np.full(len(d[0]), i) for i, d in enumerate(diffs)])
    keys = rng.random((n_resamples, n)) + 2 * run_of
    null = _row_spearman(rx[None, :], ry[np.argsort(keys, axis=1)]) * math.sqrt(f)
    p = (1 + np.count_nonzero(np.abs(null) >= abs(rho) - 1e-12)) / (1 + n_resamples)
    lo, hi = fisher_interval(rho, n / f)
    return CorrelationTest("within runs", method, units, n, Estimate(rho, lo, hi), float(p))


# ---------------------------------------------------------------------------------------------
# Intervals of differences
# ---------------------------------------------------------------------------------------------


def paired_bootstrap_diff(a: np.ndarray, b: np.ndarray, *, n_boot: int = 5000, seed: int = 0) -> Estimate:
    """mean(a) - mean(b) for per-example scores of the same examples (e.g. 0/1 robust correctness of
    two checkpoints), with a percentile bootstrap over examples (scipy.stats.bootstrap)."""
    a, b = _pairs(a, b)
    d = a - b
    if np.ptp(d) == 0:  # every example differs by the same amount: no spread to resample
        return Estimate(float(d.mean()), float(d[0]), float(d[0]))
    res = st.bootstrap((d,), np.mean, n_resamples=n_boot, method="percentile", confidence_level=LEVEL,
                       random_state=np.random.default_rng(seed))
    return Estimate(float(d.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high),
                    float(res.standard_error))


def gap_change(train_a: np.ndarray, train_b: np.ndarray, test_a: np.ndarray, test_b: np.ndarray, *,
               n_boot: int = 5000, seed: int = 0) -> Estimate:
    """gap(a) - gap(b), gap = train robust - test robust accuracy (Section 3), from per-example
    correctness of two checkpoints (or runs) on the same training and test examples: training and
    test examples are resampled independently, each paired between a and b."""
    tr, te = _pairs(train_a, train_b), _pairs(test_a, test_b)
    d_tr, d_te = tr[0] - tr[1], te[0] - te[1]
    value = float(d_tr.mean() - d_te.mean())
    if np.ptp(d_tr) == 0 and np.ptp(d_te) == 0:
        return Estimate(value, value, value)
    res = st.bootstrap((d_tr, d_te), lambda u, v, axis=-1: u.mean(axis) - v.mean(axis), n_resamples=n_boot,
                       method="percentile", confidence_level=LEVEL, random_state=np.random.default_rng(seed),
                       vectorized=True)
    return Estimate(value, float(res.confidence_interval.low), float(res.confidence_interval.high), float(res.standard_error))


def gap_change_unpaired_train(train_a: np.ndarray, train_b: np.ndarray, test_a: np.ndarray, test_b: np.ndarray, *,
                              n_boot: int = 5000, seed: int = 0) -> Estimate:
    """gap(a) - gap(b) when a and b were measured on different training examples (AT-ES trains on what its
    validation split leaves) but the same test examples: the two training sets resampled independently,
    the test examples resampled in pairs."""
    tr_a, tr_b = np.asarray(train_a, dtype=float), np.asarray(train_b, dtype=float)
    te = _pairs(test_a, test_b)
    d_te = te[0] - te[1]
    value = float(tr_a.mean() - tr_b.mean() - d_te.mean())
    if np.ptp(tr_a) == 0 and np.ptp(tr_b) == 0 and np.ptp(d_te) == 0:
        return Estimate(value, value, value)
    res = st.bootstrap((tr_a, tr_b, d_te), lambda u, v, w, axis=-1: u.mean(axis) - v.mean(axis) - w.mean(axis),
                       n_resamples=n_boot, method="percentile", confidence_level=LEVEL,
                       random_state=np.random.default_rng(seed), vectorized=True)
    return Estimate(value, float(res.confidence_interval.low), float(res.confidence_interval.high), float(res.standard_error))


def t_interval(values: np.ndarray, extra_se: float = 0.0) -> Estimate:
    """The mean of independent units (random directions, seeds) with a Student-t 95% interval; with
    `extra_se`, a standard error from another source (e.g. examples) added in quadrature. NaN bounds
    for fewer than 2 units."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return Estimate(math.nan, math.nan, math.nan)
    m = float(v.mean())
    if len(v) < 2:
        return Estimate(m, math.nan, math.nan)
    se = math.sqrt(v.var(ddof=1) / len(v) + extra_se**2)
    half = float(st.t.ppf(0.5 + LEVEL / 2, len(v) - 1)) * se
    return Estimate(m, m - half, m + half, se)


def seeds_interval(values: np.ndarray, unit_se: np.ndarray) -> Estimate:
    """The mean of per-seed estimates with a Student-t 95% interval over seeds, whose standard error is
    never below what the seeds' own measurement noise implies, sqrt(sum se_i^2) / n (the variance over
    seeds holds that noise plus the training randomness, so this bound is valid): with few seeds the
    spread over them can be 0 by chance (accuracies move in steps of 1/N), and an interval of width 0
    would claim a certainty no seed had. `unit_se`: each estimate's standard error (NaN: none known)."""
    v, se = np.asarray(values, dtype=float), np.asarray(unit_se, dtype=float)
    keep = np.isfinite(v)
    v, se = v[keep], se[keep]
    if len(v) < 2:
        return t_interval(v)
    m = float(v.mean())
    floor = math.sqrt(float(np.nansum(se**2))) / len(v)
    total = max(math.sqrt(v.var(ddof=1) / len(v)), floor)
    half = float(st.t.ppf(0.5 + LEVEL / 2, len(v) - 1)) * total
    return Estimate(m, m - half, m + half, total)


def welch_interval(a: np.ndarray, b: np.ndarray, extra_se: float = 0.0) -> Estimate:
    """mean(a) - mean(b) for two independent sets of units (e.g. the random directions of two models),
    with a Welch t 95% interval (Welch-Satterthwaite degrees of freedom); `extra_se` as in `t_interval`."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return Estimate(math.nan, math.nan, math.nan)
    m = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Estimate(m, math.nan, math.nan)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb + extra_se**2)
    if se == 0:
        return Estimate(m, m, m, 0.0)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else len(a) + len(b) - 2
    half = float(st.t.ppf(0.5 + LEVEL / 2, dof)) * se
    return Estimate(m, m - half, m + half, se)


def verdict(est: Estimate | None, sign: int = +1) -> str:
    """Whether `est` shows an effect of sign `sign`: 'holds' when the whole interval is on that side of
    0, 'fails' when it is on the other side, 'not significant' when it contains 0, 'not measurable'
    when there is no interval."""
    if est is None or not (math.isfinite(est.lo) and math.isfinite(est.hi)):
        return NOT_MEASURABLE
    lo, hi = (est.lo, est.hi) if sign > 0 else (-est.hi, -est.lo)
    if lo > 0:
        return HOLDS
    if hi < 0:
        return FAILS
    return NOT_SIGNIFICANT


# ---------------------------------------------------------------------------------------------
# Many measures at once
# ---------------------------------------------------------------------------------------------


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None: no test, left out of the family):
    p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j)) over the sorted ones. Rejecting where the adjusted
    p < 0.05 keeps the chance of any false "holds" among the m measures at most 5% (Holm 1979), under
    any dependence between the tests: the measures of one checkpoint are far from independent."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    order = sorted(idx, key=lambda i: pvalues[i])  # type: ignore[arg-type, return-value]
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))  # type: ignore[arg-type]
        out[i] = running
    return out
