"""The output rule, provenance tags, atomic writes and the writer lock of `awp.safeio`, in process."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import h5py
import pytest

from awp.errors import UserError
from awp.safeio import (atomic_write, check_output, exclusive, lock_path, provenance, read_provenance, same_file,
                        signed)
from awp.stopping import resume_command
from conftest import ROOT


def _h5(path, fmt):
    with h5py.File(path, "w") as f:
        f.attrs["format"] = fmt


def test_same_file_sees_through_symlinks_dots_and_hard_links(tmp_path):
    a = tmp_path / "a.h5"
    a.write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.h5").symlink_to(a)
    os.link(a, tmp_path / "hard.h5")
    for other in (tmp_path / "sub" / ".." / "a.h5", tmp_path / "link.h5", tmp_path / "hard.h5"):
        assert same_file(a, other)
    assert not same_file(a, tmp_path / "b.h5")
    assert same_file(tmp_path / "new.h5", tmp_path / "sub" / ".." / "new.h5")  # neither exists yet


def test_the_output_rule(tmp_path):
    run, probe, user = tmp_path / "run.h5", tmp_path / "probe.h5", tmp_path / "user.png"
    _h5(run, "awp-landscape-run")
    _h5(probe, "awp-landscape-probe")
    user.write_bytes(b"\x89PNG\r\n\x1a\nnot ours")
    new = tmp_path / "new" / "deeper" / "x.h5"
    assert check_output(new, "-o") == new and not new.parent.exists()  # missing folders: created when writing
    with pytest.raises(UserError, match="is the input"):
        check_output(run, "-o", inputs=[tmp_path / "." / "run.h5"], overwrite=True)
    with pytest.raises(UserError, match="never replaced"):
        check_output(run, "-o", overwrite=True, writes="probe results file")
    check_output(run, "--out", overwrite=True, writes="run")  # a run by a run, with --overwrite
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        check_output(probe, "-o", writes="probe results file")
    assert check_output(probe, "-o", resumes="awp-landscape-probe") == probe  # resumed, not replaced
    with pytest.raises(UserError, match="already exists"):
        check_output(probe, "-o", resumes="awp-landscape-2d")
    with pytest.raises(UserError, match="already exists"):
        check_output(user, "--png", tag="probe:abc")  # not ours: refused without --overwrite
    check_output(user, "--png", overwrite=True)
    with pytest.raises(UserError, match="is a directory"):
        check_output(tmp_path, "-o")
    with pytest.raises(UserError, match="is a file, not a directory"):
        check_output(user / "x.png", "--png")


def test_a_figure_of_ours_is_redrawn_only_by_the_same_command_on_the_same_inputs(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    from landscape.figures.output import save_plotly_html, save_png

    tag = provenance("probe", [tmp_path / "a.h5"], tmp_path)
    assert tag != provenance("probe", [tmp_path / "b.h5"], tmp_path) != provenance("gap", [tmp_path / "a.h5"], tmp_path)
    png, page = tmp_path / "f.png", tmp_path / "f.html"
    with signed(tag):
        save_png(plt.figure(), png)
        save_plotly_html(go.Figure(), page)
    assert read_provenance(png) == tag == read_provenance(page)
    check_output(png, "--png", tag=tag)
    check_output(page, "-o", tag=tag)
    with pytest.raises(UserError, match="already exists"):
        check_output(png, "--png", tag=provenance("probe", [tmp_path / "b.h5"], tmp_path))
    # the tag is relative to the output's folder: a moved (cloned) folder keeps it
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    os.rename(tmp_path, moved)
    assert read_provenance(moved / "f.png") == provenance("probe", [moved / "a.h5"], moved)


def test_a_failing_write_leaves_the_old_file_and_no_tmp(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")

    def full_disk(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match=r"could not write .*x\.txt.*No space left on device \(ENOSPC\)"):
        atomic_write(target, full_disk)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]

    def bug(tmp):
        tmp.write_text("half")
        raise ValueError("a bug stays a bug")

    with pytest.raises(ValueError):
        atomic_write(target, bug)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_the_lock_refuses_a_second_process_and_dies_with_its_holder(tmp_path):
    target = tmp_path / "r.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from awp.safeio import exclusive\nimport time\nwith exclusive({str(target)!r}):\n"
                               f"    print('held', flush=True)\n    time.sleep(60)"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=rf"being written by another process \(pid {holder.pid} "):
        with exclusive(target):
            pass
    holder.kill()  # kill -9: the kernel drops the lock; the stale lock file does not block
    holder.wait()
    assert lock_path(target).exists()
    with exclusive(target):
        with exclusive(target):  # re-entrant within one process
            pass
    assert not lock_path(target).exists()


def test_resume_command_drops_overwrite_and_adds_resume_for_training():
    assert resume_command(["train-awp", "--overwrite", "-o", "my run.h5"]) == "landscape train-awp -o 'my run.h5' --resume"
    assert resume_command(["probe", "r.h5", "--overwrite", "--dirs", "3"]) == "landscape probe r.h5 --dirs 3"
    assert resume_command(["train-awp", "--resume"]) == "landscape train-awp --resume"
