"""Random directions in weight space (Alg. 1 lines 2-7), keyed by parameter name.

Direction k of a probe is a pure function of (seed, k, parameter name, shape): every parameter
is drawn on its own CPU generator, so a direction never depends on the device, on how many
directions were drawn before it, or on the order in which the model lists its parameters.
Normalization (Eq. 5, after Li et al.) rescales it to the weights' own scale, which removes the
scale invariance of ReLU networks (Appendix B.1, footnote).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Mapping

import numpy as np
import torch
from torch import Tensor

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

