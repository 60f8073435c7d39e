"""The statistics of gap vs sharpness and of the claims: hand-checked values, and calibration on
simulated data where the answer is known (false-positive rate on independent series, power on coupled)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from landscape.core.stats import (
    MIN_UNITS, Estimate, across_runs, first_differences, fisher_interval, gap_change, gap_change_unpaired_train,
    paired_bootstrap_diff, spearman,
    variance_inflation,
    _spearman_along, t_interval, verdict, welch_interval, within_runs,
)


def random_walks(rng: np.random.Generator, runs: int = 2, points: int = 11, coupling: float = 0.0):
    """Per run, (sharpness, gap) as random walks; the gap's steps are `coupling` * sharpness's plus noise."""
    out = []
    for _ in range(runs):
        dx = rng.normal(size=points)
        dy = coupling * dx + math.sqrt(1 - coupling**2) * rng.normal(size=points)
        out.append((np.cumsum(dx), np.cumsum(dy)))
    return out


def pooled_level_bootstrap(series, rng, n_boot=300) -> bool:
    """What the toolkit did before: a bootstrap of (run, epoch) points as if independent; True if its
    95% interval excludes 0."""
    x = np.concatenate([s[0] for s in series])
    y = np.concatenate([s[1] for s in series])
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    boots = _spearman_along(x[idx], y[idx])
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return lo > 0 or hi < 0


def test_spearman_is_scipys_and_nan_when_constant():
    x, y = np.array([1, 2, 3, 4, 5.0]), np.array([2, 1, 4, 3, 5.0])
    assert spearman(x, y) == pytest.approx(0.8)  # sum dx*dy = 8 over sum dx^2 = 10
    assert spearman(x, y) == pytest.approx(st.spearmanr(x, y).statistic)
    assert math.isnan(spearman(x, np.ones(5)))


def test_first_differences_stay_within_runs_and_skip_nan():
    a = (np.array([0, 1, np.nan, 3.0]), np.array([0, 2, 5, 3.0]))
    b = (np.array([10, 12.0]), np.array([1, 0.0]))
    (dxa, dya), (dxb, dyb) = first_differences([a, b])
    assert list(dxa) == [1, 2] and list(dya) == [2, 1]  # the NaN point is dropped, not bridged with b
    assert list(dxb) == [2] and list(dyb) == [-1]


def test_calibration_within_runs_independent_random_walks():
    """Two runs x 11 points of independent random walks: the test says 'significant' at most ~7% of the
    time (nominal 5%), the Fisher-z interval excludes 0 as rarely; the old pooled bootstrap far more."""
    rng = np.random.default_rng(1)
    n = 1000
    tests = [within_runs(random_walks(rng), n_resamples=999, seed=i) for i in range(n)]
    fpr = np.mean([t.p < 0.05 for t in tests])
    ci = np.mean([t.estimate.lo > 0 or t.estimate.hi < 0 for t in tests])
    assert fpr <= 0.07, fpr
    assert ci <= 0.07, ci
    rng = np.random.default_rng(2)
    naive = np.mean([pooled_level_bootstrap(random_walks(rng), rng) for _ in range(100)])
    assert naive > 0.2, naive  # the method this replaces: far from 5%


def test_power_within_runs_coupled_random_walks():
    rng = np.random.default_rng(3)
    tests = [within_runs(random_walks(rng, coupling=0.7), n_resamples=999, seed=i) for i in range(200)]
    power = np.mean([t.p < 0.05 and t.estimate.value > 0 for t in tests])
    assert power >= 0.8, power
    assert np.mean([t.status == "holds" for t in tests]) == power


def test_calibration_and_power_across_runs():
    rng = np.random.default_rng(4)
    null = [across_runs(rng.normal(size=8), rng.normal(size=8), n_resamples=999, n_boot=300, seed=i) for i in range(300)]
    assert np.mean([t.p < 0.05 for t in null]) <= 0.07
    assert np.mean([t.estimate.lo > 0 or t.estimate.hi < 0 for t in null]) <= 0.08
    coupled = []
    for i in range(100):
        x = rng.normal(size=8)
        coupled.append(across_runs(x, x + 0.4 * rng.normal(size=8), n_resamples=999, n_boot=300, seed=i))
    assert np.mean([t.status == "holds" for t in coupled]) >= 0.8


def test_exact_permutation_p_for_few_runs():
    # 5 runs in the same order: rho = 1; of the 120 pairings, 2 reach |rho| = 1 -> p = 2/120 exactly.
    t = across_runs(np.arange(5.0), np.arange(5.0) ** 2, n_resamples=9999)
    assert t.estimate.value == pytest.approx(1.0) and t.p == pytest.approx(2 / 120, rel=1e-6)
    assert t.status == "holds"


def test_too_few_units_say_how_many_are_needed():
    t = across_runs(np.arange(4.0), np.arange(4.0))
    assert t.estimate is None and t.status == "not measurable" and f"at least {MIN_UNITS}" in t.reason
    w = within_runs([(np.arange(3.0), np.arange(3.0)), (np.arange(3.0), np.arange(3.0))])
    assert w.n == 4 and w.estimate is None and f"at least {MIN_UNITS}" in w.summary()


def test_fisher_interval_matches_formula():
    lo, hi = fisher_interval(0.5, 23)
    se = math.sqrt((1 + 0.125) / 20)
    assert lo == pytest.approx(math.tanh(math.atanh(0.5) - 1.959964 * se), abs=1e-6)
    assert hi == pytest.approx(math.tanh(math.atanh(0.5) + 1.959964 * se), abs=1e-6)


def test_paired_bootstrap_and_verdict():
    rng = np.random.default_rng(1)
    a = (rng.random(500) < 0.6).astype(float)
    b = a.copy()
    b[rng.choice(500, 60, replace=False)] = 0  # b is worse where a was right
    est = paired_bootstrap_diff(a, b)
    assert est.value == pytest.approx((a - b).mean())
    assert verdict(est) == "holds" and verdict(paired_bootstrap_diff(b, a)) == "fails"
    assert verdict(paired_bootstrap_diff(a, a)) == "not significant"  # [0, 0]
    assert verdict(Estimate(0.01, -0.02, 0.04)) == "not significant"
    assert verdict(Estimate(-0.05, -0.08, -0.01), sign=-1) == "holds"
    assert verdict(Estimate(0.05, math.nan, math.nan)) == "not measurable"


def test_paired_bootstrap_coverage_under_the_null():
    """Two checkpoints that are equally good (each example flips independently): the interval of
    their difference excludes 0 about 5% of the time."""
    rng = np.random.default_rng(5)
    excl = 0
    for i in range(300):
        a, b = (rng.random(200) < 0.5).astype(float), (rng.random(200) < 0.5).astype(float)
        e = paired_bootstrap_diff(a, b, n_boot=500, seed=i)
        excl += e.lo > 0 or e.hi < 0
    assert excl / 300 <= 0.08


def test_gap_change_resamples_train_and_test_examples():
    rng = np.random.default_rng(6)
    tr_a, tr_b = (rng.random(300) < 0.8).astype(float), (rng.random(300) < 0.6).astype(float)
    te_a, te_b = (rng.random(200) < 0.5).astype(float), (rng.random(200) < 0.5).astype(float)
    e = gap_change(tr_a, tr_b, te_a, te_b)
    assert e.value == pytest.approx((tr_a.mean() - te_a.mean()) - (tr_b.mean() - te_b.mean()))
    assert e.lo < e.value < e.hi and verdict(e) == "holds"  # train robustness rose by ~0.2, test did not move
    same = gap_change(tr_a, tr_a, te_a, te_a)
    assert (same.value, same.lo, same.hi) == (0.0, 0.0, 0.0)


def test_gap_change_with_other_training_examples_false_positive_rate():
    """AT-ES against AT: different training examples (its validation split), the same test examples. Two
    runs equally good (every example correct with the same probability): the interval of the gap
    difference excludes 0 about 5% of the time; a real difference of 0.2 in train robustness is found."""
    rng = np.random.default_rng(7)
    excl = 0
    for i in range(300):
        tr_a, tr_b = (rng.random(240) < 0.7).astype(float), (rng.random(300) < 0.7).astype(float)
        te_a, te_b = (rng.random(200) < 0.5).astype(float), (rng.random(200) < 0.5).astype(float)
        e = gap_change_unpaired_train(tr_a, tr_b, te_a, te_b, n_boot=500, seed=i)
        excl += e.lo > 0 or e.hi < 0
    assert 0.01 <= excl / 300 <= 0.09
    tr_a, tr_b = (rng.random(240) < 0.9).astype(float), (rng.random(300) < 0.7).astype(float)
    te = (rng.random(200) < 0.5).astype(float)
    e = gap_change_unpaired_train(tr_a, tr_b, te, te)
    assert e.value == pytest.approx(tr_a.mean() - tr_b.mean()) and verdict(e) == "holds"


def test_t_and_welch_intervals():
    e = t_interval(np.array([1.0, 2.0, 3.0]))
    half = st.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (e.value, e.lo, e.hi) == pytest.approx((2.0, 2 - half, 2 + half))
    wider = t_interval(np.array([1.0, 2.0, 3.0]), extra_se=1.0)
    assert wider.hi - wider.lo > e.hi - e.lo
    assert math.isnan(t_interval(np.array([1.0])).lo)
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.5, 1.0])
    w = welch_interval(a, b)
    ref = st.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (w.lo, w.hi) == pytest.approx((ref.low, ref.high))


def test_calibration_within_runs_trend_plus_noise():
    """Both series trend with the epoch plus independent noise: their changes are negatively
    autocorrelated (r1 = -1/2), which a plain permutation of changes ignores (about 10% false
    positives); the lag-1 correction brings it back to at most ~7%."""
    rng = np.random.default_rng(7)
    e = np.linspace(0, 1, 11)
    tests = [within_runs([(e + rng.normal(0, 0.2, 11), e + rng.normal(0, 0.2, 11)) for _ in range(2)],
                         n_resamples=999, seed=i) for i in range(1000)]
    assert np.mean([t.p < 0.05 for t in tests]) <= 0.07
    assert variance_inflation([np.diff(rng.normal(size=200))], [np.diff(rng.normal(size=200))]) > 1.3


def test_holm_adjustment_and_its_family_wise_false_positive_rate():
    from landscape.core.stats import holm

    assert holm([0.01, 0.04, None, 0.03]) == [0.03, pytest.approx(0.06), None, pytest.approx(0.06)]
    assert holm([0.5, 0.01]) == [0.5, 0.02]
    # Six measures with no relation to the gap (three of them near copies of one another, as the measures of
    # one checkpoint are): how often does any of them "hold" after Holm? At most about 5%.
    rng = np.random.default_rng(7)
    families = 200
    hits = raw = 0
    for f in range(families):
        gaps = [np.cumsum(rng.normal(size=11)) for _ in range(2)]
        common = [np.cumsum(rng.normal(size=11)) for _ in range(2)]
        ps = []
        for m in range(6):
            xs = [c + 0.3 * rng.normal(size=11) if m < 3 else np.cumsum(rng.normal(size=11)) for c in common]
            ps.append(within_runs(list(zip(xs, gaps)), n_resamples=499, seed=f * 10 + m).p)
        hits += any(p < 0.05 for p in holm(ps))
        raw += any(p < 0.05 for p in ps)
    rate = hits / families
    assert rate <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / families), rate
    assert raw / families > rate + 0.05  # unadjusted, the family errs far more often: the correction does work
