"""Directions in weight space, keyed by parameter name: random ones (Alg. 1 lines 2-7) and a registry of
direction kinds rebuilt from the JSON spec a results file records: random, interpolate (the line to
another checkpoint), hessian (top eigenvectors of rho at w), awp (AWP's v of Eq. 10 at w), pca (the
training trajectory's principal directions, Li et al. 2018) and given tensors. A spec with "params"
moves only those parameters (`landscape.core.scope`): the others have no entry and stay at w.

Direction k of a probe is a pure function of (seed, k, parameter name, shape): every parameter
is drawn on its own CPU generator, so a direction never depends on the device, on how many
directions were drawn before it, or on the order in which the model lists its parameters.
Normalization (Eq. 5, after Li et al.) rescales it to the weights' own scale, which removes the
scale invariance of ReLU networks (Appendix B.1, footnote).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from awp.errors import UserError
from awp.registry import Registry
from landscape.core import engine, scope
from landscape.core.objective import Objective

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
    identity (`interpolate`), the tensors a results file keeps for a kind that cannot be rebuilt, the
    model at w with the probe's batches and attack (`hessian`, `awp`), a cache shared by the directions
    of one checkpoint (one Lanczos run gives all top K eigenvectors), and `found`, which a kind fills
    with what it measured at w (an eigenvalue and its residual): recorded beside its spec."""

    target: Callable[[Mapping[str, Any]], Mapping[str, Tensor]] | None = None
    stored: Mapping[str, Tensor] | None = None
    at_w: Objective | None = None
    cache: dict = field(default_factory=dict)
    found: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DirectionKind:
    """`build(spec, w, context)` -> the direction at weights w (CPU float32, keyed like w, or by the
    parameters it moves only). A kind that is not `regenerable` has its tensors kept in the results
    file. `cli`: `landscape probe --direction` makes it; `plane`: plot2d can take its axes from it;
    `dirs`, `max_dirs`: probe's default and largest number of directions; `moves_1d`: biases and BN
    move too without include_bn (the line to another checkpoint moves every parameter)."""

    build: Callable[[Spec, Mapping[str, Tensor], DirectionContext], Direction]
    regenerable: bool
    summary: str
    cli: bool = True
    plane: bool = False
    dirs: int = 1
    max_dirs: int | None = None
    moves_1d: bool = False


def moved_names(spec: Spec, w: Mapping[str, Tensor]) -> list[str]:
    """The parameters direction `spec` moves, in w's order: those its "params" globs match (every one
    without them; `landscape.core.scope`), less the 1-D ones (biases, BN) unless it includes them."""
    kind = DIRECTIONS.lookup(spec.get("kind", ""))
    chosen = scope.matching(list(w), list(spec.get("params", ())))
    one_d = kind.moves_1d or bool(spec.get("include_bn", False))
    return [n for n in chosen if one_d or w[n].dim() > 1]


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu", torch.float32)


def _random(spec: Spec, w: Mapping[str, Tensor], ctx: DirectionContext) -> Direction:
    if spec.get("params"):  # the same numbers as the whole direction's, for the scope's parameters only
        w = {n: w[n] for n in moved_names(spec, w)}
    return random_direction(w, int(spec["seed"]), int(spec["index"]), spec.get("normalize", "filter"),
                            bool(spec.get("include_bn", False)))  # Alg. 1 lines 2-7


def _interpolate(spec: Spec, w: Mapping[str, Tensor], ctx: DirectionContext) -> Direction:
    """d = w_to - w for every parameter: alpha = 1 is the other checkpoint's weights (its buffers, e.g.
    BN statistics, are not moved: `--bn recalibrate` re-estimates them along the line)."""
    if ctx.target is None:
        raise UserError("an interpolate direction needs the checkpoint it leads to")
    to = ctx.target(spec["to"])
    check_fits(to, w, f"the target {spec['to'].get('label', '?')}")
    names = moved_names(spec, w) if spec.get("params") else list(w)
    return {n: _cpu(to[n]) - _cpu(w[n]) for n in names}


