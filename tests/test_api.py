"""The Python API on a model defined here (not in any registry) and on data in every accepted form:
one pipeline for 1-D, 2-D and N-D grids, the origin computed once, directions that are given or
rebuilt, bad values named by their parameter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import landscape
from awp.errors import UserError
from landscape.core import engine
from landscape.pipeline.compute import Job, compute
from awp.distributed import DistContext
from landscape.storage.results import Grid, Landscape

ATTACK = landscape.AttackConfig(eps=0.1, step_size=0.03, steps=2)
ALPHAS = np.linspace(-1, 1, 5)


class TinyNet(nn.Module):
    """A user's own model: inputs in [0, 1], no BatchNorm, nothing registered."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def data(digits):
    x, y = digits.test.tensors
    return TensorDataset(x[:48], y[:48])


def test_any_data_form_gives_the_same_landscape_and_the_model_is_left_as_it_was(data):
    model = TinyNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = landscape.probe_model(model, data, attack=ATTACK, alphas=ALPHAS, dirs=2, batch_size=16, device="cpu")
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x, y = data.tensors
    for form in (DataLoader(data, batch_size=16), [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]):
        other = landscape.probe_model(model, form, attack=ATTACK, alphas=ALPHAS, dirs=2, batch_size=16, device="cpu")
        np.testing.assert_array_equal(other.values["adv_loss"], ref.values["adv_loss"])
    assert ref.values["adv_loss"].shape == (1, 2, 5) and ref.done.all() and ref.origin_done.all()
    assert ref.runtime["examples"] == 48
    s = ref.sharpness()[0]
    assert s.n_dirs == 2 and np.isfinite(s.mean["rise"]) and np.isfinite(s.se["rise"]) and s.se["rise"] > 0


