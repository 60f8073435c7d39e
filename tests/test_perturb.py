"""AWP math (Eq. 10, Eq. 11, Eq. 15): projection, layer-wise sizes, exact restore, clean grads, frozen BN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from awp.attacks import AttackConfig
from awp.methods import get_method
from awp.models import create_model
from awp.perturb import (
    AWPConfig,
    ascent_step,
    find_perturbation,
    layer_norms,
    perturbable_params,
    perturbed,
    project_gamma,
    relative_norms,
    zeros_like_params,
)
from awp.weights import snapshot
from awp.train import train_step


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("smallcnn", 10, 1, (0.3,), (0.4,), widths=(4, 8, 8)).train()


def _batch(seed: int = 0, n: int = 32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _loss(model, x, y):
    return lambda: F.cross_entropy(model(x), y)


def test_project_gamma_keeps_inside_and_scales_outside():
    w = [torch.randn(8, 4, 3, 3), torch.randn(10, 8)]
    w_norms = layer_norms(w)
    inside = torch.randn_like(w[0])
    inside = inside * (0.004 * w[0].norm() / inside.norm())  # ||v|| = 0.4 * gamma * ||w||
    outside = torch.randn_like(w[1])
    p_in, p_out = project_gamma([inside, outside], w_norms, 0.01)
    assert torch.equal(p_in, inside)  # Eq. 15, second case: unchanged, bit for bit
    assert torch.allclose(p_out.norm(), 0.01 * w[1].norm(), rtol=1e-6)  # first case: onto the sphere
    assert torch.allclose(p_out / p_out.norm(), outside / outside.norm(), atol=1e-6)  # same direction
    zero = project_gamma([torch.zeros_like(w[0])], w_norms[:1], 0.01)[0]
    assert torch.equal(zero, torch.zeros_like(w[0]))


def test_ascent_step_zero_gradient_is_no_step():
    w, v = torch.randn(5, 5), torch.zeros(5, 5)
    assert torch.equal(ascent_step([v], [torch.zeros_like(w)], layer_norms([w]), 0.01, 0.01)[0], v)


def test_layer_norms_match_per_layer_norms():
    ts = [torch.randn(3, 4), torch.randn(7), torch.randn(2, 2, 2)]
    assert torch.allclose(layer_norms(ts), torch.stack([t.norm() for t in ts]))


@pytest.mark.parametrize("gamma", [5e-3, 0.01, 0.1])
def test_one_step_size_is_gamma_times_weight_norm(gamma):
    """A = K2 = 1, eta2 = gamma (Appendix D.2): every layer's ||v_l|| = gamma * ||w_l|| (Eq. 8 with equality)."""
    model = _model()
    x, y = _batch()
    params = perturbable_params(model)
    with perturbed(params) as w:
        v = find_perturbation(model, params, w, zeros_like_params(params), _loss(model, x, y), AWPConfig(gamma=gamma))
    rel = relative_norms(v, w)
    assert set(rel) == {k for k, p in model.named_parameters() if p.dim() > 1}
    for name, r in rel.items():
        assert r == pytest.approx(gamma, rel=1e-5), name


@pytest.mark.parametrize("steps,step_size", [(3, None), (4, 0.05), (5, 0.2)])
def test_multi_step_never_exceeds_the_ball(steps, step_size):
    """K2 > 1: Pi_gamma (Eq. 15) keeps ||v_l|| <= gamma * ||w_l|| after every step, even with a big eta2."""
    gamma = 0.05
    model = _model(1)
    x, y = _batch(1)
    params = perturbable_params(model)
    cfg = AWPConfig(gamma=gamma, steps=1, step_size=step_size if step_size is not None else gamma / steps)
    with perturbed(params) as w:
        v = zeros_like_params(params)
        for _ in range(steps):
            v = find_perturbation(model, params, w, v, _loss(model, x, y), cfg)
            for name, r in relative_norms(v, w).items():
                assert r <= gamma * (1 + 1e-6), (name, r)
    cfg_k = AWPConfig(gamma=gamma, steps=steps, step_size=step_size)
    with perturbed(params) as w:
        v = find_perturbation(model, params, w, zeros_like_params(params), _loss(model, x, y), cfg_k)
        assert max(relative_norms(v, w).values()) <= gamma * (1 + 1e-6)


