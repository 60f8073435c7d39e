"""The direction kinds beyond random ones: the training trajectory's principal directions (pca), the top
Hessian eigenvectors (hessian), AWP's v (awp), the line to another file's weights (interpolate --to
OTHER.h5:EPOCH), and directions restricted to some parameters (--params, --per-layer), which leave
every other parameter at w bit for bit. Each checks the math against an independent computation."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

import landscape
from awp.attacks import AttackConfig
from awp.errors import UserError
from awp.perturb import AWPConfig, find_perturbation, perturbed, zeros_like_params
from conftest import run_cli
from landscape.commands.plot2d import Plot2DConfig, run_plot2d
from landscape.commands.probe import ProbeConfig, run_probe
from landscape.core import engine
from landscape.core.curvature import HessianOperator
from landscape.core.directions import (DIRECTIONS, awp_spec, direction_label, hessian_specs, moved_names, scoped,
                                       trajectory_pca)
from landscape.storage.results import Landscape

ATTACK = AttackConfig("linf", 0.2, 0.05, 2)
FAST = dict(alphas="-1:1:3", steps=1, samples=40, batch_size=20, device="cpu", progress=False)
HEAD = "net.12.*"  # smallcnn's classifier: 320 weights, small enough for an exact covariance


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    """Four epochs of AT on 100 digits, every epoch's weights kept: a trajectory of 4 checkpoints."""
    from awp.train import train
    from awp.trainconfig import TrainConfig

    path = tmp_path_factory.mktemp("kinds") / "run.h5"
    cfg = TrainConfig(dataset="digits", arch="smallcnn", attack=ATTACK, eval_steps=1, eval_step_size=0.1, epochs=4,
                      batch_size=50, train_size=100, train_eval_size=50, test_size=50, save_every=1, lr=0.05, device="cpu")
    train(cfg, path)
    return path


@pytest.fixture(scope="module")
def model_and_data(trained_smallcnn, digits):
    x, y = digits.train.tensors
    return trained_smallcnn, torch.utils.data.TensorDataset(x[:40], y[:40])


def quiet() -> Console:
    return Console(file=io.StringIO(), width=140)


def flat(d, names) -> torch.Tensor:
    return torch.cat([d[n].reshape(-1).double() for n in names])


# ---------------------------------------------------------------------------------------------
# pca
# ---------------------------------------------------------------------------------------------


def test_pca_components_are_orthonormal_and_explain_the_covariance():
    """Against numpy: the eigenvalues of the covariance of the trajectory's points give the fractions of
    variance (at most 1 in all, exactly 1 over every component), its eigenvectors the components."""
    gen = torch.Generator().manual_seed(0)
    points = [(e, {"a": torch.randn(3, 4, generator=gen) * (e + 1), "b": torch.randn(5, generator=gen)})
              for e in range(1, 7)]  # 6 points in 17 dimensions: 5 components of nonzero variance
    names = ["a", "b"]
    x = np.stack([flat(p, names).numpy() for _, p in points])
    evals, evecs = np.linalg.eigh(np.cov(x.T))  # ascending; the covariance is 17 x 17
    evals, evecs = evals[::-1], evecs[:, ::-1]
    pca = trajectory_pca(points, names, components=2)
    u = torch.stack([flat(c, names) for c in pca.components]).numpy()
    np.testing.assert_allclose(u @ u.T, np.eye(2), atol=1e-6)  # orthonormal (float32 storage)
    np.testing.assert_allclose(pca.explained, evals[:2] / evals.sum(), rtol=1e-6)
    assert pca.explained.sum() <= 1.0
    for k in range(2):  # the same axes up to sign
        assert abs(abs(float(u[k] @ evecs[:, k])) - 1.0) < 1e-5
    np.testing.assert_allclose(pca.coords, (x - x[-1]) @ u.T, rtol=1e-4, atol=1e-5)  # <w_i - w_end, u_k>
    assert (pca.coords[0] <= 0).all() and np.allclose(pca.coords[-1], 0.0)  # the path runs towards +u_k, ends at 0
    every = trajectory_pca(points, names, components=5)
    assert every.explained.sum() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(UserError, match="span fewer than 2 dimensions"):
        trajectory_pca(points[:2], names)


