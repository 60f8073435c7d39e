"""Adversarial Weight Perturbation on the model itself (Section 4, Algorithm 2, Appendix D.2).

No proxy copy of the model: the ascent direction comes from `torch.autograd.grad` on the perturbed
parameters, so their `.grad` (the optimizer's business) is never touched; the perturbation is added
in place and removed by copying the saved weights back, which is exact (w + v - v is not, in floats).

The math is in pure layer-wise functions on lists of per-layer tensors (`project_gamma` Eq. 15,
`ascent_step` Eq. 10, fused `torch._foreach_*` kernels, no host syncs, few allocations, so AWP's
overhead stays near its one extra forward/backward); `find_perturbation` runs Eq. 10 for K2 steps,
`perturbed` is Eq. 11's "go to w + v, come back to w", `frozen_batchnorm` keeps BatchNorm running
statistics untouched while v is searched (the reference searched on a copy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from awp.errors import UserError
from awp.weights import offset

# The layer-wise norms ||g_l||, ||v_l|| can be 0 (a layer with no gradient, v = 0 at the start);
# dividing by this floor then gives a zero step instead of NaN.
_TINY = 1e-20

Params = dict[str, nn.Parameter]
Tensors = dict[str, Tensor]


@dataclass(frozen=True)
class AWPConfig:
    """AWP's knobs with the paper's names: `gamma` (Eq. 8), `steps` K2, `step_size` eta2 (Eq. 10),
    `alternations` A (Algorithm 2 line 4), and whether 1-D parameters (biases, BN) are perturbed."""

    gamma: float = 5e-3
    steps: int = 1
    step_size: float | None = None  # None: gamma / (A * K2), Appendix D.2
    alternations: int = 1
    include_1d: bool = False

    def __post_init__(self) -> None:
        if not self.gamma >= 0:
            raise UserError(f"gamma must be >= 0, got {self.gamma}")
        if self.steps < 1:
            raise UserError(f"awp steps (K2) must be >= 1, got {self.steps}")
        if self.alternations < 1:
            raise UserError(f"awp alternations (A) must be >= 1, got {self.alternations}")
        if self.step_size is not None and not self.step_size >= 0:
            raise UserError(f"awp step size (eta2) must be >= 0, got {self.step_size}")

    @property
    def eta2(self) -> float:
        """The AWP step size; Appendix D.2: eta2 = gamma / (A * K2) by default."""
        if self.step_size is not None:
            return self.step_size
        return self.gamma / (self.alternations * self.steps)


# ---------------------------------------------------------------------------------------------
# Which parameters are perturbed
# ---------------------------------------------------------------------------------------------


def perturbable_params(model: nn.Module, include_1d: bool = False) -> Params:
    """Parameters AWP perturbs, by name: conv and linear weights (dim > 1), as the reference does;
    biases and BatchNorm affine parameters (dim 1) only when `include_1d`."""
    return {
        name: p
        for name, p in model.named_parameters()
        if p.requires_grad and (p.dim() > 1 or include_1d)
    }


# ---------------------------------------------------------------------------------------------
# The math, layer-wise (pure functions on lists of per-layer tensors, one list entry per layer l)
# ---------------------------------------------------------------------------------------------


def layer_norms(tensors: Sequence[Tensor]) -> Tensor:
    """||t_l|| (Frobenius) for every layer, as one tensor [L] (one fused kernel, not L small ones)."""
    return torch.stack(torch._foreach_norm(list(tensors)))


def _gamma_scale(v: Sequence[Tensor], w_norms: Tensor, gamma: float) -> list[Tensor]:
    """Eq. 15's factor per layer, as 0-d tensors: gamma * ||w_l|| / ||v_l|| where ||v_l|| > gamma * ||w_l||,
    else 1 (multiplying by it is then exact)."""
    radius = gamma * w_norms  # Eq. 8: ||v_l|| <= gamma * ||w_l||, [L]
    v_norms = layer_norms(v)
    return list(torch.where(v_norms > radius, radius / v_norms.clamp_min(_TINY), 1.0).unbind())  # L x []


def project_gamma(v: Sequence[Tensor], w_norms: Tensor, gamma: float) -> list[Tensor]:
    """Eq. 15: Pi_gamma(v)_l = gamma * ||w_l|| / ||v_l|| * v_l if ||v_l|| > gamma * ||w_l||, else v_l."""
    return list(torch._foreach_mul(list(v), _gamma_scale(v, w_norms, gamma)))


def ascent_step(v: Sequence[Tensor], g: Sequence[Tensor], w_norms: Tensor, eta2: float, gamma: float) -> list[Tensor]:
    """Eq. 10: v_l <- Pi_gamma(v_l + eta2 * g_l / ||g_l|| * ||w_l||), g_l the gradient of the mean
    adversarial loss with respect to v_l (= with respect to the weights at w + v). Neither v nor g is
    modified: the step is built in new tensors, which the projection then scales in place (the same
    numbers as out of place, fewer allocations: this runs once per training step)."""
    scale = eta2 * w_norms / layer_norms(g).clamp_min(_TINY)  # [L]; a zero gradient gives a zero step
    stepped = torch._foreach_mul(list(g), list(scale.unbind()))
    torch._foreach_add_(stepped, list(v))  # v_l + step_l (float addition commutes: bit for bit v + step)
    torch._foreach_mul_(stepped, _gamma_scale(stepped, w_norms, gamma))  # Eq. 15
    return list(stepped)


def relative_norms(v: Mapping[str, Tensor], w: Mapping[str, Tensor]) -> dict[str, float]:
    """||v_l|| / ||w_l|| per layer: gamma for every layer after one default AWP step (Eq. 8)."""
    return {k: float(v[k].norm() / w[k].norm().clamp_min(_TINY)) for k in v}


# ---------------------------------------------------------------------------------------------
# Moving the model between w and w + v
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def perturbed(params: Params, v: Mapping[str, Tensor] | None = None) -> Iterator[Tensors]:
    """Eq. 11 as a block: saves the centre w, puts the model at w + v (when v is given; `find_perturbation`
    may move it there later), and on exit, even on error, copies w back bit for bit. Yields w."""
    with offset(params, [(v, 1.0)] if v is not None else ()) as w:
        yield w


def _stops_tracking(m: nn.Module) -> bool:
    """A BatchNorm with torch's own forward, tracking its statistics: with `track_running_stats` off, its
    train-mode forward normalizes by the batch statistics exactly as with it on (the running statistics
    are just not passed to `F.batch_norm`), and updates nothing, `num_batches_tracked` included."""
    bn = nn.modules.batchnorm._BatchNorm
    return isinstance(m, bn) and type(m).forward is bn.forward and m.track_running_stats


@contextlib.contextmanager
def frozen_batchnorm(model: nn.Module) -> Iterator[None]:
    """Train-mode forward passes inside the block use batch statistics but leave BatchNorm running
    statistics as they were (the reference ran these passes on a throw-away proxy model).

    torch's BatchNorm layers stop tracking for the block (`_stops_tracking`): nothing is updated, so
    nothing is copied (this runs in every AWP step, where saving and restoring every buffer cost as much
    as the whole Eq. 10 arithmetic). Other norm layers (SyncBatchNorm, subclasses with their own
    forward) keep their buffers saved and copied back; so does every layer of a compiled model (`compile()`
    in place), whose graph would be recompiled for the changed attribute."""
    compiled = getattr(model, "_compiled_call_impl", None) is not None
    modules = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    paused = [] if compiled else [m for m in modules if _stops_tracking(m)]
    skip = {id(m) for m in paused}
    buffers = [b for m in modules if id(m) not in skip
               for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    saved = [b.clone() for b in buffers]
    for m in paused:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in paused:
            m.track_running_stats = True
        if buffers:
            with torch.no_grad():
                torch._foreach_copy_(buffers, saved)


# ---------------------------------------------------------------------------------------------
# Eq. 10: find v
# ---------------------------------------------------------------------------------------------

# Maps the model (at w + v) to the mean adversarial loss over the batch, 1/m sum_i l(f_{w+v}(x'_i), y_i).
BatchLoss = Callable[[], Tensor]


def find_perturbation(
    model: nn.Module,
    params: Params,
    w: Mapping[str, Tensor],
    v: Mapping[str, Tensor],
    batch_loss: BatchLoss,
    cfg: AWPConfig,
    reduce_grads: Callable[[list[Tensor]], list[Tensor]] | None = None,
) -> Tensors:
    """K2 ascent steps of Eq. 10 on v (Algorithm 2 lines 11-13). The model must be at w + v on entry
    (as `perturbed` and a previous call leave it) and is left at w + v_new. Gradients come from
    `torch.autograd.grad` on `params` only, so their `.grad` stays clean; BatchNorm running
    statistics are left untouched.

    Data-parallel: `reduce_grads` (default none: bit for bit the single-process step) maps this rank's gradients of its shard's mean loss to the
    gradients of the global batch's mean loss (a weighted all-reduce), so every rank takes the same step
    and v is the v a single process computes from the whole batch (up to BatchNorm's per-shard batch
    statistics and float summation order)."""
    names = list(params)
    tensors = [params[k] for k in names]
    w_list = [w[k] for k in names]
    w_norms = layer_norms(w_list)  # ||w_l||: fixed while v moves
    v_list = [v[k] for k in names]
    with frozen_batchnorm(model), torch.enable_grad():
        for _ in range(cfg.steps):
            grads = torch.autograd.grad(batch_loss(), tensors, allow_unused=True)
            with torch.no_grad():
                # A parameter the loss does not reach gets a zero gradient, hence a zero step.
                g = [gi if gi is not None else torch.zeros_like(p) for gi, p in zip(grads, tensors)]
                if reduce_grads is not None:
                    g = reduce_grads(g)  # the same g on every rank: that of the global batch
                v_list = ascent_step(v_list, g, w_norms, cfg.eta2, cfg.gamma)  # Eq. 10 + Eq. 15
                torch._foreach_copy_(tensors, w_list)  # the model at w + v: w_l + v_l computed in place,
                torch._foreach_add_(tensors, v_list)  # the same sum as into a new tensor, no allocation
    return dict(zip(names, v_list))


def zeros_like_params(params: Params) -> Tensors:
    """v = 0, the start of every step of Algorithm 2."""
    return {k: torch.zeros_like(p) for k, p in params.items()}