def _tensors(spec: Spec, w: Mapping[str, Tensor], ctx: DirectionContext) -> Direction:
    if ctx.stored is None:
        raise UserError("a given direction needs its tensors")
    check_fits(ctx.stored, w, "the given direction")
    return {n: ctx.stored[n].detach().to("cpu", torch.float32) for n in w}


def check_fits(d: Mapping[str, Tensor], w: Mapping[str, Tensor], what: str) -> None:
    """One line naming the first parameters missing, unexpected or of another shape."""
    missing, extra = sorted(w.keys() - d.keys()), sorted(d.keys() - w.keys())
    shapes = [n for n in w if n in d and tuple(d[n].shape) != tuple(w[n].shape)]
    if missing or extra or shapes:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else "",
                 f"shape of {shapes[0]} {tuple(d[shapes[0]].shape)} vs {tuple(w[shapes[0]].shape)}" if shapes else ""]
        raise UserError(f"{what} does not fit the model's parameters: {'; '.join(p for p in parts if p)}")


def _stored(spec: Spec, w: Mapping[str, Tensor], ctx: DirectionContext) -> Direction:
    """The tensors the results file keeps for this direction (found once, when it was first needed)."""
    names = moved_names(spec, w)
    if ctx.stored is None or not set(names) <= set(ctx.stored):
        raise UserError(f"a {spec.get('kind')} direction is found when the landscape is planned "
                        f"(`landscape probe/plot2d --direction {spec.get('kind')}`); none is stored for it here")
    return {n: _cpu(ctx.stored[n]) for n in names}


def _found_once(find: Callable[[Spec, Mapping[str, Tensor], DirectionContext], Direction]):
    """A kind found by a search at w (Lanczos, AWP's ascent): the tensors the results file keeps once it
    has them, else the search."""

    def build(spec: Spec, w: Mapping[str, Tensor], ctx: DirectionContext) -> Direction:
        return _stored(spec, w, ctx) if ctx.stored is not None else find(spec, w, ctx)

    return build


# -- rescaling a unit direction to the weights' scale (hessian)

# The scale of a direction found as a unit vector u over its parameters (`rescale`), by `--normalize`:
# filter -> "filter" (Eq. 5), layer -> "layer", none -> "global" (u itself, times ||w||).
SCALE_OF_NORMALIZE = {"filter": "filter", "layer": "layer", "none": "global"}


def check_scale(scale: str) -> None:
    if scale not in SCALE_OF_NORMALIZE.values():
        raise UserError(f"unknown direction scale {scale!r}; accepted: {', '.join(SCALE_OF_NORMALIZE.values())}")


def rescale(u: Mapping[str, Tensor], w: Mapping[str, Tensor], scale: str) -> Direction:
    """A unit vector u over some parameters at the weights' scale: "filter" rescales each filter of u to
    ||w_filter|| (Eq. 5; a 1-D parameter is one filter), "layer" each parameter tensor to ||w_l||,
    "global" keeps u's direction and multiplies it by the norm of the weights it moves,
    sqrt(sum_l ||w_l||^2), so that alpha is in units of ||w||. Only "global" keeps u's direction:
    the other two rescale its parts."""
    check_scale(scale)
    ws = {n: _cpu(w[n]) for n in u}
    if scale == "global":
        norm = torch.sqrt(sum(((t.double() ** 2).sum() for t in ws.values()), torch.zeros((), dtype=torch.float64))).float()
        return {n: _cpu(t) * norm for n, t in u.items()}
    return {n: filter_normalize(_cpu(t), ws[n]) if scale == "filter" and t.dim() > 1 else layer_normalize(_cpu(t), ws[n])
            for n, t in u.items()}


def _at_w(ctx: DirectionContext, kind: str) -> Objective:
    if ctx.at_w is None:
        raise UserError(f"a {kind} direction is found from the loss at w: it needs the model, the probe's batches "
                        f"and its attack (the landscape pipeline gives them)")
    return ctx.at_w


