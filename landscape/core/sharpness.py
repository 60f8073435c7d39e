"""Sharpness of 1-D weight loss landscapes, as pure functions on arrays, and the registry of measures.

A curve is rho(w + alpha d) sampled at `alphas` [A]; a probe has one per direction [D, A].
The measures of `SHARPNESS` summarize how sharp the landscape is around w (Figure 1 reads it by
eye): today the rise at a fixed |alpha| and the curvature of a quadratic fitted near alpha = 0,
each with its spread across directions (Appendix B.2's repeatability). The rise also gets a standard error from
the example noise of its points (`rise_se`): how much a different sample of examples would move it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from awp.errors import UserError
from awp.registry import Registry

MIN_FIT_POINTS = 3  # a quadratic needs three points


def default_radius(alphas: np.ndarray) -> float:
    """Half the range on the shorter side of 0: r = min(|alpha_min|, |alpha_max|) / 2 (0.5 for -1:1)."""
    alphas = np.asarray(alphas, dtype=float)
    return float(min(abs(alphas.min()), abs(alphas.max())) / 2)


def _bracket(alphas: np.ndarray, at: float) -> tuple[int, float]:
    """(j, t) with at = (1 - t) alphas[j - 1] + t alphas[j]; a one-line error outside the range."""
    alphas = np.asarray(alphas, dtype=float)
    if not alphas.min() <= at <= alphas.max():
        raise UserError(f"alpha {at:g} lies outside the probed range [{alphas.min():g}, {alphas.max():g}]; "
                        f"the sharpness --radius can be at most {max_radius(alphas):g} here")
    j = int(np.clip(np.searchsorted(alphas, at), 1, len(alphas) - 1))
    a0, a1 = alphas[j - 1], alphas[j]
    return j, (at - a0) / (a1 - a0)


def value_at(alphas: np.ndarray, curves: np.ndarray, at: float) -> np.ndarray:
    """rho(at) for each curve [..., A] by linear interpolation between grid points -> [...]."""
    curves = np.asarray(curves, dtype=float)
    j, t = _bracket(alphas, at)
    return (1 - t) * curves[..., j - 1] + t * curves[..., j]


def rise(alphas: np.ndarray, curves: np.ndarray, radius: float) -> np.ndarray:
    """Rise at |alpha| = r, both sides averaged: (rho(r) + rho(-r)) / 2 - rho(0), per curve [...]."""
    return (value_at(alphas, curves, radius) + value_at(alphas, curves, -radius)) / 2 - value_at(alphas, curves, 0.0)


def _variance_at(alphas: np.ndarray, var: np.ndarray, at: float) -> np.ndarray:
    """Variance of `value_at(alphas, curves, at)` from the point variances var [..., A], the two grid
    points taken as independent: (1 - t)^2 var_{j-1} + t^2 var_j."""
    var = np.asarray(var, dtype=float)
    j, t = _bracket(alphas, at)
    return (1 - t) ** 2 * var[..., j - 1] + t**2 * var[..., j]


def rise_se(alphas: np.ndarray, se: np.ndarray, radius: float) -> np.ndarray:
    """Standard error over examples of `rise` per curve [...], from the point standard errors se [..., A]
    (`adv_loss_se`), the points taken as independent:

        se(rise)^2 = se(rho(r))^2 / 4 + se(rho(-r))^2 / 4 + se(rho(0))^2,

    an interpolated value's variance being (1 - t)^2 se_{j-1}^2 + t^2 se_j^2 from its two grid points.
    The points share their examples (common random numbers), so they are positively correlated. With
    equal variances s^2 and one correlation c the rise's true variance is 1.5 s^2 (1 - c) <= 1.5 s^2:
    independence errs on the large side. Between grid points it errs the other way (neighbours
    correlate), by at most a factor 2 in that term's variance at t = 1/2. An estimate, not a bound."""
    var = np.square(np.asarray(se, dtype=float))
    return np.sqrt(_variance_at(alphas, var, radius) / 4 + _variance_at(alphas, var, -radius) / 4
                   + _variance_at(alphas, var, 0.0))


