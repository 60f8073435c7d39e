"""Hessian curvature (`landscape.core.curvature`): HVPs equal the exact Hessian (torch.func.hessian of
the flattened loss) times a vector, example-weighted over batches of different sizes, for an MLP and a
conv + BatchNorm (eval) model; Hutchinson's trace within 4 standard errors of the exact one, the error
shrinking as 1/sqrt(n), reproducible by seed; Lanczos and power iteration against eigvalsh, vectors
unit and orthogonal, residuals bounding the error; a subset of names is exactly the Hessian block;
the model untouched bit for bit; bad input one line. Tiny float64 models, fixed seeds, seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

from awp.errors import UserError
from conftest import one_line
from landscape.core.curvature import (EIGEN_METHODS, Eigenpairs, HessianOperator, TraceEstimate,
                                      hutchinson_trace, top_eigenpairs)

SIZES = (7, 3, 5)  # several batches of different sizes: the mean must weight them by size
HVP_TOL = 1e-8


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()  # dim 39


def _convbn() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).double()
    bn = model[1]  # running statistics far from (0, 1), so eval mode visibly differs from train mode
    bn.running_mean.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
    bn.running_var.copy_(torch.tensor([0.5, 2.0], dtype=torch.float64))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.3, 0.7]))
        bn.bias.copy_(torch.tensor([0.1, -0.4]))
    return model  # dim 123


MODELS = {"mlp": (_mlp, (5,)), "convbn": (_convbn, (1, 6, 6))}


def _examples(shape: tuple[int, ...], seed: int = 0, dtype=torch.float64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=gen, dtype=dtype), torch.randint(0, 3, (n,), generator=gen))
            for n in SIZES]


def _exact_hessian(model: nn.Module, examples, names: list[str]) -> torch.Tensor:
    """The dense Hessian [dim, dim] of the mean cross-entropy over all examples at once (eval mode), by
    torch.func.hessian of the loss as a function of the flattened parameters `names`."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    numels = [params[n].numel() for n in names]
    x = torch.cat([x for x, _ in examples])
    y = torch.cat([y for _, y in examples])

    def f(flat):
        p = {n: t.reshape(s) for n, t, s in zip(names, torch.split(flat, numels), shapes)}
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    training = model.training
    model.eval()
    try:
        return hessian(f)(flat0)
    finally:
        model.train(training)


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    """(model in train mode, examples, all parameter names, exact Hessian): the operator must switch
    to eval mode itself."""
    build, shape = MODELS[request.param]
    model = build().train()
    examples = _examples(shape)
    names = [n for n, _ in model.named_parameters()]
    return model, examples, names, _exact_hessian(model, examples, names)


@pytest.fixture(scope="module")
def mlp():
    model = _mlp().eval()
    examples = _examples((5,))
    names = [n for n, _ in model.named_parameters()]
    op = HessianOperator(model, examples, names)
    return op, _exact_hessian(model, examples, names)


# ---------------------------------------------------------------------------------------------------
# H v
# ---------------------------------------------------------------------------------------------------


def test_hvp_equals_exact_hessian(case):
    model, examples, names, h = case
    op = HessianOperator(model, examples, dict(model.named_parameters()).keys())  # any iterable of names
    assert op.names == names and op.dim == h.shape[0]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(op.dim, generator=gen, dtype=torch.float64)
        hv = op.matvec(op.unflatten(v))
        assert set(hv) == set(names)
        assert all(hv[n].shape == op.params[n].shape and hv[n].dtype == op.params[n].dtype for n in names)
        torch.testing.assert_close(op.flatten(hv), h @ v, rtol=0, atol=HVP_TOL)
    # The loss over all examples at once, in eval mode.
    with torch.no_grad():
        model.eval()
        x, y = torch.cat([x for x, _ in examples]), torch.cat([y for _, y in examples])
        expected = float(F.cross_entropy(model(x), y))
        model.train()
    assert op.loss() == pytest.approx(expected, rel=1e-12)


def test_batches_are_weighted_by_size():
    """The mean over all examples, not the mean of batch means: the two differ here by far more than
    the tolerance, so a batch-mean average would fail the test above."""
    model = _mlp().eval()
    examples = _examples((5,))
    names = [n for n, _ in model.named_parameters()]
    whole = _exact_hessian(model, examples, names)
    batch_means = sum(_exact_hessian(model, [b], names) for b in examples) / len(examples)
    assert (whole - batch_means).abs().max() > 1e3 * HVP_TOL
    op = HessianOperator(model, examples, names)
    one = HessianOperator(model, [(torch.cat([x for x, _ in examples]), torch.cat([y for _, y in examples]))], names)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(op.flatten(op.matvec(op.unflatten(v))), one.flatten(one.matvec(one.unflatten(v))),
                               rtol=0, atol=1e-12)


