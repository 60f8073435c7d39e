"""P weight points per pass (`landscape.core.points`, `--points-per-batch`): equal to point-by-point
evaluation for 1-D and 2-D points, with BN in eval mode and recalibrated, with on-the-fly and fixed
examples, through the pipeline too; the model left bitwise as it was and never copied; the default rule;
a model vmap cannot run refused in one line.

Tolerance (the documented one): vmap runs P convolutions as one grouped convolution, another summation
order, so logits differ by float rounding (~1e-8 relative here); natural means agree to 1e-6. PGD's
sign(grad) can flip where a gradient component is within rounding of 0, moving that pixel by 2 eta1,
so adversarial losses agree to 1e-4 relative, their standard errors to 1e-3 and accuracies to one
example per point."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from awp.attacks import AttackConfig
from awp.data import class_stratified_subset
from awp.errors import UserError
from awp.weights import offset, snapshot
from landscape.api import plane_model, probe_model
from landscape.core import engine, points
from landscape.core.directions import random_direction

ATTACK = AttackConfig("linf", eps=0.2, step_size=0.05, steps=3)
KEYS = ("adv_loss", "nat_loss", "adv_acc", "nat_acc", "adv_loss_se", "nat_loss_se")
NAT_REL, ADV_REL, SE_REL = 1e-6, 1e-4, 1e-3


@pytest.fixture(scope="module")
def data(digits):
    return class_stratified_subset(digits.train, 90, seed=0)


@pytest.fixture(scope="module")
def setup(trained_smallcnn, data):
    model = trained_smallcnn
    w = snapshot(dict(model.named_parameters()))
    d, e = (random_direction(w, seed=0, k=k) for k in range(2))
    batches = engine.fixed_batches(data, 64, ATTACK, seed=0)  # two batches: 64 + 26
    return model, w, d, e, batches


def _close(a: dict, b: dict, n: int = 90) -> None:
    """Point-by-point values a and P-batched values b within the documented tolerance (n examples)."""
    for k in KEYS:
        if k.endswith("_acc"):
            assert abs(b[k] - a[k]) <= 1 / n + 1e-12, k
        elif k == "adv_loss_se":
            assert b[k] == pytest.approx(a[k], rel=SE_REL), k
        else:
            assert b[k] == pytest.approx(a[k], rel=NAT_REL if k.startswith("nat") else ADV_REL, abs=1e-12), k


@pytest.mark.parametrize("bn", ["eval", "recalibrate"])
@pytest.mark.parametrize("dims", [1, 2])
def test_many_equals_one_by_one(setup, data, bn, dims):
    model, w, d, e, batches = setup
    inputs = engine.clean_inputs(data, 45) if bn == "recalibrate" else []
    coeffs = [(-0.6, 0.3), (0.2, -0.4), (0.5, 0.0), (0.9, 0.8), (0.0, 0.0)]
    pts = [[(d, a)] if dims == 1 else [(d, a), (e, b)] for a, b in coeffs]
    before = {n: t.clone() for n, t in model.state_dict().items()}
    one = [engine.evaluate_at(model, t, batches, ATTACK, base=w, bn=bn, bn_inputs=inputs).reduce() for t in pts]
    many = [s.reduce() for s in points.evaluate_many(model, pts, batches, ATTACK, base=w, bn=bn, bn_inputs=inputs)]
    for a, b in zip(one, many):
        _close(a, b)
    assert len({round(o["adv_loss"], 6) for o in one}) == len(one)  # the points differ: a real comparison
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())  # weights and BN buffers bitwise


def test_fixed_and_natural(setup):
    model, w, d, e, batches = setup
    pts = [[(d, 0.4)], [(d, -0.4), (e, 0.2)]]
    fixed = engine.adversarial_examples(model, batches, ATTACK)
    natural = AttackConfig("linf", eps=0.0, step_size=0.0, steps=0)
    for attack, fx in ((ATTACK, fixed), (natural, None)):
        one = [engine.evaluate_at(model, t, batches, attack, base=w, fixed_adv=fx).reduce() for t in pts]
        many = points.evaluate_many(model, pts, batches, attack, base=w, fixed_adv=fx)
        for a, b in zip(one, many):
            _close(a, b.reduce())
    nat = points.evaluate_many(model, pts, batches, natural, base=w)
    assert all(s.adv_loss == s.nat_loss for s in nat)  # no attack: the adversarial loss is the natural loss


def test_stacked_weights_are_set_offset_bitwise(setup):
    model, w, d, e, _ = setup
    pts = [[(d, 0.3), (e, -0.7)], [(e, 0.25)]]
    names = points.moved(pts)
    stacked = points.stacked_weights(w, pts, names)
    params = dict(model.named_parameters())
    for p, terms in enumerate(pts):
        with offset(params, terms, w):
            assert all(torch.equal(stacked[n][p], params[n]) for n in names)
    assert names == set(d)  # only moved parameters are stacked (filter-normalized d skips BN and biases)


def test_no_model_copy(setup, monkeypatch):
    model, w, d, _, batches = setup

    def forbidden(*a, **k):
        raise AssertionError("the model was deep-copied")

    monkeypatch.setattr(copy, "deepcopy", forbidden)
    points.evaluate_many(model, [[(d, 0.1)], [(d, 0.2)]], batches[:1], ATTACK, base=w)


@pytest.mark.parametrize("plane", [False, True])
def test_pipeline_equal_for_any_p(trained_smallcnn, data, plane):
    """Through the one pipeline (groups of P within rounds, origin included, a last short group)."""
    kw = dict(attack=ATTACK, batch_size=64, bn="recalibrate" if plane else "eval")
    if plane:
        run = lambda p: plane_model(trained_smallcnn, data, alphas=[-0.5, 0, 0.5], betas=[-0.5, 0.5], points_per_batch=p, **kw)
    else:
        run = lambda p: probe_model(trained_smallcnn, data, alphas=[-0.5, 0, 0.5], dirs=2, points_per_batch=p, **kw)
    r1, r3 = run(1), run(3)
    assert r1.runtime["points_per_batch"] == 1 and r3.runtime["points_per_batch"] == 3
    for k in ("nat_loss", "nat_acc", "nat_loss_se"):
        np.testing.assert_allclose(r3.values[k], r1.values[k], rtol=NAT_REL, atol=1e-12)
    np.testing.assert_allclose(r3.values["adv_loss"], r1.values["adv_loss"], rtol=ADV_REL, atol=1e-12)
    np.testing.assert_allclose(r3.values["adv_loss_se"], r1.values["adv_loss_se"], rtol=SE_REL)
    assert np.abs(r3.values["adv_acc"] - r1.values["adv_acc"]).max() <= 1 / 90 + 1e-12
    assert r1.done.all() and r3.done.all()


def test_auto_rule_and_bad_values():
    assert points.points_per_pass("auto", "cpu", 256) == 1
    assert points.points_per_pass("auto", torch.device("cuda"), 256) == 16  # the rule only reads the device type
    assert points.points_per_pass("auto", torch.device("cuda"), 1024) == 4
    assert points.points_per_pass("auto", torch.device("cuda"), 8192) == 1
    assert points.points_per_pass(5, "cpu", 256) == 5
    assert points.parse_points("auto") == "auto" and points.parse_points("3") == 3
    for bad in ("0", "-2", "1.5", "many", ""):
        with pytest.raises(UserError, match="--points-per-batch"):
            points.parse_points(bad)


class _ItemNet(nn.Module):
    """A model vmap cannot batch: it reads a value to the host mid-forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        scale = float(x.abs().max().item())
        return self.fc(x.flatten(1)) * scale


