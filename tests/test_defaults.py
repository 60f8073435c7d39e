"""Training defaults that follow the paper and the reference code: gamma per (dataset, arch) (Table 1,
Section 5.1), the SVHN L-inf warm-up, the reference L2 random start and the clean BatchNorm pass; the
new options' bad values are one-line errors, and run files written before the options existed load
with the behaviour they were trained with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from awp.attacks import L2_STARTS, AttackConfig, pgd, random_start
from awp.errors import UserError
from awp.trainconfig import CLEAN_PASSES, TrainConfig, config_diff, format_toml, resolve_config, to_flat

# ---------------------------------------------------------------------------------------------
# gamma and warm-up per (dataset, arch / norm)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset,arch,gamma", [
    ("cifar10", None, 1e-2), ("cifar100", None, 1e-2), ("svhn", None, 1e-2),  # Table 1: PreAct ResNet-18
    ("cifar10", "wrn34_10", 5e-3), ("cifar10", "wrn28_10", 5e-3),  # Section 5.1: WideResNets
    ("cifar10", "vgg19_bn", 5e-3),  # not in the table: the CIFAR fallback
    ("digits", None, 1e-2), ("digits", "smallcnn_nobn", 1e-2),
])
def test_gamma_default_depends_on_dataset_and_arch(dataset, arch, gamma):
    flags = {"dataset": dataset, **({"arch": arch} if arch else {})}
    cfg = resolve_config(flags)
    assert cfg.awp.gamma == gamma
    assert cfg.awp.step_size == pytest.approx(gamma)  # Appendix D.2: eta2 = gamma / (A * K2), A = K2 = 1


def test_a_given_gamma_wins_over_the_table(tmp_path):
    assert resolve_config({"dataset": "cifar10", "gamma": "2e-3"}).awp.gamma == 2e-3
    assert resolve_config({"dataset": "cifar10", "arch": "wrn34_10", "gamma": 0.02}).awp.gamma == 0.02
    f = tmp_path / "c.toml"
    f.write_text('dataset = "svhn"\ngamma = 0.003\n')
    assert resolve_config({}, f).awp.gamma == 0.003


@pytest.mark.parametrize("dataset,norm,warmup", [
    ("svhn", "linf", 5), ("svhn", "l2", 0),  # the reference's SVHN logs
    ("cifar10", "linf", 0), ("cifar100", "l2", 0), ("digits", "linf", 10), ("digits", "l2", 10),
])
def test_awp_warmup_default(dataset, norm, warmup):
    assert resolve_config({"dataset": dataset, "norm": norm}).awp_warmup == warmup


def test_a_given_warmup_wins():
    assert resolve_config({"dataset": "svhn", "awp_warmup": 0}).awp_warmup == 0


# ---------------------------------------------------------------------------------------------
# The L2 random start
# ---------------------------------------------------------------------------------------------

D = 3 * 32 * 32  # a CIFAR image


def _radii(l2_start: str, n: int = 2000, eps: float = 0.5) -> np.ndarray:
    x = torch.zeros(n, 3, 32, 32)
    delta = random_start(x, eps, "l2", torch.Generator().manual_seed(0), l2_start=l2_start)
    return (delta.flatten(1).norm(dim=1) / eps).double().numpy()


def test_reference_l2_start_radius_is_uniform():
    r = _radii("reference")
    assert stats.kstest(r, "uniform").pvalue > 0.01  # radius / eps ~ U(0, 1), as the reference draws it
    assert np.quantile(r, 0.5) == pytest.approx(0.5, abs=0.05)
    assert (r <= 1 + 1e-6).all()


def test_ball_l2_start_is_uniform_in_the_ball_hence_on_the_sphere():
    r = _radii("ball")
    assert stats.kstest(r ** D, "uniform").pvalue > 0.01  # P(r <= t) = t^d
    assert np.quantile(r, 0.01) > 0.998  # in 3,072 dimensions every start lies on the sphere
    assert stats.kstest(r, "uniform").pvalue < 1e-10


def test_l2_starts_share_the_direction_and_ball_is_the_old_formula():
    x = torch.rand(50, 3, 8, 8)
    ref = random_start(x, 1.0, "l2", torch.Generator().manual_seed(3), l2_start="reference")
    ball = random_start(x, 1.0, "l2", torch.Generator().manual_seed(3), l2_start="ball")
    cos = torch.nn.functional.cosine_similarity(ref.flatten(1), ball.flatten(1), dim=1)
    torch.testing.assert_close(cos, torch.ones(50), rtol=0, atol=1e-5)
    gen = torch.Generator().manual_seed(3)  # the uniform-in-ball start this project used before
    g = torch.randn(x.shape, generator=gen)
    u = torch.rand(50, generator=gen)
    old = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * u.pow(1 / x[0].numel()).view(-1, 1, 1, 1)
    torch.testing.assert_close(ball, old)


def test_pgd_uses_the_configured_l2_start():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    x, y = torch.full((20, 3, 8, 8), 0.5), torch.zeros(20, dtype=torch.long)  # eps 0.3 never reaches the box
    for name in L2_STARTS:
        start = random_start(x, 0.3, "l2", torch.Generator().manual_seed(1), l2_start=name)
        adv = pgd(model, x, y, eps=0.3, step_size=0.1, steps=0, norm="l2", generator=torch.Generator().manual_seed(1),
                  l2_start=name)
        torch.testing.assert_close(adv - x, start)
    assert AttackConfig().l2_start == "reference"


def test_linf_start_ignores_l2_start():
    x = torch.rand(10, 1, 8, 8)
    a = random_start(x, 0.1, "linf", torch.Generator().manual_seed(0), l2_start="reference")
    b = random_start(x, 0.1, "linf", torch.Generator().manual_seed(0), l2_start="ball")
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# The options in the config: defaults, bad values, stored configs
# ---------------------------------------------------------------------------------------------


def test_new_options_default_to_the_reference_and_round_trip(tmp_path):
    cfg = resolve_config({})
    assert (cfg.attack.l2_start, cfg.bn_clean) == ("reference", "reference")
    assert cfg.eval_attack.l2_start == "reference"  # the evaluation attack inherits it
    other = resolve_config({"l2_start": "ball", "bn_clean": "frozen", "norm": "l2"})
    assert (other.attack.l2_start, other.bn_clean) == ("ball", "frozen")
    assert TrainConfig.from_dict(other.to_dict()) == other
    f = tmp_path / "c.toml"
    f.write_text(format_toml(other))  # the printed config sets them back
    assert resolve_config({}, f) == other
    assert set(config_diff(cfg, resolve_config({"bn_clean": "frozen"}))) == {"bn_clean"}


@pytest.mark.parametrize("flags,needle", [
    ({"l2_start": "sphere"}, "unknown L2 random start 'sphere'; accepted: " + ", ".join(L2_STARTS)),
    ({"bn_clean": "eval"}, "unknown --bn-clean 'eval'; accepted: " + ", ".join(CLEAN_PASSES)),
    ({"bn_clean": 3}, "--bn-clean must be a string"),
])
def test_bad_values_of_the_new_options_are_one_line(flags, needle):
    with pytest.raises(UserError) as e:
        resolve_config(flags)
    assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown L2 random start"):
        AttackConfig(norm="l2", eps=1.0, l2_start="sphere")


def test_a_config_stored_before_the_options_loads_with_what_it_was_trained_with():
    d = resolve_config({}).to_dict()
    del d["bn_clean"], d["attack"]["l2_start"]
    old = TrainConfig.from_dict(d)
    assert (old.bn_clean, old.attack.l2_start) == ("frozen", "ball")  # the only behaviour then
    # so resuming it (or a demo reusing it) with today's defaults names the difference
    assert config_diff(old, resolve_config({})) == ["l2_start", "bn_clean"]
    assert AttackConfig(**d["attack"]).l2_start == "reference"  # a bare attack dict takes the default
    assert set(to_flat(old)) >= {"bn_clean", "l2_start"}


# The callers that run PGD from an AttackConfig must hand it its l2_start. Until awp/methods.py
# (training) and awp/evaluate.py (per-epoch evaluation) pass `l2_start=attack.l2_start` to `pgd`, they
# use the default ("reference") whatever the config says: these fail, as expected, until then.


def _zero_step_l2(l2_start: str) -> AttackConfig:
    return AttackConfig(norm="l2", eps=0.3, step_size=0.1, steps=0, l2_start=l2_start)  # x' = x + start


def test_training_adversary_uses_the_configs_l2_start():
    from awp.methods import pgd_ce_adversary

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    x, y = torch.full((20, 3, 8, 8), 0.5), torch.zeros(20, dtype=torch.long)
    adv = pgd_ce_adversary(model, x, y, _zero_step_l2("ball"), torch.Generator().manual_seed(1))
    start = random_start(x, 0.3, "l2", torch.Generator().manual_seed(1), l2_start="ball")
    torch.testing.assert_close(adv - x, start)


def test_evaluation_attack_uses_the_configs_l2_start():
    from awp.evaluate import attacked_batches

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    ds = torch.utils.data.TensorDataset(torch.full((20, 3, 8, 8), 0.5), torch.zeros(20, dtype=torch.long))
    (x, _, adv), = attacked_batches(model, ds, _zero_step_l2("ball"), batch_size=20, device="cpu", seed=1)
    start = random_start(x, 0.3, "l2", torch.Generator().manual_seed(1), l2_start="ball")
    torch.testing.assert_close(adv - x, start)