def test_subset_is_the_hessian_block():
    """names picks exactly the block of H for those parameters, in the order given (not the model's)."""
    model = _convbn().eval()
    examples = _examples((1, 6, 6))
    every = [n for n, _ in model.named_parameters()]
    full = _exact_hessian(model, examples, every)
    offsets, start = {}, 0
    for n, p in model.named_parameters():
        offsets[n] = torch.arange(start, start + p.numel())
        start += p.numel()
    subset = ["4.weight", "1.bias", "0.weight"]
    idx = torch.cat([offsets[n] for n in subset])
    block = full[idx][:, idx]
    op = HessianOperator(model, examples, subset)
    assert op.dim == len(idx) and list(op.params) == subset
    # Column by column: H_block e_i for every basis vector.
    cols = torch.stack([op.flatten(op.matvec(op.unflatten(e))) for e in torch.eye(op.dim, dtype=torch.float64)], 1)
    torch.testing.assert_close(cols, block, rtol=0, atol=HVP_TOL)
    top = top_eigenpairs(op, k=1, tol=1e-10)
    assert top.values[0] == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]), rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# Trace
# ---------------------------------------------------------------------------------------------------


def test_hutchinson_trace(mlp):
    op, h = mlp
    exact = float(h.trace())
    small, large = hutchinson_trace(op, samples=50, seed=0), hutchinson_trace(op, samples=200, seed=0)
    assert isinstance(large, TraceEstimate) and large.samples == 200
    assert abs(large.value - exact) <= 4 * large.se
    assert abs(small.value - exact) <= 4 * small.se
    # se ~ 1/sqrt(n): 4x the probes, about half the error bar (the std itself estimated from the probes).
    assert 1.6 <= small.se / large.se <= 2.5
    # The standard error is that of the Rademacher estimator: Var(z^T H z) = 2 sum_{i != j} H_ij^2.
    off = h - torch.diag(torch.diag(h))
    assert large.se == pytest.approx(float(torch.sqrt(2 * (off**2).sum() / 200)), rel=0.25)
    assert hutchinson_trace(op, samples=50, seed=0) == small  # same seed, same probes, same numbers
    assert hutchinson_trace(op, samples=50, seed=1) != small


# ---------------------------------------------------------------------------------------------------
# Top eigenpairs
# ---------------------------------------------------------------------------------------------------


def _check_pairs(op: HessianOperator, pairs: Eigenpairs, h: torch.Tensor, k: int) -> None:
    """Vectors unit and orthonormal, signs fixed, residuals recomputed from H, and each residual an
    honest bound: some exact eigenvalue lies within it of the returned value."""
    exact = torch.linalg.eigvalsh(h).numpy()
    assert pairs.values.shape == (k,) and pairs.residuals.shape == (k,) and len(pairs.vectors) == k
    assert np.all(np.diff(pairs.values) <= 0)
    flat = torch.stack([op.flatten(v) for v in pairs.vectors])
    torch.testing.assert_close(flat @ flat.T, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-8)
    for lam, v, r in zip(pairs.values, flat, pairs.residuals):
        assert v[v.abs().argmax()] > 0
        assert r == pytest.approx(float((h @ v - lam * v).norm()), rel=1e-6, abs=1e-12)
        assert np.min(np.abs(exact - lam)) <= r + 1e-12


def test_lanczos_top_k(mlp):
    op, h = mlp
    exact = torch.linalg.eigvalsh(h).numpy()[::-1]
    pairs = top_eigenpairs(op, k=3, method="lanczos", tol=1e-10)
    np.testing.assert_allclose(pairs.values, exact[:3], rtol=1e-6)
    _check_pairs(op, pairs, h, 3)
    assert pairs.residuals.max() < 1e-6 and pairs.matvecs > 3
    again = top_eigenpairs(op, k=3, tol=1e-10)  # the start vector comes from the seed: the same run twice
    assert np.array_equal(again.values, pairs.values) and all(
        torch.equal(a[n], b[n]) for a, b in zip(again.vectors, pairs.vectors) for n in op.names)
    loose = top_eigenpairs(op, k=2, tol=1e-1, iters=3)  # a loose solve: the residuals still bound its error
    _check_pairs(op, loose, h, 2)


def test_power_iteration(mlp):
    op, h = mlp
    exact = torch.linalg.eigvalsh(h).numpy()[::-1]
    top = top_eigenpairs(op, k=1, method="power", iters=500, tol=1e-8)
    assert top.values[0] == pytest.approx(exact[0], rel=1e-3)
    _check_pairs(op, top, h, 1)
    assert top.residuals[0] < 1e-3 and top.matvecs <= 501
    two = top_eigenpairs(op, k=2, method="power", iters=500, tol=1e-10)  # the second deflated against the first
    np.testing.assert_allclose(two.values, exact[:2], rtol=1e-3)
    _check_pairs(op, two, h, 2)


