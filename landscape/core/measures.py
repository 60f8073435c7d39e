"""The menu of robust sharpness measures of `landscape sharpness`: one registry, each entry computing
one `Value` (estimate, uncertainty, details) from an `Objective` (rho around w over a scope of
parameters) and the measure parameters it declares. Every table, file, figure and `gap --measures`
iterates `MEASURES`; the CLI's flags come from `MEASURE_PARAMS`.

Each measure says whether it is invariant to ReLU rescaling (layer l's weights times a > 0, layer
l + 1's divided by a: the same function, Dinh et al. 2017), which tests/test_measures.py checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from awp.errors import UserError
from awp.methods.base import Param, choice, integer, number
from awp.registry import Registry
from landscape.core import flatness
from landscape.core import sharpness as sharp
from landscape.core.directions import random_direction
from landscape.core.flatness import Value
from landscape.core.objective import Objective, ReattackedHessian

# ---------------------------------------------------------------------------------------------
# Parameters, each declared once (default, where it comes from, what is accepted)
# ---------------------------------------------------------------------------------------------


def _flag_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
        return v.lower() in ("true", "1", "yes")
    raise ValueError(v)


MEASURE_PARAMS: Registry[Param] = Registry("measure parameter", {p.name: p for p in (
    Param("dirs", 3, integer(1), "an integer >= 1", "rise, curvature: random filter-normalized directions (as gap's probe)"),
    Param("radius", 0.5, number(1e-12), "a number > 0", "rise, curvature: |alpha| r of the rise (probe's default on -1:1); the curvature fits |alpha| <= r/2"),
    Param("xi_avg", 0.5, number(1e-12), "a number > 0", "flatness-avg: relative size xi, ||nu_l|| = xi ||w_l|| (our default; Stutz et al. sweep xi)"),
    Param("xi_worst", 0.05, number(1e-12), "a number > 0", "flatness-worst: relative radius xi, ||nu_l|| <= xi ||w_l|| (our default, 5x AWP's gamma: a rise well above its se on 100 digits)"),
    Param("draws", 5, integer(1), "an integer >= 1", "flatness-avg, adaptive-avg: random perturbations averaged"),
    Param("ascent_steps", 5, integer(1), "an integer >= 1", "worst-case measures: steps of the weight ascent, x' re-made at each"),
    Param("adaptive_r_l2", 2.0, number(1e-12), "a number > 0", "adaptive-worst-l2: radius r of ||delta/|w| ||_2 <= r over the scope (our default)"),
    Param("adaptive_r_linf", 0.05, number(1e-12), "a number > 0", "adaptive-worst-linf and adaptive-avg: r of ||delta/|w| ||_inf <= r, and the Gaussian's r (our default)"),
    Param("pac_threshold", 0.1, number(1e-12), "a number > 0", "pac-bayes*: the allowed rise of rho in expectation (Jiang et al.: 0.1)"),
    Param("pac_draws", 3, integer(1), "an integer >= 1", "pac-bayes*: Gaussian draws averaged at each sigma (the same draws at every sigma)"),
    Param("pac_iters", 8, integer(1), "an integer >= 1", "pac-bayes*: bisection steps after the bracket"),
    Param("pac_eps", 1e-3, number(0.0), "a number >= 0", "pac-bayes-mag: the floor eps of N(0, sigma^2 w^2 + eps^2) (Jiang et al.: 1e-3; 0 makes it rescaling-invariant)"),
    Param("trace_probes", 50, integer(2), "an integer >= 2", "hessian-trace: Rademacher probes of Hutchinson's estimator"),
    Param("eig_method", "lanczos", choice("lanczos", "power"), "lanczos or power", "hessian-top: Lanczos (scipy's ARPACK) or power iteration"),
    Param("eig_iters", 100, integer(1), "an integer >= 1", "hessian-top: most iterations"),
    Param("hessian_reattack", False, _flag_bool, "true or false", "hessian-*: re-make x' at every weight point (finite differences of the re-attacked gradient) instead of one fixed adversarial batch made at w"),
)})


def resolve_params(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every measure parameter, the given ones parsed (one-line error naming the bad value), the rest at
    their defaults."""
    given = dict(given or {})
    out = {}
    for name, p in MEASURE_PARAMS.items():
        raw = given.pop(name, None)
        if raw is None:
            out[name] = p.default
            continue
        try:
            out[name] = p.parse(raw)
        except (TypeError, ValueError):
            raise UserError(f"{param_flag(name)} {raw!r} is not accepted; give {p.accepts}") from None
    unknown = [k for k, v in given.items() if v is not None]
    if unknown:
        raise UserError(f"unknown measure parameter {unknown[0]!r}; accepted: {', '.join(MEASURE_PARAMS)}")
    return out


