"""Bring your own model and data: MODULE:CALLABLE, entry-point plugins, RobustBench, npz:PATH, folder:PATH."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from awp.data import dataset_info, load_dataset, resolve_dataset
from awp.errors import UserError
from awp.models import ZooInfo, check_model_output, create_model, list_models, load_robustbench, load_weights, robustbench_info
from awp.models.registry import ENTRY_POINT_GROUP, MODELS, NormalizedModel
from awp.rundata import run_data
from conftest import one_line


class TinyNet(nn.Module):
    """A user's model: takes pixels in [0, 1] and normalizes them itself."""

    def __init__(self, num_classes: int = 4, in_channels: int = 1, width: int = 4) -> None:
        super().__init__()
        self.width = width
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - 0.5) / 0.25).flatten(1))


SPEC = f"{__name__}:TinyNet"

USER_MODULE = """
from torch import nn
CONST = 3

def make_net(num_classes=3, width=2):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

def returns_dict():
    return {"not": "a module"}

def breaks_inside(width=2):
    return nn.Linear(width, "three")
"""


@pytest.fixture
def user_mod(tmp_path, monkeypatch) -> str:
    """An importable module of model factories, written into tmp_path; its name."""
    name = f"byo_user_nets_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    (tmp_path / "byo_broken_nets.py").write_text("import byo_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in (name, "byo_broken_nets"):
        sys.modules.pop(mod, None)


# ---------------------------------------------------------------------------------------------
# MODULE:CALLABLE
# ---------------------------------------------------------------------------------------------


def test_import_spec_is_called_with_the_kwargs_only_and_not_wrapped():
    model = create_model(SPEC, num_classes=999, in_channels=7, mean=[0.5], std=[0.5], width=3)
    assert type(model) is TinyNet and model.width == 3  # no Normalize in front: the model normalizes itself
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    check_model_output(model, SPEC, 4, (1, 8, 8))
    with pytest.raises(UserError) as e:
        check_model_output(model, SPEC, 10, (1, 8, 8))
    one_line(e, SPEC, "[2, 4]", "10 classes")
    with pytest.raises(UserError) as e:
        check_model_output(model, SPEC, 4, (3, 8, 8))
    one_line(e, SPEC, "[2, 3, 8, 8]")


def test_import_spec_from_a_module_on_sys_path(user_mod):
    model = create_model(f"{user_mod}:make_net", width=5)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize(
    ("spec", "kwargs", "needles"),
    [
        ("byo_no_such_module_xyz:Net", {}, ("'byo_no_such_module_xyz'", "does not import", "No module named")),
        ("byo_broken_nets:Net", {}, ("'byo_broken_nets'", "does not import", "No module named 'byo_missing_dependency_xyz'")),
        ("{mod}:make_nett", {}, ("has no attribute 'make_nett'", "make_net")),
        ("{mod}:CONST", {}, ("of type int", "not a callable")),
        ("{mod}:make_net", {"depth": 3}, ("rejects options", "depth", "unexpected keyword argument")),
        ("{mod}:returns_dict", {}, ("returned a dict", "not a torch.nn.Module")),
        ("{mod}:breaks_inside", {}, ("cannot be built", "TypeError")),
        ("{mod}:", {}, ("not of the form MODULE:CALLABLE",)),
        ("a b:c", {}, ("not of the form MODULE:CALLABLE",)),
    ],
    ids=["no-module", "module-import-fails", "no-attribute", "not-callable", "bad-kwargs", "not-a-module",
         "fails-inside", "empty-callable", "bad-module-name"],
)
def test_import_spec_errors_are_one_line(user_mod, spec, kwargs, needles):
    spec = spec.format(mod=user_mod)
    with pytest.raises(UserError) as e:
        create_model(spec, **kwargs)
    one_line(e, repr(spec), *needles)


def test_unknown_name_lists_registry_and_spec_forms():
    with pytest.raises(UserError) as e:
        create_model("resnet9")
    one_line(e, "'resnet9'", "smallcnn", "MODULE:CALLABLE", "robustbench:NAME")


