"""Hessian curvature of the adversarial loss at w, as pure functions over Hessian-vector products.

The loss is the mean cross-entropy over fixed (x, y) batches (x already adversarial: the caller runs
PGD) of a model in eval mode, as a function of a named subset of its parameters, everything else held
at its current value. `HessianOperator` gives H v by forward-over-reverse differentiation
(`torch.func.jvp` of `torch.func.grad`), one batch at a time, so memory is that of one batch and H is
never formed. On top of it: the trace by Hutchinson's estimator with its Monte-Carlo standard error,
and the top eigenpairs by Lanczos (ARPACK, through scipy) or power iteration, each eigenvalue with the
residual ||H v - lambda v|| that bounds its error. The model is never modified: its parameters,
buffers, `requires_grad` flags and train/eval modes are as they were after every call.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse.linalg as sla
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from awp.errors import UserError
from awp.registry import Registry

Params = dict[str, Tensor]
FlatApply = Callable[[Tensor], Tensor]  # flat float64 [dim] -> H flat float64 [dim], on the params' device


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode for the block (BN uses its running statistics and never updates them),
    each module's own flag restored afterwards, even after an error."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _list_names(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


class ParamsOperator:
    """A linear map on name-keyed dicts of tensors shaped like `params` (the centre w of `names`): the
    flattening the trace and eigenvalue estimators work on. A subclass gives `matvec`."""

    def _set_params(self, names: list[str], params: Params) -> None:
        self.names = names
        self.params = params
        self.device = self.params[names[0]].device
        self._shapes = [self.params[n].shape for n in names]
        self._numels = [self.params[n].numel() for n in names]
        self.dim = sum(self._numels)

    def matvec(self, v: Params) -> Params:
        raise NotImplementedError

    def _check(self, v: Params) -> None:
        missing = [n for n in self.names if n not in v]
        if missing:
            raise UserError(f"the vector lacks parameter {missing[0]!r}; it needs every name of the operator: "
                            f"{_list_names(self.names)}")

    def flatten(self, v: Params) -> Tensor:
        """v as one vector [dim] on the params' device, the parameters in the order of `names`."""
        self._check(v)
        return torch.cat([v[n].reshape(-1).to(self.device) for n in self.names])

    def unflatten(self, flat: Tensor) -> Params:
        """A vector [dim] back into name-keyed tensors of the params' shapes, devices and dtypes."""
        if flat.shape != (self.dim,):
            raise UserError(f"a flat vector of shape {tuple(flat.shape)} given; the operator needs ({self.dim},)")
        parts = torch.split(flat, self._numels)
        return {n: part.reshape(shape).to(device=self.params[n].device, dtype=self.params[n].dtype)
                for n, part, shape in zip(self.names, parts, self._shapes)}

    def flat_apply(self) -> tuple[FlatApply, list[int]]:
        """(apply, count): apply maps a float64 vector [dim] to H times it in float64 on the params'
        device; count[0] counts its calls."""
        count = [0]

        def apply(flat: Tensor) -> Tensor:
            count[0] += 1
            return self.flatten(self.matvec(self.unflatten(flat))).to(torch.float64)

        return apply, count


