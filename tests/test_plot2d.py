"""`landscape plot2d`: orientation of non-square grids, resume after an interruption, 2 gloo ranks = 1 process."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import run_cli
from landscape.core import engine
from landscape.commands.plot2d import PlaneResults, Plot2DConfig, run_plot2d

VALUES = ("adv_loss", "nat_loss", "adv_acc", "nat_acc")


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> Path:
    from awp.train import train
    from awp.trainconfig import resolve_config

    path = tmp_path_factory.mktemp("plot2d") / "run.h5"
    cfg = resolve_config({"dataset": "digits", "method": "at", "epochs": 2, "train_size": 100, "train_steps": 2,
                          "eval_steps": 1, "seed": 0})
    train(cfg, path)
    return path


def _cfg(run_file: Path, out: Path, **kw) -> Plot2DConfig:
    base = dict(checkpoint=str(run_file), grid="5x3", range="-1:1,-0.5:0.5", steps=2, samples=40, batch_size=20,
                device="cpu", out=str(out), progress=False)
    return Plot2DConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def full(run_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "p.h5"
    run_plot2d(_cfg(run_file, out))
    return out


def test_cells_match_single_points_on_a_non_square_grid(full, run_file):
    res = PlaneResults.load(full)
    assert res.values["adv_loss"].shape == (5, 3) and res.done.all()
    assert list(res.alphas) == list(np.linspace(-1, 1, 5)) and list(res.betas) == [-0.5, 0.0, 0.5]
    # Recompute cells independently with the engine: cell (i, j) is w + alphas[i] d + betas[j] e.
    from landscape.storage.sources import open_source
    from landscape.core.directions import random_direction
    from landscape.commands.probe import probe_data, resolve_attack

    cfg = _cfg(run_file, full)
    source = open_source(cfg.checkpoint, cfg.epochs, None, None, cfg.data_dir)
    attack = resolve_attack(cfg, source.train_attack, str(source.path))
    model = source.checkpoints[0].build("cpu").eval()
    batches, bn_inputs, _ = probe_data(cfg, source, attack, "cpu")
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    dirs = [random_direction(w, cfg.seed, k, cfg.normalize) for k in (0, 1)]
    for i, j in [(0, 2), (4, 0), (1, 1), (3, 2)]:  # asymmetric picks: a transposed grid fails
        point = engine.evaluate_at(model, dirs, [res.alphas[i], res.betas[j]], batches, attack).reduce()
        for k in VALUES:
            assert res.values[k][i, j] == point[k], (k, i, j)
    # The centre cell is w itself: relative landscape 0 there, and g(0, 0) matches the centre point.
    assert res.values["adv_loss"][2, 1] == res.center["adv_loss"]
    assert res.relative()[2, 1] == 0.0
    assert (res.relative()[np.arange(5) != 2] > 0).any()


def test_orientation_in_the_figures(full):
    from landscape.figures.plane import html_figure

    res = PlaneResults.load(full)
    rel = res.relative()
    fig = html_figure(res.alphas, res.betas, res.values, rel, "t")
    for trace in fig.data:  # surface and contour: x = 5 alphas, y = 3 betas, z[j][i] = cell (i, j)
        assert len(trace.x) == 5 and len(trace.y) == 3
        z = np.asarray(trace.z)
        assert z.shape == (3, 5) and z[2, 0] == rel[0, 2] and z[0, 4] == rel[4, 0]
    html = full.with_suffix(".html").read_text()
    assert "<script src=\"http" not in html and len(html) > 1_000_000  # plotly inlined, no network
    assert full.with_name("p-contour.png").stat().st_size > 1000 and full.with_name("p-surface.png").exists()
    with h5py.File(full) as f:
        assert f.attrs["dims"] == "alpha,beta" and f["relative"].shape == (5, 3)


def test_interrupted_run_resumes_to_the_same_file(full, run_file, tmp_path, monkeypatch):
    out = tmp_path / "p.h5"
    calls = {"n": 0}
    real = engine.evaluate_at

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # dies in the second chunk: the first chunk is on disk
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "evaluate_at", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_plot2d(_cfg(run_file, out))
    partial = PlaneResults.load(out)
    assert 0 < partial.done.sum() < 15
    monkeypatch.setattr(engine, "evaluate_at", real)
    computed = []
    monkeypatch.setattr(engine, "evaluate_at", lambda *a, **k: computed.append(1) or real(*a, **k))
    run_plot2d(_cfg(run_file, out))
    assert len(computed) == 16 - partial.done.sum() - (1 if partial.center_done else 0)
    a, b = PlaneResults.load(out), PlaneResults.load(full)
    for k in VALUES:
        assert np.array_equal(a.values[k], b.values[k])
        assert a.center[k] == b.center[k]


def test_rerun_with_other_arguments_is_refused(full, run_file):
    r = run_cli("plot2d", str(run_file), "--grid", "5x3", "--range", "-1:1,-0.5:0.5", "--pgd", "3", "--samples", "40",
                "--batch-size", "20", "--device", "cpu", "-o", str(full), "-q")
    assert r.returncode == 2 and "attack.steps (file: 2, now: 3)" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needle", [
    (["--grid", "5by3"], "grid '5by3' is not NxM"),
    (["--range", "1:-1"], "empty or reversed"),
    (["--epoch", "all"], "plot2d draws one checkpoint"),
    (["--chunk", "0"], "--chunk must be >= 1"),
])
def test_bad_input(run_file, tmp_path, args, needle):
    r = run_cli("plot2d", str(run_file), "-o", str(tmp_path / "x.h5"), "-q", "--device", "cpu", *args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert not (tmp_path / "x.h5").exists()


def test_two_gloo_ranks_equal_one_process(full, run_file, tmp_path):
    out = tmp_path / "d.h5"
    r = run_cli("plot2d", str(run_file), "--grid", "5x3", "--range", "-1:1,-0.5:0.5", "--pgd", "2", "--samples", "40",
                "--batch-size", "20", "--device", "cpu", "-o", str(out), "-q", "--workers", "2", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = PlaneResults.load(out), PlaneResults.load(full)
    assert a.runtime["world"] == 2
    for k in VALUES:
        assert np.array_equal(a.values[k], b.values[k]), k
        assert a.center[k] == b.center[k]


def test_kill_9_then_rerun_ends_with_the_same_numbers(run_file, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    args = ["plot2d", str(run_file), "--grid", "5x3", "--range", "-1:1,-0.5:0.5", "--pgd", "4", "--samples", "200",
            "--batch-size", "100", "--device", "cpu", "--chunk", "1", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "k.h5"
    proc = subprocess.Popen([sys.executable, "-m", "cli", *args, "-o", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if out.exists():
            try:
                done = int(PlaneResults.load(out).done.sum())
            except Exception:  # noqa: BLE001 - caught mid-replace; look again
                done = 0
            if done >= 2:
                break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed (machine too fast for this test's sizes)")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = PlaneResults.load(out)  # the file opens: the last complete flush
    assert 0 < killed.done.sum() < 15
    assert run_cli(*args, "-o", str(out)).returncode == 0
    ref = tmp_path / "ref.h5"
    assert run_cli(*args, "-o", str(ref)).returncode == 0
    a, b = PlaneResults.load(out), PlaneResults.load(ref)
    assert a.done.all()
    for k in VALUES:
        assert np.array_equal(a.values[k], b.values[k]) and a.center[k] == b.center[k]


def test_beta_zero_row_is_probes_first_direction(full, run_file, tmp_path):
    from landscape.commands.probe import ProbeConfig, run_probe
    from landscape.storage.results import ProbeResults

    out = tmp_path / "probe.h5"
    run_probe(ProbeConfig(checkpoint=str(run_file), alphas="-1:1:5", dirs=1, steps=2, samples=40, batch_size=20,
                          device="cpu", out=str(out), progress=False))
    curve = ProbeResults.load(out).values["adv_loss"][0, 0]  # [5] along direction 0
    res = PlaneResults.load(full)
    assert list(res.betas).index(0.0) == 1
    assert np.array_equal(res.values["adv_loss"][:, 1], curve)  # cell (i, beta=0) = probe's alpha_i
