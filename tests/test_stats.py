"""Correlations against hand-computed values; bootstrap intervals and verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from landscape.stats import (
    Estimate, bootstrap_correlation, correlations, kendall, paired_bootstrap_diff, pearson, rankdata, spearman,
    verdict,
)

X = np.array([1, 2, 3, 4, 5.0])
Y = np.array([2, 1, 4, 3, 5.0])


def test_hand_computed_no_ties():
    # dx = [-2,-1,0,1,2], dy = [-1,-2,1,0,2]: sum dx*dy = 8, sum dx^2 = sum dy^2 = 10 -> r = 0.8
    assert pearson(X, Y) == pytest.approx(0.8)
    assert spearman(X, Y) == pytest.approx(0.8)  # the values are their own ranks
    # 8 concordant, 2 discordant pairs of 10 -> tau = 0.6
    assert kendall(X, Y) == pytest.approx(0.6)


def test_hand_computed_ties():
    x, y = np.array([1, 2, 2, 3.0]), np.array([1, 3, 2, 4.0])
    assert list(rankdata(x)) == [1, 2.5, 2.5, 4]
    assert spearman(x, y) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    # 5 concordant, 0 discordant, 1 tie in x of 6 pairs -> tau_b = 5 / sqrt(5 * 6)
    assert kendall(x, y) == pytest.approx(5 / math.sqrt(30))


def test_sign_and_constant():
    assert pearson(X, -X) == pytest.approx(-1)
    assert kendall(X, -X) == pytest.approx(-1)
    assert math.isnan(pearson(X, np.ones(5)))


def test_bootstrap_interval_contains_estimate_and_narrows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    est = bootstrap_correlation(x, y, pearson, n_boot=500)
    assert est.lo < est.value < est.hi
    small = bootstrap_correlation(x[:20], y[:20], pearson, n_boot=500)
    assert (est.hi - est.lo) < (small.hi - small.lo)
    assert set(correlations(x, y, n_boot=50)) == {"pearson", "spearman", "kendall"}


def test_paired_bootstrap_and_verdict():
    rng = np.random.default_rng(1)
    a = (rng.random(500) < 0.6).astype(float)
    b = a.copy()
    flip = rng.choice(500, 60, replace=False)
    b[flip] = 0  # b is strictly worse on 60 examples where a was right or equal
    est = paired_bootstrap_diff(a, b)
    assert est.value == pytest.approx((a - b).mean())
    assert verdict(est) == "holds" and verdict(paired_bootstrap_diff(b, a)) == "fails"
    assert verdict(paired_bootstrap_diff(a, a)) == "not significant"
    assert verdict(Estimate(0.01, -0.02, 0.04)) == "not significant"