class HessianOperator(ParamsOperator):
    """H of the mean cross-entropy over `examples` w.r.t. the parameters `names` of `model` (eval mode,
    current values): a linear map on name-keyed dicts, applied by HVPs, never stored."""

    def __init__(self, model: nn.Module, examples: Sequence[tuple[Tensor, Tensor]], names: Sequence[str]) -> None:
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise UserError(f"names must be a list of parameter names, got {names!r}")
        names = list(names)
        if not names:
            raise UserError("names is empty; give at least one parameter name of the model")
        available = dict(model.named_parameters())
        for n in names:
            if n not in available:
                raise UserError(f"the model has no parameter {n!r}; accepted: {_list_names(list(available))}")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise UserError(f"parameter {dup!r} named twice in names; give each parameter once")
        examples = list(examples)
        if not examples:
            raise UserError("examples is empty; give at least one (x, y) batch")
        for i, batch in enumerate(examples):
            if len(batch) != 2 or len(batch[0]) != len(batch[1]):
                raise UserError(f"examples[{i}] is not an (x, y) pair of equal lengths; "
                                "each batch must be (inputs [B, ...], labels [B])")
        self._count = sum(len(y) for _, y in examples)
        if self._count == 0:
            raise UserError("examples hold no example (every batch is empty); give at least one")

        self._model = model
        self._examples = examples
        # The centre w: a copy, so the operator stays at w whatever later happens to the model.
        self._set_params(names, {n: available[n].detach().clone() for n in names})

    def _batch_loss(self, x: Tensor, y: Tensor) -> Callable[[Params], Tensor]:
        """p -> this batch's share of the mean loss: sum of its cross-entropies / all examples, so the
        batch shares add up to the example-weighted mean."""

        def f(p: Params) -> Tensor:
            return F.cross_entropy(functional_call(self._model, p, (x,)), y, reduction="sum") / self._count

        return f

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self._examples:
            yield x.to(self.device), y.to(self.device)

    def matvec(self, v: Params) -> Params:
        """H v, summed batch by batch: forward-mode derivative (jvp) of the reverse-mode gradient."""
        self._check(v)
        tangent = {n: v[n].to(device=p.device, dtype=p.dtype) for n, p in self.params.items()}
        out = {n: torch.zeros_like(p) for n, p in self.params.items()}
        # no_grad: the model's own parameters record no autograd graph (grad and jvp are transforms
        # with their own levels, unaffected by it), so their requires_grad flags need no touching.
        with _eval_mode(self._model), torch.no_grad(), warnings.catch_warnings():
            # torch's forward-mode decompositions script themselves on first use and warn that
            # torch.jit.script is deprecated: torch's own business, not the user's
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            for x, y in self._batches():
                _, hv = jvp(grad(self._batch_loss(x, y)), (self.params,), (tangent,))
                for n in self.names:
                    out[n] += hv[n]
        return out

    def loss(self) -> float:
        """The mean cross-entropy at w over all examples (for reports)."""
        total = 0.0
        with _eval_mode(self._model), torch.no_grad():
            for x, y in self._batches():
                total += float(self._batch_loss(x, y)(self.params))
        return total


# ---------------------------------------------------------------------------------------------------
# Trace
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceEstimate:
    value: float  # Hutchinson estimate of tr(H)
    se: float  # std over probes (ddof 1) / sqrt(n): the Monte-Carlo standard error
    samples: int


def hutchinson_trace(op: HessianOperator, samples: int = 100, seed: int = 0) -> TraceEstimate:
    """tr(H) by Hutchinson's estimator, with its standard error over probes; the same seed gives the same
    probes on any device, and the first m probes of a longer run are those of a run of m."""
    if not isinstance(samples, (int, np.integer)) or samples < 2:
        raise UserError(f"samples {samples!r} is too few; a standard error needs an integer >= 2")
    gen = torch.Generator().manual_seed(seed)
    apply, _ = op.flat_apply()
    quads = np.empty(samples)
    for i in range(samples):
        # Hutchinson (1989): E[z^T H z] = tr(H) for Rademacher z (entries +-1 with probability 1/2);
        # drawn on the CPU generator, then moved, so the probes do not depend on the device.
        z = (torch.randint(0, 2, (op.dim,), generator=gen, dtype=torch.float64) * 2 - 1).to(op.device)
        quads[i] = float(z @ apply(z))
    return TraceEstimate(float(quads.mean()), float(quads.std(ddof=1) / math.sqrt(samples)), samples)


# ---------------------------------------------------------------------------------------------------
# Top eigenpairs
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Eigenpairs:
    values: np.ndarray  # [k], largest algebraic first
    vectors: list[Params]  # [k], unit norm in the flattened space, largest-|entry| positive
    residuals: np.ndarray  # [k], ||H v - lambda v||: an eigenvalue of H lies within it of lambda (H symmetric)
    matvecs: int  # HVPs spent, the residuals' included