# -- hessian: the top eigenvectors of the adversarial loss at w


def _hessian(spec: Spec, w: Mapping[str, Tensor], ctx: DirectionContext) -> Direction:
    """Eigenvector `index` of the top `top` of the Hessian of rho at w, over the parameters it moves,
    on the probe's own adversarial examples at w (made once); one Lanczos run serves all `top`."""
    from landscape.core.curvature import HessianOperator, top_eigenpairs

    at = _at_w(ctx, "hessian")
    names = moved_names(spec, w)
    key = json.dumps({k: v for k, v in spec.items() if k not in ("index", "found")}, sort_keys=True)
    if key not in ctx.cache:
        examples = at.examples()
        with at.bn_mode():
            op = HessianOperator(at.model, examples, names)
            ctx.cache[key] = top_eigenpairs(op, int(spec["top"]), str(spec.get("method", "lanczos")),
                                            int(spec.get("iters", 100)), float(spec.get("tol", 1e-4)),
                                            int(spec.get("seed", 0)))
    pairs = ctx.cache[key]
    k = int(spec["index"])
    ctx.found.update(eigenvalue=float(pairs.values[k]), residual=float(pairs.residuals[k]), matvecs=int(pairs.matvecs))
    u = {n: _cpu(pairs.vectors[k][n]).reshape(w[n].shape) for n in names}
    return rescale(u, w, str(spec.get("scale", "filter")))


def hessian_specs(top: int, seed: int, scale: str = "filter", include_bn: bool = False, method: str = "lanczos",
                  iters: int = 100, tol: float = 1e-4) -> list[dict]:
    """Specs of the top `top` Hessian eigenvectors (largest eigenvalue first), at `scale` (`rescale`)."""
    check_scale(scale)
    return [{"kind": "hessian", "index": k, "top": int(top), "scale": scale, "method": method, "iters": int(iters),
             "tol": float(tol), "seed": int(seed), "include_bn": bool(include_bn)} for k in range(top)]


# -- awp: the adversarial weight perturbation v of Eq. 10 at w


def awp_perturbation(at: Objective, names: Sequence[str], cfg: Any) -> dict[str, Tensor]:
    """AWP's v at w on the probe batches (Algorithm 2 lines 4-13, from v = 0): `cfg.alternations` times,
    x' by the probe's PGD against w + v (the first time against w: `at.examples()`), then `cfg.steps`
    ascent steps of Eq. 10 (`awp.perturb.find_perturbation`, Eq. 15 included) on the mean adversarial
    cross-entropy over every probe example, taken batch by batch. `cfg` is an `awp.perturb.AWPConfig`.
    The model is in eval mode throughout (BN as the landscape measures it) and back at w bit for bit
    afterwards; v is on the model's device, keyed by `names`."""
    import torch.nn.functional as F

    from awp.perturb import find_perturbation, perturbed, zeros_like_params

    model = at.model
    every = dict(model.named_parameters())
    params = {n: every[n] for n in names}
    tensors = list(params.values())
    device = engine.model_device(model)
    total = sum(len(b.y) for b in at.batches)
    examples = at.examples()
    with at.bn_mode(), perturbed(params) as w, engine.grads_on(tensors):
        v = zeros_like_params(params)
        for a in range(cfg.alternations):
            if a > 0:  # Alg. 2 lines 5-10: x' against w + v, where the last ascent left the model
                with torch.no_grad():
                    xs = engine.adversarial_examples(model, at.batches, at.attack)
                examples = [(x, b.y) for x, b in zip(xs, at.batches)]

            def share(i: int, examples=examples) -> Tensor:  # batch i's part of the mean loss over all examples
                x, y = examples[i]
                return F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum") / total

            def every_batch(g: list[Tensor], examples=examples) -> list[Tensor]:
                # find_perturbation's hook from one shard's gradient to the whole batch's: the other
                # probe batches' shares, added one batch at a time (memory of one batch)
                with torch.enable_grad():
                    for i in range(1, len(examples)):
                        gi = torch.autograd.grad(share(i), tensors, allow_unused=True)
                        g = [a if b is None else a + b for a, b in zip(g, gi)]
                return g

            v = find_perturbation(model, params, w, v, lambda: share(0), cfg, reduce_grads=every_batch)  # Eq. 10
    return v


