"""The menu of robust sharpness measures (landscape.core.measures): ReLU-rescaling invariance as each
measure states it, PAC-Bayes bisection monotone in its threshold, scopes that leave every other
parameter bit for bit, agreement with the probe's rise, and the resumable results file."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from awp.attacks import AttackConfig
from awp.errors import UserError
from landscape.core import engine
from landscape.core import measures as M
from landscape.core.flatness import bisect_sigma
from landscape.core.objective import Objective
from landscape.core.scope import matching, scopes

ATTACK = AttackConfig(norm="l2", eps=0.5, step_size=0.2, steps=3)  # L2: continuous in the gradient (no sign ties)
CHEAP = dict(M.resolve_params(None), dirs=2, draws=2, ascent_steps=2, pac_draws=2, pac_iters=4, pac_eps=0.0,
             trace_probes=8, eig_iters=30)


def relu_net(seed: int = 0) -> nn.Module:
    """A pure ReLU network without biases: scaling layer l by a and layer l + 1 by 1/a is the same function."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24, bias=False), nn.ReLU(), nn.Linear(24, 16, bias=False),
                         nn.ReLU(), nn.Linear(16, 10, bias=False)).eval()


def rescaled(model: nn.Module, a: float) -> nn.Module:
    twin = relu_net()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        twin[1].weight.mul_(a)
        twin[3].weight.div_(a)
    return twin.eval()


@pytest.fixture(scope="module")
def batches(digits):
    x, y = digits.train.tensors
    return engine.fixed_batches(torch.utils.data.TensorDataset(x[:96], y[:96]), 48, ATTACK, seed=0)


def objective(model: nn.Module, batches, names=None) -> Objective:
    names = names or [n for n, p in model.named_parameters() if p.dim() > 1]
    return Objective(model, batches, ATTACK, names)


def test_rescaling_invariance_is_as_each_measure_states(batches):
    model = relu_net()
    twin = rescaled(model, 4.0)
    x = batches[0].x
    assert torch.allclose(model(x), twin(x), atol=1e-5)  # the same function
    for name, kind in M.MEASURES.items():
        a = M.compute(name, objective(model, batches), CHEAP, seed=0).value
        b = M.compute(name, objective(twin, batches), CHEAP, seed=0).value
        if kind.invariant:
            assert b == pytest.approx(a, rel=2e-3, abs=1e-5), name
        else:  # the test can tell: a measure that claims no invariance does move
            assert abs(b - a) > 0.05 * abs(a), name


def test_pac_bayes_bisection_is_monotone_in_the_threshold(batches):
    obj = objective(relu_net(), batches)
    values = [M.compute("pac-bayes-mag", obj, dict(CHEAP, pac_threshold=t), seed=0).value for t in (0.02, 0.05, 0.1, 0.3)]
    assert all(np.isfinite(values))
    assert all(a >= b for a, b in zip(values, values[1:])), values  # a larger allowed rise: a larger sigma
    assert values[0] > values[-1]


def test_bisection_monotone_for_any_rise_function():
    rng = np.random.default_rng(0)
    for _ in range(50):
        table = rng.uniform(0, 1, 4096)
        rise = lambda s: float(table[int(abs(math.log2(s) * 97)) % 4096] + 0.3 * s)  # noqa: E731  deterministic, not monotone
        brackets = [bisect_sigma(rise, t, 1.0, 6) for t in (0.2, 0.4, 0.6, 0.9)]
        for (lo1, hi1), (lo2, hi2) in zip(brackets, brackets[1:]):
            assert lo2 >= lo1 and hi2 >= hi1


def test_a_scope_leaves_every_other_parameter_bit_for_bit(batches):
    model = relu_net()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = []

    def check(module, inputs):
        for n in ("1.weight", "5.weight"):
            seen.append(torch.equal(dict(model.named_parameters())[n], before[n]))

    handle = model.register_forward_pre_hook(check)
    obj = objective(model, batches, names=["3.weight"])
    moved = []
    handle2 = model[3].register_forward_pre_hook(lambda m, i: moved.append(not torch.equal(m.weight, before["3.weight"])))
    for name in ("flatness-worst", "adaptive-avg", "rise"):
        M.compute(name, obj, CHEAP, seed=0)
    handle.remove()
    handle2.remove()
    assert seen and all(seen)
    assert any(moved)  # the scope itself did move
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])  # and everything is back at w


def test_rise_matches_the_probe_on_the_same_points(batches, digits):
    import landscape

    model = relu_net()
    x, y = digits.train.tensors
    data = torch.utils.data.TensorDataset(x[:96], y[:96])
    res = landscape.probe_model(model, data, alphas=np.linspace(-1, 1, 5), dirs=2, attack=ATTACK, batch_size=48, radius=0.5)
    probe_rise = res.sharpness()[0].mean["rise"]
    ours = M.compute("rise", objective(model, batches), dict(CHEAP, dirs=2, radius=0.5), seed=0)
    assert ours.value == pytest.approx(probe_rise, rel=1e-6)


