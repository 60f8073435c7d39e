"""Landscape coordinates: the alpha grid of Alg. 1 line 8 (and beta for the 2-D plot), from 'MIN:MAX:NUM'."""

from __future__ import annotations

import numpy as np

from awp.config import parse_fraction
from awp.errors import UserError


def parse_range(text: str, name: str = "--alphas") -> np.ndarray:
    """'MIN:MAX:NUM' -> NUM evenly spaced values from MIN to MAX inclusive (float64).

    MIN < MAX and NUM >= 2 are required. A value within 1e-12 of the range from 0 is set to 0
    exactly, so alpha = 0 is the unperturbed w bit for bit.
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
    values = np.linspace(lo, hi, num)
    values[np.abs(values) < 1e-12 * (hi - lo)] = 0.0
    return values


def format_range(values: np.ndarray) -> str:
    """The inverse of `parse_range` for an evenly spaced grid: 'MIN:MAX:NUM'."""
    return f"{values[0]:g}:{values[-1]:g}:{len(values)}"
