"""PGD / FGSM (Eq. 13-14): feasibility, strength ordering, determinism, no side effects on the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from awp.attacks import AttackConfig, L2, fgsm, kl_from_natural, margin, pgd, random_start
from awp.config import parse_fraction
from awp.errors import UserError


@pytest.fixture
def batch(digits):
    x, y = digits.test.tensors
    return x[:128], y[:128]


@pytest.mark.parametrize("norm,eps,step", [("linf", 0.1, 0.03), ("l2", 1.0, 0.3)])
def test_pgd_stays_in_ball_and_box(trained_smallcnn, batch, norm, eps, step):
    x, y = batch
    x_adv = pgd(trained_smallcnn, x, y, eps=eps, step_size=step, steps=10, norm=norm,
                generator=torch.Generator().manual_seed(1))
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    # The attack actually moves: most examples end near the boundary of the ball.
    assert (size > 0.5 * eps).float().mean() > 0.5


def test_l2_projection_is_per_example():
    delta = torch.zeros(3, 1, 2, 2)
    delta[0] = 3.0  # norm 6: projected to eps
    delta[1] = 0.1  # norm 0.2: left alone
    out = L2().project(delta, eps=1.0)
    assert out[0].norm().item() == pytest.approx(1.0, rel=1e-6)
    assert torch.equal(out[1], delta[1])
    assert torch.equal(out[2], delta[2])
    # Direction kept
    assert torch.allclose(out[0] / out[0].norm(), delta[0] / delta[0].norm())


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.5)])
def test_random_start_inside_ball(norm, eps):
    x = torch.rand(64, 1, 8, 8)
    d = random_start(x, eps, norm, torch.Generator().manual_seed(0))
    size = d.flatten(1).abs().amax(1) if norm == "linf" else d.flatten(1).norm(dim=1)
    assert (size <= eps + 1e-6).all() and (size > 0).all()


def test_loss_ordering_pgd_fgsm_clean(trained_smallcnn, batch):
    x, y = batch
    m = trained_smallcnn
    with torch.no_grad():
        clean = F.cross_entropy(m(x), y).item()
        x_f = fgsm(m, x, y, eps=0.2)
        x_p = pgd(m, x, y, eps=0.2, step_size=0.05, steps=10, generator=torch.Generator().manual_seed(0))
        loss_f = F.cross_entropy(m(x_f), y).item()
        loss_p = F.cross_entropy(m(x_p), y).item()
    assert loss_p >= loss_f >= clean
    assert loss_p > clean + 0.1  # a real attack, not a no-op


def test_fixed_seed_identical(trained_smallcnn, batch):
    x, y = batch
    a = pgd(trained_smallcnn, x, y, eps=0.2, step_size=0.05, steps=5, generator=torch.Generator().manual_seed(7))
    b = pgd(trained_smallcnn, x, y, eps=0.2, step_size=0.05, steps=5, generator=torch.Generator().manual_seed(7))
    c = pgd(trained_smallcnn, x, y, eps=0.2, step_size=0.05, steps=5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_delta0_is_the_start(trained_smallcnn, batch):
    x, y = batch
    d0 = random_start(x, 0.2, "linf", torch.Generator().manual_seed(3))
    a = pgd(trained_smallcnn, x, y, eps=0.2, step_size=0.05, steps=0, delta0=d0)
    assert torch.equal(a, (x + d0).clamp(0, 1))


@pytest.mark.parametrize("train_mode", [None, True, False])
@pytest.mark.parametrize("start_training", [True, False])
def test_no_side_effects_on_model(trained_smallcnn, batch, train_mode, start_training):
    x, y = batch
    m = trained_smallcnn
    m.train(start_training)
    for p in m.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    try:
        pgd(m, x, y, eps=0.2, step_size=0.05, steps=3, train_mode=train_mode)
        assert all(mod.training == start_training for mod in m.modules())
        for p in m.parameters():
            assert torch.equal(p.grad, torch.full_like(p, 0.5))
        after = m.state_dict()
        for k, v in before.items():
            # Parameters never change; BN running stats change only when attacking in train mode.
            if "running" in k or "num_batches" in k:
                if train_mode is False or (train_mode is None and not start_training):
                    assert torch.equal(after[k], v), k
            else:
                assert torch.equal(after[k], v), k
    finally:
        for p in m.parameters():
            p.grad = None
        m.load_state_dict(before)
        m.eval()


def test_other_losses(trained_smallcnn, batch):
    x, y = batch
    m = trained_smallcnn
    with torch.no_grad():
        p_nat = F.softmax(m(x), 1)
    x_kl = pgd(m, x, p_nat, eps=0.2, step_size=0.05, steps=5, loss_fn=kl_from_natural,
               generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert kl_from_natural(m(x_kl), p_nat).mean() > kl_from_natural(m(x), p_nat).mean()
        assert kl_from_natural(m(x), p_nat).abs().max() < 1e-5
    x_m = pgd(m, x, y, eps=0.2, step_size=0.05, steps=5, loss_fn=margin, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert margin(m(x_m), y).mean() > margin(m(x), y).mean()


@pytest.mark.parametrize("text,value", [("8/255", 8 / 255), ("0.25", 0.25), (" 1 / 4 ", 0.25), ("0", 0.0)])
def test_parse_fraction(text, value):
    assert parse_fraction(text, "eps") == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "8/0", "-0.1", "nan", "inf", "1/2/3"])
def test_parse_fraction_rejects(text):
    with pytest.raises(UserError, match="eps"):
        parse_fraction(text, "eps")


def test_attack_config_validates():
    with pytest.raises(UserError, match="norm"):
        AttackConfig(norm="l3")
    with pytest.raises(UserError, match="steps"):
        AttackConfig(steps=-1)
