"""Standard errors over examples of every landscape point: equal to the hand computation from
per-example losses across uneven batches, exact across shards, NaN where undefined (n = 1, not
computed), stored and reloaded (older files, probe and plot2d, versions 1 and 2, load, version 1
without them, but are not resumed), and drawn as +-1.96 SE bands in the probe PNG, the gap PNG and
the HTML slider."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection

from awp.attacks import AttackConfig, cross_entropy, pgd
from awp.data import class_stratified_subset
from landscape.core import sharpness as metrics
from awp.weights import offset, snapshot
from landscape.core.directions import random_direction, random_specs
from landscape.core.engine import PointSums, evaluate_at, evaluate_point, fixed_batches, mean_se
from landscape.storage.results import FIELDS, STANDARD_ERRORS, VALUES, CheckpointId, Grid, Landscape, StaleResults
from conftest import write_legacy_plane, write_legacy_probe

ATTACK = AttackConfig("linf", eps=0.2, step_size=0.05, steps=2)


@pytest.fixture(scope="module")
def data(digits):
    return class_stratified_subset(digits.train, 70, seed=0)


def _se(v: torch.Tensor) -> float:
    """By hand: sample standard deviation (ddof 1) over sqrt(n)."""
    v = v.double()
    return (v.std(unbiased=True) / math.sqrt(len(v))).item()


def test_standard_errors_equal_the_hand_computation_over_uneven_batches(trained_smallcnn, data):
    model = trained_smallcnn
    batches = fixed_batches(data, 32, ATTACK, seed=0)  # 32 + 32 + 6: the batch size does not divide n = 70
    assert [len(b.y) for b in batches] == [32, 32, 6]
    params = dict(model.named_parameters())
    d = random_direction(snapshot(params), seed=0, k=0)
    point = evaluate_at(model, [(d, 0.3)], batches, ATTACK).reduce()
    assert set(point) == set(FIELDS)
    nat, adv, nat_ok, adv_ok = [], [], [], []
    with offset(params, [(d, 0.3)]):  # the same weights, examples and starts, loss by loss
        for b in batches:
            x_adv = pgd(model, b.x, b.y, eps=ATTACK.eps, step_size=ATTACK.step_size, steps=ATTACK.steps,
                        delta0=b.delta0)
            with torch.no_grad():
                ln, la = model(b.x), model(x_adv)
            nat.append(cross_entropy(ln, b.y))
            adv.append(torch.nn.functional.cross_entropy(la, b.y, reduction="none"))
            nat_ok.append((ln.argmax(1) == b.y).double())
            adv_ok.append((la.argmax(1) == b.y).double())
    nat, adv, nat_ok, adv_ok = map(torch.cat, (nat, adv, nat_ok, adv_ok))
    assert point["adv_loss"] == pytest.approx(adv.double().mean().item(), rel=1e-5)
    assert point["adv_loss_se"] == pytest.approx(_se(adv), rel=1e-5)
    assert point["nat_loss_se"] == pytest.approx(_se(nat), rel=1e-5)
    assert point["adv_acc_se"] == pytest.approx(_se(adv_ok), rel=1e-9)
    assert point["nat_acc_se"] == pytest.approx(_se(nat_ok), rel=1e-9)
    p, n = point["nat_acc"], len(nat_ok)
    assert point["nat_acc_se"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)), rel=1e-9)  # 0/1 values
    assert 0 < point["nat_loss_se"] and 0 < point["adv_loss_se"] < point["adv_loss"]


def test_sums_add_exactly_across_shards(trained_smallcnn, data):
    batches = fixed_batches(data, 32, ATTACK, seed=0)
    whole = evaluate_point(trained_smallcnn, batches, ATTACK)
    parts = evaluate_point(trained_smallcnn, batches[:1], ATTACK).add(evaluate_point(trained_smallcnn, batches[1:], ATTACK))
    assert isinstance(parts, PointSums) and parts.n == whole.n == 70
    for k, v in whole.reduce().items():
        assert parts.reduce()[k] == pytest.approx(v, rel=1e-12), k


def test_one_example_gives_nan_not_zero(trained_smallcnn, data):
    one = torch.utils.data.TensorDataset(*(t[:1] for t in data.tensors))
    point = evaluate_point(trained_smallcnn, fixed_batches(one, 8, ATTACK, seed=0), ATTACK).reduce()
    assert np.isfinite(point["adv_loss"])
    assert all(np.isnan(point[k]) for k in STANDARD_ERRORS), point
    assert np.isnan(mean_se(1.0, 1.0, 1)) and np.isnan(mean_se(0.0, 0.0, 0))
    assert mean_se(6.0, 12.0, 3) == 0.0  # three equal values: exactly no spread, never a negative root
    assert np.isnan(mean_se(float("nan"), 1.0, 5))  # non-finite logits somewhere: no standard error


# ---------------------------------------------------------------------------------------------
# Combining point standard errors: the mean over directions and the rise
# ---------------------------------------------------------------------------------------------


def test_mean_curve_combines_direction_spread_and_example_noise():
    curves = np.array([[1.0, 2.0, 4.0], [3.0, 2.0, 0.0], [np.nan, 2.0, 1.0]])  # the third is incomplete
    se = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [9.0, 9.0, 9.0]])
    mean, mse = metrics.mean_curve(curves, se)
    np.testing.assert_allclose(mean, [2.0, 2.0, 2.0])
    sd2 = np.array([2.0, 0.0, 8.0])  # sample variance over the two complete directions
    np.testing.assert_allclose(mse, np.sqrt(sd2 / 2 + (se[0] ** 2 + se[1] ** 2) / 2))
    assert mse[1] == pytest.approx(0.2)  # alpha = 0, every direction the same point: its example SE
    one, one_se = metrics.mean_curve(curves[:1], se[:1])
    np.testing.assert_array_equal(one_se, se[0])  # a single direction: its own example SE
    nan_mean, nan_se = metrics.mean_curve(np.full((2, 3), np.nan), se[:2])
    assert np.isnan(nan_mean).all() and np.isnan(nan_se).all()
    assert np.isnan(metrics.mean_curve(curves[:2], np.full((2, 3), np.nan))[1]).all()  # old file: no band


def test_rise_standard_error_on_and_between_grid_points():
    alphas = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    se = np.array([[0.4, 0.2, 0.1, 0.3, 0.5]])
    np.testing.assert_allclose(metrics.rise_se(alphas, se, 0.5), [math.sqrt(0.2**2 / 4 + 0.3**2 / 4 + 0.1**2)])
    # r = 0.75 sits halfway: each side's variance is (se_a^2 + se_b^2) / 4
    left, right = (0.4**2 + 0.2**2) / 4, (0.3**2 + 0.5**2) / 4
    np.testing.assert_allclose(metrics.rise_se(alphas, se, 0.75), [math.sqrt(left / 4 + right / 4 + 0.1**2)])
    # The mean over D directions: rho(0) is one point for all of them, so its variance is not divided by D.
    two = np.vstack([se, se])
    expected = math.sqrt(2 * (0.2**2 + 0.3**2) / 4 / 4 + 0.1**2)
    assert metrics.mean_rise_se(alphas, two, 0.5) == pytest.approx(expected)
    curves = np.vstack([alphas**2, alphas**2])
    s = metrics.sharpness(alphas, curves, 0.5, se=two)
    assert s.se["rise"] == pytest.approx(expected) and s.mean["rise"] == pytest.approx(0.25)
    assert np.isnan(s.se["curvature"])  # a measure without a standard error over examples
    assert np.isnan(metrics.sharpness(alphas, curves, 0.5).se["rise"])  # no standard errors given
    values, errors = metrics.per_direction(alphas, curves, 0.5, two)  # per curve, every measure
    np.testing.assert_allclose(values["rise"], [0.25, 0.25])
    np.testing.assert_allclose(errors["rise"], metrics.rise_se(alphas, two, 0.5))
    assert np.isnan(errors["curvature"]).all()


# ---------------------------------------------------------------------------------------------
# Results files
# ---------------------------------------------------------------------------------------------


ALPHAS = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
CONFIG = {"radius": 0.5, "attack": {"steps": 2, "norm": "linf", "eps": 0.2}, "arch": "smallcnn", "dataset": "digits",
          "split": "train", "normalize": "filter", "bn": "eval"}


def _results(alphas=ALPHAS, dirs=3, checkpoints=1) -> Landscape:
    ck = [CheckpointId(f"run{c}.h5", c + 1, "0" * 64, f"epoch {c + 1}") for c in range(checkpoints)]
    return Landscape(Grid.curves(alphas, dirs), random_specs(dirs, 0), ck, dict(CONFIG))


def _point(a: float, k: int, scale: float = 1.0) -> dict[str, float]:
    rho = 2.0 + (1 + 0.2 * k) * a**2  # the same at alpha = 0 for every direction: w itself
    return {"adv_loss": rho, "nat_loss": rho - 0.5, "adv_acc": 0.3, "nat_acc": 0.6,
            "adv_loss_se": scale * (0.02 + 0.03 * abs(a)), "nat_loss_se": 0.01, "adv_acc_se": 0.04, "nat_acc_se": 0.03}


def _fill(res: Landscape, c: int, k: int, scale: float = 1.0) -> None:
    """Direction k of checkpoint c: alpha = 0 as the origin (it fills every direction's cell there)."""
    width = len(res.alphas)
    for i, a in enumerate(res.alphas):
        res.set_point(c, None if a == 0.0 else k * width + i, _point(a, k, scale))


def test_standard_errors_are_stored_and_reloaded_nan_where_not_computed(tmp_path):
    res = _results()
    _fill(res, 0, 0)
    _fill(res, 0, 1)
    res.set_point(0, 2 * 5 + 0, {k: 1.0 for k in FIELDS})  # direction 2: one point only (and the origin)
    path = tmp_path / "p.h5"
    res.save(path)
    back = Landscape.load(path)
    assert back.format_version == 3 and back.grid.dims == ("direction", "alpha") and back.origin_done.all()
    for k in FIELDS:
        np.testing.assert_array_equal(back.values[k], res.values[k])
        np.testing.assert_array_equal(back.origin[k], res.origin[k])
        assert (back.values[k][0, :, 2] == back.origin[k][0]).all()  # alpha = 0 is the origin, exactly
    np.testing.assert_array_equal(back.done[0, 2], [True, False, True, False, False])
    assert np.isnan(back.values["adv_loss_se"][0, 2, [1, 3, 4]]).all() and back.values["adv_loss_se"][0, 2, 0] == 1.0
    with h5py.File(path) as f:
        assert f.attrs["format"] == "awp-landscape" and f.attrs["format_version"] == 3
        assert f["sharpness/rise_se"][0] == pytest.approx(back.sharpness()[0].se["rise"]) and f["sharpness/rise_se"][0] > 0
        np.testing.assert_allclose(f["sharpness/rise_se_per_direction"][0, :2],
                                   metrics.rise_se(res.alphas, res.values["adv_loss_se"][0, :2], 0.5))
        np.testing.assert_array_equal(f["sharpness/rise_se_per_direction"][()], back.per_direction()[1]["rise"])
        assert np.isnan(f["sharpness/rise_se_per_direction"][0, 2])


def _legacy_probe(res: Landscape, path: Path, version: int) -> None:
    write_legacy_probe(path, alphas=res.alphas, seed=0, checkpoints=res.checkpoints,
                       config={**res.config, "fit_radius": 0.25}, values=res.values, done=res.done, version=version)


def test_a_version_1_file_loads_without_standard_errors_but_is_not_resumed(tmp_path):
    res = _results()
    _fill(res, 0, 0)
    path = tmp_path / "old.h5"
    _legacy_probe(res, path, version=1)
    old = Landscape.load(path)
    assert old.format_version == 1 and old.grid.kind == "curves" and old.dirs == 3
    assert old.directions == random_specs(3, 0)  # rebuilt from the file's (seed, k)
    np.testing.assert_array_equal(old.alphas, res.alphas)
    np.testing.assert_array_equal(old.done, res.done)
    np.testing.assert_array_equal(old.values["adv_loss"], res.values["adv_loss"])
    assert all(np.isnan(old.values[k]).all() for k in STANDARD_ERRORS)
    assert old.origin_done.all() and all(old.origin[k][0] == res.origin[k][0] for k in VALUES)  # its alpha = 0
    assert all(np.isnan(old.origin[k]).all() for k in STANDARD_ERRORS)
    s = old.sharpness()[0]
    assert s.n_dirs == 1 and s.mean["rise"] == pytest.approx(0.25) and np.isnan(s.se["rise"])
    with pytest.raises(StaleResults) as e:  # a StaleResults: `landscape gap` recomputes its cache
        old.check_resumable(path)
    msg = str(e.value)
    assert "\n" not in msg and "format version 1" in msg and "--overwrite" in msg and "old.h5" in msg
    res.check_resumable(path)  # this version's own: fine
    # Version 2 had the standard errors: they load, but the file is not resumed either.
    _fill(res, 0, 2, scale=2.0)
    _legacy_probe(res, tmp_path / "v2.h5", version=2)
    v2 = Landscape.load(tmp_path / "v2.h5")
    assert v2.format_version == 2
    for k in FIELDS:
        np.testing.assert_array_equal(v2.values[k], res.values[k])
    assert v2.origin["adv_loss_se"][0] == res.origin["adv_loss_se"][0] == 0.04  # the first done direction's
    assert v2.sharpness()[0].se["rise"] == pytest.approx(res.sharpness()[0].se["rise"])
    with pytest.raises(StaleResults, match="format version 2.*--overwrite"):
        v2.check_resumable(tmp_path / "v2.h5")


def test_plane_results_store_standard_errors_and_refuse_an_old_file(tmp_path):
    ident = CheckpointId("r.h5", 1, "0" * 64, "epoch 1")
    res = Landscape(Grid.plane(np.array([-1.0, 0.0, 1.0]), np.array([-1.0, 1.0])), random_specs(2, 0), [ident],
                    {"seed": 0})
    res.set_point(0, None, {k: 0.5 for k in FIELDS})  # the origin g(0, 0): not on this grid
    res.set_point(0, 3, {k: float(i) for i, k in enumerate(FIELDS)})  # flat 3 = (alpha 0, beta 1)
    assert res.done.sum() == 1 and res.origin_done.all()
    path = tmp_path / "plane.h5"
    res.save(path)
    back = Landscape.load(path)
    assert back.format_version == 3 and back.grid.kind == "plane" and back.values["adv_loss"].shape == (1, 3, 2)
    assert back.values["adv_loss_se"][0, 1, 1] == FIELDS.index("adv_loss_se") and back.origin["nat_acc_se"][0] == 0.5
    assert np.isnan(back.values["adv_loss_se"][0, 0, 0])
    assert back.relative()[0, 1, 1] == abs(0.0 - 0.5) and np.isnan(back.relative()[0, 0, 0])
    with h5py.File(path) as f:
        assert f["origin/nat_acc_se"][0] == 0.5 and f["origin/done"][0] and "center" not in f
    legacy = dict(alphas=res.grid.axis("alpha"), betas=res.grid.axis("beta"), checkpoint=ident, config={"seed": 0},
                  values={k: v[0] for k, v in res.values.items()}, done=res.done[0],
                  center={k: v[0] for k, v in res.origin.items()})
    write_legacy_plane(path, version=1, **legacy)
    old = Landscape.load(path)
    assert old.format_version == 1 and old.grid.kind == "plane" and old.checkpoints == [ident]
    assert np.isnan(old.values["adv_loss_se"]).all() and old.values["adv_loss"][0, 1, 1] == 0.0
    assert all(np.isnan(old.origin[k]).all() for k in STANDARD_ERRORS) and old.origin["adv_loss"][0] == 0.5
    np.testing.assert_array_equal(old.done, res.done)
    with pytest.raises(StaleResults, match="format version 1.*--overwrite"):
        old.check_resumable(path)
    write_legacy_plane(path, version=2, **legacy)
    v2 = Landscape.load(path)
    assert v2.format_version == 2 and v2.values["adv_loss_se"][0, 1, 1] == FIELDS.index("adv_loss_se")
    assert v2.origin["nat_acc_se"][0] == 0.5 and v2.origin_done.all()
    with pytest.raises(StaleResults, match="format version 2.*--overwrite"):
        v2.check_resumable(path)


# ---------------------------------------------------------------------------------------------
# Figures: the bands
# ---------------------------------------------------------------------------------------------


def test_probe_png_draws_the_bands(tmp_path):
    import matplotlib.pyplot as plt

    from landscape.figures.curves import draw_probe, save_probe_png

    res = _results()
    for k in range(3):
        _fill(res, 0, k)
    fig, ax = plt.subplots()
    drawn = draw_probe(res, ax, fig)
    assert len(drawn["mean_band"]) == 1 and len(drawn["direction_band"]) == 3
    assert all(isinstance(p, PolyCollection) for p in drawn["mean_band"] + drawn["direction_band"])
    lo, hi = drawn["mean_band"][0].get_paths()[0].vertices[:, 1].min(), drawn["mean_band"][0].get_paths()[0].vertices[:, 1].max()
    mean, se = metrics.mean_curve(res.values["adv_loss"][0], res.values["adv_loss_se"][0])
    assert lo == pytest.approx((mean - 1.96 * se).min()) and hi == pytest.approx((mean + 1.96 * se).max())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("± 1.96 SE" in t and "directions and examples" in t for t in labels), labels
    plt.close(fig)
    save_probe_png(res, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
    # Several checkpoints: a band around each mean, none around the directions (they would blur).
    many = _results(checkpoints=2)
    for c in range(2):
        for k in range(3):
            _fill(many, c, k)
    fig, ax = plt.subplots()
    drawn = draw_probe(many, ax, fig)
    assert len(drawn["mean_band"]) == 2 and not drawn["direction_band"]
    plt.close(fig)
    # A file without standard errors: the curves, no bands, no band in the legend.
    for k in STANDARD_ERRORS:
        res.values[k][:] = np.nan
    fig, ax = plt.subplots()
    drawn = draw_probe(res, ax, fig)
    assert drawn["mean"] and not drawn["mean_band"] and not drawn["direction_band"]
    assert not any("SE" in t.get_text() for t in ax.get_legend().get_texts())
    plt.close(fig)


def _analysis(res: Landscape):
    from landscape.commands.analysis import RunAnalysis, RunCurves

    epochs = np.array([1, 2])
    z = np.array([0.5, 0.6])
    curves = RunCurves(path=Path("run.h5"), label="at", config={}, epochs=epochs, train_adv=z,
                       test_adv=z - 0.1, test_nat=z, train_nat=z, best_epoch=1, last_epoch=2)
    return RunAnalysis(curves, res)


def test_html_slider_has_band_traces_with_value_and_se_on_hover(tmp_path):
    from landscape.figures import study as figures

    res = _results(checkpoints=2)
    for c in range(2):
        for k in range(3):
            _fill(res, c, k, scale=1 + c)
    a = _analysis(res)
    mean, se = figures.mean_curves(a)
    assert mean.shape == se.shape == (2, 5) and (se[1] > se[0]).all()
    fig = figures.landscape_slider_fig(a)
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(bands) == 4  # per epoch: one trace for the direction bands, one for the mean's
    mean_band = next(t for t in bands if "mean ± 1.96 SE" in t.name)
    assert mean_band.visible is True  # the first epoch's, shown first
    np.testing.assert_allclose(np.array(mean_band.y[:5], dtype=float), mean[0] + 1.96 * se[0])
    np.testing.assert_allclose(np.array(mean_band.y[5:10], dtype=float), (mean[0] - 1.96 * se[0])[::-1])
    mean_line = next(t for t in fig.data if t.name == "mean over directions")
    assert "± %{customdata" in mean_line.hovertemplate
    np.testing.assert_allclose(np.array(mean_line.customdata, dtype=float), se[0])
    page = fig.to_html(full_html=False, include_plotlyjs=False)
    assert '"fill":"toself"' in page and ("mean ± 1.96 SE" in page or "mean \\u00b1 1.96 SE" in page)
    lo, hi = fig.layout.yaxis.range
    assert lo <= np.nanmin(mean - 1.96 * se) and hi >= np.nanmax(mean + 1.96 * se)  # the bands fit
    # Slider steps switch whole epochs, bands included.
    per = len(fig.data) // 2
    vis = fig.layout.sliders[0].steps[1].args[0]["visible"]
    assert vis == [False] * per + [True] * per


def test_gap_landscapes_png_draws_a_band_per_epoch(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from landscape.figures import study as figures

    res = _results(checkpoints=2)
    for c in range(2):
        for k in range(3):
            _fill(res, c, k)
    seen = []
    real = plt.Axes.fill_between
    monkeypatch.setattr(plt.Axes, "fill_between", lambda self, *a, **k: seen.append(a) or real(self, *a, **k))
    out = figures.landscapes_png([_analysis(res)], tmp_path / "l.png")
    assert out.stat().st_size > 10_000 and len(seen) == 2  # one band per probed epoch (best 1: before; 2: after)
