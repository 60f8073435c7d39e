"""Issue 10, in process and fast: NaN cells in the surface figure, centred alpha grids, NaN accuracies,
option typing and flag names, seeds, sizes checked before allocation, grids and eps, damaged run files
and checkpoints, and an offline download. Every test names the bad value's flag or the file."""

from __future__ import annotations

import json
import pickle
import shutil
import urllib.error
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import awp.config
from awp.attacks import AttackConfig
from awp.config import check_allocation, check_seed, parse_fraction
from awp.errors import UserError
from awp.evaluate import correct_per_example, evaluate, robust_correct
from awp.models import create_model
from awp.store import ResumeState, commit_epoch, create_run, open_run
from awp.trainconfig import CHECKS, KINDS, TrainConfig, flag, load_toml, parse_option, resolve_config, validate
from landscape.core import axes
from landscape.core import engine
from landscape.core import sharpness as metrics
from landscape.commands.analysis import GapConfig
from landscape.storage.sources import open_source
from landscape.core.axes import GridSpec, parse_grid
from landscape.commands.options import LandscapeOptions
from landscape.figures.plane import save_surface_png, surface_z
from landscape.storage.results import CheckpointId, Grid, Landscape, check_size
from landscape.core.directions import random_specs
from conftest import one_line

WIDTHS = [4, 8, 8]
MODEL = {"arch": "smallcnn", "arch_kwargs": {"widths": WIDTHS}, "dataset": "digits", "num_classes": 10,
         "in_channels": 1, "mean": [0.3], "std": [0.4], "image_size": 8}


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("smallcnn", 10, 1, [0.3], [0.4], widths=WIDTHS).eval()


def tiny_data(n: int = 40) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 10)  # every class, 0 included


# ---------------------------------------------------------------------------------------------
# 1. the surface figure: NaN cells are gaps, not a plane
# ---------------------------------------------------------------------------------------------


def _rel_with_holes() -> np.ndarray:
    rel = np.arange(20, dtype=float).reshape(5, 4) / 10 + 0.5  # [n_alpha, n_beta], no zero anywhere
    rel[3:, :] = np.nan  # the last alpha rows not computed yet
    rel[0, 1] = np.nan
    return rel


def test_surface_z_masks_uncomputed_cells():
    rel = _rel_with_holes()
    z = surface_z(rel)
    assert isinstance(z, np.ma.MaskedArray) and z.shape == (4, 5)  # [n_beta, n_alpha]
    np.testing.assert_array_equal(np.ma.getmaskarray(z), np.isnan(rel).T)
    assert not (np.ma.getdata(z)[np.isnan(rel).T] == 0).any()  # no zeros (no plane) where nothing was computed
    np.testing.assert_array_equal(z.compressed(), rel.T[np.isfinite(rel.T)])


def test_surface_png_draws_only_computed_cells(tmp_path, monkeypatch):
    from mpl_toolkits.mplot3d.axes3d import Axes3D

    seen = []
    real = Axes3D.plot_surface

    def spy(self, X, Y, Z, *a, **kw):
        poly = real(self, X, Y, Z, *a, **kw)
        seen.append((Z, len(poly.get_array())))  # one colour value per polygon drawn
        return poly

    monkeypatch.setattr(Axes3D, "plot_surface", spy)
    alphas, betas = np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)
    save_surface_png(alphas, betas, np.ones((5, 4)), tmp_path / "full.png", "full")
    save_surface_png(alphas, betas, _rel_with_holes(), tmp_path / "holes.png", "holes")
    (z_full, n_full), (z_holes, n_holes) = seen
    assert n_full == 4 * 3 and n_holes < n_full  # cells with no computed corner are not drawn at all
    assert np.ma.getmaskarray(z_holes).sum() == np.isnan(_rel_with_holes()).sum()
    assert (tmp_path / "holes.png").stat().st_size > 1000
    save_surface_png(alphas, betas, np.full((5, 4), np.nan), tmp_path / "none.png", "nothing yet")  # no crash
    assert len(seen) == 2 and (tmp_path / "none.png").exists()