def test_load_weights_into_a_user_model_names_each_mismatch():
    model = create_model(SPEC)
    torch.manual_seed(1)
    sd = TinyNet().state_dict()
    load_weights(model, sd, "w.pt", SPEC)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    missing = {k: v for k, v in sd.items() if k != "head.bias"}
    with pytest.raises(UserError) as e:
        load_weights(model, missing, "w.pt", SPEC)
    one_line(e, "'w.pt'", SPEC, "missing head.bias")
    with pytest.raises(UserError) as e:
        load_weights(model, {**sd, "extra.weight": torch.zeros(1)}, "w.pt", SPEC)
    one_line(e, "unexpected extra.weight")
    with pytest.raises(UserError) as e:
        load_weights(model, TinyNet(width=6).state_dict(), "w.pt", SPEC)
    one_line(e, "shape of", "head.weight [4, 6] in the file, [4, 4] in the model")


# ---------------------------------------------------------------------------------------------
# Entry points (group awp_landscape.models)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """A fake installed distribution with one working and one broken model entry point."""
    (tmp_path / "byo_plugin_mod.py").write_text(textwrap.dedent("""
        from torch import nn

        def tiny(num_classes, in_channels, width=4):
            return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(width, num_classes))
    """))
    info = tmp_path / "byo_fake_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: byo-fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nbyo_tiny = byo_plugin_mod:tiny\nbyo_broken = byo_missing_plugin_mod:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("byo_plugin_mod", None)


def test_entry_point_models_are_listed_and_built_like_builtins(plugin_dist):
    names = list_models()
    assert {"byo_tiny", "byo_broken", "smallcnn"} <= set(names)  # listed without importing the broken one
    assert "byo_broken" in MODELS and "no_such_model" not in MODELS
    model = create_model("byo_tiny", 5, 1, [0.3], [0.4], width=3)
    assert isinstance(model, NormalizedModel) and model.arch == "byo_tiny"
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 5)
    with pytest.raises(UserError) as e:
        create_model("byo_tiny", 5, 1, depth=2)
    one_line(e, "byo_tiny", "depth")
    with pytest.raises(UserError) as e:
        create_model("no_such_model")
    one_line(e, "byo_tiny", "smallcnn")


def test_broken_entry_point_is_one_line_naming_it(plugin_dist):
    with pytest.raises(UserError) as e:
        create_model("byo_broken")
    one_line(e, "entry point 'byo_broken'", "byo_missing_plugin_mod:make", ENTRY_POINT_GROUP,
             "byo-fake-plugin 0.1", "does not load", "ModuleNotFoundError")


def test_entry_point_may_not_shadow_a_builtin(monkeypatch):
    fake = [EntryPoint("smallcnn", "elsewhere:net", ENTRY_POINT_GROUP)]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group=None: fake if group == ENTRY_POINT_GROUP else [])
    with pytest.raises(UserError) as e:
        list_models()
    one_line(e, "entry point 'smallcnn'", "built-in")
    assert create_model("smallcnn", 10, 1).arch == "smallcnn"  # a built-in name never consults the plugins


# ---------------------------------------------------------------------------------------------
# RobustBench
# ---------------------------------------------------------------------------------------------


def test_robustbench_absent_is_one_line_saying_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)
    with pytest.raises(UserError) as e:
        create_model("robustbench:Carmon2019Unlabeled", dataset="cifar10", threat_model="Linf")
    one_line(e, "pip install 'awp-landscape[robustbench]'")


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"dataset": "cifar10"}, ("missing threat_model", "Linf, L2, corruptions")),
        ({"dataset": "cifar10", "threat_model": "Linf", "eps": 1}, ("unknown option(s) eps",)),
        ({"dataset": "mnist", "threat_model": "Linf"}, ("'mnist'", "cifar10, cifar100, imagenet")),
        ({"dataset": "cifar10", "threat_model": "L1"}, ("'L1'", "Linf, L2, corruptions")),
    ],
    ids=["missing-option", "unknown-option", "bad-dataset", "bad-threat"],
)
def test_robustbench_options_are_checked_before_anything_loads(kwargs, needles):
    with pytest.raises(UserError) as e:
        create_model("robustbench:Carmon2019Unlabeled", **kwargs)
    one_line(e, *needles)


