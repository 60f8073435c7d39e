"""Directions in weight space, keyed by parameter name: random ones (Alg. 1 lines 2-7) and a registry of
direction kinds (random, interpolate, given tensors) rebuilt from the JSON spec a results file records.

Direction k of a probe is a pure function of (seed, k, parameter name, shape): every parameter
is drawn on its own CPU generator, so a direction never depends on the device, on how many
directions were drawn before it, or on the order in which the model lists its parameters.
Normalization (Eq. 5, after Li et al.) rescales it to the weights' own scale, which removes the
scale invariance of ReLU networks (Appendix B.1, footnote).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from awp.errors import UserError
from awp.registry import Registry

Direction = dict[str, Tensor]  # parameter name -> tensor shaped like that parameter

# A normalization maps (raw Gaussian d, weight w) of one parameter with dim >= 2 to the direction.
Normalization = Callable[[Tensor, Tensor], Tensor]

_TINY = 1e-12  # keeps a zero-norm slice of d from dividing by zero (its w slice then sets the scale)


def filter_normalize(d: Tensor, w: Tensor) -> Tensor:
    """Eq. 5 / Alg. 1 line 5: d_{l,j} <- d_{l,j} / ||d_{l,j}||_F * ||w_{l,j}||_F for every filter j
    (a slice along dim 0: an output channel of a conv, a row of a linear layer)."""
    d_norm = d.flatten(1).norm(dim=1)  # [F_l]
    w_norm = w.flatten(1).norm(dim=1)  # [F_l]
    scale = w_norm / d_norm.clamp_min(_TINY)
    return d * scale.view(-1, *([1] * (d.dim() - 1)))


def layer_normalize(d: Tensor, w: Tensor) -> Tensor:
    """d_l <- d_l / ||d_l||_F * ||w_l||_F: one scale per parameter tensor (layer)."""
    return d * (w.norm() / d.norm().clamp_min(_TINY))


def no_normalize(d: Tensor, w: Tensor) -> Tensor:
    """The raw Gaussian: no protection against rescaled layers (the ablation of Li et al.)."""
    return d


NORMALIZATIONS: Registry[Normalization] = Registry("direction normalization", {
    "filter": filter_normalize,
    "layer": layer_normalize,
    "none": no_normalize,
})


def normalization(name: str) -> Normalization:
    """The normalization registered as `name`; an unknown name is a one-line `UserError`."""
    return NORMALIZATIONS.lookup(name)


def parameter_seed(seed: int, k: int, name: str) -> int:
    """A 63-bit generator seed for parameter `name` of direction k, mixed by NumPy's SeedSequence
    (a stable hash of the name: Python's `hash` is salted per process)."""
    name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, k, name_key]).generate_state(2, np.uint32)
    return int(state[0]) | (int(state[1] & 0x7FFFFFFF) << 32)


def random_direction(
    params: Mapping[str, Tensor],
    seed: int,
    k: int,
    normalize: str = "filter",
    include_1d: bool = False,
) -> Direction:
    """Direction k (Alg. 1 line 2: d ~ N(0, I)), normalized per `normalize` (lines 3-7).

    Returns float32 CPU tensors keyed like `params`. Parameters with dim <= 1 (biases, BatchNorm
    affine) draw no random numbers: their direction is zero, or with `include_1d` the weight itself,
    d_l = w_l, as Li et al. do (loss-landscape `net_plotter.normalize_directions_for_weights`, which
    copies w into the direction of every 1-D parameter whatever the normalization). Norms are taken
    from a CPU float copy of the weights, so the result is identical wherever the model lives.
    """
    norm_fn = normalization(normalize)
    out: Direction = {}
    for name, p in params.items():
        w = p.detach().to("cpu", torch.float32)
        if w.dim() <= 1:
            # Li et al.: biases and BN stay put (d_l = 0), or with include_1d move along themselves (d_l = w_l).
            out[name] = w.clone() if include_1d else torch.zeros_like(w)
            continue
        gen = torch.Generator(device="cpu").manual_seed(parameter_seed(seed, k, name))
        d = torch.randn(w.shape, generator=gen, dtype=torch.float32)
        out[name] = norm_fn(d, w)
    return out