# ---------------------------------------------------------------------------------------------
# 2. alpha grids through 0, and --radius in messages
# ---------------------------------------------------------------------------------------------


def test_alpha_grid_without_zero_is_refused():
    with pytest.raises(UserError) as e:
        axes.parse_centred_range("-1:1:4", "--alphas")
    one_line(e, "--alphas", "'-1:1:4'", "-1:1:5")
    with pytest.raises(UserError) as e:
        axes.parse_centred_range("-0.5:1:5", "--alphas")
    one_line(e, "--alphas", "alpha = 0")


@pytest.mark.parametrize("text,needle", [("0:1:5", "MIN < 0 < MAX"), ("-1:1:2", "at least 3"), ("1:-1:5", "reversed")])
def test_centred_range_rejects(text, needle):
    with pytest.raises(UserError) as e:
        axes.parse_centred_range(text, "--alphas")
    one_line(e, "--alphas", needle)


@pytest.mark.parametrize("text", ["-1:1:5", "-1:1:41", "-1:2:4", "-0.5:0.5:11"])
def test_centred_range_holds_exactly_zero(text):
    v = axes.parse_centred_range(text, "--alphas")
    assert (v == 0.0).sum() == 1 and v[0] < 0 < v[-1]


def test_gap_refuses_an_alpha_grid_without_zero():
    with pytest.raises(UserError) as e:
        GapConfig(runs=("x.h5",), alphas="-1:1:10")
    one_line(e, "--alphas", "-1:1:11")


def test_radius_messages_name_the_flag():
    alphas = np.linspace(-1, 1, 5)
    with pytest.raises(UserError) as e:
        metrics.check_radius(alphas, 5.0)
    one_line(e, "--radius", "5", "at most 1")
    with pytest.raises(UserError) as e:
        metrics.check_radius(alphas, 0.0)
    one_line(e, "--radius")
    with pytest.raises(UserError) as e:
        metrics.value_at(alphas, np.zeros(5), 3.0)
    one_line(e, "--radius")
    metrics.check_radius(alphas, 1.0)  # the edge is fine


# ---------------------------------------------------------------------------------------------
# 3. NaN weights or logits give NaN accuracies, never argmax-of-NaN = class 0
# ---------------------------------------------------------------------------------------------


def _nan_model() -> torch.nn.Module:
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return model


ATTACK = AttackConfig("linf", 0.1, 0.05, 1)


def test_evaluate_with_nan_weights_gives_nan_accuracies():
    ds = tiny_data()
    out = evaluate(_nan_model(), ds, ATTACK, batch_size=16)
    assert all(np.isnan(out[k]) for k in ("nat_acc", "adv_acc", "nat_loss", "adv_loss")), out
    assert torch.isnan(robust_correct(_nan_model(), ds, ATTACK, batch_size=16)).all()
    ok = evaluate(tiny_model(), ds, ATTACK, batch_size=16)  # finite weights: ordinary fractions
    assert all(0 <= ok[k] <= 1 for k in ("nat_acc", "adv_acc")) and ok["nat_acc"] * 40 == round(ok["nat_acc"] * 40)


def test_engine_point_with_nan_weights_gives_nan_accuracies():
    batches = engine.fixed_batches(tiny_data(), 16, ATTACK, seed=0)
    point = engine.evaluate_point(_nan_model(), batches, ATTACK).reduce()
    assert all(np.isnan(point[k]) for k in ("nat_acc", "adv_acc", "nat_loss", "adv_loss")), point
    natural = AttackConfig("linf", 0.0, 0.0, 0)
    point = engine.evaluate_point(_nan_model(), engine.fixed_batches(tiny_data(), 16, natural, 0), natural).reduce()
    assert np.isnan(point["nat_acc"]) and np.isnan(point["adv_acc"])


