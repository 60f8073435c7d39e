"""The method zoo (issue 13): TRADES (Eq. 2, 16), MART (Eq. 3, 17), RST (Eq. 4), AT-ES, natural, each with
and without AWP; their losses against hand computations, their attacks inside the L2 ball, AWP's layer-wise
size on their objectives, RST's batch mix, and one-line errors for options of the wrong method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from awp.attacks import AttackConfig
from awp.errors import UserError
from awp.evaluate import evaluate
from awp.losses import kl_divergence
from awp.methods import METHODS, get_method
from awp.methods.mart import mart_loss
from awp.methods.trades import trades_loss
from awp.models import create_model
from awp.perturb import AWPConfig, find_perturbation, perturbable_params, perturbed, relative_norms, zeros_like_params
from awp.rundata import run_data, training_batches
from awp.store import open_run
from awp.train import build_model, train
from awp.trainconfig import resolve_config
from conftest import one_line, run_cli

TINY = {"eps": "0.1", "epochs": 3, "train_steps": 3, "eval_steps": 5, "test_size": 200, "train_eval_size": 100,
        "awp_warmup": 0}


def _smallcnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("smallcnn", 10, 1, (0.3,), (0.4,), widths=(4, 8, 8)).train()


def _batch(seed: int = 0, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("label", ["natural", "trades", "trades-awp", "mart", "mart-awp", "rst", "rst-awp", "at-es"])
def test_each_method_trains_with_a_finite_loss_and_gains_robustness(label, tmp_path):
    extra = {"method_params": {"labeler_epochs": 3}} if label.startswith("rst") else {}
    cfg = resolve_config({"method": label, **TINY, **extra})
    data = run_data(cfg.dataset, train_size=cfg.train_size, test_size=cfg.test_size)
    untrained, _ = build_model(cfg, data)
    before = evaluate(untrained, data.test, cfg.eval_attack, batch_size=500, device="cpu", seed=0)["adv_acc"]
    r = train(cfg, tmp_path / "r.h5")
    assert np.isfinite(r.metrics["fit_loss"]).all()
    assert bool(r.metrics["awp_on"][-1]) is label.endswith("-awp")
    assert r.metrics["test_adv_acc"][-1] > before + 0.15, (before, r.metrics["test_adv_acc"])


def test_trades_kl_is_finite_for_identical_and_confidently_different_predictions():
    same = torch.tensor([[3.0, -1.0, 0.5]])
    assert kl_divergence(same, same).item() == 0.0
    p = torch.tensor([[1000.0, -1000.0, 0.0]], requires_grad=True)
    q = torch.tensor([[-1000.0, 1000.0, 0.0]], requires_grad=True)
    kl = kl_divergence(p, q)
    kl.sum().backward()
    assert torch.isfinite(kl).all() and kl.item() == pytest.approx(2000.0, rel=1e-6)  # log p_0 - log q_0
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()
    # Moderate logits: the reference's KLDivLoss on a softmax target, batchmean, to float precision.
    a, b = torch.randn(8, 10), torch.randn(8, 10)
    ref = F.kl_div(F.log_softmax(b, dim=1), F.softmax(a, dim=1), reduction="batchmean")
    assert kl_divergence(a, b).mean().item() == pytest.approx(ref.item(), rel=1e-5)


class _Fixed(nn.Module):
    """Returns stored logits: `nat` for the natural batch (all zeros inputs), `adv` otherwise."""

    def __init__(self, nat: torch.Tensor, adv: torch.Tensor) -> None:
        super().__init__()
        self.nat, self.adv = nat, adv

    def forward(self, x):
        return self.nat if bool((x == 0).all()) else self.adv


def test_mart_loss_equals_a_hand_computation():
    nat = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    adv = torch.tensor([[0.5, 1.5, -0.5], [-2.0, 3.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    x, x_adv = torch.zeros(2, 1), torch.ones(2, 1)
    lam = 6.0
    expected = 0.0
    for i in range(2):
        p = np.exp(nat[i].numpy()) / np.exp(nat[i].numpy()).sum()
        q = np.exp(adv[i].numpy()) / np.exp(adv[i].numpy()).sum()
        yi = int(y[i])
        wrong = max(q[k] for k in range(3) if k != yi)
        bce = -math.log(q[yi]) - math.log(1 - wrong)  # Eq. 3's BCE
        kl = float((p * np.log(p / q)).sum())
        expected += bce + lam * kl * (1 - p[yi])
    out = mart_loss(_Fixed(nat, adv), x, x_adv, y, lambda_=lam)
    assert out.loss.item() == pytest.approx(expected / 2, rel=1e-12)
    assert torch.equal(out.logits_adv, adv)


def test_trades_loss_equals_a_hand_computation():
    nat = torch.tensor([[2.0, 0.5, -1.0]], dtype=torch.float64)
    adv = torch.tensor([[0.5, 1.5, -0.5]], dtype=torch.float64)
    y = torch.tensor([1])
    p, q = F.softmax(nat, 1)[0].numpy(), F.softmax(adv, 1)[0].numpy()
    expected = -math.log(p[1]) + 6.0 * float((p * np.log(p / q)).sum())  # Eq. 2
    out = trades_loss(_Fixed(nat, adv), torch.zeros(1, 1), torch.ones(1, 1), y, beta=6.0)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", [m for m in METHODS])
def test_l2_attacks_of_every_method_stay_in_the_ball_and_the_image(name):
    model = _smallcnn()
    x, y = _batch()
    attack = AttackConfig(norm="l2", eps=0.5, step_size=0.25, steps=5)
    x_adv = get_method(name).bind({}).adversary(model, x, y, attack, torch.Generator().manual_seed(0))
    dist = (x_adv - x).flatten(1).norm(dim=1)
    assert (dist <= 0.5 + 1e-5).all(), dist.max()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if name != "natural":
        assert dist.max() > 0.25  # it attacked
    assert model.training  # the mode the adversary found is restored


@pytest.mark.parametrize("name,param", [("trades", {"beta": 6.0}), ("mart", {"lambda": 6.0})])
def test_awp_on_trades_and_mart_reaches_gamma_per_layer_in_one_step(name, param):
    model = _smallcnn()
    x, y = _batch()
    bound = get_method(name).bind(param)
    x_adv = bound.adversary(model, x, y, AttackConfig(eps=0.1, step_size=0.025, steps=3), torch.Generator().manual_seed(0))
    params = perturbable_params(model)
    cfg = AWPConfig(gamma=5e-3, steps=1)
    with perturbed(params) as w:
        v = find_perturbation(model, params, w, zeros_like_params(params), lambda: bound.loss(model, x, x_adv, y).loss, cfg)
    rel = relative_norms(v, w)
    assert rel and all(r == pytest.approx(5e-3, rel=1e-5) for r in rel.values()), rel


def test_rst_batches_have_the_configured_mix():
    lab = TensorDataset(torch.zeros(50, 1, 2, 2), torch.zeros(50, dtype=torch.long))
    unl = TensorDataset(torch.ones(37, 1, 2, 2), torch.ones(37, dtype=torch.long))
    data = run_data("digits", train_size=50)
    from dataclasses import replace

    for fraction, batch in ((0.5, 20), (0.25, 16), (0.7, 10)):
        d = replace(data, train=lab, unlabeled=unl, unlabeled_fraction=fraction)
        n_unl = round(fraction * batch)
        seen = 0
        for i, (x, y) in enumerate(training_batches(d, batch, generator=torch.Generator().manual_seed(0))):
            is_unl = x.flatten(1)[:, 0] == 1
            assert torch.equal(is_unl, y == 1)  # pseudo-labels travel with their images
            labelled = int((~is_unl).sum())
            seen += labelled
            if labelled == batch - n_unl:  # every full batch has the configured mix
                assert int(is_unl.sum()) == n_unl and len(x) == batch
            else:  # the last, short batch keeps the ratio
                assert i == d.steps(batch) - 1
                assert abs(int(is_unl.sum()) - labelled * n_unl / (batch - n_unl)) <= 1
        assert seen == 50  # one pass over the labelled set per epoch


def test_rst_pseudo_labels_the_unused_digits_with_a_natural_model():
    cfg = resolve_config({"method": "rst", "method_params": {"labeler_epochs": 3}, **TINY})
    data = run_data(cfg.dataset, train_size=cfg.train_size, test_size=cfg.test_size)
    assert len(data.rest) == 997  # digits' 1,297 training images minus the 300 the default run trains on
    prepared = get_method("rst").prepared(cfg, data, torch.device("cpu"))
    x_u, y_u = prepared.unlabeled.tensors
    assert len(x_u) == 997 and prepared.unlabeled_fraction == 0.5
    truth = torch.stack([data.rest[i][1] for i in range(len(data.rest))])
    assert float((y_u == truth).float().mean()) > 0.7  # a natural model, 3 epochs, labels most correctly


def test_method_flags_are_stored(tmp_path):
    small = ["--epochs", "1", "--train-size", "20", "--train-eval-size", "10", "--test-size", "10", "--train-steps", "1",
             "--eval-steps", "1", "-q"]
    r = run_cli("train-awp", "--method", "trades", "--trades-beta", "3", "-o", str(tmp_path / "t.h5"), *small)
    assert r.returncode == 0, r.stderr
    assert open_run(tmp_path / "t.h5").config["method_params"] == {"beta": 3.0}
    # A flag of another method, a bad value, AT-ES without a validation split, an unlabelled set of the
    # wrong shape: rows of tests/test_bad_input.py (one line, exit 2, no file).


def test_unlabeled_sets_of_the_wrong_shape_or_form_are_one_line(tmp_path):
    np.savez(tmp_path / "u.npz", x=np.zeros((5, 3, 8, 8), dtype=np.float32))
    np.savez(tmp_path / "nox.npz", images=np.zeros((5, 1, 8, 8), dtype=np.float32))
    cfg = resolve_config({"method": "rst", **TINY})
    data = run_data(cfg.dataset, train_size=cfg.train_size, test_size=cfg.test_size)
    for spec, needle in ((f"npz:{tmp_path / 'u.npz'}", "images are [3, 8, 8] but the run's are [1, 8, 8]"),
                         (f"npz:{tmp_path / 'nox.npz'}", "has no array x or x_train"),
                         ("tinyimages", "unlabelled set 'tinyimages' is not accepted")):
        with pytest.raises(UserError) as e:
            get_method("rst").prepared(resolve_config({"method": "rst", **TINY, "method_params": {"unlabeled": spec}}),
                                       data, torch.device("cpu"))
        one_line(e, needle)


def test_at_es_reports_its_validation_best_and_eval_every_changes_no_weight(tmp_path):
    """AT-ES's reported epoch is its best on the validation split, and it has train/test numbers even
    when --eval-every skips its epoch; --eval-every changes what is measured, never a weight."""
    flags = {"method": "at-es", "epochs": 6, "train_size": 100, "train_eval_size": 50, "test_size": 100,
             "train_steps": 2, "eval_steps": 2, "save_every": 1}
    every = train(resolve_config({**flags, "eval_every": 4}), tmp_path / "every4.h5")
    each = train(resolve_config(flags), tmp_path / "every1.h5")
    r4, r1 = open_run(tmp_path / "every4.h5"), open_run(tmp_path / "every1.h5")
    assert r4.reported_epoch == r4.best_val_epoch == r1.best_val_epoch
    assert r4.resolve_epochs("reported") == [r4.best_val_epoch] and r4.best_val_epoch in r4.resolve_epochs("every:100")
    m = every.metrics
    measured = np.isfinite(m["test_adv_acc"])
    val = m["val_adv_acc"]
    new_best = np.array([v > np.max(val[:i], initial=-np.inf) for i, v in enumerate(val)])
    assert np.isfinite(val).all()  # the validation split every epoch
    assert (measured == ((m["epoch"] % 4 == 0) | (m["epoch"] == 6) | new_best)).all()
    assert measured[m["epoch"] == r4.reported_epoch].all()
    for e in range(1, 7):
        a, b = r4.state_dict(e), r1.state_dict(e)
        assert all(torch.equal(a[k], b[k]) for k in a), e
    np.testing.assert_array_equal(every.metrics["test_adv_acc"][measured], each.metrics["test_adv_acc"][measured])