def _awp(spec: Spec, w: Mapping[str, Tensor], ctx: DirectionContext) -> Direction:
    """d_l = v_l / ||v_l|| * ||w_l|| per layer for AWP's v at w (`awp_perturbation`): the scale of a
    filter-normalized direction, and with one step from v = 0 (K2 = A = 1, every ||v_l|| = gamma ||w_l||)
    alpha = gamma is AWP's own point w + v."""
    from awp.perturb import AWPConfig

    at = _at_w(ctx, "awp")
    names = moved_names(spec, w)
    cfg = AWPConfig(gamma=float(spec["gamma"]), steps=int(spec.get("steps", 1)),
                    alternations=int(spec.get("alternations", 1)), include_1d=bool(spec.get("include_bn", False)))
    v = {n: _cpu(t) for n, t in awp_perturbation(at, names, cfg).items()}
    v_norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v.values()))
    w_norm = torch.sqrt(sum((_cpu(w[n]).double() ** 2).sum() for n in names))
    ctx.found.update(relative_norm=float(v_norm / w_norm.clamp_min(_TINY)))  # ||v|| / ||w||: gamma for K2 = A = 1
    return {n: layer_normalize(v[n], _cpu(w[n])) for n in names}


def awp_spec(gamma: float, include_bn: bool = False, steps: int = 1, alternations: int = 1) -> dict:
    """The spec of the AWP direction for `gamma` (Eq. 8), K2 = `steps`, A = `alternations`."""
    if not gamma > 0:
        raise UserError(f"--gamma must be > 0 for an awp direction, got {gamma}")
    return {"kind": "awp", "gamma": float(gamma), "steps": int(steps), "alternations": int(alternations),
            "include_bn": bool(include_bn), "scale": "layer"}


# -- pca: principal directions of the training trajectory (Li et al. 2018, Section 7)


@dataclass(frozen=True)
class TrajectoryPCA:
    """The principal directions of the points w_i of a training trajectory over some parameters: unit,
    orthogonal `components` u_k (float32 CPU, keyed by parameter name), the fraction of the trajectory's
    variance each explains, and every point's coordinates <w_i - w_end, u_k> [n_points, K] (w_end,
    the last point, at 0)."""

    epochs: list[int]
    end: int
    components: list[Direction]
    explained: np.ndarray  # [K]
    coords: np.ndarray  # [n_points, K]


_COLUMNS = 1 << 20  # parameters per float64 block of the Gram products