def test_one_non_finite_example_makes_the_set_accuracy_nan():
    logits = torch.tensor([[float("nan"), 0.0], [1.0, 0.0], [0.0, float("inf")]])
    y = torch.tensor([0, 0, 1])
    got = correct_per_example(logits, y)
    assert np.isnan(got[0].item()) and got[1].item() == 1.0 and np.isnan(got[2].item())
    assert correct_per_example(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0])).tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------
# 4. option typing: TOML values, config files, --arch-kwargs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,value", [
    ("eps", True), ("eps", [1]), ("eps", {"a": 1}), ("gamma", False), ("lr", "abc"),
    ("epochs", True), ("epochs", [1]), ("epochs", {"a": 1}), ("epochs", 1.5), ("train_steps", "x"),
    ("dataset", True), ("method", ["at"]), ("arch", {"a": 1}), ("norm", 3),
    ("awp_include_1d", [1]), ("awp_include_1d", "maybe"),
    ("lr_milestones", 5), ("lr_milestones", True), ("lr_milestones", [True]), ("lr_milestones", {"a": 0.5}),
    ("arch_kwargs", [1]), ("arch_kwargs", "[1, 2]"), ("arch_kwargs", "{bad"), ("arch_kwargs", 3),
    ("method_params", [1]), ("method_params", "[1]"), ("method_params", "{bad"), ("awp", "maybe"), ("awp", [1]),
])
def test_wrongly_typed_options_name_the_flag(name, value):
    with pytest.raises(UserError) as e:
        parse_option(name, value)
    one_line(e, flag(name))


def test_parse_fraction_refuses_bools():
    for v in (True, False, None, [0.1]):
        with pytest.raises(UserError) as e:
            parse_fraction(v, "--eps")
        one_line(e, "--eps")
    assert parse_fraction(1, "--eps") == 1.0 and parse_fraction("8/255", "--eps") == 8 / 255


def test_toml_eps_true_is_an_error_not_one(tmp_path):
    (tmp_path / "c.toml").write_text("eps = true\n")
    with pytest.raises(UserError) as e:
        resolve_config({}, tmp_path / "c.toml")
    one_line(e, "--eps", "True")


def test_config_file_that_is_not_a_readable_text_file(tmp_path, monkeypatch):
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "bin.toml").write_bytes(bytes(range(256)) * 4)
    for name in ("dir.toml", "bin.toml", "missing.toml"):
        with pytest.raises(UserError) as e:
            load_toml(tmp_path / name)
        one_line(e, name)
    (tmp_path / "locked.toml").write_text("eps = 0.1\n")

    def denied(self, *a, **kw):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)  # root ignores chmod 000; pretend the file is unreadable
    with pytest.raises(UserError) as e:
        load_toml(tmp_path / "locked.toml")
    one_line(e, "locked.toml", "Permission denied")


@pytest.mark.parametrize("kwargs,needle", [
    ({"widths": "abc"}, "widths"), ({"widths": [1.5]}, "widths"), ({"widths": [1.5, 2, 2]}, "widths"),
    ({"widths": [-3, 2, 2]}, "widths"), ({"widths": 5}, "widths"), ({"widths": [True, 2, 2]}, "widths"),
    ({"widht": [1, 2, 3]}, "widht"),
])
def test_bad_arch_kwargs_name_the_option(kwargs, needle):
    with pytest.raises(UserError) as e:
        create_model("smallcnn", 10, 1, **kwargs)
    one_line(e, "--arch-kwargs", needle)


def test_builder_type_errors_become_one_line():
    with pytest.raises(UserError) as e:  # a TypeError deep in the builder ('<=' between float and str)
        create_model("wrn28_10", 10, 3, drop_rate="x")
    one_line(e, "--arch-kwargs", "wrn28_10", "drop_rate")
    with pytest.raises(UserError) as e:
        resolve_config({"arch_kwargs": "[16, 32, 32]"})
    one_line(e, "--arch-kwargs")