def test_robustbench_info():
    assert robustbench_info("cifar100") == ZooInfo(100, (3, 32, 32))
    assert robustbench_info("imagenet").input_shape == (3, 224, 224)


@pytest.fixture
def zoo():
    """robustbench.utils and its cifar10/Linf zoo entries; skips when robustbench is not installed.
    (Not pytest.importorskip: robustbench 1.1.1 from PyPI imports only after our autoattack alias.)"""
    from awp.models.external import _import_robustbench

    if importlib.util.find_spec("robustbench") is None:
        pytest.skip("robustbench is not installed (pip install 'awp-landscape[robustbench]')")
    utils, model_dicts = _import_robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return utils, model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]


def _no_download(monkeypatch, utils):
    def refuse(gdrive_id, path):
        raise OSError(f"offline test: no download of {gdrive_id}")

    monkeypatch.setattr(utils, "download_gdrive_new", refuse)


def _place(model_dir: Path, name: str, net: nn.Module) -> Path:
    """A checkpoint where RobustBench looks for it: model_dir/dataset/threat_model/NAME.pt."""
    path = model_dir / "cifar10" / "Linf" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def test_robustbench_model_loads_offline_from_a_placed_checkpoint(zoo, tmp_path, monkeypatch):
    utils, entries = zoo
    _no_download(monkeypatch, utils)
    torch.manual_seed(0)
    net = entries["Ding2020MMA"]["model"]()  # a WRN-28-4, the smallest single network of cifar10/Linf
    _place(tmp_path, "Ding2020MMA", net)
    model = create_model("robustbench:Ding2020MMA", dataset="cifar10", threat_model="linf", model_dir=str(tmp_path))
    assert not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in net.state_dict().items())
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_robustbench_offline_without_checkpoint_says_where_to_put_it(zoo, tmp_path, monkeypatch):
    _no_download(monkeypatch, zoo[0])
    with pytest.raises(UserError) as e:
        load_robustbench("Ding2020MMA", "cifar10", "Linf", tmp_path)
    one_line(e, "did not load", "offline test", str(tmp_path / "cifar10" / "Linf" / "Ding2020MMA.pt"))


def test_robustbench_unknown_name_and_ensembles_are_refused(zoo, tmp_path):
    with pytest.raises(UserError) as e:
        load_robustbench("Carmon2019Unlabeld", "cifar10", "Linf", tmp_path)
    one_line(e, "unknown RobustBench model 'Carmon2019Unlabeld'", "did you mean Carmon2019Unlabeled")
    with pytest.raises(UserError) as e:
        load_robustbench("Chen2020Adversarial", "cifar10", "Linf", tmp_path)
    one_line(e, "'Chen2020Adversarial'", "combines 3 networks")
    assert not any(tmp_path.iterdir())  # refused before anything was downloaded


class NoisyNet(nn.Module):
    """A randomized defense: Gaussian noise on the input, also in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x + 0.1 * torch.randn_like(x)).flatten(1))


class NonLinMixedClassifier(NoisyNet):
    """Named like RobustBench's mixture of two classifiers (here deterministic)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.mark.parametrize(("cls", "needle"), [(NoisyNet, "randomized defense"), (NonLinMixedClassifier, "combines several")])
def test_robustbench_refuses_what_is_not_one_deterministic_network(zoo, tmp_path, monkeypatch, cls, needle):
    utils, entries = zoo
    _no_download(monkeypatch, utils)
    monkeypatch.setitem(entries, "Fake2099Defense", {"model": cls, "gdrive_id": "fake-id"})
    _place(tmp_path, "Fake2099Defense", cls())
    with pytest.raises(UserError) as e:
        load_robustbench("Fake2099Defense", "cifar10", "Linf", tmp_path)
    one_line(e, "'Fake2099Defense'", "refused", needle)


# ---------------------------------------------------------------------------------------------
# npz:PATH
# ---------------------------------------------------------------------------------------------


def _xy(n: int = 20, shape=(1, 8, 8), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), dtype=np.float32), (np.arange(n) % 3).astype(np.int64)


