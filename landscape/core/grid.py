"""The 2-D grid of (alpha, beta) coordinates: parsing, point order, and how points are shared among ranks.

Arrays over the grid are always shaped [n_alpha, n_beta]: axis 0 is alpha (direction d), axis 1 is
beta (direction e), so cell (i, j) is the point w + alphas[i] * d + betas[j] * e (Appendix B.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from awp.config import check_allocation, parse_fraction
from awp.errors import UserError

MIN_AXIS_POINTS = 2  # one point per axis is not a plane (and the old 1x1 was just the corner (-1, -1))
# Bytes per grid point of the results: four float64 metric grids and their four standard errors, the
# `done` mask, and the relative grid.
BYTES_PER_POINT = 8 * 8 + 1 + 8


def _axis(lo: float, hi: float, n: int) -> np.ndarray:
    """n evenly spaced values; a value within rounding of 0 is set to exactly 0, so the centre cell
    is the unperturbed w bit for bit."""
    v = np.linspace(lo, hi, n)
    v[np.abs(v) < 1e-12 * max(abs(lo), abs(hi))] = 0.0
    return v


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
        return _axis(*self.alpha_range, self.n_alpha)

    @property
    def betas(self) -> np.ndarray:
        return _axis(*self.beta_range, self.n_beta)

    def coords(self, flat: int) -> tuple[float, float]:
        """(alpha, beta) of flat point index `flat` (row-major over [n_alpha, n_beta])."""
        i, j = divmod(int(flat), self.n_beta)
        return float(self.alphas[i]), float(self.betas[j])


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


def parse_range(text: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """'-1:1,-0.5:0.5' -> ((alpha_min, alpha_max), (beta_min, beta_max)); one span is used for both."""
    spans = text.split(",")
    if len(spans) == 1:
        s = parse_span(spans[0], "alpha")
        return s, s
    if len(spans) != 2:
        raise UserError(f"range {text!r} is not AMIN:AMAX,BMIN:BMAX, e.g. -1:1,-0.5:0.5")
    return parse_span(spans[0], "alpha"), parse_span(spans[1], "beta")


def shard(todo: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank `rank`'s share of the flat point indices `todo`: round-robin, so ranks get near-equal
    counts and neighbouring (similar-cost) points go to different ranks; no communication needed."""
    return np.asarray(todo)[rank::world]
