"""Environment faults through the real CLI: a full disk (a small tmpfs where root may mount one, else a
file-size limit that fails writes the same way), two writers on one file, Ctrl-C, and kill -9 at
random moments several times in a row; each time nothing complete is lost and a rerun finishes with
the numbers of a run that was never disturbed."""

from __future__ import annotations

import hashlib
import os
import random
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import held_elsewhere, ROOT, run_cli
from test_train import assert_same_run

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TRAIN = ["train-awp", "--arch-kwargs", '{"widths": [4, 8, 8]}', "--train-size", "60", "--train-eval-size", "30",
         "--test-size", "50", "--batch-size", "20", "--train-steps", "2", "--eval-steps", "2", "--awp-warmup", "0",
         "--device", "cpu", "--threads", "1", "--save-every", "1", "-q"]
PROBE = ["--dirs", "3", "--alphas", "-1:1:5", "--samples", "60", "--batch-size", "30", "--pgd", "2", "--device", "cpu", "-q"]


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def popen(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll `cond()` until it holds; skip when the process finished first (a machine too fast)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return
        except (OSError, KeyError, ValueError):  # a file caught mid-replace: look again
            pass
        if proc.poll() is not None:
            pytest.skip("the command finished before the moment this test waits for")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("timed out waiting")


def epochs_done(run: Path) -> int:
    with h5py.File(run, "r") as f:
        return len(f["metrics/epoch"]) if "metrics/epoch" in f else 0


def probe_points(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["done"][()].sum())


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("faults")
    r = run_cli(*TRAIN, "--epochs", "3", "-o", str(d / "run.h5"))
    assert r.returncode == 0, r.stderr
    return d / "run.h5"


# ---------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """make(size) -> (directory, preexec): a tmpfs of `size` bytes when this process may mount one;
    otherwise a plain directory and a file-size limit for the child, under which writes fail with
    EFBIG instead of ENOSPC (the same path through the code)."""
    mounts = []

    def make(size: int):
        d = tmp_path / f"disk{len(mounts)}"
        d.mkdir()
        ok = os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True).returncode == 0
        if ok:
            mounts.append(d)
            return d, None
        return d, (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size)))

    yield make
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], check=False)


def fill(d: Path, leave: int) -> None:
    """Take all but `leave` bytes of the tmpfs at `d` (a no-op on a plain directory)."""
    st = os.statvfs(d)
    free = st.f_bavail * st.f_frsize
    if os.path.ismount(d) and free > leave:
        (d / "filler").write_bytes(b"\0" * (free - leave))


def test_disk_full_while_training_keeps_the_last_epoch_and_resumes_to_the_same_run(small_disk, tmp_path):
    d, limit = small_disk(300_000)
    run = d / "run.h5"
    r = subprocess.run([sys.executable, "-m", "cli", *TRAIN, "--epochs", "40", "-o", str(run)], cwd=d, env=ENV,
                       capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr)
    assert str(run) in line or "run.h5" in line
    assert re.search(r"No space left|File too large", line), line
    assert not list(d.glob("*.tmp")), "a .tmp was left behind"
    kept = epochs_done(run)
    assert 0 < kept < 40  # the last complete epoch is there ...
    big = tmp_path / "big"
    big.mkdir()
    shutil.copy2(run, big / "run.h5")  # ... and, with space again, the run resumes
    assert run_cli(*TRAIN, "--epochs", "40", "-o", str(big / "run.h5"), "--resume").returncode == 0
    assert run_cli(*TRAIN, "--epochs", "40", "-o", str(big / "ref.h5")).returncode == 0
    assert_same_run(big / "run.h5", big / "ref.h5")


@pytest.mark.parametrize("command", ["probe", "plot2d", "export"])
def test_disk_full_leaves_the_previous_file_and_no_tmp(command, small_disk, run_file):
    d, limit = small_disk(8_000_000)  # room for a first complete output (an HTML page inlines plotly.js)
    out = d / ("out.pt" if command == "export" else "out.h5")
    args = {
        "probe": ["probe", str(run_file), *PROBE, "-o", str(out), "--png", str(d / "out.png")],
        "plot2d": ["plot2d", str(run_file), "--grid", "3x3", "--samples", "30", "--pgd", "1", "--device", "cpu", "-q",
                   "-o", str(out)],
        "export": ["export", str(run_file), "-o", str(out)],
    }[command]
    first = subprocess.run([sys.executable, "-m", "cli", *args], cwd=d, env=ENV, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before = sha(out)
    if command == "export":
        args = [*args, "--overwrite"]
    else:
        args = [*args, "--overwrite", "--seed", "1"]  # start over: a new file that cannot be written
    fill(d, leave=4_000)
    r = subprocess.run([sys.executable, "-m", "cli", *args], cwd=d, env=ENV, capture_output=True, text=True,
                       preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, 2_000)))
                       if limit else None, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    line = one_error_line(r.stderr)
    assert re.search(r"No space left|File too large", line), line
    assert sha(out) == before, "the previous complete file changed"
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")], "a .tmp was left behind"


# ---------------------------------------------------------------------------------------------
# Two writers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["probe", "train"])
def test_a_second_writer_is_refused_at_once_and_the_first_finishes(command, run_file, tmp_path):
    out = tmp_path / "same.h5"
    if command == "probe":
        args = ["probe", str(run_file), *PROBE, "--dirs", "16", "-o", str(out)]
        second = args
    else:
        args = [*TRAIN, "--epochs", "80", "-o", str(out)]
        second = [*args, "--resume"]
    first = popen(args, tmp_path)
    wait_for(lambda: out.exists() and (tmp_path / "same.h5.lock").exists(), first)  # it holds the file
    os.kill(first.pid, signal.SIGSTOP)  # paused while holding it, so it cannot finish before the second starts
    try:
        t0 = time.perf_counter()
        r = run_cli(*second, cwd=tmp_path)
        assert time.perf_counter() - t0 < 30
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "another process" in line and f"pid {first.pid}" in line, line
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert not (tmp_path / "same.h5.lock").exists()  # released
    assert run_cli(*second, cwd=tmp_path).returncode == 0  # and free for the next writer


# ---------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------


def _interrupt(args: list[str], cwd: Path, started) -> tuple[str, int]:
    proc = popen(args, cwd)
    wait_for(started, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return err, proc.returncode


def test_ctrl_c_stops_training_keeps_epochs_and_prints_the_resume_command(tmp_path):
    run = tmp_path / "run.h5"
    err, rc = _interrupt([*TRAIN, "--epochs", "40", "-o", str(run)], tmp_path, lambda: epochs_done(run) >= 2)
    assert rc == 130, err
    assert "Traceback" not in err
    m = re.search(r"resume with: (landscape .*)$", err, re.M)
    assert m, err
    with h5py.File(run, "r") as f:
        assert str(f.attrs["status"]).startswith("interrupted")
    assert 2 <= epochs_done(run) < 40
    cmd = shlex.split(m.group(1))
    assert cmd[-1] == "--resume"
    assert run_cli(*cmd[1:], cwd=tmp_path).returncode == 0  # the printed command, as printed
    assert run_cli(*TRAIN, "--epochs", "40", "-o", str(tmp_path / "ref.h5")).returncode == 0
    assert_same_run(run, tmp_path / "ref.h5")
    with h5py.File(run, "r") as f:
        assert f.attrs["status"] == "finished"


def test_ctrl_c_stops_a_probe_and_the_printed_command_finishes_it(run_file, tmp_path):
    out = tmp_path / "p.h5"
    args = ["probe", str(run_file), *PROBE, "--dirs", "8", "--epoch", "all", "-o", str(out)]
    err, rc = _interrupt(args, tmp_path, lambda: probe_points(out) >= 5)
    assert rc == 130, err
    m = re.search(r"resume with: (landscape .*)$", err, re.M)
    assert m and "Traceback" not in err, err
    kept = probe_points(out)
    assert 5 <= kept < 3 * 8 * 5
    assert run_cli(*shlex.split(m.group(1))[1:], cwd=tmp_path).returncode == 0
    assert run_cli(*args[:-1], str(tmp_path / "ref.h5"), cwd=tmp_path).returncode == 0
    with h5py.File(out, "r") as a, h5py.File(tmp_path / "ref.h5", "r") as b:
        assert a["done"][()].all()
        for k in ("adv_loss", "nat_loss", "adv_acc", "nat_acc"):
            np.testing.assert_array_equal(a[k][()], b[k][()], err_msg=k)


# ---------------------------------------------------------------------------------------------
# kill -9, again and again
# ---------------------------------------------------------------------------------------------


def _kill_repeatedly(args: list[str], cwd: Path, progress, total: int, kills: int = 3, seed: int = 0) -> int:
    """Start `args`, kill -9 it at a random moment after it made progress, `kills` times, each time
    continuing from what the last one left; then let it finish. Returns how many kills hit mid-work."""
    rng = random.Random(seed)
    hits = 0
    for _ in range(kills):
        before = progress()
        proc = popen(args, cwd)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if progress() > before:
                    break
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))  # a random moment: between commits, or in the middle of one
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            hits += 1
        proc.communicate()
        assert progress() <= total
    r = run_cli(*args, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert not list(Path(cwd).glob("*.tmp"))
    return hits


def _exists_then(path: Path, count):
    return lambda: count(path) if path.exists() else 0


def test_kill_9_train_three_times_resumes_bitwise(tmp_path):
    run = tmp_path / "run.h5"
    args = [*TRAIN, "--epochs", "30", "-o", str(run), "--resume"]
    hits = _kill_repeatedly(args, tmp_path, _exists_then(run, epochs_done), total=30)
    assert hits >= 1
    assert run_cli(*TRAIN, "--epochs", "30", "-o", str(tmp_path / "ref.h5")).returncode == 0
    assert_same_run(run, tmp_path / "ref.h5")


@pytest.mark.parametrize("command", ["probe", "plot2d"])
def test_kill_9_landscapes_three_times_end_with_the_same_numbers(command, run_file, tmp_path):
    out = tmp_path / "k.h5"
    if command == "probe":
        args = ["probe", str(run_file), *PROBE, "--dirs", "4", "--epoch", "all"]
        total = 3 * 4 * 5
    else:
        args = ["plot2d", str(run_file), "--grid", "5x4", "--samples", "60", "--pgd", "2", "--chunk", "1",
                "--device", "cpu", "-q"]
        total = 20

    def count(p: Path) -> int:
        with h5py.File(p, "r") as f:
            return int(f["done"][()].sum())

    hits = _kill_repeatedly([*args, "-o", str(out)], tmp_path, _exists_then(out, count), total)
    assert hits >= 1
    assert run_cli(*args, "-o", str(tmp_path / "ref.h5"), cwd=tmp_path).returncode == 0
    with h5py.File(out, "r") as a, h5py.File(tmp_path / "ref.h5", "r") as b:
        assert a["done"][()].all()
        for k in ("adv_loss", "nat_loss", "adv_acc", "nat_acc"):
            np.testing.assert_array_equal(a[k][()], b[k][()], err_msg=k)


def test_a_user_error_inside_workers_is_one_line_and_exit_2(run_file, tmp_path):
    """The launcher validates first; what only a worker can find (here: the results file taken by
    another process after the checks) still ends the whole command with one line."""
    out = tmp_path / "w.h5"
    with held_elsewhere(out) as holder:
        r = run_cli("plot2d", str(run_file), "--grid", "3x3", "--samples", "30", "--pgd", "1", "--device", "cpu", "-q",
                    "-o", str(out), "--workers", "2", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr)
    assert "another process" in line and f"pid {holder.pid}" in line
    assert "ChildFailedError" not in r.stdout + r.stderr