def test_npz_one_set_float_is_both_splits(tmp_path, monkeypatch):
    x, y = _xy()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    monkeypatch.chdir(tmp_path)
    name = resolve_dataset("npz:d.npz")
    assert name == f"npz:{tmp_path / 'd.npz'}" and resolve_dataset("digits") == "digits"
    info = dataset_info("npz:d.npz")
    assert info.name == name and (info.num_classes, info.in_channels, info.image_size) == (3, 1, 8)
    assert info.input_shape == (1, 8, 8) and not info.needs_download and info.augment == ()
    assert info.mean == pytest.approx([float(x.mean())]) and info.std == pytest.approx([float(x.std())], rel=1e-5)
    splits = load_dataset(name, "unused-data-dir")
    assert splits.train is splits.test is splits.train_eval
    assert torch.equal(splits.train.tensors[0], torch.from_numpy(x)) and splits.train.tensors[1].dtype == torch.int64
    data = run_data(name, train_size=12, val_split=0.25)  # what a run file reloads
    assert (len(data.train), len(data.val), len(data.test)) == (9, 3, 20)


def test_npz_uint8_two_splits_non_square(tmp_path):
    rng = np.random.default_rng(0)
    x_tr = rng.integers(0, 256, (20, 3, 8, 6), dtype=np.uint8)
    x_te = rng.integers(0, 256, (10, 3, 8, 6), dtype=np.uint8)
    y_tr, y_te = np.arange(20, dtype=np.uint8) % 4, np.arange(10, dtype=np.int32) % 5
    np.savez_compressed(tmp_path / "s.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    name = f"npz:{tmp_path / 's.npz'}"
    info = dataset_info(name)
    assert (info.num_classes, info.in_channels, info.input_shape, info.width) == (5, 3, (3, 8, 6), 6)
    expected = x_tr.astype(np.float64).mean(axis=(0, 2, 3)) / 255
    assert info.mean == pytest.approx(expected.tolist())
    splits = load_dataset(name)
    assert splits.train is not splits.test and len(splits.test) == 10
    assert torch.equal(splits.test.tensors[0], torch.from_numpy(x_te.astype(np.float32) / 255))
    np.savez(tmp_path / "s.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te % 2)
    assert dataset_info(name).num_classes == 4  # a rewritten file is read again, not served from the cache


def _bad_npz(path: Path, case: str) -> None:
    x, y = _xy()
    arrays = {
        "missing-y": {"x": x},
        "missing-test": {"x_train": x, "y_train": y},
        "both-layouts": {"x": x, "y": y, "x_train": x, "y_train": y, "x_test": x, "y_test": y},
        "three-dims": {"x": x[:, 0], "y": y},
        "channels-last": {"x": np.ascontiguousarray(np.repeat(x, 3, axis=1).transpose(0, 2, 3, 1)), "y": y},
        "above-one": {"x": x * 2, "y": y},
        "nan": {"x": np.where(x > 0.5, np.nan, x), "y": y},
        "int-pixels": {"x": (x * 255).astype(np.int64), "y": y},
        "float-labels": {"x": x, "y": y.astype(np.float32)},
        "negative-labels": {"x": x, "y": y - 1},
        "label-count": {"x": x, "y": y[:19]},
        "empty": {"x": x[:0], "y": y[:0]},
        "pickled": {"x": x, "y": np.array([{"a": 1}] * 20, dtype=object)},
        "split-shapes": {"x_train": x, "y_train": y, "x_test": x[:, :, :4], "y_test": y},
    }
    if case == "npy":
        with path.open("wb") as fh:  # np.save(path) would append .npy to the name
            np.save(fh, x)
    elif case == "text":
        path.write_text("not an archive")
    elif case != "missing-file":
        np.savez(path, **arrays[case])


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing-file", ("no .npz file at",)),
        ("text", ("not a readable .npz archive",)),
        ("npy", ("single array (.npy)", "x and y")),
        ("missing-y", ("lacks y", "it has x", "x_train, y_train, x_test and y_test")),
        ("missing-test", ("lacks x_test, y_test",)),
        ("both-layouts", ("keep one layout",)),
        ("three-dims", ("'x'", "[20, 8, 8]", "[N, C, H, W]", "x[:, None]")),
        ("channels-last", ("[20, 8, 8, 3]", "channels-last", "transpose(0, 3, 1, 2)")),
        ("above-one", ("values in [", "must lie in [0, 1]")),
        ("nan", ("values in [", "must lie in [0, 1]")),
        ("int-pixels", ("dtype int64", "uint8")),
        ("float-labels", ("'y'", "dtype float32", "integer class indices")),
        ("negative-labels", ("negative label (-1)",)),
        ("label-count", ("19 labels", "20 images")),
        ("empty", ("holds no examples",)),
        ("pickled", ("'y'", "Python objects", "never unpickled")),
        ("split-shapes", ("[1, 8, 8]", "[1, 4, 8]")),
    ],
)
def test_npz_errors_are_one_line(tmp_path, case, needles):
    path = tmp_path / "bad.npz"
    _bad_npz(path, case)
    name = f"npz:{path}"
    with pytest.raises(UserError) as e:
        dataset_info(name)
    one_line(e, *needles)
    with pytest.raises(UserError):
        load_dataset(name)