# ---------------------------------------------------------------------------------------------
# 5. messages name the flag the user typed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags,needle", [
    ({"train_steps": -1}, "--train-steps must be >= 0, got -1"),
    ({"gamma": "-1"}, "--gamma '-1' is negative"),
    ({"eps": "-0.1"}, "--eps '-0.1' is negative"),
    ({"awp_steps": 0}, "--awp-steps must be >= 1, got 0"),
    ({"awp_alternations": 0}, "--awp-alternations must be >= 1"),
    ({"epochs": 0}, "--epochs must be >= 1"),
    ({"batch_size": 0}, "--batch-size must be >= 1"),
    ({"eval_batch_size": 0}, "--eval-batch-size must be >= 1"),
    ({"eval_steps": -2}, "--eval-steps must be >= 0"),
    ({"lr": "-1"}, "--lr '-1' is negative"),
    ({"momentum": "1"}, "--momentum must be in [0, 1)"),
    ({"val_split": "1.5"}, "--val-split must be in [0, 1)"),
    ({"lr_milestones": "0.5,2"}, "--lr-milestones must be increasing"),
    ({"train_size": -1}, "--train-size must be >= 0"),
    ({"save_every": -1}, "--save-every must be >= 0"),
    ({"threads": -1}, "--threads must be >= 0"),
    ({"train_step_size": "-1"}, "--train-step-size '-1' is negative"),
    ({"weight_decay": "nan"}, "--weight-decay"),
    ({"awp_warmup": -1}, "--awp-warmup must be >= 0"),
])
def test_resolve_config_names_the_flag(flags, needle):
    with pytest.raises(UserError) as e:
        resolve_config(flags)
    one_line(e, needle)


def test_every_integer_option_has_a_check_and_validate_uses_the_table():
    ints = {name for name, kind in KINDS.items() if kind == "int"}
    assert ints <= set(CHECKS), ints - set(CHECKS)
    with pytest.raises(UserError) as e:  # a hand-built config goes through the same table
        validate(TrainConfig(dataset="digits", arch="smallcnn", epochs=0))
    one_line(e, "--epochs")
    with pytest.raises(UserError) as e:
        validate(TrainConfig(dataset="digits", arch="smallcnn", lr=float("nan")))
    one_line(e, "--lr", "finite")
    validate(resolve_config({}))


# ---------------------------------------------------------------------------------------------
# 6. seeds in [0, 2^63)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, 2**63, 99999999999999999999, True, 1.5])
def test_bad_seeds(seed):
    with pytest.raises(UserError) as e:
        check_seed(seed, "--seed")
    one_line(e, "--seed", "[0, 2^63)")


def test_seeds_everywhere():
    assert check_seed(0, "--seed") == 0 and check_seed(2**63 - 1, "--seed") == 2**63 - 1
    for make in (lambda s: resolve_config({"seed": s}), lambda s: LandscapeOptions("x.h5", seed=s),
                 lambda s: GapConfig(runs=("x.h5",), seed=s)):
        for s in (-1, 2**63):
            with pytest.raises(UserError) as e:
                make(s)
            one_line(e, "--seed", "2^63")


# ---------------------------------------------------------------------------------------------
# 7. sizes checked before allocation
# ---------------------------------------------------------------------------------------------


def test_check_allocation_against_physical_memory(monkeypatch):
    monkeypatch.setattr(awp.config, "physical_memory", lambda: 2**30)  # a 1 GiB machine
    check_allocation(2**28, "small")
    with pytest.raises(UserError) as e:
        check_allocation(2**29 + 1, "the thing")
    one_line(e, "the thing", "512.0 MiB", "1.0 GiB")
    with pytest.raises(UserError) as e:
        GridSpec(6000, 6000, (-1, 1), (-1, 1))  # 36M points x 41 B = 1.4 GiB
    one_line(e, "--grid 6000x6000", "36,000,000 points", "GiB")
    monkeypatch.setattr(awp.config, "physical_memory", lambda: None)  # a platform that does not say
    check_allocation(10**18, "anything")