def _start(dim: int, seed: int, device: torch.device, count: int = 1) -> Tensor:
    """`count` Gaussian start vectors [count, dim] in float64, drawn on the CPU generator of `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, dim, generator=gen, dtype=torch.float64).to(device)


def lanczos(apply: FlatApply, dim: int, k: int, iters: int, tol: float, seed: int,
            device: torch.device) -> tuple[np.ndarray, Tensor]:
    """The k largest algebraic eigenpairs by implicitly restarted Lanczos (ARPACK's dsaupd via scipy's
    eigsh); iters caps its restarts (maxiter), tol its relative accuracy of the Ritz values."""
    if k >= dim:
        raise UserError(f"k = {k} eigenpairs asked of a {dim}-dimensional Hessian; lanczos accepts 1 <= k < {dim}")

    def mv(x: np.ndarray) -> np.ndarray:
        flat = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1)).to(device)
        return apply(flat).cpu().numpy()

    linop = sla.LinearOperator((dim, dim), matvec=mv, dtype=np.float64)
    v0 = _start(dim, seed, torch.device("cpu"))[0].numpy()
    try:  # Lanczos (1950), implicitly restarted by ARPACK; only HVPs touch H
        values, vectors = sla.eigsh(linop, k=k, which="LA", v0=v0, maxiter=iters, tol=tol)
    except sla.ArpackNoConvergence as e:
        raise UserError(f"lanczos found {len(e.eigenvalues)} of k = {k} eigenpairs within iters = {iters} "
                        f"restarts at tol = {tol:g}; raise iters or tol") from None
    return values, torch.from_numpy(np.ascontiguousarray(vectors.T)).to(device)


def power_iteration(apply: FlatApply, dim: int, k: int, iters: int, tol: float, seed: int,
                    device: torch.device) -> tuple[np.ndarray, Tensor]:
    """The k largest algebraic eigenpairs by power iteration, one after another, each deflated against
    the earlier ones; each stops when its Rayleigh quotient changes by < tol relative, or after iters HVPs
    (then the last iterate is returned, and its residual says how far it is from converged)."""
    if k > dim:
        raise UserError(f"k = {k} eigenpairs asked of a {dim}-dimensional Hessian; power accepts 1 <= k <= {dim}")
    starts = _start(dim, seed, device, count=k)
    found: list[Tensor] = []
    values: list[float] = []

    def deflate(x: Tensor) -> Tensor:
        for u in found:  # Gram-Schmidt against the vectors found so far
            x = x - (u @ x) * u
        return x

    def run(v: Tensor, shift: float) -> tuple[float, Tensor]:
        """Power iteration on (I - P)(H - shift I)(I - P), P the projector on the found vectors."""
        v = deflate(v)
        v = v / v.norm()
        rq = math.nan
        for _ in range(iters):
            w = deflate(apply(v) - shift * v)
            new = float(v @ w)  # the Rayleigh quotient of the shifted operator
            norm = w.norm()
            if norm == 0 or abs(new - rq) < tol * abs(new):
                return new + shift, v
            rq, v = new, w / norm
        return rq + shift, v

    for i in range(k):
        value, v = run(starts[i], 0.0)
        if value < 0:
            # Power iteration finds the eigenvalue largest in |.|; when that is negative, H - value I has
            # only eigenvalues >= 0 on the remaining space, and its largest is the largest algebraic.
            value, v = run(starts[i], value)
        found.append(v / v.norm())
        values.append(value)
    return np.array(values), torch.stack(found)


EIGEN_METHODS: Registry = Registry("eigen method", {"lanczos": lanczos, "power": power_iteration})


def top_eigenpairs(op: HessianOperator, k: int = 1, method: str = "lanczos", iters: int = 100,
                   tol: float = 1e-4, seed: int = 0) -> Eigenpairs:
    """The k largest algebraic eigenvalues of H with unit eigenvectors and their residuals
    ||H v - lambda v||, which bound each eigenvalue's error honestly, whatever the method's tolerance."""
    solve = EIGEN_METHODS.lookup(method)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k = {k!r} eigenpairs; accepted: an integer >= 1")
    if not isinstance(iters, (int, np.integer)) or iters < 1:
        raise UserError(f"iters = {iters!r}; accepted: an integer >= 1")
    if not tol >= 0:
        raise UserError(f"tol = {tol!r}; accepted: a number >= 0")
    apply, count = op.flat_apply()
    values, vectors = solve(apply, op.dim, k, iters, tol, seed, op.device)  # [k], [k, dim] float64

    order = np.argsort(-values, kind="stable")
    values, vectors = values[order], vectors[torch.as_tensor(order.copy(), device=vectors.device)]
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    # A deterministic sign: the entry largest in |.| (the first such) positive.
    pivots = vectors.abs().argmax(dim=1)
    vectors = vectors * torch.sign(vectors.gather(1, pivots[:, None]))
    # For symmetric H some eigenvalue lies within ||H v - lambda v|| of lambda (v unit): computed here
    # with one more HVP each, so the bound holds for the returned vectors whatever the solver reported.
    residuals = np.array([float((apply(v) - lam * v).norm()) for lam, v in zip(values.tolist(), vectors)])
    return Eigenpairs(values=np.asarray(values, dtype=np.float64), vectors=[op.unflatten(v) for v in vectors],
                      residuals=residuals, matvecs=count[0])
