"""Parsing of user-facing values shared by every command: fractions like 8/255, devices, seeds, sizes."""

from __future__ import annotations

import math
import os

import torch

from awp.errors import UserError


def parse_fraction(value: str | float | int, name: str = "value", *, allow_negative: bool = False) -> float:
    """Parse '0.03', '8/255' or '8 / 255' to a finite float; a bad value is a one-line `UserError`.
    Booleans are refused (TOML's `eps = true` is a mistake, not 1.0), as is anything not a number or a string."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{name} {value!r} is not a number or a fraction like 8/255")
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


SEED_LIMIT = 2**63  # torch, numpy and the directions' hashing all take seeds in [0, 2^63)


def check_seed(value: int, name: str) -> int:
    """A seed is an integer in [0, 2^63): what every generator here accepts; else a one-line `UserError`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise UserError(f"{name} must be an integer in [0, 2^63), got {value!r}")
    return value


def physical_memory() -> int | None:
    """Bytes of physical memory (pages x page size), or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    """1.5e9 -> '1.4 GiB': sizes for messages."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"


def check_allocation(nbytes: int, what: str, fraction: float = 0.5) -> None:
    """Refuse before allocating: `what` needing more than `fraction` of physical memory is a one-line
    `UserError` stating the size, instead of a MemoryError traceback or a machine swapping to death."""
    total = physical_memory()
    if total is not None and nbytes > fraction * total:
        raise UserError(f"{what} would need {format_bytes(nbytes)} of memory, more than {fraction:.0%} of this "
                        f"machine's {format_bytes(total)}")