def test_huge_grids_alphas_and_dirs_are_refused_before_allocating():
    with pytest.raises(UserError) as e:
        GridSpec(100000, 100000, (-1, 1), (-1, 1))
    one_line(e, "--grid 100000x100000", "10,000,000,000 points", "memory")
    with pytest.raises(UserError) as e:
        axes.parse_range("-1:1:1000000000", "--alphas")
    one_line(e, "--alphas", "1,000,000,000 points")
    ck = [CheckpointId("x.h5", 1, "0" * 64, "epoch 1")]
    with pytest.raises(UserError) as e:
        check_size(1, ("--dirs", "--alphas"), (10**9, 41))
    one_line(e, "1000000000 --dirs", "41,000,000,000 points", "memory")
    fits = Landscape(Grid.curves(np.linspace(-1, 1, 5), 2), random_specs(2, 0), ck)
    assert fits.values["adv_loss"].shape == (1, 2, 5)


def test_a_model_too_large_for_memory_is_refused_without_building_it():
    with pytest.raises(UserError) as e:
        create_model("smallcnn", 10, 1, widths=[100000, 100000, 100000])
    one_line(e, "smallcnn", '{"widths": [100000, 100000, 100000]}', "180,002,500,010 parameters", "GiB")


def test_create_model_works_under_an_ambient_meta_device():
    with torch.device("meta"):  # what a preflight check may do
        model = create_model("smallcnn", 10, 1, [0.3], [0.4], widths=WIDTHS)
        with pytest.raises(UserError) as e:
            create_model("smallcnn", 10, 1, widths=[100000, 100000, 100000])
    assert model.net[0].weight.is_meta
    one_line(e, "parameters")
    with pytest.raises(UserError) as e:
        create_model("smallcnn", 10, 1, ["a"], [0.4])
    one_line(e, "mean", "numbers")


def test_the_size_check_draws_no_random_numbers():
    from awp.models.registry import MODELS, Normalize, NormalizedModel

    torch.manual_seed(3)
    a = create_model("smallcnn", 10, 1, [0.3], [0.4], widths=WIDTHS)
    torch.manual_seed(3)
    b = NormalizedModel(Normalize([0.3], [0.4], 1), MODELS["smallcnn"](num_classes=10, in_channels=1, widths=WIDTHS))
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


# ---------------------------------------------------------------------------------------------
# 8. grids of one point, L-inf eps above 1
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1x1", "1x5", "5x1", "0x5"])
def test_grid_needs_two_points_per_axis(text):
    with pytest.raises(UserError) as e:
        parse_grid(text)
    one_line(e, "--grid", "at least 2", "landscape probe")


def test_gridspec_needs_two_points_per_axis():
    with pytest.raises(UserError) as e:
        GridSpec(1, 1, (-1, 1), (-1, 1))
    one_line(e, "--grid", "at least 2")
    assert parse_grid("2x3") == (2, 3) and GridSpec(2, 3, (-1, 1), (-1, 1)).size == 6


def test_linf_eps_above_one_suggests_255ths():
    with pytest.raises(UserError) as e:
        AttackConfig(norm="linf", eps=8.0)
    one_line(e, "--eps 8", "did you mean 8/255?")
    with pytest.raises(UserError) as e:
        resolve_config({"eps": "8"})
    one_line(e, "--eps", "8/255")
    assert AttackConfig(norm="linf", eps=1.0).eps == 1.0
    assert AttackConfig(norm="l2", eps=8.0).eps == 8.0  # L2 radii may exceed 1


# ---------------------------------------------------------------------------------------------
# 9. damaged run files and checkpoints: one line, never a traceback
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "run.h5"
    cfg = resolve_config({"arch_kwargs": json.dumps({"widths": WIDTHS}), "train_size": 40}).to_dict()
    create_run(path, cfg, MODEL)
    row = {"test_adv_acc": 0.2, "train_adv_acc": 0.3, "test_nat_acc": 0.5, "gap": 0.1}
    commit_epoch(path, 1, row, tiny_model(1).state_dict(), ResumeState(1, {}, {}), save_every=1)
    return path