def test_worst_case_finds_more_than_the_average_at_the_same_radius(batches):
    obj = objective(relu_net(), batches)
    avg = M.compute("flatness-avg", obj, dict(CHEAP, xi_avg=0.05), seed=0)
    worst = M.compute("flatness-worst", obj, dict(CHEAP, xi_worst=0.05, ascent_steps=3), seed=0)
    assert worst.value > avg.value
    assert worst.se > 0 and avg.se > 0


def test_scopes_and_bad_names():
    names = ["net.0.weight", "net.0.bias", "net.3.weight", "fc.weight"]
    assert scopes(names) == {"all": names}
    assert scopes(names, ("net.*",)) == {"net.*": names[:3]}
    assert list(scopes(names, per_layer=True, eligible=[n for n in names if "bias" not in n])) == ["net.0", "net.3", "fc"]
    with pytest.raises(UserError, match=r"'layer4\.\*' matches no parameter; the model has: net.0.weight"):
        matching(names, ("layer4.*",))
    with pytest.raises(UserError, match="unknown --measures name 'sharpest'; accepted: all, rise"):
        M.parse_measures("rise,sharpest")
    with pytest.raises(UserError, match=r"--xi-avg '-1' is not accepted; give a number > 0"):
        M.resolve_params({"xi_avg": "-1"})
    assert M.parse_measures("all") == M.MEASURES.names()


def test_results_file_resumes_only_what_is_pending(tmp_path):
    from landscape.core.flatness import Value
    from landscape.storage.measures import MeasureResults
    from landscape.storage.results import CheckpointId

    ids = [CheckpointId("run.h5", e, f"{e:064x}", f"epoch {e}") for e in (1, 2)]
    res = MeasureResults(ids, ["rise", "hessian-trace"], {"all": ["a"], "net.3": ["b"]}, {"k": 1})
    res.set(0, 1, 1, Value(1.5, 0.25, {"probes": 8, "nan": math.nan}))
    res.save(tmp_path / "m.h5")
    back = MeasureResults.load(tmp_path / "m.h5")
    assert back.value[0, 1, 1] == 1.5 and back.se[0, 1, 1] == 0.25
    assert len(back.pending()) == 2 * 2 * 2 - 1 and (0, 1, 1) not in back.pending()
    assert back.scopes == {"all": ["a"], "net.3": ["b"]} and back.checkpoints == ids
    assert np.isnan(back.value[1]).all()


def test_python_api_per_layer_on_your_own_module(digits):
    import landscape

    model = relu_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = digits.train.tensors
    data = torch.utils.data.TensorDataset(x[:64], y[:64])
    res = landscape.sharpness_model(model, data, measures=["flatness-worst", "hessian-trace"], attack=ATTACK,
                                    per_layer=True, batch_size=32, ascent_steps=2, trace_probes=4)
    assert res.scope_labels == ["1", "3", "5"] and res.complete
    v, se = res.get("hessian-trace", "5")
    assert v.shape == (1,) and v[0] > 0 and se[0] > 0
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())
    with pytest.raises(UserError, match="unknown measure parameter 'xi'"):
        landscape.sharpness_model(model, data, measures="rise", attack=ATTACK, xi=0.1)


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    """Two epochs of AT on 60 digits, both epochs' weights kept."""
    from awp.train import train
    from awp.trainconfig import TrainConfig

    path = tmp_path_factory.mktemp("run") / "run.h5"
    cfg = TrainConfig(dataset="digits", arch="smallcnn", attack=AttackConfig("linf", 0.2, 0.05, 2), eval_steps=1,
                      eval_step_size=0.1, epochs=2, batch_size=30, train_size=60, train_eval_size=30, test_size=30,
                      save_every=1, seed=0)
    train(cfg, path)
    return path


def test_command_is_interrupted_and_resumes_without_losing_a_value(run_file, tmp_path, monkeypatch):
    from awp.errors import Interrupted
    from landscape.commands import sharpness as cmd
    from landscape.storage.measures import MeasureResults

    cfg = cmd.SharpnessConfig(checkpoint=str(run_file), epochs="all", measures="rise,flatness-worst", steps=1,
                              samples=20, per_layer=True, measure_params={"dirs": "1", "ascent_steps": "1"},
                              out=str(tmp_path / "m.h5"), progress=False, device="cpu")
    calls = iter([False, False, True])
    monkeypatch.setattr(cmd, "stop_requested", lambda: next(calls, False))
    with pytest.raises(Interrupted, match="value"):
        cmd.run_sharpness(cfg)
    partial = MeasureResults.load(tmp_path / "m.h5")
    assert partial.done.sum() == 3 and not partial.complete
    kept = partial.value[partial.done].copy()
    full = cmd.run_sharpness(cfg)
    assert full.complete and full.scope_labels == ["net.0", "net.3", "net.7", "net.12"]
    np.testing.assert_array_equal(full.value[partial.done], kept)  # finished values are never recomputed
    assert (tmp_path / "m.png").stat().st_size > 5000 and (tmp_path / "m.html").exists()
    stale = replace(cfg, measure_params={"dirs": "2", "ascent_steps": "1"})
    with pytest.raises(UserError, match="dirs"):
        cmd.run_sharpness(stale)
