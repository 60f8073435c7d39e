"""`run_probe` on a real (tiny) run file: training threat model as default, results layout and
identities, flush-and-resume to the same numbers, refusal of changed settings, export, re-render."""

from __future__ import annotations

import io
from dataclasses import asdict

import numpy as np
import pytest
from rich.console import Console

from awp.attacks import AttackConfig
from awp.errors import UserError
from landscape.commands.probe import ProbeConfig, rerender, run_probe
from landscape.core import directions as directions_mod
from landscape.storage.results import FIELDS, VALUES, Landscape, StaleResults, weights_sha256
from conftest import as_version_1

FAST = dict(alphas="-0.5:0.5:5", dirs=2, steps=2, samples=60, batch_size=32, device="cpu", progress=False)
ZERO = 2  # the index of alpha = 0 in FAST's alphas: w itself, computed once per checkpoint
POINTS_PER_CHECKPOINT = 2 * (5 - 1) + 1  # D (A - 1) + 1


def stored_points(r: Landscape) -> int:
    """Points a results file holds: each checkpoint's origin once, plus its grid cells off the origin."""
    off = np.ones(r.done.shape[1:], dtype=bool)
    off[:, ZERO] = False
    return int(r.origin_done.sum() + (r.done & off).sum())


def check_origin(r: Landscape) -> None:
    """The alpha = 0 cells of every direction are the origin's values, exactly."""
    for name in FIELDS:
        np.testing.assert_array_equal(r.values[name][:, :, ZERO][r.origin_done],
                                      np.repeat(r.origin[name][r.origin_done, None], r.dirs, axis=1))
        assert r.done[:, :, ZERO][r.origin_done].all()


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    """Three epochs of AT on 100 digits, every epoch's weights kept (seconds on a CPU)."""
    from awp.train import train
    from awp.trainconfig import TrainConfig

    path = tmp_path_factory.mktemp("run") / "run.h5"
    cfg = TrainConfig(dataset="digits", arch="smallcnn", attack=AttackConfig("linf", 0.2, 0.05, 2), eval_steps=1,
                      eval_step_size=0.1, epochs=3, batch_size=50, train_size=100, train_eval_size=50, test_size=50,
                      save_every=1, lr=0.05, device="cpu")
    train(cfg, path)
    return path


def probe(ckpt, out, **kw):
    cfg = ProbeConfig(str(ckpt), out=str(out), **{**FAST, **kw})
    return run_probe(cfg, console=Console(file=io.StringIO(), width=120))


@pytest.fixture(scope="module")
def reference(run_file, tmp_path_factory):
    """An uninterrupted probe of every epoch."""
    out = tmp_path_factory.mktemp("probe") / "ref.h5"
    return probe(run_file, out, epochs="all")


def test_run_file_defaults_layout_and_identity(run_file, reference):
    from awp.store import open_run

    reader = open_run(run_file)
    r = Landscape.load(reference.results_path)
    trained = reader.attack_config()
    # the training threat model with the probe's steps (fields with defaults, e.g. l2_start, as their defaults)
    assert r.config["attack"] == asdict(AttackConfig(trained.norm, trained.eps, trained.step_size, steps=2))
    assert r.config["attack"]["random_start"] is True
    assert [c.epoch for c in r.checkpoints] == reader.epochs_saved() == [1, 2, 3]
    assert [c.sha256 for c in r.checkpoints] == [weights_sha256(reader.state_dict(e)) for e in (1, 2, 3)]
    assert r.checkpoints[2].label.startswith("epoch 3 (") and "last" in r.checkpoints[2].label
    assert r.grid.dims == ("direction", "alpha") and r.format_version == 3
    assert r.values["adv_loss"].shape == (3, 2, 5) and r.done.all() and r.origin_done.all()
    assert r.runtime["compute_seconds"] > 0 and 0 < r.runtime["compute_seconds"] <= reference.seconds  # wall time
    for name in ("adv_loss", "nat_loss", "adv_acc", "nat_acc"):
        assert np.isfinite(r.values[name]).all() and np.isfinite(r.origin[name]).all()
    assert (r.values["adv_loss"] >= r.values["nat_loss"] - 1e-6).all()
    np.testing.assert_array_equal(r.alphas, [-0.5, -0.25, 0.0, 0.25, 0.5])
    # alpha = 0 is computed once per checkpoint, not once per direction: C (D (A - 1) + 1) points
    assert r.runtime["examples"] == 60 and reference.points == 3 * POINTS_PER_CHECKPOINT == 27
    check_origin(r)
    assert r.config["radius"] == 0.25 and "fit_radius" not in r.config
    s = r.sharpness()
    assert s[0].radius == 0.25 and s[0].fit_radius == 0.125 and s[0].rho0 == r.origin["adv_loss"][0]
    png, html = reference.figures
    assert png.suffix == ".png" and png.stat().st_size > 10_000
    assert html == png.with_suffix(".html") and html.stat().st_size > 10_000


