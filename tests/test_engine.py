"""The engine (Eq. 5 at a point): exact restore (`awp.weights.offset`), fixed batches from any form of
data, alpha = 0 is plain PGD, --pgd 0 is the natural loss, scale invariance of filter-normalized
curves, bitwise repeatability, on-the-fly >= fixed examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from awp.attacks import AttackConfig, cross_entropy, pgd
from awp.data import batches, class_stratified_subset
from awp.errors import UserError
from awp.models import create_model
from awp.weights import offset, snapshot
from landscape.core.directions import random_direction
from landscape.core.engine import adversarial_examples, evaluate_at, evaluate_point, fixed_batches

ATTACK = AttackConfig("linf", eps=0.2, step_size=0.05, steps=4)


@pytest.fixture(scope="module")
def data(digits):
    return class_stratified_subset(digits.train, 160, seed=0)


@pytest.fixture(scope="module")
def fixed(data):
    return fixed_batches(data, 64, ATTACK, seed=0)


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def curve(model, direction, alphas, batches, attack=ATTACK, **kw) -> np.ndarray:
    """Adversarial loss along one direction, [A]: w saved once, every point restored from it."""
    w = snapshot(params_of(model))
    return np.array([evaluate_at(model, [(direction, float(a))], batches, attack, base=w, **kw).reduce()["adv_loss"]
                     for a in alphas])


def test_offset_sets_w_plus_alpha_d_and_restores_bitwise(trained_smallcnn, fixed):
    model = trained_smallcnn
    params = params_of(model)
    before = snapshot(params)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    d = random_direction(before, seed=0, k=0)
    e = random_direction(before, seed=0, k=1)
    with offset(params, [(d, 0.3), (e, -0.7)]):
        for n, p in model.named_parameters():
            torch.testing.assert_close(p, before[n] + 0.3 * d[n] - 0.7 * e[n])
    with pytest.raises(RuntimeError, match="boom"), offset(params, [(d, 0.5)], before):
        raise RuntimeError("boom")
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    # evaluate_at goes through the same offset: after a point (and after a failing one) w is back bitwise.
    evaluate_at(model, [(d, 0.4), (e, -0.2)], fixed[:1], ATTACK, base=before)
    with pytest.raises(UserError, match="no-such-mode"):  # raised with the weights moved: still restored
        evaluate_at(model, [(d, 0.4)], fixed[:1], ATTACK, bn="no-such-mode")
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n


def test_fixed_batches_take_a_dataset_a_loader_or_batches_alike(data):
    """The same examples in the same order give the same batches and the same random starts, whichever
    form the data comes in."""
    ref = fixed_batches(data, 64, ATTACK, seed=3)
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=False)
    listed = [(x, y) for x, y in loader]
    for other in (fixed_batches(loader, 64, ATTACK, seed=3), fixed_batches(listed, 64, ATTACK, seed=3)):
        assert len(other) == len(ref) == 3
        for a, b in zip(ref, other):
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.delta0, b.delta0)


def test_alpha_zero_equals_direct_pgd_with_the_same_start(trained_smallcnn, fixed):
    model = trained_smallcnn
    d = random_direction(snapshot(params_of(model)), seed=0, k=0)
    sums = evaluate_at(model, [(d, 0.0)], fixed, ATTACK).reduce()
    losses, n = 0.0, 0
    for b in fixed:
        x_adv = pgd(model, b.x, b.y, eps=ATTACK.eps, step_size=ATTACK.step_size, steps=ATTACK.steps, delta0=b.delta0)
        assert torch.equal(pgd(model, b.x, b.y, ATTACK, delta0=b.delta0), x_adv)  # an AttackConfig: the same attack
        with torch.no_grad():
            losses += cross_entropy(model(x_adv), b.y).sum().item()
        n += len(b.y)
    assert sums["adv_loss"] == pytest.approx(losses / n, rel=1e-5)
    assert sums["adv_loss"] > sums["nat_loss"] and sums["adv_acc"] < sums["nat_acc"]


def test_pgd_zero_is_the_natural_loss(trained_smallcnn, data):
    model = trained_smallcnn
    natural = AttackConfig("linf", eps=0.2, step_size=0.05, steps=0)
    batches = fixed_batches(data, 64, natural, seed=0)
    assert all(torch.count_nonzero(b.delta0) == 0 for b in batches)  # no random start either
    d = random_direction(snapshot(params_of(model)), seed=0, k=0)
    for alpha in (0.0, 0.4):
        s = evaluate_at(model, [(d, alpha)], batches, natural).reduce()
        assert s["adv_loss"] == s["nat_loss"] and s["adv_acc"] == s["nat_acc"]
    x, y = data.tensors
    with torch.no_grad():
        direct = cross_entropy(model(x), y).mean().item()
    assert evaluate_point(model, batches, natural).reduce()["nat_loss"] == pytest.approx(direct, rel=1e-5)


def _scaled(model: torch.nn.Module, c: float) -> torch.nn.Module:
    """The same function: conv 2 (weight and bias) times c, conv 3's weight divided by c (ReLU and
    max-pool are positively homogeneous; Appendix B.1, footnote)."""
    other = create_model("smallcnn_nobn", 10, 1, (0.3,), (0.4,))
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.net[2].weight.mul_(c)
        other.net[2].bias.mul_(c)
        other.net[5].weight.div_(c)
    return other


@pytest.fixture(scope="module")
def relu_net(digits):
    """smallcnn_nobn (a pure ReLU network) naturally trained for a few epochs: curves with shape."""
    torch.manual_seed(1)
    model = create_model("smallcnn_nobn", 10, 1, (0.3,), (0.4,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        for x, y in batches(digits.train, 64, shuffle=True, generator=gen):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_filter_normalized_curves_are_scale_invariant(relu_net, fixed):
    model, scaled = relu_net, _scaled(relu_net, 5.0)
    x = fixed[0].x
    with torch.no_grad():
        torch.testing.assert_close(scaled(x), model(x), rtol=1e-4, atol=1e-4)  # the same function
    curves = {}
    for norm, alphas in (("filter", [-0.6, 0.0, 0.6]), ("none", [-0.05, 0.0, 0.05])):
        a = curve(model, random_direction(snapshot(params_of(model)), 0, 0, norm), alphas, fixed)
        b = curve(scaled, random_direction(snapshot(params_of(scaled)), 0, 0, norm), alphas, fixed)
        curves[norm] = (a, b)
    a, b = curves["filter"]
    assert a[0] > a[1] + 0.5 and a[2] > a[1] + 0.5  # a curve with shape ...
    np.testing.assert_allclose(a, b, rtol=1e-5)  # ... unchanged by the rescaling
    a, b = curves["none"]
    assert a[1] == pytest.approx(b[1], rel=1e-5)  # the same model at alpha = 0 ...
    assert np.abs(a[[0, 2]] - b[[0, 2]]).min() > 0.1 * a[1]  # ... but raw directions see the rescaling


def test_same_seed_gives_bitwise_the_same_curve_on_cpu(trained_smallcnn, data):
    runs = []
    for _ in range(2):
        batches = fixed_batches(data, 64, ATTACK, seed=5)
        d = random_direction(snapshot(params_of(trained_smallcnn)), seed=5, k=0)
        runs.append(curve(trained_smallcnn, d, [-0.5, 0.25], batches))
    assert np.array_equal(runs[0], runs[1])


def test_on_the_fly_loss_is_at_least_the_fixed_adversarial_loss(trained_smallcnn, fixed):
    model = trained_smallcnn
    alphas = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    at_w = adversarial_examples(model, fixed, ATTACK)
    for k in range(2):
        d = random_direction(snapshot(params_of(model)), seed=0, k=k)
        fly = curve(model, d, alphas, fixed)
        stale = curve(model, d, alphas, fixed, fixed_adv=at_w)
        assert fly[2] == pytest.approx(stale[2], rel=1e-6)  # the same examples at w
        assert (fly[alphas != 0] > stale[alphas != 0]).all(), (fly, stale)


def test_bn_recalibration_restores_buffers_and_changes_the_point(trained_smallcnn, fixed):
    model = trained_smallcnn
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    d = random_direction(snapshot(params_of(model)), seed=0, k=0)
    inputs = [b.x for b in fixed]
    plain = evaluate_at(model, [(d, 0.5)], fixed, ATTACK).reduce()
    recal = evaluate_at(model, [(d, 0.5)], fixed, ATTACK, bn="recalibrate", bn_inputs=inputs).reduce()
    assert recal["adv_loss"] != plain["adv_loss"]
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert not model.training
