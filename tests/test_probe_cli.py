"""`landscape probe` as a user runs it: a foreign DataParallel state dict end to end (`--model`; its
alias `--arch` below), and one-line errors (exit 2, no traceback) for every bad input the issue lists."""

from __future__ import annotations

import re

import h5py
import pytest
import torch

from awp.models import create_model
from conftest import run_cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 1, (0.3,), (0.4,))
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, d / "dp.pt")  # as DataParallel saves
    (d / "notes.txt").write_text("not a checkpoint\n")
    with h5py.File(d / "other.h5", "w") as f:
        f["x"] = [1, 2, 3]
    return d


def test_probe_a_foreign_state_dict(files):
    out = files / "p.h5"
    r = run_cli("probe", str(files / "dp.pt"), "--model", "smallcnn", "--dataset", "digits", "--eps", "8/255",
                "--alphas", "-0.4:0.4:3", "--dirs", "2", "--pgd", "1", "--samples", "40", "--device", "cpu",
                "-o", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert "rho(0)" in r.stdout and "dp.pt" in r.stdout and "2/2" in r.stdout
    assert out.exists() and out.with_suffix(".png").exists() and out.with_suffix(".html").exists()
    with h5py.File(out) as f:
        assert f.attrs["format"] == "awp-landscape" and f.attrs["format_version"] == 3
        assert f["adv_loss"].shape == (1, 2, 3) and f["done"][()].all() and f["origin/done"][()].all()
        assert (f["adv_loss"][0, :, 1] == f["origin/adv_loss"][0]).all()  # alpha = 0 is w itself, once


@pytest.mark.parametrize(
    "args,needle",
    [
        (["{d}/dp.pt", "--arch", "smallcnn", "--dataset", "digits", "--eps", "0.1", "--alphas", "1:-1:5"], "empty or reversed range"),
        (["{d}/dp.pt", "--arch", "smallcnn", "--dataset", "digits", "--eps", "0.1", "--dirs", "0"],
         r"Invalid value for '--dirs': (0 is not in the range x>=1|Input should be greater than or equal to 1)"),
        (["{d}/dp.pt", "--arch", "smallcnn_nobn", "--dataset", "digits", "--eps", "0.1"], "does not match architecture 'smallcnn_nobn'"),
        (["{d}/dp.pt", "--eps", "0.1"], "give --arch and --dataset"),
        (["{d}/dp.pt", "--arch", "smallcnn", "--dataset", "digits"], "give --eps"),
        (["{d}/notes.txt"], "neither a run file"),
        (["{d}/other.h5"], "not a awp-landscape-run run file"),
        (["--from", "{d}/notes.txt"], "not a landscape results file"),
    ],
)
def test_bad_inputs_give_one_line(files, args, needle):
    r = run_cli("probe", *(a.format(d=files) for a in args), "--device", "cpu", "-q")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(needle, lines[0]), r.stderr
