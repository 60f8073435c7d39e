"""Moving a model's parameters in place and back, exactly: the one helper AWP (Eq. 11) and the landscape
engine (Eq. 5) share. The centre w is saved once and copied back bit for bit (w + v - v is not exact
in floats); parameters are keyed by name, offsets may cover a subset of them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

Tensors = dict[str, Tensor]


def snapshot(params: Mapping[str, Tensor]) -> Tensors:
    """Exact, detached copies of the parameters' current values (the centre w)."""
    return {k: p.detach().clone() for k, p in params.items()}


@torch.no_grad()
def set_offset(params: Mapping[str, Tensor], w: Mapping[str, Tensor],
               terms: Sequence[tuple[Mapping[str, Tensor], float]]) -> None:
    """Put the parameters at w + sum_i c_i v_i in place, for terms [(v_i, c_i)]; a v_i may cover a subset
    of the parameters and is moved to each parameter's device and dtype. c_i = 0 adds nothing, so a
    zero offset is w bit for bit."""
    for name, p in params.items():
        p.copy_(w[name])
        for v, c in terms:
            if c != 0.0 and name in v:
                p.add_(v[name].to(p.device, p.dtype, non_blocking=True), alpha=float(c))


@torch.no_grad()
def restore(params: Mapping[str, Tensor], w: Mapping[str, Tensor]) -> None:
    """Back to the centre by copying w, bit for bit."""
    names = list(params)
    torch._foreach_copy_([params[k] for k in names], [w[k] for k in names])


@contextlib.contextmanager
def offset(params: Mapping[str, Tensor], terms: Sequence[tuple[Mapping[str, Tensor], float]] = (),
           w: Mapping[str, Tensor] | None = None) -> Iterator[Mapping[str, Tensor]]:
    """A block at w + sum_i c_i v_i (w saved here unless given); on exit, even on error, w is copied
    back bit for bit. Yields w."""
    w = snapshot(params) if w is None else w
    try:
        if terms:
            set_offset(params, w, terms)
        yield w
    finally:
        restore(params, w)


def named_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())
