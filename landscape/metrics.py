"""Sharpness of 1-D weight loss landscapes, as pure functions on arrays.

A curve is rho(w + alpha d) sampled at `alphas` [A]; a probe has one per direction [D, A].
Three numbers summarize how sharp the landscape is around w (Figure 1 reads it by eye):
the rise at a fixed |alpha|, its spread across directions (Appendix B.2's repeatability),
and the curvature of a quadratic fitted near alpha = 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from awp.errors import UserError

MIN_FIT_POINTS = 3  # a quadratic needs three points


def default_radius(alphas: np.ndarray) -> float:
    """Half the range on the shorter side of 0: r = min(|alpha_min|, |alpha_max|) / 2 (0.5 for -1:1)."""
    alphas = np.asarray(alphas, dtype=float)
    return float(min(abs(alphas.min()), abs(alphas.max())) / 2)


def value_at(alphas: np.ndarray, curves: np.ndarray, at: float) -> np.ndarray:
    """rho(at) for each curve [..., A] by linear interpolation between grid points -> [...]."""
    alphas = np.asarray(alphas, dtype=float)
    curves = np.asarray(curves, dtype=float)
    if not alphas.min() <= at <= alphas.max():
        raise UserError(f"alpha {at:g} lies outside the probed range [{alphas.min():g}, {alphas.max():g}]; "
                        f"the sharpness --radius can be at most {max_radius(alphas):g} here")
    j = int(np.clip(np.searchsorted(alphas, at), 1, len(alphas) - 1))
    a0, a1 = alphas[j - 1], alphas[j]
    t = (at - a0) / (a1 - a0)
    return (1 - t) * curves[..., j - 1] + t * curves[..., j]


def rise(alphas: np.ndarray, curves: np.ndarray, radius: float) -> np.ndarray:
    """Rise at |alpha| = r, both sides averaged: (rho(r) + rho(-r)) / 2 - rho(0), per curve [...]."""
    return (value_at(alphas, curves, radius) + value_at(alphas, curves, -radius)) / 2 - value_at(alphas, curves, 0.0)


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


@dataclass(frozen=True)
class Sharpness:
    """Sharpness of one checkpoint over its complete directions (NaN where undefined)."""

    rise: float  # mean over directions of (rho(r) + rho(-r)) / 2 - rho(0)
    rise_std: float  # sample std (ddof 1) of that rise across directions
    curvature: float  # mean over directions of rho''(0) from the quadratic fit
    curvature_std: float
    rho0: float  # mean rho(0): the adversarial loss at w itself
    n_dirs: int  # directions that entered the means
    radius: float
    fit_radius: float

    def asdict(self) -> dict[str, float]:
        return asdict(self)


def _mean_std(v: np.ndarray) -> tuple[float, float]:
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def sharpness(
    alphas: np.ndarray, curves: np.ndarray, radius: float | None = None, fit_radius: float | None = None
) -> Sharpness:
    """Sharpness of curves [D, A] (rows with any NaN, i.e. directions not yet computed, are left out).
    Defaults: r = `default_radius(alphas)`, fit window |alpha| <= r / 2."""
    alphas = np.asarray(alphas, dtype=float)
    curves = np.asarray(curves, dtype=float).reshape(-1, len(alphas))
    r = default_radius(alphas) if radius is None else float(radius)
    fr = r / 2 if fit_radius is None else float(fit_radius)
    complete = curves[np.isfinite(curves).all(axis=1)]
    rises = rise(alphas, complete, r) if len(complete) else np.empty(0)
    curv = curvature(alphas, complete, fr) if len(complete) else np.empty(0)
    rho0 = value_at(alphas, complete, 0.0) if len(complete) else np.empty(0)
    (rm, rs), (cm, cs) = _mean_std(rises), _mean_std(curv)
    return Sharpness(rm, rs, cm, cs, _mean_std(rho0)[0], len(complete), r, fr)


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
