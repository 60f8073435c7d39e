"""Standard errors over examples of every landscape point: equal to the hand computation from
per-example losses across uneven batches, exact across shards, NaN where undefined (n = 1, not
computed), stored and reloaded (older files load without them but are not resumed), and drawn as
+-1.96 SE bands in the probe PNG, the gap PNG and the HTML slider."""

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
from landscape.core.directions import random_direction
from landscape.core.engine import PointSums, evaluate_at, evaluate_point, fixed_batches, mean_se, perturbed, snapshot
from landscape.storage.results import FIELDS, STANDARD_ERRORS, CheckpointId, ProbeResults, StaleResults
from conftest import as_version_1

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
    d = random_direction(snapshot(model), seed=0, k=0)
    point = evaluate_at(model, [d], [0.3], batches, ATTACK).reduce()
    assert set(point) == set(FIELDS)
    nat, adv, nat_ok, adv_ok = [], [], [], []
    with perturbed(model, [d], [0.3]):  # the same weights, examples and starts, loss by loss
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
    assert s.rise_se == pytest.approx(expected) and s.rise == pytest.approx(0.25)
    assert np.isnan(metrics.sharpness(alphas, curves, 0.5).rise_se)  # no standard errors given


# ---------------------------------------------------------------------------------------------
# Results files
# ---------------------------------------------------------------------------------------------


def _results(alphas=np.array([-1.0, -0.5, 0.0, 0.5, 1.0]), dirs=3, checkpoints=1) -> ProbeResults:
    ck = [CheckpointId(f"run{c}.h5", c + 1, "0" * 64, f"epoch {c + 1}") for c in range(checkpoints)]
    return ProbeResults(alphas=alphas, seed=0, dirs=dirs, checkpoints=ck,
                        config={"radius": 0.5, "fit_radius": 0.25, "attack": {"steps": 2, "norm": "linf", "eps": 0.2},
                                "arch": "smallcnn", "dataset": "digits", "split": "train", "normalize": "filter",
                                "bn": "eval"})


def _fill(res: ProbeResults, c: int, k: int, scale: float = 1.0) -> None:
    for i, a in enumerate(res.alphas):
        rho = 2.0 + (1 + 0.2 * k) * a**2
        res.set_point(c, k, i, {"adv_loss": rho, "nat_loss": rho - 0.5, "adv_acc": 0.3, "nat_acc": 0.6,
                                "adv_loss_se": scale * (0.02 + 0.03 * abs(a)), "nat_loss_se": 0.01,
                                "adv_acc_se": 0.04, "nat_acc_se": 0.03})


def test_standard_errors_are_stored_and_reloaded_nan_where_not_computed(tmp_path):
    res = _results()
    _fill(res, 0, 0)
    _fill(res, 0, 1)
    res.set_point(0, 2, 0, {k: 1.0 for k in FIELDS})  # direction 2: one point only
    path = tmp_path / "p.h5"
    res.save(path)
    back = ProbeResults.load(path)
    assert back.format_version == 2
    for k in FIELDS:
        np.testing.assert_array_equal(back.values[k], res.values[k])
    assert np.isnan(back.values["adv_loss_se"][0, 2, 1:]).all() and back.values["adv_loss_se"][0, 2, 0] == 1.0
    with h5py.File(path) as f:
        assert f.attrs["format_version"] == 2
        assert f["sharpness/rise_se"][0] == pytest.approx(back.sharpness()[0].rise_se) and f["sharpness/rise_se"][0] > 0
        np.testing.assert_allclose(f["sharpness/rise_se_per_direction"][0, :2],
                                   metrics.rise_se(res.alphas, res.values["adv_loss_se"][0, :2], 0.5))
        assert np.isnan(f["sharpness/rise_se_per_direction"][0, 2])


def test_a_version_1_file_loads_without_standard_errors_but_is_not_resumed(tmp_path):
    res = _results()
    _fill(res, 0, 0)
    path = tmp_path / "old.h5"
    res.save(path)
    as_version_1(path)
    old = ProbeResults.load(path)
    assert old.format_version == 1
    np.testing.assert_array_equal(old.values["adv_loss"], res.values["adv_loss"])
    assert all(np.isnan(old.values[k]).all() for k in STANDARD_ERRORS)
    with pytest.raises(StaleResults) as e:  # a StaleResults: `landscape gap` recomputes its cache
        old.check_resumable(path)
    msg = str(e.value)
    assert "\n" not in msg and "format version 1" in msg and "--overwrite" in msg and "old.h5" in msg
    res.check_resumable(path)  # this version's own: fine


def test_plane_results_store_standard_errors_and_refuse_an_old_file(tmp_path):
    from landscape.commands.plot2d import FIELDS as PLANE_FIELDS, PlaneResults

    res = PlaneResults(np.array([-1.0, 0.0, 1.0]), np.array([-1.0, 1.0]), {"seed": 0},
                       CheckpointId("r.h5", 1, "0" * 64, "epoch 1"))
    res.set_point(-1, {k: 0.5 for k in PLANE_FIELDS})
    res.set_point(3, {k: float(i) for i, k in enumerate(PLANE_FIELDS)})
    path = tmp_path / "plane.h5"
    res.save(path)
    back = PlaneResults.load(path)
    assert back.values["adv_loss_se"][1, 1] == PLANE_FIELDS.index("adv_loss_se") and back.center["nat_acc_se"] == 0.5
    assert np.isnan(back.values["adv_loss_se"][0, 0])
    with h5py.File(path, "r+") as f:
        for k in STANDARD_ERRORS:
            del f[k], f[f"center/{k}"]
        f.attrs["format_version"] = 1
    old = PlaneResults.load(path)
    assert np.isnan(old.values["adv_loss_se"]).all() and old.values["adv_loss"][1, 1] == 0.0
    with pytest.raises(StaleResults, match="2-D results format version 1.*--overwrite"):
        old.check_resumable(path)


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


def _analysis(res: ProbeResults):
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
