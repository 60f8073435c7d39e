"""The CLI: help, version, and one-line `error: ...` with exit status 2 for every user mistake."""

from __future__ import annotations

import pytest

from awp import __version__
from conftest import run_cli


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("demo", "download", "train-awp", "info", "export", "probe", "plot2d", "gap", "report"):
        assert cmd in r.stdout


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"landscape {__version__}"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train-awp", "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["train-awp", "--arch", "resnet9"], "unknown model 'resnet9'"),
        (["train-awp", "--norm", "l3"], "'l3' is not one of 'linf', 'l2'"),
        (["train-awp", "--eps", "8/x"], "eps '8/x' is not a number"),
        (["train-awp", "--eps", "-0.1"], "eps '-0.1' is negative"),
        (["train-awp", "--train-steps", "-1"], "--train-steps must be >= 0, got -1"),
        (["train-awp", "--train-steps", "many"], "Invalid value for '--train-steps'"),
        (["train-awp", "--device", "tpu"], "unknown device 'tpu'"),
        (["train-awp", "--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "landscape download cifar10"),
        (["info", "/nonexistent/run.h5"], "/nonexistent/run.h5"),
        (["demo", "--device", "tpu"], "unknown device 'tpu'"),
        (["download", "imagenet"], "unknown dataset 'imagenet'"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_user_mistakes_give_one_line(args, needle, tmp_path):
    if args[0] == "train-awp":
        args = [*args, "--out", str(tmp_path / "run.h5"), "--epochs", "1"]
    r = run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run.h5").exists()  # nothing half-written
