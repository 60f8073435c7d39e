"""Parsing of user-facing values shared by every command: fractions like 8/255, devices, seeds."""

from __future__ import annotations

import math
import torch

from awp.errors import UserError


def parse_fraction(value: str | float | int, name: str = "value", *, allow_negative: bool = False) -> float:
    """Parse '0.03', '8/255' or '8 / 255' to a finite float; a bad value is a one-line `UserError`."""
    if isinstance(value, (int, float)):
        out = float(value)
    else:
        text = str(value).strip()
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                out = float(float(num) / float(den))  # float() rejects a second '/'
                if not math.isfinite(float(num)) or not math.isfinite(float(den)):
                    raise ValueError
            else:
                out = float(text)
        except (ValueError, ZeroDivisionError):
            raise UserError(f"{name} {value!r} is not a number or a fraction like 8/255") from None
    if not math.isfinite(out):
        raise UserError(f"{name} {value!r} is not finite; give a number or a fraction like 8/255")
    if out < 0 and not allow_negative:
        raise UserError(f"{name} {value!r} is negative; it must be >= 0")
    return out


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; 'cuda' without a GPU is a user error, not a crash."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} asked for, but no CUDA GPU is available; use --device cpu or auto")
        return torch.device(name)
    raise UserError(f"unknown device {name!r}; accepted: {', '.join(DEVICES)} (or cuda:N)")


def check_nonnegative_int(value: int, name: str) -> int:
    if value < 0:
        raise UserError(f"{name} must be >= 0, got {value}")
    return value


def check_positive_int(value: int, name: str) -> int:
    if value < 1:
        raise UserError(f"{name} must be >= 1, got {value}")
    return value
