"""Sharpness numbers on curves whose answers are known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from awp.errors import UserError
from landscape.core.sharpness import SHARPNESS, check_radius, curvature, default_radius, rise, sharpness, value_at

ALPHAS = np.linspace(-1, 1, 41)


def test_rise_and_curvature_of_quadratics():
    # rho_k(a) = 1 + b_k a + c_k a^2: the two-sided rise cancels the slope; rho'' = 2 c_k.
    b = np.array([0.3, -1.0, 0.0])
    c = np.array([1.0, 2.0, 3.0])
    curves = 1 + b[:, None] * ALPHAS + c[:, None] * ALPHAS**2
    np.testing.assert_allclose(rise(ALPHAS, curves, 0.5), c * 0.25)
    np.testing.assert_allclose(curvature(ALPHAS, curves, 0.25), 2 * c)
    s = sharpness(ALPHAS, curves)
    assert s.radius == 0.5 and s.fit_radius == 0.25 and s.n_dirs == 3
    assert s.mean["rise"] == pytest.approx(0.5) and s.std["rise"] == pytest.approx(0.25)  # std of 0.25, 0.5, 0.75
    assert s.mean["curvature"] == pytest.approx(4.0) and s.rho0 == pytest.approx(1.0)
    assert set(s.mean) == set(s.std) == set(s.se) == set(SHARPNESS)  # every registered measure, by name


def test_directions_not_computed_are_left_out():
    curves = np.stack([1 + ALPHAS**2, np.full_like(ALPHAS, np.nan)])
    s = sharpness(ALPHAS, curves)
    assert s.n_dirs == 1 and s.mean["rise"] == pytest.approx(0.25) and np.isnan(s.std["rise"])
    empty = sharpness(ALPHAS, np.full((2, 41), np.nan))
    assert empty.n_dirs == 0 and np.isnan(empty.mean["rise"]) and np.isnan(empty.mean["curvature"])


def test_interpolation_off_the_grid_and_asymmetric_ranges():
    alphas = np.array([-0.5, 0.0, 0.25, 1.0])
    assert default_radius(alphas) == 0.25
    assert value_at(alphas, 2 * alphas, 0.6) == pytest.approx(1.2)
    # Fewer than three alphas within the fit window: the three nearest 0 are used.
    assert curvature(alphas, alphas**2, 0.01) == pytest.approx(2.0)


def test_radius_outside_the_range_is_a_user_error():
    check_radius(ALPHAS, 1.0)
    with pytest.raises(UserError, match="outside the probed range"):
        check_radius(np.array([-0.2, 0.0, 1.0]), 0.5)
    with pytest.raises(UserError, match="must be > 0"):
        check_radius(ALPHAS, 0.0)
