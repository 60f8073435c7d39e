"""Learning-rate schedules by name, as pure functions of (epoch, iteration): nothing to save or resume.

`t` below is training progress in epochs at the end of the step being taken, in (0, epochs]:
t = (epoch - 1) + (iteration + 1) / iterations_per_epoch, epochs 1-based, iterations 0-based
(as in Rice et al.'s code, so a cyclic schedule's first step does not have lr 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

from awp.errors import UserError
from awp.registry import Registry


@dataclass(frozen=True)
class ScheduleSpec:
    """Everything a schedule may look at: base lr (peak for cyclic), total epochs, piecewise milestones
    as fractions of training, and the cyclic peak position as a fraction of training."""

    lr: float
    epochs: int
    milestones: tuple[float, ...] = (0.5, 0.75)
    cyclic_peak: float = 0.4  # Appendix C.1: peak at epoch 80 of 200
    divisor: float = 10.0  # piecewise: lr / 10 at each milestone


Schedule = Callable[[ScheduleSpec, float], float]
SCHEDULES: Registry[Schedule] = Registry("lr schedule")


def register_schedule(fn: Schedule) -> Schedule:
    return SCHEDULES.register(fn.__name__, fn)


@register_schedule
def piecewise(spec: ScheduleSpec, t: float) -> float:
    """Section 3 / 5.1: constant, divided by 10 at each milestone (50% and 75% of training: epochs 100
    and 150 of 200). Changes at epoch boundaries only, like the reference."""
    epoch_index = math.ceil(t - 1e-9) - 1  # 0-based epoch this step belongs to
    passed = sum(epoch_index >= m * spec.epochs - 1e-9 for m in spec.milestones)
    return spec.lr / spec.divisor**passed


@register_schedule
def cosine(spec: ScheduleSpec, t: float) -> float:
    """Appendix C.1: lr = lr0/2 * (cos(pi t / T) + 1), from lr0 down to 0 over T epochs (per iteration)."""
    return 0.5 * spec.lr * (math.cos(math.pi * t / spec.epochs) + 1.0)


@register_schedule
def cyclic(spec: ScheduleSpec, t: float) -> float:
    """Appendix C.1: linear from 0 up to lr0 at `cyclic_peak` of training, then linearly down to 0."""
    peak = spec.cyclic_peak * spec.epochs
    if t <= peak:
        return spec.lr * t / peak
    return spec.lr * max(0.0, (spec.epochs - t) / (spec.epochs - peak))


def get_schedule(name: str) -> Schedule:
    return SCHEDULES.lookup(name)


def learning_rate(name: str, spec: ScheduleSpec, epoch: int, iteration: int, iterations: int) -> float:
    """The lr for step `iteration` (0-based) of 1-based `epoch`, with `iterations` steps per epoch."""
    t = (epoch - 1) + (iteration + 1) / max(iterations, 1)
    return get_schedule(name)(spec, t)


def check_milestones(values: Sequence[float]) -> tuple[float, ...]:
    """Milestones are fractions of training in (0, 1], increasing."""
    out = tuple(float(v) for v in values)
    if any(not 0 < v <= 1 for v in out) or list(out) != sorted(out):
        raise UserError(f"lr milestones must be increasing fractions of training in (0, 1], got {list(out)}")
    return out
