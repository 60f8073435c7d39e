"""Eq. 5 at P weight points in one pass (`--points-per-batch P`): the P perturbed weight sets stacked
along a leading dim and the model run through `torch.func.functional_call` under `torch.func.vmap`,
so PGD (Alg. 1 lines 9-14) runs on all P points at once, each point on its own adversarial examples
from the same fixed start (common random numbers, as point by point).

No model copy is made: only the stacked weights [P, *shape] of the parameters some point moves (the
others enter once, unbatched) and, under `--bn recalibrate`, each point's BN buffers, stacked.
The weights of point p are built by the same in-place arithmetic as `awp.weights.set_offset`, so
they equal point-by-point weights bit for bit; the losses agree within float rounding, because vmap
runs a convolution of P weight sets as one grouped convolution (another summation order).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from awp.attacks import AttackConfig, model_mode, pgd
from awp.errors import UserError
from awp.evaluate import sum_rows
from awp.weights import offset, snapshot
from landscape.core import engine

Terms = Sequence[tuple[Mapping[str, Tensor], float]]  # [(d_i, c_i)]: the point w + sum_i c_i d_i


def moved(points: Sequence[Terms]) -> set[str]:
    """Names of the parameters that some point moves (a nonzero coefficient on a direction covering them)."""
    return {name for terms in points for d, c in terms if c != 0.0 for name in d}


@torch.no_grad()
def stacked_weights(base: Mapping[str, Tensor], points: Sequence[Terms], names: set[str]) -> dict[str, Tensor]:
    """For each parameter in `names`, [P, *shape] with row p = w + sum_i c_i d_i of point p (Eq. 5),
    summed in `set_offset`'s order (copy w, then add each term), hence bitwise its weights."""
    out = {}
    for name in names:
        w = base[name]
        t = w.unsqueeze(0).repeat(len(points), *([1] * w.dim()))
        for p, terms in enumerate(points):
            for d, c in terms:
                if c != 0.0 and name in d:
                    t[p].add_(d[name].to(w.device, w.dtype, non_blocking=True), alpha=float(c))
        out[name] = t
    return out


class PointStack:
    """The model at `points` (P) weight points as one callable: inputs [P * B, ...] (P groups of B, group p
    for point p) -> logits [P * B, K]. Parameters in `weights` are stacked [P, ...]; the rest of the model's
    parameters and its buffers enter unbatched, or stacked when `stacked_buffers` (per-point BN statistics)."""

    def __init__(self, model: nn.Module, points: int, weights: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                 stacked_buffers: bool = False) -> None:
        self.points = points
        self.device = engine.model_device(model)
        fixed = {n: p.detach() for n, p in model.named_parameters() if n not in weights}
        self.args = (dict(weights), fixed, dict(buffers))
        dims = ({n: 0 for n in weights}, {n: None for n in fixed}, {n: 0 if stacked_buffers else None for n in buffers})

        def one(w: dict, f: dict, b: dict, x: Tensor) -> Tensor:
            return functional_call(model, {**f, **w, **b}, (x,), strict=False)

        self._forward = vmap(one, in_dims=(*dims, 0))

    def __call__(self, x: Tensor) -> Tensor:
        groups = x.reshape(self.points, -1, *x.shape[1:])
        return self._forward(*self.args, groups).flatten(0, 1)


def _repeat(t: Tensor, p: int) -> Tensor:
    return t.repeat(p, *([1] * (t.dim() - 1)))