def test_pca_probe_and_plot2d_on_a_run_file(run_file, tmp_path):
    """PC1 and PC2 of the run's 4 saved checkpoints over the classifier: the stored directions are the
    components at the trajectory's scale (largest |coordinate| 1, the last epoch at 0), the fractions of
    variance those of the covariance; plot2d draws the path in its figures."""
    from awp.store import open_run

    out = run_probe(ProbeConfig(str(run_file), out=str(tmp_path / "pca.h5"), direction="pca", dirs=2, params=HEAD,
                                **FAST), console=quiet())
    r = Landscape.load(out.results_path)
    reader = open_run(run_file)
    x = np.stack([reader.state_dict(e)["net.12.weight"].double().reshape(-1).numpy() for e in reader.epochs_saved()])
    evals = np.linalg.eigvalsh(np.cov(x.T))[::-1]
    d = [r.stored[(0, k)] for k in range(2)]
    assert all(list(dk) == ["net.12.weight"] for dk in d)  # the bias is not moved (no --include-bn)
    for k, spec in enumerate(r.directions):
        found = spec["found"]["0"]
        assert spec["kind"] == "pca" and spec["params"] == [HEAD] and spec["epochs"] == [1, 2, 3, 4]
        assert found["explained"] == pytest.approx(evals[k] / evals.sum(), rel=1e-5)
        assert float(d[k]["net.12.weight"].norm()) == pytest.approx(found["norm"], rel=1e-5)
        alphas = np.array([a for _, a in found["trajectory"]])
        assert np.abs(alphas).max() == pytest.approx(1.0) and alphas[-1] == pytest.approx(0.0, abs=1e-6)
        assert f"PC{k + 1} ({found['explained']:.1%} of variance)" in direction_label(spec)
    cos = float(flat(d[0], ["net.12.weight"]) @ flat(d[1], ["net.12.weight"]))
    assert abs(cos) < 1e-4 * found["norm"] * r.directions[0]["found"]["0"]["norm"]  # orthogonal axes
    assert r.done.all()

    plane = run_plot2d(Plot2DConfig(str(run_file), out=str(tmp_path / "plane.h5"), grid="3x3", direction="pca",
                                    steps=1, samples=40, batch_size=20, device="cpu", progress=False), console=quiet())
    res = plane.results
    assert [s["kind"] for s in res.directions] == ["pca", "pca"] and res.done.all()
    html = (tmp_path / "plane.html").read_text()
    assert "training trajectory" in html and "PC1 (" in html and "PC2 (" in html
    assert (tmp_path / "plane-contour.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------
# hessian
# ---------------------------------------------------------------------------------------------


def _examples_at_w(model, data, batch_size=20):
    """The probe's own adversarial examples at w: its fixed batches and PGD, as `Objective.examples` makes them."""
    batches = engine.fixed_batches(data, batch_size, ATTACK, seed=0)
    xs = engine.adversarial_examples(model, batches, ATTACK)
    return [(x, b.y) for x, b in zip(xs, batches)]


def test_hessian_direction_is_an_eigenvector_and_is_reused_on_resume(model_and_data, tmp_path, monkeypatch):
    model, data = model_and_data
    specs = [scoped(s, [], [HEAD]) for s in hessian_specs(2, seed=0, scale="global")]
    out = tmp_path / "h.h5"
    res = landscape.probe_model(model, data, attack=ATTACK, alphas=[-0.5, 0.0, 0.5], directions=specs, batch_size=20,
                                device="cpu", out=out)
    names = ["net.12.weight"]
    w = dict(model.named_parameters())
    op = HessianOperator(model, _examples_at_w(model, data), names)
    w_norm = float(w["net.12.weight"].detach().norm())
    lams = []
    for k in range(2):
        d = res.stored[(0, k)]
        assert list(d) == names and float(d["net.12.weight"].norm()) == pytest.approx(w_norm, rel=1e-5)  # u ||w||
        u = {n: d[n] / w_norm for n in names}
        lam = res.directions[k]["found"]["0"]["eigenvalue"]
        hu = op.matvec(u)
        residual = float((flat(hu, names) - lam * flat(u, names)).norm())
        assert residual <= 1e-3 * abs(lam), (k, lam, residual)  # H u = lambda u
        lams.append(lam)
    assert lams[0] >= lams[1] > 0

    # filter-normalized (the default scale): each filter at its weights' norm (Eq. 5)
    filt = landscape.probe_model(model, data, attack=ATTACK, alphas=[-0.5, 0.0, 0.5], batch_size=20, device="cpu",
                                 directions=[scoped(hessian_specs(1, seed=0)[0], [], [HEAD])]).stored[(0, 0)]
    torch.testing.assert_close(filt["net.12.weight"].norm(dim=1), w["net.12.weight"].detach().norm(dim=1), rtol=1e-5, atol=0)

    # a resume reuses the stored eigenvectors: no second Lanczos run, the same numbers
    partial = Landscape.load(out)
    partial.done[:, :, -1] = False
    partial.values["adv_loss"][:, :, -1] = np.nan
    partial.save(out)

    def no_lanczos(*a, **k):
        raise AssertionError("Lanczos ran again on resume")

    monkeypatch.setattr("landscape.core.curvature.top_eigenpairs", no_lanczos)
    again = landscape.probe_model(model, data, attack=ATTACK, alphas=[-0.5, 0.0, 0.5], directions=specs, batch_size=20,
                                  device="cpu", out=out)
    np.testing.assert_array_equal(again.values["adv_loss"], res.values["adv_loss"])
    assert again.directions[0]["found"] == res.directions[0]["found"]


# ---------------------------------------------------------------------------------------------
# awp
# ---------------------------------------------------------------------------------------------


def test_awp_direction_is_find_perturbations_v_rescaled_per_layer(model_and_data):
    """Against find_perturbation on the mean loss over all probe examples in one graph (the direction
    takes it batch by batch): d_l = v_l / ||v_l|| ||w_l||; two ascent steps, so the hook that adds the
    other batches' gradients is exercised at a v != 0; the model is left at w bit for bit."""
    model, data = model_and_data
    gamma = 0.02
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    spec = awp_spec(gamma, steps=2)
    res = landscape.probe_model(model, data, attack=ATTACK, alphas=[-0.02, 0.0, 0.02], directions=[spec], batch_size=20,
                                device="cpu")
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    d = res.stored[(0, 0)]
    names = [n for n, p in model.named_parameters() if p.dim() > 1]
    assert list(d) == names == moved_names(spec, before)

    examples = _examples_at_w(model, data)
    x = torch.cat([e[0] for e in examples])
    y = torch.cat([e[1] for e in examples])
    params = {n: p for n, p in model.named_parameters() if n in names}
    model.eval()
    with perturbed(params) as w, engine.frozen(model):
        for p in params.values():
            p.requires_grad_(True)
        v = find_perturbation(model, params, w, zeros_like_params(params), lambda: F.cross_entropy(model(x), y),
                              AWPConfig(gamma=gamma, steps=2))
        for p in params.values():
            p.requires_grad_(False)
    for n in names:
        ref = v[n] / v[n].norm() * before[n].norm()
        torch.testing.assert_close(d[n], ref, rtol=1e-3, atol=1e-6)
        assert float(d[n].norm()) == pytest.approx(float(before[n].norm()), rel=1e-5)
    assert 0 < res.directions[0]["found"]["0"]["relative_norm"] <= gamma * (1 + 1e-5)  # Eq. 15: ||v_l|| <= gamma ||w_l||


# ---------------------------------------------------------------------------------------------
# interpolate --to another file
# ---------------------------------------------------------------------------------------------


def test_interpolate_to_another_file_reaches_its_weights_at_alpha_one(run_file, tmp_path):
    from awp.store import open_run
    from landscape.commands.options import probe_data, resolve_attack
    from landscape.commands.probe import plan_directions
    from landscape.storage.results import weights_sha256
    from landscape.storage.sources import open_source

    other = tmp_path / "other.h5"
    shutil.copy(run_file, other)
    cfg = ProbeConfig(str(run_file), out=str(tmp_path / "line.h5"), direction="interpolate", to=f"{other}:2", **FAST)
    r = run_probe(cfg, console=quiet()).results
    to = r.directions[0]["to"]
    assert to["epoch"] == 2 and to["source"] == str(other.resolve()) and to["label"].startswith("other.h5 epoch 2")
    assert to["sha256"] == weights_sha256(open_run(other).state_dict(2))

    # rho at alpha = 1 is that of epoch 2's parameters (w's BN statistics: --bn eval moves parameters only)
    source = open_source(run_file)
    attack = resolve_attack(cfg, source.train_attack, str(run_file))
    batches, _, _ = probe_data(cfg, source, attack, torch.device("cpu"))
    model = source.checkpoints[0].build(torch.device("cpu"))
    target = dict(open_run(other).build_model(2).named_parameters())
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(target[n])
    with engine.frozen(model):
        at_b = engine.evaluate_at(model, [], batches, attack).reduce()
    assert r.values["adv_loss"][0, 0, 2] == pytest.approx(at_b["adv_loss"], rel=1e-5)
    assert r.values["adv_loss"][0, 0, 1] == r.origin["adv_loss"][0]

    # OTHER.h5 alone: its reported epoch (the last); the architectures must fit
    ident = plan_directions(replace_to(cfg, str(other)), source, "interpolate", 1, to=str(other)).specs[0]["to"]
    assert ident["epoch"] == 4
    with pytest.raises(UserError, match="neither an epoch of this run"):
        plan_directions(cfg, source, "interpolate", 1, to=str(tmp_path / "missing.h5"))


def replace_to(cfg: ProbeConfig, to: str) -> ProbeConfig:
    from dataclasses import replace

    return replace(cfg, to=to)


# ---------------------------------------------------------------------------------------------
# --params and --per-layer
# ---------------------------------------------------------------------------------------------


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def test_restricted_directions_leave_every_other_parameter_at_w_bit_for_bit(model_and_data):
    """During every forward of the landscape (PGD, the loss, AWP's search), the parameters outside the
    scope hold w's bits exactly, and those in it move."""
    model, data = model_and_data
    w = {n: _bits(p).clone() for n, p in model.named_parameters()}
    scope_names = ["net.3.weight", "net.4.weight", "net.4.bias"]
    seen = {"calls": 0, "moved": False}

    def check(module, inputs):
        seen["calls"] += 1
        for n, p in module.named_parameters():
            if n in scope_names:
                seen["moved"] |= not torch.equal(_bits(p), w[n])
            else:
                assert torch.equal(_bits(p), w[n]), n

    specs = [scoped({"kind": "random", "seed": 0, "index": 0, "include_bn": True}, scope_names, block="net.3+4"),
             scoped(awp_spec(0.01, include_bn=True), [], ["net.3.*", "net.4.*"])]
    handle = model.register_forward_pre_hook(check)
    try:
        res = landscape.probe_model(model, data, attack=ATTACK, alphas=[-0.5, 0.0, 0.5], directions=specs,
                                    batch_size=20, device="cpu")
    finally:
        handle.remove()
    assert seen["calls"] > 20 and seen["moved"] and res.done.all()
    assert sorted(res.stored[(0, 1)]) == sorted(scope_names)  # the awp direction has entries for its scope only


def test_per_layer_probe_groups_by_block_and_bad_scopes_are_one_line(run_file, tmp_path):
    console = quiet()
    out = run_probe(ProbeConfig(str(run_file), out=str(tmp_path / "layers.h5"), per_layer=True, dirs=2,
                                params="net.3.*,net.12.*", **FAST), console=console)
    r = out.results
    assert [(s["block"], s["index"]) for s in r.directions] == [("net.3", 0), ("net.3", 1), ("net.12", 0), ("net.12", 1)]
    assert r.directions[2]["params"] == ["net.12.weight", "net.12.bias"]
    text = console.file.getvalue()
    assert "block" in text and "net.3 " in text and "net.12" in text and text.count("2/2") == 2  # a row per block
    with pytest.raises(UserError, match=r"--params 'layer9\.\*' matches no parameter; the model has: net\.0\.weight"):
        run_probe(ProbeConfig(str(run_file), out=str(tmp_path / "x.h5"), params="layer9.*", **FAST), console=quiet())
    with pytest.raises(UserError, match="only with --include-bn"):
        run_probe(ProbeConfig(str(run_file), out=str(tmp_path / "x.h5"), params="net.1.*", **FAST), console=quiet())
    assert not (tmp_path / "x.h5").exists()


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def test_cli_direction_choices_come_from_the_registry_and_plot2d_takes_awp(run_file, tmp_path):
    import cli

    assert {k.value for k in cli.DirectionKind} == {n for n, k in DIRECTIONS.items() if k.cli} >= {"hessian", "awp", "pca"}
    r = run_cli("plot2d", str(run_file), "--direction", "awp", "--gamma", "1/100", "--grid", "3x3", "--pgd", "1",
                "--samples", "20", "--device", "cpu", "-o", str(tmp_path / "awp2d.h5"), "-q")
    assert r.returncode == 0, r.stderr
    res = Landscape.load(tmp_path / "awp2d.h5")
    assert [s["kind"] for s in res.directions] == ["awp", "random"] and res.directions[0]["gamma"] == 0.01
    assert res.directions[1]["index"] == 1 and res.done.all()  # e: plot2d's default e
    assert "AWP direction" in (tmp_path / "awp2d.html").read_text()
    bad = run_cli("probe", str(run_file), "--direction", "awp", "--normalize", "layer", "-o", str(tmp_path / "b.h5"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: --normalize layer is for random and hessian")
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "b.h5").exists()