def _forged(run_file: Path, tmp_path: Path, change, name: str = "forged.h5") -> Path:
    dst = tmp_path / name
    shutil.copy2(run_file, dst)
    with h5py.File(dst, "r+") as f:
        change(f)
    return dst


def _set_model(**changes):
    def change(f):
        meta = json.loads(f.attrs["model"])
        for k, v in changes.items():
            if v is None:
                meta.pop(k)
            else:
                meta[k] = v
        f.attrs["model"] = json.dumps(meta)
    return change


@pytest.mark.parametrize("change,needle", [
    (lambda f: f.attrs.__delitem__("config"), "no 'config' attribute"),
    (lambda f: f.attrs.__delitem__("model"), "no 'model' attribute"),
    (lambda f: f.attrs.__delitem__("format_version"), "no 'format_version' attribute"),
    (lambda f: f.attrs.__setitem__("config", "not json"), "'config' attribute is not JSON"),
    (lambda f: f.attrs.__setitem__("model", "[1, 2]"), "'model' attribute is not a JSON object"),
    (lambda f: f.attrs.__setitem__("format_version", "abc"), "format_version 'abc' is not an integer"),
    (lambda f: f.attrs.__setitem__("format_version", 1.5), "is not an integer"),
    (lambda f: f.attrs.__setitem__("best_epoch", "x"), "best_epoch"),
    (lambda f: f.__delitem__("weights"), "no /weights group"),
    (lambda f: f.__delitem__("metrics"), "no /metrics group"),
    (_set_model(num_classes=None), "lacks num_classes"),
    (_set_model(arch_kwargs="widths"), "wrongly typed arch_kwargs"),
    (lambda f: f.attrs.__setitem__("config", json.dumps({"dataset": "digits"})), "lacks its dataset or attack"),
])
def test_damaged_run_files(run_file, tmp_path, change, needle):
    path = _forged(run_file, tmp_path, change)
    with pytest.raises(UserError) as e:
        open_run(path)
    one_line(e, str(path), "damaged or incomplete run file", needle)


def test_a_stored_config_that_does_not_fit_names_the_file(run_file, tmp_path):
    def drop_awp(f):
        c = json.loads(f.attrs["config"])
        del c["awp"]
        f.attrs["config"] = json.dumps(c)

    reader = open_run(_forged(run_file, tmp_path, drop_awp))  # probing needs only the attack and the data
    with pytest.raises(UserError) as e:
        reader.train_config()  # `landscape info` and --resume need all of it
    one_line(e, "forged.h5", "damaged or incomplete run file", "'awp'")
    assert open_run(run_file).train_config().arch_kwargs == {"widths": WIDTHS}


def test_too_new_run_file(run_file, tmp_path):
    path = _forged(run_file, tmp_path, lambda f: f.attrs.__setitem__("format_version", 99))
    with pytest.raises(UserError) as e:
        open_run(path)
    one_line(e, "format version 99")


def _reshape(f):
    g = f["weights/epoch_0001"]
    del g["net.3.weight"]
    g.create_dataset("net.3.weight", data=np.zeros((8, 4, 5, 5), np.float32)).attrs["dtype"] = "float32"


def test_weights_that_do_not_fit_the_architecture(run_file, tmp_path):
    path = _forged(run_file, tmp_path, _reshape)
    reader = open_run(path)
    with pytest.raises(UserError) as e:
        reader.build_model(1)
    one_line(e, "net.3.weight", "[8, 4, 5, 5]", "[8, 4, 3, 3]")
    with pytest.raises(UserError) as e:
        reader.load_into(tiny_model(), 1)
    one_line(e, "net.3.weight")
    with pytest.raises(UserError) as e:  # when the file is opened, before probe or plot2d write anything
        open_source(path)
    one_line(e, "net.3.weight")


