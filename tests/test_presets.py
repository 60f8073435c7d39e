"""`train-awp --preset NAME` and `landscape presets` (issue 13): the paper's settings as package TOML files.

The expected numbers below are written from the paper (and, where it is silent, its reference code
csdongxian/AWP), not read back from the preset files. Nothing here loads or downloads a dataset:
resolving a CIFAR/SVHN config only looks at `dataset_info` metadata.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

import cli
from awp import presets
from awp.errors import UserError
from awp.registry import Registry
from awp.trainconfig import format_toml, load_toml, resolve_config, to_flat
from conftest import ROOT, one_line

_PAPER = {  # Section 4.4 (follows Rice et al.), Section 5.1 / 5.2
    "train_steps": 10,  # PGD-10 training attack (Sections 4.4, 5.1; K1 = 10, Section 5.2)
    "eval_steps": 20,  # PGD-20 test attack (Section 4.4, Table 2)
    "awp_steps": 1, "awp_alternations": 1,  # Section 5.2: A = 1, K2 = 1
    "awp_include_1d": False,  # reference utils_awp.py: weights only
    "epochs": 200, "batch_size": 128,  # 200 epochs (Sections 4.4, 5.1); batch 128 (reference code)
    "lr_schedule": "piecewise", "lr_milestones": (0.5, 0.75),  # lr / 10 at epochs 100 and 150 of 200
    "momentum": 0.9, "weight_decay": 5e-4,  # Section 5.1
}
_LINF = {"norm": "linf", "eps": 8 / 255, "train_step_size": 2 / 255, "eval_step_size": 2 / 255}
_L2 = {"norm": "l2", "eps": 128 / 255, "train_step_size": 15 / 255, "eval_step_size": 15 / 255}
_PRN = {**_PAPER, "arch": "preactresnet18", "gamma": 1e-2, "awp_warmup": 0, "lr": 0.1}  # Table 1: gamma 1e-2

EXPECTED: dict[str, dict] = {
    "preactresnet18-cifar10-linf": {**_PRN, **_LINF, "dataset": "cifar10"},
    "preactresnet18-cifar10-l2": {**_PRN, **_L2, "dataset": "cifar10"},
    "preactresnet18-cifar100-linf": {**_PRN, **_LINF, "dataset": "cifar100"},
    "preactresnet18-cifar100-l2": {**_PRN, **_L2, "dataset": "cifar100"},
    # SVHN: L-inf step 1/255 (Section 4.4), lr 0.01 (Rice et al.'s SVHN setting), 5 warm-up epochs under
    # L-inf (the reference's svhn_linf log; its svhn_l2 log has none)
    "preactresnet18-svhn-linf": {**_PRN, **_LINF, "dataset": "svhn", "train_step_size": 1 / 255,
                                 "eval_step_size": 1 / 255, "lr": 0.01, "awp_warmup": 5},
    "preactresnet18-svhn-l2": {**_PRN, **_L2, "dataset": "svhn", "lr": 0.01},
    # Section 5.1: WideResNet-34-10, gamma 5e-3 (the reference's AT-AWP WRN log used 0.01; the paper wins)
    "wrn34-10-cifar10-linf": {**_PAPER, **_LINF, "dataset": "cifar10", "arch": "wrn34_10", "gamma": 5e-3,
                              "awp_warmup": 0, "lr": 0.1},
}


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """`landscape ARGV` in this process (no torch import per call): exit status, stdout, stderr."""
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_every_paper_setting_is_a_preset():
    assert set(presets.names()) == set(EXPECTED)
    assert list(presets.names()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_resolves_to_the_papers_numbers(name):
    cfg = resolve_config({}, preset=name)
    flat = to_flat(cfg)
    for option, value in EXPECTED[name].items():
        assert flat[option] == (pytest.approx(value) if isinstance(value, float) else value), option
    assert cfg.eval_attack.steps == 20 and cfg.eval_attack.eps == pytest.approx(EXPECTED[name]["eps"])
    assert cfg.awp.eta2 == pytest.approx(EXPECTED[name]["gamma"])  # Appendix D.2: gamma / (A * K2)
    # A preset does not choose the method: AT without AWP unless told.
    assert (cfg.method, cfg.use_awp) == ("at", False)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_agree_with_the_dataset_defaults(name):
    """DATASET_DEFAULTS / GAMMA_DEFAULTS / WARMUP_DEFAULTS / THREAT_DEFAULTS already encode the paper: a
    preset is the same config, written out with its sources."""
    e = EXPECTED[name]
    assert resolve_config({}, preset=name) == resolve_config({"dataset": e["dataset"], "norm": e["norm"], "arch": e["arch"]})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_file_is_readable_toml_with_a_source_for_every_value(name):
    text = presets.read(name)
    assert text.startswith("# ") and presets.description(name) == text.splitlines()[0][2:].strip()
    assert "Section" in presets.description(name)
    table = tomllib.loads(text)
    assert not set(table) & set(presets.NOT_IN_PRESETS)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith("#") and not line.startswith(("dataset =", "arch =", "norm =")):
            # every number (and the l2 start) carries a comment citing its source: inline, or the
            # comment block right above it
            above = []
            for prev in reversed(lines[:i]):
                if not prev.startswith("#"):
                    break
                above.append(prev)
            comment = line.partition("  # ")[2] + " ".join(above)
            assert comment, f"{name}: no source for {line!r}"
            assert re.search(r"Section|\.py|log:", comment), f"{name}: {line!r} cites no section or file"


def test_the_printed_preset_is_a_config_file(tmp_path, capsys):
    name = "preactresnet18-svhn-l2"
    rc, out, _ = run_main(capsys, "presets", name)
    assert rc == 0 and out == presets.read(name)
    f = tmp_path / "mine.toml"
    f.write_text(out)
    assert resolve_config({}, f) == resolve_config({}, preset=name)


def test_precedence_flags_over_config_over_preset_over_defaults(tmp_path):
    name = "preactresnet18-cifar10-linf"
    f = tmp_path / "c.toml"
    f.write_text('epochs = 50\nlr = 0.05\ntrain-step-size = "1/255"\n')
    cfg = resolve_config({"epochs": 7, "gamma": "2e-3"}, f, preset=name)
    assert cfg.epochs == 7  # flag > file > preset
    assert cfg.lr == 0.05 and cfg.attack.step_size == pytest.approx(1 / 255)  # file > preset
    assert cfg.awp.gamma == 2e-3 and cfg.awp.eta2 == pytest.approx(2e-3)  # flag > preset
    assert cfg.dataset == "cifar10" and cfg.eval_steps == 20  # preset > defaults (digits: eval_steps 10)
    assert cfg.eval_step_size == pytest.approx(2 / 255)  # the preset's, since nothing above sets it
    # A flag's dataset is above the preset's; the preset's other values stay (a layer, not a default set).
    other = resolve_config({"dataset": "svhn"}, preset=name)
    assert other.dataset == "svhn" and other.lr == 0.1 and other.attack.step_size == pytest.approx(2 / 255)


def test_method_and_awp_stay_independent_of_the_preset():
    name = "wrn34-10-cifar10-linf"
    on = resolve_config({"awp": True}, preset=name)
    assert on.use_awp and on.method == "at" and on.awp.gamma == 5e-3
    assert resolve_config({"method": "at-awp"}, preset=name) == on
    assert not resolve_config({}, preset=name).use_awp


def test_a_preset_may_not_choose_the_method(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text('# bad\ndataset = "cifar10"\nmethod = "at"\n')
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('# unknown\ndescription = "a key that is not an option"\n')
    monkeypatch.setattr(presets, "_presets", lambda: Registry("preset", {"bad": bad, "unknown": unknown}))
    with pytest.raises(UserError) as e:
        resolve_config({}, preset="bad")
    one_line(e, "bad", "method")
    with pytest.raises(UserError) as e:
        resolve_config({}, preset="unknown")
    one_line(e, "description", "unknown")


def test_a_description_key_is_still_refused_in_a_user_config(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('description = "mine"\n')
    with pytest.raises(UserError) as e:
        load_toml(f)
    one_line(e, "description")


def test_unknown_preset_is_one_line_listing_the_accepted():
    with pytest.raises(UserError) as e:
        resolve_config({}, preset="nope")
    msg = one_line(e, "unknown preset 'nope'; accepted: ")
    assert msg.endswith(", ".join(presets.names()))


def test_cli_lists_presets(capsys):
    rc, out, err = run_main(capsys, "presets")
    assert rc == 0 and not err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == list(presets.names())
    for line, name in zip(lines, presets.names()):
        assert line.split(None, 1)[1] == presets.description(name)


@pytest.mark.parametrize("argv", [("presets", "nope"), ("train-awp", "--preset", "nope")])
def test_cli_unknown_preset(capsys, argv):
    rc, out, err = run_main(capsys, *argv)
    assert rc == 2 and not out.strip()
    assert err.strip().startswith("error: unknown preset 'nope'; accepted: preactresnet18-cifar10-l2, ")
    assert len(err.strip().splitlines()) == 1


def test_train_awp_prints_the_presets_values(tmp_path, capsys):
    """The resolved config printed at start shows the preset; the CIFAR-100 files are not there, so the
    run stops right after with the one-line 'not found' error (no download, no run file)."""
    run = tmp_path / "r.h5"
    rc, out, err = run_main(capsys, "train-awp", "--preset", "preactresnet18-cifar100-l2", "--awp", "--epochs", "3",
                            "--data-dir", str(tmp_path / "nodata"), "--device", "cpu", "-o", str(run))
    assert rc == 2 and "cifar100" in err and "not found" in err
    expected = format_toml(resolve_config({"awp": True, "epochs": 3, "data_dir": str(tmp_path / "nodata"),
                                           "device": "cpu"}, preset="preactresnet18-cifar100-l2"))
    assert expected in out
    for line in ('dataset = "cifar100"', 'norm = "l2"', "eps = 0.5019607843137255", "gamma = 0.01", "awp = true",
                 "epochs = 3", "eval_steps = 20"):
        assert line in out.splitlines(), line
    assert not run.exists()


def test_presets_ship_as_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "*.toml" in data["awp.presets"]
    assert all((Path(presets.__file__).parent / f"{n}.toml").is_file() for n in presets.names())