# ---------------------------------------------------------------------------------------------
# Direction kinds: a direction is a JSON spec {"kind": ..., ...} rebuilt at each checkpoint's weights
# ---------------------------------------------------------------------------------------------

Spec = Mapping[str, Any]  # {"kind": name, ...}: JSON, recorded in the results file


@dataclass(frozen=True)
class DirectionContext:
    """What a kind may need besides the spec and w: the weights of another checkpoint named by its
    identity (`interpolate`), and the tensors a results file keeps for a kind that cannot be rebuilt."""

    target: Callable[[Mapping[str, Any]], Mapping[str, Tensor]] | None = None
    stored: Mapping[str, Tensor] | None = None


@dataclass(frozen=True)
class DirectionKind:
    """`build(spec, w, context)` -> the direction at weights w (CPU float32, keyed like w). A kind
    that is not `regenerable` has its tensors kept in the results file."""

    build: Callable[[Spec, Mapping[str, Tensor], DirectionContext], Direction]
    regenerable: bool
    summary: str


def _random(spec: Spec, w: Mapping[str, Tensor], ctx: DirectionContext) -> Direction:
    return random_direction(w, int(spec["seed"]), int(spec["index"]), spec.get("normalize", "filter"),
                            bool(spec.get("include_bn", False)))  # Alg. 1 lines 2-7


def _interpolate(spec: Spec, w: Mapping[str, Tensor], ctx: DirectionContext) -> Direction:
    """d = w_to - w for every parameter: alpha = 1 is the other checkpoint's weights (its buffers, e.g.
    BN statistics, are not moved: `--bn recalibrate` re-estimates them along the line)."""
    if ctx.target is None:
        raise UserError("an interpolate direction needs the checkpoint it leads to")
    to = ctx.target(spec["to"])
    _check_fits(to, w, f"the target {spec['to'].get('label', '?')}")
    return {n: to[n].detach().to("cpu", torch.float32) - t.detach().to("cpu", torch.float32) for n, t in w.items()}


def _tensors(spec: Spec, w: Mapping[str, Tensor], ctx: DirectionContext) -> Direction:
    if ctx.stored is None:
        raise UserError("a given direction needs its tensors")
    _check_fits(ctx.stored, w, "the given direction")
    return {n: ctx.stored[n].detach().to("cpu", torch.float32) for n in w}


def _check_fits(d: Mapping[str, Tensor], w: Mapping[str, Tensor], what: str) -> None:
    """One line naming the first parameters missing, unexpected or of another shape."""
    missing, extra = sorted(w.keys() - d.keys()), sorted(d.keys() - w.keys())
    shapes = [n for n in w if n in d and tuple(d[n].shape) != tuple(w[n].shape)]
    if missing or extra or shapes:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else "",
                 f"shape of {shapes[0]} {tuple(d[shapes[0]].shape)} vs {tuple(w[shapes[0]].shape)}" if shapes else ""]
        raise UserError(f"{what} does not fit the model's parameters: {'; '.join(p for p in parts if p)}")


DIRECTIONS: Registry[DirectionKind] = Registry("--direction kind", {
    "random": DirectionKind(_random, True, "filter-normalized Gaussian direction (seed, index): Eq. 5, Alg. 1"),
    "interpolate": DirectionKind(_interpolate, True, "the straight line to another checkpoint (--to)"),
    "tensors": DirectionKind(_tensors, False, "given tensors (Python API), kept in the results file"),
})


def build_direction(spec: Spec, w: Mapping[str, Tensor], ctx: DirectionContext = DirectionContext()) -> Direction:
    """The direction `spec` at weights w; an unknown kind is a one-line `UserError`."""
    return DIRECTIONS.lookup(spec.get("kind", "")).build(spec, w, ctx)


def random_specs(n: int, seed: int, normalize: str = "filter", include_bn: bool = False, start: int = 0) -> list[dict]:
    """Specs of random directions start..start+n-1 for `seed` (probe's directions; plot2d's d, e = 0, 1)."""
    normalization(normalize)
    return [{"kind": "random", "seed": int(seed), "index": start + k, "normalize": normalize,
             "include_bn": bool(include_bn)} for k in range(n)]