def param_flag(name: str) -> str:
    """'xi_avg' -> '--xi-avg'."""
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------------------------------------
# The measures
# ---------------------------------------------------------------------------------------------

Compute = Callable[[Objective, Mapping[str, Any], int, dict], Value]  # (objective, params, seed, cache) -> Value


@dataclass(frozen=True)
class MeasureKind:
    """One measure: how to compute it, a one-line definition, the parameters it reads, whether it is
    invariant to ReLU rescaling (and why), and what its uncertainty `se` is."""

    compute: Compute
    summary: str
    params: tuple[str, ...]
    invariant: bool
    invariance: str
    uncertainty: str
    label: str  # for axes and tables

    def help(self) -> str:
        return f"{self.summary} [{'invariant' if self.invariant else 'not invariant'} to ReLU rescaling: {self.invariance}]"


def _curves(obj: Objective, p: Mapping[str, Any], seed: int, cache: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rho along `dirs` random filter-normalized directions at alpha in {-r, -r/2, 0, r/2, r} (Eq. 5,
    Alg. 1), shared by rise and curvature: (alphas [5], curves [D, 5], point se [D, 5])."""
    key = ("curves", p["dirs"], p["radius"], seed)
    if key not in cache:
        r = p["radius"]
        alphas = np.array([-r, -r / 2, 0.0, r / 2, r])
        centre = {n: obj.w[n] for n in obj.names}
        curves, se = np.zeros((p["dirs"], 5)), np.zeros((p["dirs"], 5))
        rho0 = obj.rho()
        for k in range(p["dirs"]):
            d = random_direction(centre, seed, k, "filter", include_1d=False)  # probe's direction k, restricted
            for j, a in enumerate(alphas):
                point = rho0 if a == 0.0 else obj.rho({n: float(a) * t.to(obj.w[n].device, obj.w[n].dtype) for n, t in d.items()})
                curves[k, j], se[k, j] = point["adv_loss"], point["adv_loss_se"]
        cache[key] = (alphas, curves, se)
    return cache[key]


def _over_directions(values: np.ndarray, example_se: float) -> Value:
    """Mean over directions, se^2 = spread^2 / D + example se^2 (`sharpness.mean_curve`'s rule)."""
    spread = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    var = (spread**2 / len(values) if len(values) > 1 else 0.0) + (example_se**2 if math.isfinite(example_se) else 0.0)
    return Value(float(values.mean()), math.sqrt(var) if (len(values) > 1 or math.isfinite(example_se)) else math.nan,
                 {"dirs": len(values), "spread": spread})


def _rise(obj: Objective, p: Mapping[str, Any], seed: int, cache: dict) -> Value:
    alphas, curves, se = _curves(obj, p, seed, cache)
    return _over_directions(sharp.rise(alphas, curves, p["radius"]), sharp.mean_rise_se(alphas, se, p["radius"]))


def _curvature(obj: Objective, p: Mapping[str, Any], seed: int, cache: dict) -> Value:
    alphas, curves, _ = _curves(obj, p, seed, cache)
    return _over_directions(sharp.curvature(alphas, curves, p["radius"] / 2), math.nan)


def _hessian(obj: Objective, p: Mapping[str, Any], cache: dict):
    """The Hessian operator of the adversarial loss over the scope: exact HVPs on one adversarial batch
    made at w (torch.func), or finite differences of the re-attacked gradient (`hessian_reattack`)."""
    key = ("hessian", p["hessian_reattack"])
    if key not in cache:
        if p["hessian_reattack"]:
            cache[key] = ReattackedHessian(obj)
        else:
            from landscape.core.curvature import HessianOperator

            cache[key] = HessianOperator(obj.model, obj.examples(), obj.names)
    return cache[key]


def _trace(obj: Objective, p: Mapping[str, Any], seed: int, cache: dict) -> Value:
    from landscape.core.curvature import hutchinson_trace

    est = hutchinson_trace(_hessian(obj, p, cache), samples=p["trace_probes"], seed=seed)  # Hutchinson 1989
    return Value(est.value, est.se, {"probes": est.samples})


def _top(obj: Objective, p: Mapping[str, Any], seed: int, cache: dict) -> Value:
    from landscape.core.curvature import top_eigenpairs

    eig = top_eigenpairs(_hessian(obj, p, cache), k=1, method=p["eig_method"], iters=p["eig_iters"], seed=seed)
    return Value(float(eig.values[0]), float(eig.residuals[0]), {"matvecs": eig.matvecs})


_DIFF = "se over examples and draws (conservative sum of variances)"
_WORST = "se over examples of the two points; the value is a lower bound of the maximum (an attack)"

MEASURES: Registry[MeasureKind] = Registry("sharpness measure", {
    "rise": MeasureKind(_rise, "(rho(r) + rho(-r))/2 - rho(0) along random filter-normalized directions (probe's rise)",
                        ("dirs", "radius"), True, "filter-normalized directions scale with each filter of w",
                        "se over directions and examples", "rise of ρ at |α| = r"),
    "curvature": MeasureKind(_curvature, "rho''(0) of a quadratic through alpha in {-r/2, 0, r/2} (probe's curvature)",
                             ("dirs", "radius"), True, "filter-normalized directions", "se over directions",
                             "curvature ρ''(0)"),
    "flatness-avg": MeasureKind(lambda o, p, s, c: flatness.robust_flatness_average(o, xi=p["xi_avg"], draws=p["draws"], seed=s),
                                "E rho(w + nu) - rho(w), ||nu_l|| = xi ||w_l|| (Stutz et al. 2021, average case)",
                                ("xi_avg", "draws"), True, "the ball is relative to each layer's norm", _DIFF,
                                "average-case robust flatness"),
    "flatness-worst": MeasureKind(lambda o, p, s, c: flatness.robust_flatness_worst(o, xi=p["xi_worst"], steps=p["ascent_steps"]),
                                  "max rho(w + nu) - rho(w) over ||nu_l|| <= xi ||w_l|| by a joint weight-and-input attack (Stutz et al. 2021)",
                                  ("xi_worst", "ascent_steps"), True, "relative per-layer ball and steps (Eq. 10, 15)",
                                  _WORST, "worst-case robust flatness"),
    "adaptive-avg": MeasureKind(lambda o, p, s, c: flatness.adaptive_average(o, r=p["adaptive_r_linf"], draws=p["draws"], seed=s),
                                "E rho(w + delta) - rho(w), delta ~ N(0, r^2 diag(w^2)) (Andriushchenko et al. 2023)",
                                ("adaptive_r_linf", "draws"), True, "element-wise scale |w|", _DIFF, "adaptive sharpness (average)"),
    "adaptive-worst-l2": MeasureKind(lambda o, p, s, c: flatness.adaptive_worst(o, r=p["adaptive_r_l2"], p="2", steps=p["ascent_steps"]),
                                     "max rho(w + delta) - rho(w) over ||delta / |w| ||_2 <= r (Kwon et al. 2021), projected ascent",
                                     ("adaptive_r_l2", "ascent_steps"), True, "element-wise scale |w|", _WORST,
                                     "adaptive sharpness (worst, p = 2)"),
    "adaptive-worst-linf": MeasureKind(lambda o, p, s, c: flatness.adaptive_worst(o, r=p["adaptive_r_linf"], p="inf", steps=p["ascent_steps"]),
                                       "max rho(w + delta) - rho(w) over ||delta / |w| ||_inf <= r (Andriushchenko et al. 2023), projected ascent",
                                       ("adaptive_r_linf", "ascent_steps"), True, "element-wise scale |w|", _WORST,
                                       "adaptive sharpness (worst, p = ∞)"),
    "pac-bayes": MeasureKind(lambda o, p, s, c: flatness.pac_bayes(o, threshold=p["pac_threshold"], draws=p["pac_draws"], iters=p["pac_iters"], seed=s),
                             "1/sigma^2, the largest sigma with E rho(w + u) - rho(w) <= threshold, u ~ N(0, sigma^2 I) (Jiang et al. 2020)",
                             ("pac_threshold", "pac_draws", "pac_iters"), False, "an isotropic sigma ignores each layer's scale",
                             "half the bisection bracket on the 1/sigma^2 scale", "PAC-Bayes flatness 1/σ²"),
    "pac-bayes-mag": MeasureKind(lambda o, p, s, c: flatness.pac_bayes(o, threshold=p["pac_threshold"], draws=p["pac_draws"], iters=p["pac_iters"], seed=s, magnitude=True, eps=p["pac_eps"]),
                                 "1/sigma^2 as pac-bayes with u ~ N(0, sigma^2 w^2 + eps^2) per weight (Jiang et al. 2020, magnitude-aware)",
                                 ("pac_threshold", "pac_draws", "pac_iters", "pac_eps"), True, "element-wise scale |w| (exactly with --pac-eps 0)",
                                 "half the bisection bracket on the 1/sigma^2 scale", "magnitude-aware PAC-Bayes flatness 1/σ'²"),
    "hessian-trace": MeasureKind(_trace, "tr H of rho on the adversarial batch made at w, by Hutchinson's estimator (torch.func HVPs)",
                                 ("trace_probes", "hessian_reattack"), False, "H scales as 1/a^2 in a layer multiplied by a",
                                 "Monte-Carlo se over the Rademacher probes", "Hessian trace"),
    "hessian-top": MeasureKind(_top, "largest eigenvalue of H of rho on the adversarial batch made at w (Lanczos via ARPACK, or power iteration)",
                               ("eig_method", "eig_iters", "hessian_reattack"), False, "H scales as 1/a^2 in a layer multiplied by a",
                               "the residual ||H v - lambda v||: an eigenvalue lies within it", "top Hessian eigenvalue"),
})

DEFAULT_MEASURES = ("rise", "curvature", "flatness-avg", "flatness-worst", "adaptive-avg", "adaptive-worst-linf",
                    "pac-bayes-mag", "hessian-trace", "hessian-top")


def parse_measures(text: str | None) -> tuple[str, ...]:
    """'rise,hessian-trace' -> the names, each checked against `MEASURES` (one line listing them);
    'all' is every measure, None the defaults."""
    if text is None:
        return DEFAULT_MEASURES
    if text.strip() == "all":
        return MEASURES.names()
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        raise UserError(f"--measures {text!r} names no measure; accepted: all, {', '.join(MEASURES)}")
    for n in names:
        if n not in MEASURES:
            raise UserError(f"unknown --measures name {n!r}; accepted: all, {', '.join(MEASURES)}")
    return names


def compute(name: str, objective: Objective, params: Mapping[str, Any], seed: int, cache: dict | None = None) -> Value:
    """Measure `name` at the objective's w over its scope (`cache` shares work between measures of one
    checkpoint and scope: the curves of rise and curvature, the Hessian operator)."""
    return MEASURES.lookup(name).compute(objective, params, seed, {} if cache is None else cache)