def mean_rise_se(alphas: np.ndarray, se: np.ndarray, radius: float) -> float:
    """Standard error over examples of the mean rise over D directions, from se [D, A] (`rise_se`'s
    assumptions). rho(0) is one and the same point for every direction (w itself, the same examples
    and starts), so its variance enters once, not divided by D:

        se^2 = sum_k (se(rho_k(r))^2 + se(rho_k(-r))^2) / (4 D^2) + se(rho(0))^2.

    Only the example noise at these directions: the spread over directions is `rise_std`. NaN when a
    direction lacks its standard errors, or for no direction."""
    var = np.square(np.asarray(se, dtype=float).reshape(-1, len(alphas)))
    if len(var) == 0:
        return float("nan")
    off = (_variance_at(alphas, var, radius) + _variance_at(alphas, var, -radius)) / 4  # [D]
    return float(np.sqrt(off.sum() / len(var) ** 2 + _variance_at(alphas, var, 0.0).mean()))


BAND_Z = 1.96  # figures draw bands of +-1.96 standard errors: a normal 95% interval per point


def mean_curve(curves: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean over complete directions of curves [D, A] (rows with any NaN are left out) and its
    standard error [A], from the spread over directions and the example standard errors se [D, A]:

        se(mean)^2 = s_dir^2 / D + mean_k se_k^2    (D >= 2; se_k itself for D = 1)

    s_dir (sample std over directions, ddof 1) carries how much the direction matters and the part of
    the example noise that differs between directions. Every direction uses the same examples, so
    the example noise they share never shows in s_dir (at alpha = 0 all directions are w itself and
    s_dir = 0); its variance in the mean is at most mean_k se_k^2 (the variance of an average is at
    most the average of the variances), the second term. Conservative: noise seen by both terms is
    counted twice. NaN where no direction is complete or a complete one lacks its standard errors."""
    curves = np.asarray(curves, dtype=float)
    se = np.asarray(se, dtype=float).reshape(curves.shape)
    ok = np.isfinite(curves).all(axis=-1)
    done, done_se = curves[ok], se[ok]
    if len(done) == 0:
        nan = np.full(curves.shape[-1], np.nan)
        return nan, nan.copy()
    var = np.square(done_se).mean(axis=0)
    if len(done) > 1:
        var = var + done.var(axis=0, ddof=1) / len(done)
    return done.mean(axis=0), np.sqrt(var)


def fit_window(alphas: np.ndarray, fit_radius: float) -> np.ndarray:
    """Indices of the alphas with |alpha| <= fit_radius, widened to the 3 nearest 0 if fewer."""
    alphas = np.asarray(alphas, dtype=float)
    inside = np.flatnonzero(np.abs(alphas) <= fit_radius + 1e-12)
    if len(inside) >= MIN_FIT_POINTS:
        return inside
    return np.sort(np.argsort(np.abs(alphas), kind="stable")[:MIN_FIT_POINTS])


def curvature(alphas: np.ndarray, curves: np.ndarray, fit_radius: float) -> np.ndarray:
    """Least-squares rho(alpha) ~ a + b alpha + c alpha^2 on the fit window; returns rho''(0) = 2c
    per curve [...]."""
    alphas = np.asarray(alphas, dtype=float)
    curves = np.asarray(curves, dtype=float)
    if len(alphas) < MIN_FIT_POINTS:
        raise UserError(f"a quadratic fit needs at least {MIN_FIT_POINTS} alphas, got {len(alphas)}")
    idx = fit_window(alphas, fit_radius)
    x = alphas[idx]
    design = np.stack([np.ones_like(x), x, x * x], axis=1)  # [m, 3]
    flat = curves[..., idx].reshape(-1, len(idx)).T  # [m, curves]
    coef, *_ = np.linalg.lstsq(design, flat, rcond=None)  # [3, curves]
    return (2 * coef[2]).reshape(curves.shape[:-1])


# ---------------------------------------------------------------------------------------------
# The registry of measures: every table, figure, results file and `gap --sharpness` iterates it
# ---------------------------------------------------------------------------------------------

Curves = Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (alphas [A], curves [..., A], radius) -> [...]


@dataclass(frozen=True)
class Measure:
    """A sharpness measure of one curve at radius r: `fn` per complete curve, and optionally `se`, the
    standard error over examples of one curve's value from its point standard errors [..., A], and
    `mean_se`, that of the mean over directions from se [D, A]."""

    fn: Curves
    summary: str
    label: str  # for an axis: "rise of ρ at |α| = r"
    se: Curves | None = None
    mean_se: Callable[[np.ndarray, np.ndarray, float], float] | None = None


def _curvature_at(alphas: np.ndarray, curves: np.ndarray, radius: float) -> np.ndarray:
    """rho''(0) fitted on |alpha| <= r / 2 (half the rise's radius: the quadratic holds near 0)."""
    return curvature(alphas, curves, radius / 2)


SHARPNESS: Registry[Measure] = Registry("sharpness measure", {
    "rise": Measure(rise, "(rho(r) + rho(-r))/2 - rho(0)", "rise of ρ at |α| = r", rise_se, mean_rise_se),
    "curvature": Measure(_curvature_at, "rho''(0) of a quadratic fit on |alpha| <= r/2", "curvature ρ''(0)"),
})


def per_direction(alphas: np.ndarray, curves: np.ndarray, radius: float, se: np.ndarray | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every measure of every curve [..., A] -> ({name: [...]}, {name: standard error [...]}); NaN for a
    curve with any point missing, and for the standard error of a measure that has none."""
    alphas = np.asarray(alphas, dtype=float)
    curves = np.asarray(curves, dtype=float)
    ok = np.isfinite(curves).all(axis=-1)
    values, errors = {}, {}
    for name, m in SHARPNESS.items():
        v = np.full(curves.shape[:-1], np.nan)
        e = np.full(curves.shape[:-1], np.nan)
        if ok.any():
            v[ok] = m.fn(alphas, curves[ok], radius)
            if m.se is not None and se is not None:
                e[ok] = m.se(alphas, np.asarray(se, dtype=float).reshape(curves.shape)[ok], radius)
        values[name], errors[name] = v, e
    return values, errors


@dataclass(frozen=True)
class Sharpness:
    """Sharpness of one checkpoint over its complete directions, per measure of `SHARPNESS` (NaN where
    undefined): the mean over directions, the spread across them (sample std, ddof 1, Appendix B.2's
    repeatability) and the standard error over examples of the mean (NaN for a measure without one)."""

    mean: dict[str, float]
    std: dict[str, float]
    se: dict[str, float]
    rho0: float  # mean rho(0): the adversarial loss at w itself
    n_dirs: int  # directions that entered the means
    radius: float

    @property
    def fit_radius(self) -> float:
        return self.radius / 2


def _mean_std(v: np.ndarray) -> tuple[float, float]:
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def sharpness(alphas: np.ndarray, curves: np.ndarray, radius: float | None = None, se: np.ndarray | None = None
              ) -> Sharpness:
    """Sharpness of curves [D, A] (rows with any NaN, i.e. directions not yet computed, are left out),
    at r = `default_radius(alphas)` unless given. With the point standard errors se [D, A], also the
    standard error of each mean that has one (NaN if any complete direction lacks them)."""
    alphas = np.asarray(alphas, dtype=float)
    curves = np.asarray(curves, dtype=float).reshape(-1, len(alphas))
    r = default_radius(alphas) if radius is None else float(radius)
    ok = np.isfinite(curves).all(axis=1)
    complete = curves[ok]
    mean, std, err = {}, {}, {}
    for name, m in SHARPNESS.items():
        vals = m.fn(alphas, complete, r) if len(complete) else np.empty(0)
        mean[name], std[name] = _mean_std(vals)
        err[name] = float("nan")
        if se is not None and m.mean_se is not None:
            err[name] = m.mean_se(alphas, np.asarray(se, dtype=float).reshape(-1, len(alphas))[ok], r)
    rho0 = value_at(alphas, complete, 0.0) if len(complete) else np.empty(0)
    return Sharpness(mean, std, err, _mean_std(rho0)[0], len(complete), r)


def max_radius(alphas: np.ndarray) -> float:
    """The largest r with both -r and r inside the probed range: min(|alpha_min|, alpha_max) (0 if one side is missing)."""
    alphas = np.asarray(alphas, dtype=float)
    return float(max(0.0, min(-alphas.min(), alphas.max())))


def check_radius(alphas: np.ndarray, radius: float) -> None:
    """The rise needs rho at -r, 0 and r inside the probed range: a one-line error naming --radius otherwise."""
    alphas = np.asarray(alphas, dtype=float)
    if not radius > 0:
        raise UserError(f"--radius must be > 0, got {radius:g}")
    if radius > max_radius(alphas):
        raise UserError(f"--radius {radius:g} lies outside the probed range [{alphas.min():g}, {alphas.max():g}]: "
                        f"the rise reads rho at -r and r, so --radius must be at most {max_radius(alphas):g}")