def test_power_finds_largest_algebraic_not_largest_magnitude():
    """With a negative eigenvalue dominant in |.|, power iteration must still return the largest ones."""
    d = torch.tensor([-5.0, 1.0, 2.0, 3.0, 0.5], dtype=torch.float64)
    values, vectors = EIGEN_METHODS["power"](lambda v: d * v, 5, 2, 2000, 1e-12, 0, torch.device("cpu"))
    np.testing.assert_allclose(values, [3.0, 2.0], rtol=1e-6)
    torch.testing.assert_close(vectors.abs(), torch.eye(5, dtype=torch.float64)[[3, 2]], rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------------------------
# The model left alone; bad input
# ---------------------------------------------------------------------------------------------------


def test_model_untouched():
    """Parameters and buffers bit for bit, requires_grad flags and each module's mode as they were, no
    .grad written; float32 works too."""
    model = _convbn().float().train()
    model[3].eval()  # a mixed mode, which model.train(True) afterwards would not restore
    model[0].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    op = HessianOperator(model, _examples((1, 6, 6), dtype=torch.float32), ["0.weight", "0.bias", "4.weight"])
    op.loss()
    hutchinson_trace(op, samples=3)
    pairs = top_eigenpairs(op, k=2)
    top_eigenpairs(op, k=1, method="power", iters=20)
    assert all(v.dtype == torch.float32 for v in pairs.vectors[0].values())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # the centre is a copy: the operator stays at w when the model moves
        model[0].weight.add_(1.0)
    assert torch.equal(op.params["0.weight"], before["0.weight"])


@pytest.mark.parametrize("call, needles", [
    (lambda m, e: HessianOperator(m, e, []), ["names is empty"]),
    (lambda m, e: HessianOperator(m, e, "0.weight"), ["'0.weight'", "list of parameter names"]),
    (lambda m, e: HessianOperator(m, e, ["0.weight", "nope"]), ["'nope'", "accepted: 0.weight, 0.bias"]),
    (lambda m, e: HessianOperator(m, e, ["0.weight", "0.weight"]), ["'0.weight'", "twice"]),
    (lambda m, e: HessianOperator(m, [], ["0.weight"]), ["examples is empty"]),
    (lambda m, e: hutchinson_trace(HessianOperator(m, e, ["2.bias"]), samples=1), ["samples 1", ">= 2"]),
    (lambda m, e: top_eigenpairs(HessianOperator(m, e, ["2.bias"]), k=0), ["k = 0", ">= 1"]),
    (lambda m, e: top_eigenpairs(HessianOperator(m, e, ["2.bias"]), k=3), ["k = 3", "1 <= k < 3"]),
    (lambda m, e: top_eigenpairs(HessianOperator(m, e, ["2.bias"]), k=4, method="power"), ["k = 4", "1 <= k <= 3"]),
    (lambda m, e: top_eigenpairs(HessianOperator(m, e, ["2.bias"]), method="qr"),
     ["unknown eigen method 'qr'", "accepted: lanczos, power"]),
    (lambda m, e: top_eigenpairs(HessianOperator(m, e, ["2.bias"]), iters=0), ["iters = 0", ">= 1"]),
    (lambda m, e: top_eigenpairs(HessianOperator(m, e, ["2.bias"]), tol=-1.0), ["tol = -1.0", ">= 0"]),
    (lambda m, e: top_eigenpairs(HessianOperator(m, e, dict(m.named_parameters()).keys()), k=3, iters=1, tol=0.0),
     ["lanczos found", "of k = 3", "iters = 1", "raise iters or tol"]),
    (lambda m, e: HessianOperator(m, e, ["2.bias", "0.bias"]).matvec({"2.bias": torch.ones(3)}), ["'0.bias'"]),
], ids=["empty-names", "str-names", "unknown-name", "duplicate", "no-examples", "samples", "k0", "k-dim",
        "power-k", "method", "iters", "tol", "no-convergence", "vector-keys"])
def test_bad_input_is_one_line(call, needles):
    model = _mlp()
    with pytest.raises(UserError) as excinfo:
        call(model, _examples((5,)))
    one_line(excinfo, *needles)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(mlp):
    """On CUDA: the same HVPs, the same probes and so the same trace, the same eigenpairs."""
    op, h = mlp
    model = _mlp().cuda().eval()
    gpu = HessianOperator(model, _examples((5,)), op.names)
    assert all(p.is_cuda for p in gpu.params.values())
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hv = gpu.matvec(gpu.unflatten(v.cuda()))
    assert all(t.is_cuda for t in hv.values())
    torch.testing.assert_close(gpu.flatten(hv).cpu(), h @ v, rtol=0, atol=HVP_TOL)
    cpu_trace, gpu_trace = hutchinson_trace(op, samples=20), hutchinson_trace(gpu, samples=20)
    assert gpu_trace.value == pytest.approx(cpu_trace.value, rel=1e-10)
    for method in EIGEN_METHODS:
        a = top_eigenpairs(op, k=2, method=method, iters=300, tol=1e-10)
        b = top_eigenpairs(gpu, k=2, method=method, iters=300, tol=1e-10)
        np.testing.assert_allclose(b.values, a.values, rtol=1e-6)
        assert all(t.is_cuda for t in b.vectors[0].values())