def test_unbatchable_model_is_refused(data):
    model = _ItemNet().eval()
    w = snapshot(dict(model.named_parameters()))
    d = {n: torch.ones_like(t) for n, t in w.items()}
    batches = engine.fixed_batches(data, 32, ATTACK, seed=0)[:1]
    with pytest.raises(UserError, match="--points-per-batch 1"):
        points.evaluate_many(model, [[(d, 0.1)], [(d, 0.2)]], batches, ATTACK, base=w)
    assert all(torch.equal(w[n], p) for n, p in model.named_parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_many_equals_one_by_one(trained_smallcnn, data):
    model = copy.deepcopy(trained_smallcnn).cuda()
    w = snapshot(dict(model.named_parameters()))
    d = random_direction(w, seed=0, k=0)
    batches = engine.fixed_batches(data, 64, ATTACK, seed=0, device="cuda")
    pts = [[(d, a)] for a in (-0.5, 0.25, 0.75)]
    one = [engine.evaluate_at(model, t, batches, ATTACK, base=w).reduce() for t in pts]
    for a, b in zip(one, points.evaluate_many(model, pts, batches, ATTACK, base=w)):
        for k in ("adv_loss", "nat_loss"):
            assert b.reduce()[k] == pytest.approx(a[k], rel=1e-3)  # TF32/cuDNN algorithms may differ by P


def test_bf16_landscape_within_tolerance_of_fp32(trained_smallcnn, data):
    """--precision bf16 through the engine (both paths): the landscape's adversarial losses stay within
    the documented bf16 tolerance of fp32 (0.01 absolute on a mean cross-entropy, as `test_kernels`)."""
    from awp.kernels import Kernels

    kw = dict(alphas=[-0.5, 0, 0.5], dirs=1, attack=ATTACK, batch_size=64)
    fp32 = probe_model(trained_smallcnn, data, **kw)
    for p in (1, 3):
        bf16 = probe_model(trained_smallcnn, data, points_per_batch=p, kernels=Kernels("bf16"), **kw)
        assert bf16.config["precision"] == "bf16" and bf16.runtime["kernels"]["precision"] == "bf16"
        diff = np.abs(bf16.values["adv_loss"] - fp32.values["adv_loss"])
        assert 0 < diff.max() <= 0.01  # bf16 did change the numbers (autocast is on), within tolerance
