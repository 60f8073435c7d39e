"""Sharpness measures by weight perturbation, every value the adversarial loss rho with PGD re-run at
the perturbed weights (`Objective.rho`), differences taken against rho(w) on the same examples and
starts (common random numbers):

- robust flatness (Stutz et al., ICCV 2021): average-case E_nu rho(w + nu) - rho(w) over random nu with
  ||nu_l|| = xi ||w_l|| per layer, and worst-case max_nu rho(w + nu) - rho(w) over ||nu_l|| <= xi ||w_l||
  by a joint weight-and-input attack (the Eq. 10 / Eq. 15 ascent of AWP, x' re-made at every step);
- adaptive sharpness (Kwon et al. 2021; Andriushchenko et al. 2023) over ||delta / |w| ||_p <= r:
  worst case by projected ascent in u = delta / |w|, and the Gaussian average delta ~ N(0, r^2 diag(w^2));
- PAC-Bayes flatness (Jiang et al. 2020): 1 / sigma^2 for the largest sigma with
  E_u rho(w + u) - rho(w) <= threshold, u ~ N(0, sigma^2 I) or, magnitude-aware,
  N(0, sigma^2 w^2 + eps^2) per weight, found by bisection.

Each returns a `Value`: the estimate, its uncertainty (`se`, of the kind the measure names) and details.
Random draws come from CPU generators keyed by (seed, draw, parameter name): the same on every device,
and the same numbers for a network and its ReLU-rescaled twin (which is what makes the relative
measures exactly invariant to that rescaling, up to float rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from awp.errors import UserError
from awp.perturb import ascent_step, layer_norms
from landscape.core.directions import parameter_seed
from landscape.core.objective import Objective, Params


@dataclass(frozen=True)
class Value:
    """One measure at one checkpoint and scope: the estimate, its uncertainty and what went into it."""

    value: float
    se: float
    details: dict[str, float] = field(default_factory=dict)


def gaussian(objective: Objective, seed: int, k: int, stream: str) -> Params:
    """Draw k of N(0, I) for every scope parameter, from a CPU generator per (seed, k, stream:name)."""
    out = {}
    for name in objective.names:
        w = objective.w[name]
        gen = torch.Generator(device="cpu").manual_seed(parameter_seed(seed, k, f"{stream}:{name}"))
        out[name] = torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w.device, w.dtype)
    return out


def _difference_se(diffs: np.ndarray, rho_k: list[dict], rho0: dict) -> float:
    """se of the mean of diffs_k = rho(w + nu_k) - rho(w) over examples and draws: the draw spread / sqrt(n)
    plus the example noise of the points (mean of their variances) and of rho(w), conservatively added
    (the same rule as `landscape.core.sharpness.mean_curve`)."""
    var = np.mean([r["adv_loss_se"] ** 2 for r in rho_k]) + rho0["adv_loss_se"] ** 2
    if len(diffs) > 1:
        var += diffs.var(ddof=1) / len(diffs)
    return float(math.sqrt(var))


def average_case(objective: Objective, draw: Callable[[int], Params], draws: int) -> Value:
    """E_k rho(w + nu_k) - rho(w) over `draws` perturbations nu_k = draw(k), with its `_difference_se`."""
    rho0 = objective.rho()
    rho_k = [objective.rho(draw(k)) for k in range(draws)]
    diffs = np.array([r["adv_loss"] - rho0["adv_loss"] for r in rho_k])
    return Value(float(diffs.mean()), _difference_se(diffs, rho_k, rho0),
                 {"rho0": rho0["adv_loss"], "draws": draws, "spread": float(np.std(diffs, ddof=1)) if draws > 1 else math.nan})


# ---------------------------------------------------------------------------------------------
# Robust flatness (Stutz et al. 2021): relative per-layer L2 balls
# ---------------------------------------------------------------------------------------------


def relative_sphere(objective: Objective, xi: float, seed: int, k: int) -> Params:
    """nu_l = xi ||w_l|| z_l / ||z_l||, z ~ N(0, I): draw k on the surface of Stutz's relative ball (in
    high dimension almost all of a ball's volume lies next to its surface)."""
    z = gaussian(objective, seed, k, "flatness")
    return {n: xi * objective.w[n].norm() * t / t.norm().clamp_min(1e-12) for n, t in z.items()}