def test_v_is_the_normalized_gradient_scaled_by_weight_norm():
    """Eq. 10 with v = 0: v_l = eta2 * g_l / ||g_l|| * ||w_l||, g the gradient of the mean adversarial loss at w."""
    model = _model(2)
    x, y = _batch(2)
    params = perturbable_params(model)
    with torch.no_grad():
        buffers = {k: b.clone() for k, b in model.named_buffers()}
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
    for k, b in model.named_buffers():  # undo the running-stat update of this reference pass
        b.data.copy_(buffers[k])
    with perturbed(params) as w:
        v = find_perturbation(model, params, w, zeros_like_params(params), _loss(model, x, y), AWPConfig(gamma=0.02))
    for (name, g) in zip(params, grads):
        expected = 0.02 * g / g.norm() * w[name].norm()
        assert torch.allclose(v[name], expected, rtol=1e-5, atol=1e-9), name


def test_search_leaves_grads_and_batchnorm_alone_and_restore_is_exact():
    model = _model(3)
    x, y = _batch(3)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before_params = {k: p.detach().clone() for k, p in model.named_parameters()}
    before_buffers = {k: b.clone() for k, b in model.named_buffers()}
    params = perturbable_params(model)
    with perturbed(params) as w:
        v = find_perturbation(model, params, w, zeros_like_params(params), _loss(model, x, y), AWPConfig(gamma=0.1, steps=3))
        moved = [k for k, p in params.items() if not torch.equal(p, before_params[k])]
        assert moved == list(params)  # inside the block the model is at w + v
        for k in params:
            assert torch.equal(params[k].detach(), w[k] + v[k])
    for k, p in model.named_parameters():
        assert torch.equal(p.detach(), before_params[k]), k  # exact: copied back, not w + v - v
        assert torch.equal(p.grad, torch.full_like(p, 7.0)), k  # autograd.grad, not .backward()
    for k, b in model.named_buffers():
        assert torch.equal(b, before_buffers[k]), k  # BatchNorm running stats untouched


def test_restore_on_error():
    model = _model()
    params = perturbable_params(model)
    saved = snapshot(params)
    with pytest.raises(RuntimeError):
        with perturbed(params, {k: torch.ones_like(p) for k, p in params.items()}):
            raise RuntimeError("boom")
    for k, p in params.items():
        assert torch.equal(p.detach(), saved[k])


def test_only_weights_by_default_biases_and_bn_with_option():
    model = create_model("smallcnn", 10, 1, widths=(4, 8, 8))
    default = perturbable_params(model)
    assert default and all(p.dim() > 1 for p in default.values())
    every = perturbable_params(model, include_1d=True)
    assert set(every) == {k for k, _ in model.named_parameters()}


def test_awp_step_with_zero_lr_and_decay_leaves_weights_bitwise():
    """Algorithm 2 line 15 / Eq. 11 with eta3 = 0: the weights come back bit for bit."""
    model = _model(4)
    x, y = _batch(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=0.0)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    attack = AttackConfig("linf", 0.25, 0.0625, 3)
    for alternations, steps in ((1, 1), (2, 3)):
        cfg = AWPConfig(gamma=0.05, steps=steps, alternations=alternations)
        gen = torch.Generator().manual_seed(0)
        train_step(model, opt, get_method("at-awp"), x, y, attack, gen, cfg)
    for k, p in model.named_parameters():
        assert torch.equal(p.detach(), before[k]), k


def test_training_gradient_is_taken_at_w_plus_v():
    """Line 15: the update uses the gradient at w + v (not at w), then lands at w - lr * grad."""
    model = _model(5)
    x, y = _batch(5)
    attack = AttackConfig("linf", 0.25, 0.0625, 0)  # no PGD steps: x' = x + uniform start
    cfg = AWPConfig(gamma=0.1)
    lr = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    w0 = {k: p.detach().clone() for k, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    train_step(model, opt, get_method("at-awp"), x, y, attack, gen, cfg)
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    # The same step with plain AT computes the gradient at w; it must differ for the perturbed weights.
    model_at = _model(5)
    opt_at = torch.optim.SGD(model_at.parameters(), lr=lr)
    train_step(model_at, opt_at, get_method("at"), x, y, attack, torch.Generator().manual_seed(0))
    weight = next(k for k, p in model.named_parameters() if p.dim() > 1)
    assert not torch.allclose(grads[weight], dict(model_at.named_parameters())[weight].grad)
    for k, p in model.named_parameters():
        assert torch.allclose(p.detach(), w0[k] - lr * grads[k], atol=1e-7), k
