"""Landscape coordinates from the command line: the alpha axis of Alg. 1 line 8 ('MIN:MAX:NUM') and the
2-D grid of Appendix B.2 ('NxM' over 'AMIN:AMAX,BMIN:BMAX'). Every axis is evenly spaced with a value
within rounding of 0 set to exactly 0, so alpha = 0 is the unperturbed w bit for bit.

Arrays over the 2-D grid are shaped [n_alpha, n_beta]: axis 0 is alpha (direction d), axis 1 is beta
(direction e), so cell (i, j) is the point w + alphas[i] * d + betas[j] * e.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from awp.config import check_allocation, parse_fraction
from awp.errors import UserError


def evenly(lo: float, hi: float, n: int) -> np.ndarray:
    """n evenly spaced values from lo to hi inclusive; a value within rounding of 0 is set to 0 exactly."""
    v = np.linspace(lo, hi, n)
    v[np.abs(v) < 1e-12 * max(abs(lo), abs(hi))] = 0.0
    return v


# ---------------------------------------------------------------------------------------------
# 1-D: the alpha axis
# ---------------------------------------------------------------------------------------------

# Each alpha is a PGD evaluation of the whole probe set per direction: more is a typo, not a plan (and
# keeps the alphas and one direction's results to a few MB; `results.check_size` checks the whole allocation).
MAX_POINTS = 100_000


def parse_range(text: str, name: str = "--alphas") -> np.ndarray:
    """'MIN:MAX:NUM' -> NUM evenly spaced values from MIN to MAX inclusive (float64).

    MIN < MAX and 2 <= NUM <= MAX_POINTS are required (checked before anything is allocated); spaced by
    `evenly`, so alpha = 0 is the unperturbed w bit for bit.
    """
    parts = str(text).split(":")
    if len(parts) != 3:
        raise UserError(f"{name} {text!r} is not MIN:MAX:NUM, e.g. -1:1:41")
    lo = parse_fraction(parts[0], f"{name} MIN", allow_negative=True)
    hi = parse_fraction(parts[1], f"{name} MAX", allow_negative=True)
    try:
        num = int(parts[2])
    except ValueError:
        raise UserError(f"{name} NUM {parts[2]!r} is not a whole number (in MIN:MAX:NUM)") from None
    if not lo < hi:
        raise UserError(f"{name} {text!r} is an empty or reversed range; MIN must be < MAX, e.g. -1:1:41")
    if num < 2:
        raise UserError(f"{name} {text!r} has NUM = {num}; at least 2 points are needed")
    if num > MAX_POINTS:
        raise UserError(f"{name} {text!r} asks for {num:,} points, each a PGD evaluation of the data per direction; "
                        f"at most {MAX_POINTS:,} are accepted")
    return evenly(lo, hi, num)


def parse_centred_range(text: str, name: str = "--alphas") -> np.ndarray:
    """`parse_range` for a landscape centred on w: MIN < 0 < MAX and alpha = 0.0 exactly one of the points,
    since rho(0), acc(0) and the sharpness rise are read there (an even NUM over -1:1 skips 0)."""
    values = parse_range(text, name)
    lo, hi, num = values[0], values[-1], len(values)
    if num < 3:
        raise UserError(f"{name} {text!r} has {num} points; a landscape centred on w needs at least 3 (MIN, 0, MAX)")
    if not lo < 0 < hi:
        raise UserError(f"{name} {text!r} must have MIN < 0 < MAX: the landscape is centred on w (alpha = 0) "
                        f"and sharpness compares both sides")
    if not (values == 0.0).any():
        hint = f"{lo:g}:{hi:g}:{num + 1}" if lo == -hi else "-1:1:41"
        raise UserError(f"{name} {text!r} has no point at alpha = 0 (w itself), where rho(0) and acc(0) are read; "
                        f"give an odd NUM with MIN = -MAX, e.g. {hint}")
    return values


# ---------------------------------------------------------------------------------------------
# 2-D: the (alpha, beta) grid
# ---------------------------------------------------------------------------------------------

MIN_AXIS_POINTS = 2  # one point per axis is not a plane (and the old 1x1 was just the corner (-1, -1))
# Bytes per grid point: four float64 metric grids and their four standard errors, the `done` mask, and
# the relative grid the figures compute.
BYTES_PER_POINT = 8 * 8 + 1 + 8


@dataclass(frozen=True)
class GridSpec:
    """`n_alpha` x `n_beta` evenly spaced points over [alpha_min, alpha_max] x [beta_min, beta_max]."""

    n_alpha: int
    n_beta: int
    alpha_range: tuple[float, float]
    beta_range: tuple[float, float]

    def __post_init__(self) -> None:
        for name, n in (("alpha", self.n_alpha), ("beta", self.n_beta)):
            if n < MIN_AXIS_POINTS:
                raise UserError(f"--grid needs at least {MIN_AXIS_POINTS} points along {name}, got {n}; "
                                f"for a 1-D landscape use `landscape probe`")
        check_allocation(self.size * BYTES_PER_POINT,
                         f"--grid {self.n_alpha}x{self.n_beta} ({self.size:,} points, each a PGD evaluation)")
        for name, (lo, hi) in (("alpha", self.alpha_range), ("beta", self.beta_range)):
            if not lo < hi:
                raise UserError(f"{name} range {lo:g}:{hi:g} is empty or reversed; give MIN:MAX with MIN < MAX")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_alpha, self.n_beta)

    @property
    def size(self) -> int:
        return self.n_alpha * self.n_beta

    @property
    def alphas(self) -> np.ndarray:
        return evenly(*self.alpha_range, self.n_alpha)

    @property
    def betas(self) -> np.ndarray:
        return evenly(*self.beta_range, self.n_beta)


def parse_grid(text: str) -> tuple[int, int]:
    """'21x21' or '31x11' -> (n_alpha, n_beta)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        if len(parts) != 2:
            raise ValueError
        na, nb = int(parts[0]), int(parts[1])
    except ValueError:
        raise UserError(f"--grid {text!r} is not NxM (points along alpha x points along beta), e.g. 21x21") from None
    if na < MIN_AXIS_POINTS or nb < MIN_AXIS_POINTS:
        raise UserError(f"--grid {text!r} needs at least {MIN_AXIS_POINTS} points per axis, e.g. 21x21; "
                        f"for a 1-D landscape use `landscape probe`")
    return na, nb


def parse_span(text: str, name: str) -> tuple[float, float]:
    """'MIN:MAX' -> (min, max) with min < max; fractions such as 1/2 accepted."""
    parts = text.split(":")
    if len(parts) != 2:
        raise UserError(f"{name} range {text!r} is not MIN:MAX, e.g. -1:1")
    lo = parse_fraction(parts[0], f"{name} range start", allow_negative=True)
    hi = parse_fraction(parts[1], f"{name} range end", allow_negative=True)
    if not lo < hi:
        raise UserError(f"{name} range {text!r} is empty or reversed; give MIN:MAX with MIN < MAX")
    return lo, hi


def parse_ranges(text: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """'-1:1,-0.5:0.5' -> ((alpha_min, alpha_max), (beta_min, beta_max)); one span is used for both."""
    spans = text.split(",")
    if len(spans) == 1:
        s = parse_span(spans[0], "alpha")
        return s, s
    if len(spans) != 2:
        raise UserError(f"range {text!r} is not AMIN:AMAX,BMIN:BMAX, e.g. -1:1,-0.5:0.5")
    return parse_span(spans[0], "alpha"), parse_span(spans[1], "beta")