def test_origin_is_computed_once_and_fills_every_cell_at_w(data, monkeypatch):
    calls = []
    real = engine.evaluate_at
    monkeypatch.setattr(engine, "evaluate_at", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    res = landscape.probe_model(TinyNet(), data, attack=ATTACK, alphas=ALPHAS, dirs=3, device="cpu")
    assert len(calls) == 3 * (len(ALPHAS) - 1) + 1  # alpha = 0 once, not once per direction
    zero = int(np.flatnonzero(ALPHAS == 0)[0])
    for name in ("adv_loss", "nat_acc", "adv_loss_se"):
        assert (res.values[name][0, :, zero] == res.origin[name][0]).all()


def test_plane_and_probe_are_one_pipeline(data):
    model = TinyNet()
    curves = landscape.probe_model(model, data, attack=ATTACK, alphas=ALPHAS, dirs=2, device="cpu")
    plane = landscape.plane_model(model, data, attack=ATTACK, alphas=ALPHAS, betas=np.array([-1.0, 0.0, 1.0]), device="cpu")
    # beta = 0 is the line along d = direction 0 of the probe; alpha = 0 the line along e = direction 1
    np.testing.assert_array_equal(plane.values["adv_loss"][0, :, 1], curves.values["adv_loss"][0, 0])
    np.testing.assert_array_equal(plane.values["adv_loss"][0, 2, [0, 2]], curves.values["adv_loss"][0, 1, [0, 4]])
    assert plane.origin["adv_loss"][0] == curves.origin["adv_loss"][0]
    assert (plane.relative()[0, 2, 1] == 0.0) and plane.relative().shape == (1, 5, 3)


def test_an_n_dimensional_grid_runs_through_the_same_loop(data):
    axis = np.array([-0.5, 0.5])  # the origin is not on this grid: computed once on its own
    res = landscape.landscape_model(TinyNet(), data, Grid(("a", "b", "c"), (axis, axis, axis)), attack=ATTACK, device="cpu")
    assert res.values["adv_loss"].shape == (1, 2, 2, 2) and res.done.all() and res.origin_done.all()
    assert len(set(res.values["adv_loss"].ravel().tolist())) == 8


def test_given_directions_are_kept_in_the_file_and_reload(tmp_path, data):
    model = TinyNet()
    d = {n: torch.randn_like(p) * 0.05 for n, p in model.named_parameters()}
    res = landscape.probe_model(model, data, attack=ATTACK, alphas=ALPHAS, directions=[d], device="cpu",
                                out=tmp_path / "given.h5")
    back = Landscape.load(tmp_path / "given.h5")
    assert back.directions == [{"kind": "tensors", "index": 0}]
    assert all(torch.equal(back.stored[(0, 0)][n], d[n]) for n in d)
    np.testing.assert_array_equal(back.values["adv_loss"], res.values["adv_loss"])
    # resuming the finished file computes nothing and gives the same numbers
    again = landscape.probe_model(model, data, attack=ATTACK, alphas=ALPHAS, directions=[d], device="cpu",
                                  out=tmp_path / "given.h5")
    np.testing.assert_array_equal(again.values["adv_loss"], res.values["adv_loss"])
    paths = back.plot(tmp_path / "given.png") + [back.html(tmp_path / "given.html")]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_interpolate_reaches_the_other_checkpoint_at_alpha_one(data):
    a, b = TinyNet(0), TinyNet(1)
    batches = engine.fixed_batches(data, 16, ATTACK, seed=0)
    target = {"source": "<memory>", "epoch": None, "sha256": "b", "label": "b"}
    res = Landscape(Grid.curves(np.array([-1.0, 0.0, 1.0]), 1), [{"kind": "interpolate", "to": target}],
                    [landscape.storage.results.CheckpointId("<memory>", None, "a", "a")])
    compute(res, Job([lambda d: a], batches, ATTACK, targets={"b": lambda d: b}), DistContext())
    at_b = Landscape(Grid.curves(np.array([-1.0, 0.0, 1.0]), 1), [{"kind": "random", "seed": 0, "index": 0}],
                     [landscape.storage.results.CheckpointId("<memory>", None, "b", "b")])
    compute(at_b, Job([lambda d: b], batches, ATTACK), DistContext())
    assert res.values["adv_loss"][0, 0, 2] == pytest.approx(at_b.origin["adv_loss"][0], rel=1e-6)
    assert res.values["adv_loss"][0, 0, 1] == res.origin["adv_loss"][0]


@pytest.mark.parametrize("call, needle", [
    (lambda m, d: landscape.probe_model(m, d, alphas=[-1.0, -0.5, 0.5, 1.0]), "alphas must contain 0.0"),
    (lambda m, d: landscape.probe_model(m, d, dirs=0), "dirs must be an int >= 1, got 0"),
    (lambda m, d: landscape.probe_model(m, d, seed=-1), "seed must be"),
    (lambda m, d: landscape.probe_model(m, d, batch_size=0), "batch_size must be an int >= 1"),
    (lambda m, d: landscape.probe_model(m, d, attack="pgd"), "attack must be an awp.attacks.AttackConfig"),
    (lambda m, d: landscape.probe_model(m, d, normalize="unit"), "normalize must be one of filter, layer, none, got 'unit'"),
    (lambda m, d: landscape.probe_model(m, d, bn="train"), "bn must be one of eval, recalibrate, got 'train'"),
    (lambda m, d: landscape.probe_model("net", d), "model must be a torch.nn.Module"),
    (lambda m, d: landscape.probe_model(m, 42), "data must be a Dataset, a DataLoader or an iterable"),
    (lambda m, d: landscape.probe_model(m, [(d.tensors[0][:4] * 255, d.tensors[1][:4])]), "inputs must be in [0, 1]"),
    (lambda m, d: landscape.probe_model(m, [d.tensors[0][:4]]), "not an (x, y) pair"),
    (lambda m, d: landscape.probe_model(m, d, directions=[{"w": 1}]), "directions[0] must be"),
    (lambda m, d: landscape.probe_model(m, d, directions=[{"body.0.weight": torch.zeros(1)}]), "does not fit the model"),
    (lambda m, d: landscape.plane_model(m, d, betas=[1.0, 0.0]), "betas must be an increasing"),
])
def test_bad_values_name_the_parameter(data, call, needle):
    with pytest.raises(UserError) as e:
        call(TinyNet(), data)
    assert needle in str(e.value) and "\n" not in str(e.value) and "--" not in str(e.value).replace("[-", "")


def test_cli_probes_a_users_own_model_given_as_module_callable(tmp_path, digits):
    """`--model MODULE:CALLABLE` with `--model-kwargs`: a module in the working directory, its state dict
    saved with torch.save, probed by the CLI; a state dict that does not fit is one line, no output."""
    from conftest import run_cli

    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n"
        "def make(width=4):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))\n")
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        import mynets
        torch.save(mynets.make(6).state_dict(), tmp_path / "mine.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mynets", None)
    args = ["probe", "mine.pt", "--model", "mynets:make", "--dataset", "digits", "--eps", "0.1", "--pgd", "1",
            "--dirs", "1", "--alphas", "-1:1:3", "--samples", "20", "-q", "--device", "cpu"]
    ok = run_cli(*args, "--model-kwargs", '{"width": 6}', cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    res = Landscape.load(tmp_path / "probe-mine.h5")
    assert res.done.all() and res.config["arch"] == "mynets:make"
    bad = run_cli(*args, "-o", "bad.h5", cwd=tmp_path)  # width 4 by default: the saved weights do not fit
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    assert "mine.pt" in bad.stderr and "shape" in bad.stderr and not (tmp_path / "bad.h5").exists()