def evaluate_points(stack: PointStack, batches: Sequence[engine.ProbeBatch], attack: AttackConfig,
                    fixed_adv: Sequence[Tensor] | None = None) -> list[engine.PointSums]:
    """`engine.evaluate_point` at the stack's P points at once: per batch, PGD on the fly against each
    point from the batch's fixed start (or the given `fixed_adv` examples, the same at every point),
    then one forward over [x; x_adv] per point for the sums of Alg. 1 line 15. One host sync in all."""
    P, active, acc = stack.points, engine.attack_active(attack), None
    for i, b in enumerate(batches):
        d = engine._on(b, stack.device)
        x, n = _repeat(d.x, P), len(d.y)
        if fixed_adv is not None:
            x_adv = _repeat(fixed_adv[i].to(x.device, non_blocking=True), P)
        elif active:
            x_adv = pgd(stack, x, _repeat(d.y, P), attack, delta0=_repeat(d.delta0, P))  # Alg. 1 lines 9-14, P at once
        else:
            x_adv = x
        with torch.no_grad():
            if x_adv is x:  # no attack: the adversarial loss is the natural loss, exactly
                logits_nat = logits_adv = stack(x)
            else:  # [x_p; x_adv_p] per point p: one forward of 2B examples at each point
                both = torch.cat([x.view(P, n, *x.shape[1:]), x_adv.view(P, n, *x.shape[1:])], 1)
                logits = stack(both.flatten(0, 1)).view(P, 2 * n, -1)
                logits_nat, logits_adv = logits[:, :n].flatten(0, 1), logits[:, n:].flatten(0, 1)
            rows = sum_rows(logits_nat, logits_adv, d.y, P)
        acc = rows if acc is None else acc + rows
    return [engine.PointSums.from_row(row) for row in acc.tolist()]


def evaluate_many(
    model: nn.Module,
    points: Sequence[Terms],
    batches: Sequence[engine.ProbeBatch],
    attack: AttackConfig,
    *,
    base: Mapping[str, Tensor] | None = None,
    bn: str = "eval",
    bn_inputs: Sequence[Tensor] = (),
    fixed_adv: Sequence[Tensor] | None = None,
) -> list[engine.PointSums]:
    """`engine.evaluate_at` at every point of `points` in one vmapped pass. Under `--bn recalibrate`
    each point's statistics are re-estimated one point at a time, exactly as `evaluate_at` does, then
    stacked. The model's parameters and buffers are left as they were, bit for bit."""
    params = dict(model.named_parameters())
    base = snapshot(params) if base is None else base
    mode = engine.bn_mode(bn)
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    per_point = mode is not engine.BN_MODES.lookup("eval")
    if per_point:  # each point's own BN statistics (the mode restores w's afterwards)
        stats = []
        for terms in points:
            with offset(params, terms, base), mode(model, bn_inputs):
                stats.append(snapshot(dict(model.named_buffers())))
        buffers = {n: torch.stack([s[n] for s in stats]) for n in buffers}
    weights = stacked_weights(base, points, moved(points))
    stack = PointStack(model, len(points), weights, buffers, stacked_buffers=per_point)
    with model_mode(model, train=False):
        try:
            return evaluate_points(stack, batches, attack, fixed_adv)
        except RuntimeError as e:
            if "vmap" not in str(e) and "functorch" not in str(e):
                raise
            first = str(e).strip().splitlines()[0][:160]
            raise UserError(f"{type(model).__name__} cannot run {len(points)} weight points per pass under "
                            f"torch.func.vmap ({first}); use --points-per-batch 1") from None


AUTO = "auto"
EXAMPLES_PER_PASS = 4096  # auto on CUDA: P * batch size up to this many examples per pass


def parse_points(text: str | int) -> int | str:
    """`--points-per-batch`: a whole number >= 1, or "auto" (`points_per_pass`)."""
    if str(text).strip().lower() == AUTO:
        return AUTO
    try:
        p = int(str(text))
    except ValueError:
        p = 0
    if p < 1 or str(p) != str(text).strip():
        raise UserError(f"--points-per-batch {text!r} is not accepted; give a whole number >= 1 (weight points "
                        f"per pass; 1 = one at a time) or auto")
    return p


def points_per_pass(setting: int | str, device: torch.device | str, batch_size: int) -> int:
    """P for `--points-per-batch`: the given number, or for auto the measured rule. On the CPU, 1:
    `bench/multipoint.py` measures no gain from vmap there (a grouped convolution does the work of P
    convolutions at about their cost; smallcnn on digits 0.7-1.0x at P = 2-8, ResNet-18 0.8x). On CUDA,
    the largest power of two <= 16 with P * batch size <= 4096 examples per pass, so a small model
    fills the device (a rule not yet measured on a GPU: none was lent)."""
    if setting != AUTO:
        return int(setting)
    if torch.device(device).type != "cuda":
        return 1
    p = 1
    while p * 2 <= 16 and p * 2 * batch_size <= EXAMPLES_PER_PASS:
        p *= 2
    return p