# ---------------------------------------------------------------------------------------------
# folder:PATH
# ---------------------------------------------------------------------------------------------


def _images(root: Path, classes: dict[str, int], size=(8, 8), mode: str = "RGB", seed: int = 0) -> None:
    """`count` random images per class folder under root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    for cls, count in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(root / cls / f"{i}.png")


def test_folder_with_train_and_test(tmp_path):
    _images(tmp_path / "train", {"cat": 10, "dog": 10})
    _images(tmp_path / "test", {"dog": 4}, seed=1)  # a class missing from the test split keeps its index
    name = f"folder:{tmp_path}"
    info = dataset_info(name)
    assert (info.num_classes, info.in_channels, info.input_shape, info.augment) == (2, 3, (3, 8, 8), ())
    splits = load_dataset(name)
    assert len(splits.train) == 20 and splits.train is splits.train_eval and len(splits.test) == 4
    x, label = splits.test[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert label == 1 and set(splits.test.targets) == {1}
    pixels = torch.stack([splits.train[i][0] for i in range(20)])
    assert info.mean == pytest.approx(pixels.double().mean(dim=(0, 2, 3)).tolist())
    data = run_data(name, test_size=2)
    assert len(data.train_plain) == 20 and len(data.test) == 2


def test_flat_grayscale_folder_is_both_splits(tmp_path):
    _images(tmp_path, {"a": 5, "b": 5, "c": 5}, size=(6, 4), mode="L")
    info = dataset_info(f"folder:{tmp_path}")
    assert (info.num_classes, info.input_shape) == (3, (1, 4, 6))
    splits = load_dataset(f"folder:{tmp_path}")
    assert splits.train is splits.test and splits.train[0][0].shape == (1, 4, 6)


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing", ("no folder at",)),
        ("size", ("odd.png", "is 9x8 with 3 channel(s)", "8x8", "one size")),
        ("only-train", ("has train/ but no test/",)),
        ("extra-test-class", ("class folder(s) bird", "among the train classes")),
        ("no-classes", ("no class subfolders",)),
        ("empty-class", ("Found no valid file", "empty")),
        ("empty-test", ("holds no images",)),
        ("not-an-image", ("broken.png", "cannot be read")),
    ],
)
def test_folder_errors_are_one_line(tmp_path, case, needles):
    from PIL import Image

    root = tmp_path / "data"
    if case == "size":
        _images(root / "train", {"a": 3})
        _images(root / "test", {"a": 2})
        Image.new("RGB", (9, 8)).save(root / "test" / "a" / "odd.png")
    elif case == "only-train":
        _images(root / "train", {"a": 2})
    elif case == "extra-test-class":
        _images(root / "train", {"a": 2})
        _images(root / "test", {"a": 1, "bird": 1})
    elif case == "no-classes":
        root.mkdir()
        Image.new("RGB", (8, 8)).save(root / "loose.png")
    elif case == "empty-class":
        _images(root, {"a": 2})
        (root / "empty").mkdir()
    elif case == "empty-test":
        _images(root / "train", {"a": 2})
        (root / "test" / "a").mkdir(parents=True)
    elif case == "not-an-image":
        _images(root, {"a": 2})
        (root / "a" / "broken.png").write_text("not a png")
    with pytest.raises(UserError) as e:
        dataset_info(f"folder:{root}")
    one_line(e, *needles)