def robust_flatness_average(objective: Objective, *, xi: float, draws: int, seed: int) -> Value:
    """Stutz et al.'s average-case robust flatness: E rho(w + nu) - rho(w), ||nu_l|| = xi ||w_l||."""
    return average_case(objective, lambda k: relative_sphere(objective, xi, seed, k), draws)


def worst_case(objective: Objective, step: Callable[[Params, Params], Params], steps: int) -> Value:
    """max_nu rho(w + nu) - rho(w) by `steps` of projected ascent nu <- step(nu, g) with g the gradient at
    w + nu, x' re-made there each time (a joint weight-and-input attack); the value is the highest rho
    seen at the steps' points, each with PGD run afresh: a lower bound of the maximum. se: over examples, the two points taken as independent."""
    rho0 = objective.rho()
    nu = objective.zeros()
    best, best_nu = rho0, nu
    for _ in range(steps):
        nu = step(nu, objective.grad(nu))
        r = objective.rho(nu)
        if r["adv_loss"] > best["adv_loss"]:  # ascent on a PGD-made loss can overshoot: keep the highest point
            best, best_nu = r, nu
    se = math.sqrt(best["adv_loss_se"] ** 2 + rho0["adv_loss_se"] ** 2)
    size = math.sqrt(sum(float(t.double().square().sum()) for t in best_nu.values()))
    return Value(best["adv_loss"] - rho0["adv_loss"], se, {"rho0": rho0["adv_loss"], "steps": steps, "norm_nu": size})


def robust_flatness_worst(objective: Objective, *, xi: float, steps: int) -> Value:
    """Stutz et al.'s worst-case robust flatness over ||nu_l|| <= xi ||w_l||: Eq. 10 steps of size
    eta = 2 xi / steps relative to ||w_l||, projected by Eq. 15 with gamma = xi (AWP's own ascent)."""
    names = objective.names
    w_norms = layer_norms([objective.w[n] for n in names])

    def step(nu: Params, g: Params) -> Params:
        out = ascent_step([nu[n] for n in names], [g[n] for n in names], w_norms, 2 * xi / steps, xi)  # Eq. 10, 15
        return dict(zip(names, out))

    return worst_case(objective, step, steps)


# ---------------------------------------------------------------------------------------------
# Adaptive sharpness (Kwon et al. 2021; Andriushchenko et al. 2023): delta = |w| * u, ||u||_p <= r
# ---------------------------------------------------------------------------------------------


def _project_u(u: Params, r: float, p: str) -> Params:
    """Onto ||u||_p <= r over the whole scope: clip for p = inf, a scale for p = 2."""
    if p == "inf":
        return {n: t.clamp(-r, r) for n, t in u.items()}
    norm = math.sqrt(sum(float(t.double().square().sum()) for t in u.values()))
    scale = min(1.0, r / norm) if norm > 0 else 1.0
    return {n: t * scale for n, t in u.items()}


def adaptive_worst(objective: Objective, *, r: float, p: str, steps: int) -> Value:
    """max over ||delta / |w| ||_p <= r of rho(w + delta) - rho(w): ascent in u = delta / |w| (its gradient
    is |w| * g), sign steps for p = inf and normalized steps for p = 2, of size 2 r / steps, projected."""
    if p not in ("2", "inf"):
        raise UserError(f"adaptive sharpness p must be 2 or inf, got {p!r}")
    absw = {n: objective.w[n].abs() for n in objective.names}
    state = {"u": {n: torch.zeros_like(t) for n, t in absw.items()}}
    eta = 2 * r / steps

    def step(nu: Params, g: Params) -> Params:
        g_u = {n: absw[n] * g[n] for n in absw}  # chain rule: d rho / d u = |w| * d rho / d delta
        if p == "inf":
            moved = {n: state["u"][n] + eta * g_u[n].sign() for n in absw}
        else:
            norm = math.sqrt(sum(float(t.double().square().sum()) for t in g_u.values()))
            moved = {n: state["u"][n] + eta * g_u[n] / max(norm, 1e-12) for n in absw}
        state["u"] = _project_u(moved, r, p)
        return {n: absw[n] * state["u"][n] for n in absw}

    return worst_case(objective, step, steps)


