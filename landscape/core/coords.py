"""Landscape coordinates: the alpha grid of Alg. 1 line 8 (and beta for the 2-D plot), from 'MIN:MAX:NUM'."""

from __future__ import annotations

import numpy as np

from awp.config import parse_fraction
from awp.errors import UserError

# Each alpha is a PGD evaluation of the whole probe set per direction: more is a typo, not a plan (and
# keeps the alphas and one direction's results to a few MB; `ProbeResults` checks the whole allocation).
MAX_POINTS = 100_000


def parse_range(text: str, name: str = "--alphas") -> np.ndarray:
    """'MIN:MAX:NUM' -> NUM evenly spaced values from MIN to MAX inclusive (float64).

    MIN < MAX and 2 <= NUM <= MAX_POINTS are required (checked before anything is allocated). A value
    within 1e-12 of the range from 0 is set to 0 exactly, so alpha = 0 is the unperturbed w bit for bit.
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
    values = np.linspace(lo, hi, num)
    values[np.abs(values) < 1e-12 * (hi - lo)] = 0.0
    return values


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