def test_every_point_has_its_standard_errors(reference):
    r = Landscape.load(reference.results_path)
    assert r.format_version == 3
    for name in ("adv_loss_se", "nat_loss_se"):  # over the 60 examples, at every point
        assert (r.values[name] > 0).all() and (r.values[name] < r.values[name[:-3]]).all()
    for name in ("adv_acc", "nat_acc"):  # 0/1 values: sqrt(p (1 - p) / (n - 1))
        p = r.values[name]
        np.testing.assert_allclose(r.values[name + "_se"], np.sqrt(p * (1 - p) / 59))
    assert all(np.isfinite(s.se["rise"]) and s.se["rise"] > 0 for s in r.sharpness())


def test_interrupted_probe_resumes_to_the_same_numbers(run_file, reference, tmp_path, monkeypatch):
    out = tmp_path / "p.h5"
    calls = []
    real = directions_mod.random_direction

    def interrupt_third(*args, **kw):
        calls.append(args[2])
        if len(calls) == 3:  # epoch 2, direction 0: after epoch 1 was flushed
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(directions_mod, "random_direction", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        probe(run_file, out, epochs="all")
    assert calls == [0, 1, 0]
    partial = Landscape.load(out)
    ref = Landscape.load(reference.results_path)
    assert partial.done[0].all() and partial.origin_done[0] and not partial.done[2].any()
    assert not partial.done[1][:, [0, 1, 3, 4]].any()  # nothing along epoch 2's directions, at most its origin
    for name in FIELDS:  # what was flushed is final, the rest NaN
        np.testing.assert_array_equal(partial.values[name][partial.done], ref.values[name][partial.done])
        assert np.isnan(partial.values[name][~partial.done]).all()
    check_origin(partial)
    kept = stored_points(partial)
    assert POINTS_PER_CHECKPOINT <= kept <= POINTS_PER_CHECKPOINT + 1
    monkeypatch.setattr(directions_mod, "random_direction", real)
    resumed = probe(run_file, out, epochs="all")
    assert resumed.points == 3 * POINTS_PER_CHECKPOINT - kept  # only what epochs 2 and 3 lacked
    for name in FIELDS:
        np.testing.assert_array_equal(resumed.results.values[name], ref.values[name])  # bitwise, on CPU
        np.testing.assert_array_equal(resumed.results.origin[name], ref.origin[name])


def test_other_settings_are_refused_by_name_but_a_new_radius_is_not(run_file, reference):
    with pytest.raises(UserError, match=r"attack\.steps \(file: 2, now: 3\).*--overwrite"):
        probe(run_file, reference.results_path, epochs="all", steps=3)
    with pytest.raises(UserError, match="epochs"):
        probe(run_file, reference.results_path, epochs="last")
    again = probe(run_file, reference.results_path, epochs="all", radius=0.5)
    assert again.points == 0
    s = Landscape.load(reference.results_path).sharpness()
    assert s[0].radius == 0.5 and s[0].fit_radius == 0.25


def test_export_probes_like_its_run_epoch(run_file, reference, tmp_path):
    from awp.store import export_checkpoint

    pt = tmp_path / "last.pt"
    export_checkpoint(run_file, "last", pt)
    out = probe(pt, tmp_path / "pt.h5", dirs=1)  # no --arch, --dataset or --eps: the export has them
    r = out.results
    ref = Landscape.load(reference.results_path)
    assert r.checkpoints[0].sha256 == ref.checkpoints[2].sha256 and r.checkpoints[0].epoch == 3
    assert r.config["attack"] == ref.config["attack"]
    np.testing.assert_array_equal(r.values["adv_loss"][0, 0], ref.values["adv_loss"][2, 0])


def test_fixed_examples_agree_at_w_and_underestimate_elsewhere(run_file, reference, tmp_path):
    fixed = probe(run_file, tmp_path / "fixed.h5", epochs="last", dirs=1, fixed_adv=True).results
    ref = Landscape.load(reference.results_path)
    on_the_fly, stale = ref.values["adv_loss"][2, 0], fixed.values["adv_loss"][0, 0]
    assert stale[2] == on_the_fly[2]  # alpha = 0: the same examples, bit for bit
    assert (stale[[0, 1, 3, 4]] <= on_the_fly[[0, 1, 3, 4]]).all()
    np.testing.assert_allclose(fixed.values["nat_loss"][0, 0], ref.values["nat_loss"][2, 0], rtol=1e-6)
    recal = probe(run_file, tmp_path / "bn.h5", epochs="last", dirs=1, bn="recalibrate", bn_batches=2).results
    assert recal.config["bn"] == "recalibrate" and np.isfinite(recal.values["adv_loss"]).all()
    assert not np.array_equal(recal.values["nat_loss"][0, 0], ref.values["nat_loss"][2, 0])


@pytest.fixture
def version_1(reference, tmp_path):
    """A copy of the reference probe as a version 1 probe file (format "awp-landscape-probe") held it."""
    import shutil

    old = tmp_path / "old.h5"
    shutil.copy(reference.results_path, old)
    as_version_1(old)
    return old


def test_a_version_1_file_is_redrawn_and_recomputed_with_overwrite(run_file, reference, version_1, tmp_path):
    old = version_1
    back = Landscape.load(old)
    assert back.format_version == 1
    ref = Landscape.load(reference.results_path)
    for name in VALUES:  # its numbers load as they were, its origin from the alpha = 0 column
        np.testing.assert_array_equal(back.values[name], ref.values[name])
        np.testing.assert_array_equal(back.origin[name], ref.origin[name])
    assert all(np.isnan(back.values[f"{name}_se"]).all() for name in VALUES)
    out = rerender(old, str(tmp_path / "old.png"), console=Console(file=io.StringIO()))  # no bands, still drawn
    assert out.points == 0 and out.figures[0] == tmp_path / "old.png" and out.figures[0].stat().st_size > 10_000
    assert out.figures[1] == tmp_path / "old.html" and out.figures[1].exists()
    assert Landscape.load(old).format_version == 1  # redrawing leaves it as it was
    again = probe(run_file, old, epochs="all", overwrite=True)
    assert again.points == 3 * POINTS_PER_CHECKPOINT and Landscape.load(old).format_version == 3


def test_a_version_1_file_is_not_resumed(run_file, version_1):
    old = version_1
    with pytest.raises(StaleResults) as e:
        probe(run_file, old, epochs="all")
    msg = str(e.value)
    assert "\n" not in msg and "format version 1" in msg and "--overwrite" in msg and "-o" in msg
    assert Landscape.load(old).format_version == 1  # left as it was


def test_gap_recomputes_a_version_1_cache(run_file, tmp_path):
    import shutil

    from landscape.commands.analysis import GapConfig, landscape_path, probe_run

    run = tmp_path / "run.h5"
    shutil.copy(run_file, run)
    cfg = GapConfig(runs=(str(run),), dirs=1, alphas="-0.5:0.5:3", samples=20, device="cpu", progress=False)
    first = probe_run(cfg, run)
    as_version_1(landscape_path(run))
    again = probe_run(cfg, run)
    assert Landscape.load(landscape_path(run)).format_version == 3
    assert np.isfinite(again.values["adv_loss_se"]).all()
    np.testing.assert_array_equal(again.values["adv_loss"], first.values["adv_loss"])


def test_from_results_redraws_without_computing(reference, tmp_path):
    png = tmp_path / "again.png"
    out = rerender(reference.results_path, str(png), console=Console(file=io.StringIO()))
    assert out.points == 0 and out.figures[0] == png and png.stat().st_size > 10_000
    assert png.with_suffix(".html").exists()


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(alphas="0.5:-0.5:5"), "empty or reversed"),
        (dict(alphas="0:1:5"), "MIN < 0 < MAX"),
        (dict(alphas="-1:1:2"), "at least 3"),
        (dict(dirs=0), "--dirs must be >= 1"),
        (dict(radius=2.0), "outside the probed range"),
        (dict(bn="train"), "accepted: eval, recalibrate"),
    ],
)
def test_bad_config_values(kw, needle):
    with pytest.raises(UserError, match=needle):
        ProbeConfig("x.h5", **{**FAST, **kw})