def trajectory_pca(points: Sequence[tuple[int, Mapping[str, Tensor]]], names: Sequence[str],
                   components: int = 2) -> TrajectoryPCA:
    """PCA of the trajectory [(epoch, weights)] (in training order, the last its end) over `names`.

    As Li et al. (sklearn's PCA of the rows w_i - w_end, centred) but every point is a row, w_end's own
    zero row included, so n points span n - 1 dimensions (Li et al. leave w_end out: n - 2). Through
    the n x n Gram matrix of the centred rows in float64 (never P x P): its eigenvalues are the squared
    singular values s_k^2, the fraction of variance of u_k is s_k^2 / sum_j s_j^2, u_k = X_c^T a_k / s_k.
    Each u_k's sign puts the first point at a coordinate <= 0 (the path runs towards +u_k)."""
    n = len(points)
    if n < components + 1:
        raise UserError(f"{n} trajectory point(s) span fewer than {components} dimensions; at least {components + 1} "
                        f"are needed")
    rows = torch.stack([torch.cat([_cpu(p[name]).reshape(-1) for name in names]) for _, p in points])  # [n, P]
    rows = rows - rows[-1]  # w_i - w_end
    gram = torch.zeros(n, n, dtype=torch.float64)
    for j in range(0, rows.shape[1], _COLUMNS):
        block = rows[:, j : j + _COLUMNS].double()
        gram += block @ block.T
    centre = torch.eye(n, dtype=torch.float64) - 1.0 / n
    lam, vecs = torch.linalg.eigh(centre @ gram @ centre)  # ascending
    lam, vecs = lam.flip(0).clamp_min(0.0), vecs.flip(1)
    total = float(lam.sum())
    if not total > 0 or not lam[components - 1] > 1e-12 * total:
        raise UserError(f"the {n} trajectory points span fewer than {components} dimensions over the parameters "
                        f"moved (they coincide); nothing to take principal directions of")
    a = vecs[:, :components]
    a = a - a.mean(dim=0)  # orthogonal to the ones vector, as an eigenvector of the centred Gram is
    s = lam[:components].sqrt()
    coords = (gram @ a) / s  # [n, K]: <w_i - w_end, u_k>
    u = torch.zeros(components, rows.shape[1], dtype=torch.float64)
    for j in range(0, rows.shape[1], _COLUMNS):
        u[:, j : j + _COLUMNS] = (a.T @ rows[:, j : j + _COLUMNS].double()) / s[:, None]
    sign = torch.where(coords[0] > 0, -1.0, 1.0).to(torch.float64)
    u, coords = u * sign[:, None], coords * sign
    sizes = [int(np.prod(points[-1][1][name].shape)) for name in names]
    comps = [{name: part.float().reshape(points[-1][1][name].shape) for name, part in zip(names, torch.split(uk, sizes))}
             for uk in u]
    return TrajectoryPCA([int(e) for e, _ in points], int(points[-1][0]), comps, (lam[:components] / total).numpy(),
                         coords.numpy())


def pca_specs(epochs: Sequence[int], n: int, include_bn: bool = False) -> list[dict]:
    """Specs of PC1..PCn of the trajectory over the saved `epochs` (the last its end)."""
    return [{"kind": "pca", "index": k, "epochs": [int(e) for e in epochs], "end": int(epochs[-1]),
             "include_bn": bool(include_bn), "scale": "trajectory"} for k in range(n)]


def pca_direction(pca: TrajectoryPCA, k: int, at_epoch: int | None) -> tuple[Direction, dict]:
    """PC k+1 as a direction and what it records: d = s u_k with s the trajectory's largest |coordinate|
    along u_k, so the whole path lies within alpha in [-1, 1] (plotted at the end); the fraction of variance
    explained, s (= ||d||), and each saved epoch's coordinate in alpha units relative to `at_epoch`
    (the checkpoint the landscape is centred on; None: the end)."""
    along = pca.coords[:, k]
    s = float(np.abs(along).max())
    origin = along[pca.epochs.index(at_epoch)] if at_epoch in pca.epochs else 0.0
    found = {"explained": float(pca.explained[k]), "norm": s,
             "trajectory": [[e, float((x - origin) / s)] for e, x in zip(pca.epochs, along)]}
    return {n: t * s for n, t in pca.components[k].items()}, found


DIRECTIONS: Registry[DirectionKind] = Registry("--direction kind", {
    "random": DirectionKind(_random, True, "filter-normalized Gaussian directions (seed, index): Eq. 5, Alg. 1",
                            plane=True, dirs=10),
    "interpolate": DirectionKind(_interpolate, True, "the straight line to another checkpoint (--to: an epoch of "
                                 "this run, OTHER.h5[:EPOCH] or a .pt); alpha = 1 is its weights", max_dirs=1, moves_1d=True),
    "hessian": DirectionKind(_found_once(_hessian), False, "the top --dirs eigenvectors of the Hessian of rho at w (Lanczos on "
                             "the probe's PGD examples at w), filter-normalized (--normalize none: the unit "
                             "eigenvector times ||w||); eigenvalues recorded", plane=True),
    "awp": DirectionKind(_found_once(_awp), False, "AWP's v at w (Eq. 10 for --gamma, from v = 0, x' by the probe's PGD), "
                         "rescaled per layer to ||w_l||: alpha = gamma is AWP's own point", plane=True, max_dirs=1),
    "pca": DirectionKind(_stored, False, "principal directions of the run's saved checkpoints (Li et al. 2018): "
                         "PC1 (and PC2 with --dirs 2), scaled so the trajectory spans alpha in [-1, 1]; plot2d "
                         "draws the path", plane=True, max_dirs=2),
    "tensors": DirectionKind(_tensors, False, "given tensors (Python API), kept in the results file", cli=False),
})