def test_load_into_loads_strictly(run_file):
    reader = open_run(run_file)
    model = tiny_model(7)
    reader.load_into(model, 1)
    for k, t in tiny_model(1).state_dict().items():
        assert torch.equal(model.state_dict()[k], t), k
    other = create_model("smallcnn", 10, 1, [0.3], [0.4], widths=[4, 8, 16])
    with pytest.raises(UserError) as e:
        reader.load_into(other, 1)
    one_line(e, "does not match architecture 'smallcnn'", "shape of")


def test_load_into_a_meta_skeleton_only_checks(run_file, tmp_path, capfd):
    reader = open_run(run_file)
    with torch.device("meta"):
        skeleton = create_model("smallcnn", 10, 1, [0.3], [0.4], widths=WIDTHS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader.load_into(skeleton, 1)  # fits: nothing to say, nothing copied, no torch warning
    assert not caught and not capfd.readouterr().err
    with pytest.raises(UserError) as e:
        open_run(_forged(run_file, tmp_path, _reshape)).load_into(skeleton, 1)
    one_line(e, "net.3.weight")


def test_forged_model_json_asking_for_a_huge_model(run_file, tmp_path):
    path = _forged(run_file, tmp_path, _set_model(arch_kwargs={"widths": [100000, 100000, 100000]}))
    with pytest.raises(UserError) as e:
        open_run(path).build_model(1)
    one_line(e, "parameters", "GiB")


def test_load_weights_lives_in_awp_and_landscape_reexports_it():
    import landscape.storage.sources
    from awp.models import loading

    assert landscape.storage.sources.load_weights is loading.load_weights


class Custom:
    """Any class of the user's: unpickling it would run code the file chose."""


class Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _quiet_open(path: Path, capfd) -> str:
    """open_source's UserError message; torch printed nothing and warned nothing."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError) as e:
            open_source(path, arch="smallcnn", dataset="digits")
    out, err = capfd.readouterr()
    assert not caught and not out and not err, (caught, out, err)
    return one_line(e, path.name)


def test_pickles_are_refused_silently(tmp_path, capfd):
    marker = tmp_path / "UNPICKLED"
    with open(tmp_path / "plain.pt", "wb") as fh:
        pickle.dump({"state_dict": {"w": [0.0]}, "payload": Evil(str(marker))}, fh)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "obj": Custom()}, tmp_path / "custom.pt")
    for name in ("plain.pt", "custom.pt"):
        assert "refused: it contains pickled objects" in _quiet_open(tmp_path / name, capfd)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["text.pt", "text.h5", "empty.pt"])
def test_text_files_renamed_are_not_checkpoints(tmp_path, capfd, name):
    (tmp_path / name).write_text("" if name == "empty.pt" else "this is a text file, not a checkpoint\n")
    assert "neither a run file" in _quiet_open(tmp_path / name, capfd)


def test_a_damaged_export_is_one_line(tmp_path, capfd):
    sd = tiny_model().state_dict()
    torch.save({"state_dict": sd, "arch": "smallcnn", "dataset": "digits", "num_classes": "ten"}, tmp_path / "bad.pt")
    assert "damaged export" in _quiet_open(tmp_path / "bad.pt", capfd)


# ---------------------------------------------------------------------------------------------
# 10. download offline
# ---------------------------------------------------------------------------------------------


class OfflineCIFAR:
    """Stands in for torchvision's CIFAR10 on a machine without network: it creates the archive it
    would download (empty), as urlretrieve does, then fails the way urllib does."""

    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

    def __init__(self, root, train=True, download=False, **kw):
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"")
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))


def test_download_offline_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import torchvision

    from awp.data import download

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR)
    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.txt").write_text("the user's own file\n")
    with pytest.raises(UserError) as e:
        download("cifar10", data)
    one_line(e, "cifar10", "network is unreachable", "by hand", OfflineCIFAR.url)
    assert sorted(p.name for p in data.iterdir()) == ["mine.txt"]  # no zero-byte archive claiming to be there
    fresh = tmp_path / "fresh"
    with pytest.raises(UserError):
        download("cifar10", fresh)
    assert not fresh.exists()  # a directory the failed download created is gone too