def adaptive_average(objective: Objective, *, r: float, draws: int, seed: int) -> Value:
    """E rho(w + delta) - rho(w) for delta ~ N(0, r^2 diag(w^2)) (Andriushchenko et al.'s average case)."""
    def draw(k: int) -> Params:
        z = gaussian(objective, seed, k, "adaptive")
        return {n: r * objective.w[n].abs() * t for n, t in z.items()}

    return average_case(objective, draw, draws)


# ---------------------------------------------------------------------------------------------
# PAC-Bayes flatness (Jiang et al. 2020): the largest sigma whose expected rise stays under a threshold
# ---------------------------------------------------------------------------------------------


def bisect_sigma(rise: Callable[[float], float], threshold: float, sigma0: float, iters: int,
                 max_doublings: int = 30) -> tuple[float, float]:
    """(lo, hi): lo passes (rise(lo) <= threshold), hi fails, hi - lo = (first bracket) / 2^iters. The
    bracket is found on the dyadic grid sigma0 2^k (doubling from sigma0 while it passes, halving while
    it fails), then bisected. A larger threshold never gives a smaller bracket, for any rise function:
    every decision that passes at a threshold passes at a larger one."""
    lo, hi = 0.0, sigma0
    if rise(sigma0) <= threshold:
        lo = sigma0
        hi = 2 * sigma0
        for _ in range(max_doublings):
            if rise(hi) > threshold:
                break
            lo, hi = hi, 2 * hi
        else:
            return lo, math.inf
    else:
        for _ in range(max_doublings):
            cand = hi / 2
            if rise(cand) <= threshold:
                lo = cand
                break
            hi = cand
        else:
            return 0.0, hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        if rise(mid) <= threshold:
            lo = mid
        else:
            hi = mid
    return lo, hi


def pac_bayes(objective: Objective, *, threshold: float, draws: int, iters: int, seed: int,
              magnitude: bool = False, eps: float = 1e-3, sigma0: float | None = None) -> Value:
    """Jiang et al.'s PAC-Bayes flatness 1 / sigma'^2: sigma' the largest sigma with the mean over `draws`
    fixed z_k of rho(w + u_k) - rho(w) <= threshold, u_k = sigma z_k (or, `magnitude`, z_k sqrt(sigma^2
    w^2 + eps^2)). The same z_k at every sigma (common random numbers), so the rise is a deterministic
    function of sigma; sigma' is the middle of the final bisection bracket and the uncertainty is half
    the bracket's width on the 1 / sigma^2 scale (the Monte-Carlo noise of the draws is not in it)."""
    rho0 = objective.rho()["adv_loss"]
    zs = [gaussian(objective, seed, k, "pac-bayes") for k in range(draws)]
    cache: dict[float, float] = {}

    def perturbation(z: Params, sigma: float) -> Params:
        if magnitude:
            return {n: t * torch.sqrt(sigma**2 * objective.w[n].square() + eps**2) for n, t in z.items()}
        return {n: sigma * t for n, t in z.items()}

    def rise(sigma: float) -> float:
        if sigma not in cache:
            cache[sigma] = float(np.mean([objective.rho(perturbation(z, sigma))["adv_loss"] for z in zs])) - rho0
        return cache[sigma]

    if sigma0 is None:  # a start on the scale of the weights: 1 (relative) or the weights' rms (plain)
        sq = sum(float(objective.w[n].double().square().sum()) for n in objective.names)
        sigma0 = 0.1 if magnitude else 0.1 * math.sqrt(sq / max(1, sum(objective.w[n].numel() for n in objective.names)))
    lo, hi = bisect_sigma(rise, threshold, sigma0, iters)
    details = {"sigma_lo": lo, "sigma_hi": hi, "rho0": rho0, "evaluations": len(cache) * draws}
    if lo == 0.0 or not math.isfinite(hi):  # no bracket: the rise passes (or fails) the threshold at every sigma tried
        return Value(math.nan, math.nan, details)
    mid = (lo + hi) / 2
    return Value(1 / mid**2, (1 / lo**2 - 1 / hi**2) / 2, {"sigma": mid, **details})