def build_direction(spec: Spec, w: Mapping[str, Tensor], ctx: DirectionContext | None = None) -> Direction:
    """The direction `spec` at weights w; an unknown kind is a one-line `UserError`. A direction whose
    spec names "params" has entries for those parameters only: the others are never moved."""
    ctx = DirectionContext() if ctx is None else ctx
    d = DIRECTIONS.lookup(spec.get("kind", "")).build(spec, w, ctx)
    return scope.restrict(d, moved_names(spec, w)) if spec.get("params") else d


def scoped(spec: Mapping[str, Any], names: Sequence[str], globs: Sequence[str] = (), block: str | None = None) -> dict:
    """`spec` restricted to a scope (`landscape.core.scope`): "params" its globs (or, for a block, the
    block's parameter names) and "block" the block's label."""
    out = dict(spec)
    if block is not None:
        out.update(params=list(names), block=block)
    elif globs:
        out["params"] = list(globs)
    return out


def random_specs(n: int, seed: int, normalize: str = "filter", include_bn: bool = False, start: int = 0) -> list[dict]:
    """Specs of random directions start..start+n-1 for `seed` (probe's directions; plot2d's d, e = 0, 1)."""
    normalization(normalize)
    return [{"kind": "random", "seed": int(seed), "index": start + k, "normalize": normalize,
             "include_bn": bool(include_bn)} for k in range(n)]


def found_at(spec: Spec, c: int = 0) -> dict:
    """What the direction's kind found at checkpoint c (an eigenvalue, a fraction of variance), or {}."""
    return dict(spec.get("found", {}).get(str(c), {}))


def found_text(spec: Spec, c: int = 0) -> str:
    """What the direction's kind found at checkpoint c in a few words ('λ1 = 7.45 (residual 3e-06)',
    'PC1: 62.1% of variance'), '' when nothing."""
    found, k = found_at(spec, c), int(spec.get("index", 0))
    where = f" [{spec['block']}]" if spec.get("block") is not None else ""
    if "eigenvalue" in found:
        return f"λ{k + 1}{where} = {found['eigenvalue']:.4g} (residual {found.get('residual', float('nan')):.2g})"
    if "explained" in found:
        return f"PC{k + 1}{where}: {found['explained']:.1%} of variance"
    if "relative_norm" in found:
        return f"AWP{where}: ||v||/||w|| = {found['relative_norm']:.3g}"
    return ""


def direction_label(spec: Spec, c: int = 0) -> str:
    """A short name for axis labels and legends: 'PC1 (62% of variance)', 'Hessian eigenvector 1 (λ = 3.1)'."""
    kind, found = spec.get("kind"), found_at(spec, c)
    k = int(spec.get("index", 0))
    if kind == "pca":
        text = f"PC{k + 1}" + (f" ({found['explained']:.1%} of variance)" if "explained" in found else "")
    elif kind == "hessian":
        text = f"Hessian eigenvector {k + 1}" + (f" (λ = {found['eigenvalue']:.4g})" if "eigenvalue" in found else "")
    elif kind == "awp":
        text = f"AWP direction (γ = {spec.get('gamma', float('nan')):g})"
    elif kind == "interpolate":
        text = f"line to {spec.get('to', {}).get('label', '?')}"
    elif kind == "random":
        text = f"random direction {k}"
    else:
        text = f"direction {k}"
    if spec.get("block") is not None:
        text += f" [{spec['block']}]"
    elif spec.get("params"):
        text += f" [{','.join(spec['params'])}]"
    return text
