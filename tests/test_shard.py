"""Grids on any cluster scheduler: `plot2d --shard K/N`, `landscape merge`, `--launcher submitit-local`.

Every point of a landscape is computed on its own, from the same fixed batches and random starts
(common random numbers), so the shards' union is the unsharded grid bit for bit; the tests check that
exactly, and would fail on any difference.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from awp.errors import UserError
from conftest import run_cli
from landscape.commands.plot2d import Plot2DConfig, launch_plot2d, merge_plot2d, run_plot2d
from landscape.core import engine
from landscape.storage.merge import held, merge_files, merge_results
from landscape.storage.results import FIELDS, CheckpointId, Landscape, StaleResults

GRID = "3x3"  # 9 cells, the origin (0, 0) one of them: 1 origin + 8 points to compute


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> Path:
    from awp.train import train
    from awp.trainconfig import resolve_config

    path = tmp_path_factory.mktemp("shard") / "run.h5"
    train(resolve_config({"dataset": "digits", "method": "at", "epochs": 1, "train_size": 40, "train_eval_size": 20,
                          "test_size": 20, "train_steps": 1, "eval_steps": 1, "seed": 0}), path)
    return path


def _cfg(run_file: Path, out: Path, **kw) -> Plot2DConfig:
    base = dict(checkpoint=str(run_file), grid=GRID, range="-1:1,-0.5:0.5", steps=1, samples=20, device="cpu",
                out=str(out), progress=False)
    return Plot2DConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def full(run_file, tmp_path_factory) -> Path:
    """The unsharded grid, the reference every sharded result must equal."""
    out = tmp_path_factory.mktemp("full") / "full.h5"
    run_plot2d(_cfg(run_file, out))
    return out


@pytest.fixture(scope="module")
def shards(run_file, tmp_path_factory) -> list[Path]:
    """The same grid as 3 shards (8 points + origin: 3, 3, 3), each in its own file."""
    d = tmp_path_factory.mktemp("shards")
    outs = [d / f"s{k}of3.h5" for k in (1, 2, 3)]
    for k, out in enumerate(outs, 1):
        run_plot2d(_cfg(run_file, out, shard=(k, 3)))
    return outs


def assert_same_numbers(a: Landscape, b: Landscape) -> None:
    """Bit for bit: every field at every cell and at the origin, and the done masks."""
    assert np.array_equal(a.done, b.done) and np.array_equal(a.origin_done, b.origin_done)
    for k in FIELDS:
        assert np.array_equal(a.values[k], b.values[k], equal_nan=True), k
        assert np.array_equal(a.origin[k], b.origin[k], equal_nan=True), k


def test_shards_partition_the_grid_and_their_union_is_the_grid_bit_for_bit(full, shards, tmp_path):
    parts = [Landscape.load(p) for p in shards]
    assert [p.shard for p in parts] == [(1, 3), (2, 3), (3, 3)] and [p.config["shard"] for p in parts] == [[1, 3], [2, 3], [3, 3]]
    assert parts[0].origin_done[0] and not parts[1].origin_done[0] and not parts[2].origin_done[0]  # the origin: shard 1
    sets = [held(p) for p in parts]
    assert [len(s) for s in sets] == [3, 3, 3] and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == held(Landscape.load(full)) and len(set().union(*sets)) == 9
    assert all(p.pending() == [] for p in parts) and not any(p.complete for p in parts)
    assert not list(shards[0].parent.glob("*.png")) and not list(shards[0].parent.glob("*.html"))  # no partial figures

    out = tmp_path / "merged.h5"
    merged = merge_plot2d(out, list(reversed(shards)))
    assert merged.complete and merged.added == 9 and merged.missing == 0
    a, b = Landscape.load(out), Landscape.load(full)
    assert a.config == b.config and "shard" not in a.config and a.shard is None  # the unsharded command's file
    assert_same_numbers(a, b)
    assert sorted(a.runtime["parts"]) == ["1/3", "2/3", "3/3"]
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["merged-contour.png", "merged-surface.png", "merged.h5", "merged.html"]


def test_merge_refuses_other_settings_and_other_weights_naming_them(run_file, shards, tmp_path):
    other = tmp_path / "pgd2.h5"
    run_plot2d(_cfg(run_file, other, steps=2, shard=(2, 3)))
    with pytest.raises(UserError, match=r"other settings \(attack\.steps \('[^']*s1of3.h5': 1, '[^']*pgd2.h5': 2\)\); "
                                        r"merge only shards") as e:  # that key alone: shard may differ
        merge_files(tmp_path / "m.h5", [shards[0], other])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "m.h5").exists()

    s1, s2 = Landscape.load(shards[0]), Landscape.load(shards[1])
    s2.checkpoints = [dataclasses.replace(s2.checkpoints[0], sha256="0" * 64)]  # other weights, same settings
    with pytest.raises(UserError, match="weights sha256"):
        merge_results([("s1.h5", s1), ("s2.h5", s2)])

    s2 = Landscape.load(shards[1])  # the same weights read from another path (a job's scratch copy) merge
    s2.config = {**s2.config, "checkpoint": "/scratch/job2/run.h5"}
    assert held(merge_results([("s1.h5", s1), ("s2.h5", s2)])) == held(s1) | held(s2)


def test_repeated_merge_is_idempotent_and_a_conflicting_point_is_named(full, shards, tmp_path):
    out = tmp_path / "m.h5"
    first = merge_files(out, [shards[0], shards[0], shards[1]])  # a shard twice: harmless
    assert first.added == 6 and first.missing == 3 and first.missing_shards == ("3/3",)
    again = merge_files(out, [shards[1], shards[0]])  # into an OUT holding those points already
    assert again.added == 0 and again.missing == 3
    a, b = Landscape.load(out), merge_results([("s1", Landscape.load(shards[0])), ("s2", Landscape.load(shards[1]))])
    assert_same_numbers(a, b)
    assert a.runtime["compute_seconds"] == b.runtime["compute_seconds"]  # each part counted once
    last = merge_files(out, [shards[2]])
    assert last.complete and last.added == 3
    assert_same_numbers(Landscape.load(out), Landscape.load(full))

    bad = tmp_path / "bad.h5"  # shard 2 with one point's number changed
    shutil.copy2(shards[1], bad)
    part = Landscape.load(bad)
    c, flat = sorted(held(part), key=lambda p: p[1])[0]
    i, j = np.unravel_index(flat, part.grid.shape)
    with h5py.File(bad, "r+") as f:
        f["adv_loss"][0, i, j] = f["adv_loss"][0, i, j] + 1e-9
    alpha, beta = part.grid.axis("alpha")[i], part.grid.axis("beta")[j]
    with pytest.raises(UserError, match=rf"point alpha={alpha:g}, beta={beta:g} \(cell \[{i}, {j}\]\) differs .*adv_loss"):
        merge_files(out, [bad])


def test_partial_merge_reports_missing_points_and_plot2d_completes_it(full, run_file, shards, tmp_path, capsys):
    from rich.console import Console

    out = tmp_path / "m.h5"
    merged = merge_plot2d(out, [shards[1]], console=Console(stderr=True, width=400))
    assert not merged.complete and merged.missing == 6 and merged.total == 9 and merged.missing_shards == ("1/3", "3/3")
    assert "m.h5: 6 point(s) missing (in shard(s) 1/3, 3/3)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]  # no figures of a partial grid
    # The merged file is the unsharded command's results file: plot2d -o resumes it, computing only the rest.
    outcome = run_plot2d(_cfg(run_file, out))
    assert outcome.points == 6
    assert_same_numbers(Landscape.load(out), Landscape.load(full))


def test_an_interrupted_shard_resumes_and_refuses_another_shard(full, run_file, shards, tmp_path, monkeypatch):
    out = tmp_path / "s2.h5"
    real, calls = engine.evaluate_at, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "evaluate_at", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_plot2d(_cfg(run_file, out, shard=(2, 3), chunk=1))
    kept = Landscape.load(out)
    assert len(held(kept)) == 1 and len(kept.pending()) == 2  # the first point flushed, 2 of the shard's 3 left
    monkeypatch.setattr(engine, "evaluate_at", real)
    with pytest.raises(StaleResults, match=r"shard \(file: \[2, 3\], now: \[1, 3\]\)"):
        run_plot2d(_cfg(run_file, out, shard=(1, 3), chunk=1))
    assert run_plot2d(_cfg(run_file, out, shard=(2, 3), chunk=1)).points == 2
    assert_same_numbers(Landscape.load(out), Landscape.load(shards[1]))


def test_shard_and_merge_through_the_cli(run_file, shards, tmp_path):
    shutil.copy2(shards[0], tmp_path / "plot2d-run-shard1of3.h5")
    shutil.copy2(shards[2], tmp_path / "plot2d-run-shard3of3.h5")
    args = ["--grid", GRID, "--range", "-1:1,-0.5:0.5", "--pgd", "1", "--samples", "20", "--device", "cpu", "-q"]
    r = run_cli("plot2d", str(run_file), *args, "--shard", "2/3", cwd=tmp_path)  # the same checkpoint path as theirs
    assert r.returncode == 0, r.stderr
    assert "holds shard 2 of 3" in r.stderr and "landscape merge plot2d-run.h5 plot2d-run-shard*of3.h5" in " ".join(r.stderr.split())
    assert (tmp_path / "plot2d-run-shard2of3.h5").exists() and not list(tmp_path.glob("*.png"))
    r = run_cli("merge", "plot2d-run.h5", *(f"plot2d-run-shard{k}of3.h5" for k in (1, 2, 3)), cwd=tmp_path)
    assert r.returncode == 0 and "9 of 9 held" in r.stderr, r.stderr
    assert (tmp_path / "plot2d-run-contour.png").exists() and (tmp_path / "plot2d-run.html").exists()


def test_submitit_local_launcher_runs_the_shards_as_a_job_array(full, run_file, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # jobs compute with this process's threads
    monkeypatch.chdir(tmp_path)  # the jobs' processes start here too
    out = tmp_path / "grid.h5"
    merged = launch_plot2d(_cfg(run_file, out), "submitit-local", 2, params={"timeout_min": 5})
    assert merged.complete
    assert_same_numbers(Landscape.load(out), Landscape.load(full))
    assert [Landscape.load(tmp_path / f"grid-shard{k}of2.h5").shard for k in (1, 2)] == [(1, 2), (2, 2)]
    assert (tmp_path / "grid-contour.png").exists() and list((tmp_path / "grid-jobs").glob("*_log.err"))
    again = launch_plot2d(_cfg(run_file, out), "submitit-local", 2)  # every shard done: nothing submitted
    assert again.complete and again.added == 0 and len(list((tmp_path / "grid-jobs").glob("*_log.err"))) == 2


def test_launcher_without_submitit_says_how_to_install(monkeypatch, tmp_path):
    import sys

    from landscape.pipeline import launch

    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    with pytest.raises(UserError, match=r"pip install 'awp-landscape\[slurm\]'"):
        launch.check_launcher("submitit")
    with pytest.raises(UserError, match="unknown --launcher 'pbs'; accepted: submitit, submitit-local"):
        launch.check_launcher("pbs")


@pytest.mark.parametrize("text,needle", [("3/2", "out of range"), ("0/2", "out of range"), ("abc", "is not K/N"),
                                         ("1/", "is not K/N")])
def test_parse_shard(text, needle):
    from landscape.pipeline.launch import parse_shard

    assert parse_shard("2/8") == (2, 8) and parse_shard(" 1 / 1 ") == (1, 1)
    with pytest.raises(UserError, match=needle):
        parse_shard(text)


def test_points_deal_round_robin_with_the_origin_in_shard_1():
    from landscape.storage.results import Grid

    r = Landscape(Grid.plane(np.array([-1.0, 0.0, 1.0]), np.array([-1.0, 0.0, 1.0, 2.0])), [{}, {}],
                  [CheckpointId("a", None, "x", "a")])
    every = r.points()
    assert every[0] == (0, None) and (0, 5) not in every and len(every) == 12  # cell (1, 1) is w: the origin's
    deal = [r.points((k, 5)) for k in range(1, 6)]
    assert sorted(sum(deal, []), key=every.index) == every and [len(d) for d in deal] == [3, 3, 2, 2, 2]
    r.config["shard"] = [2, 5]
    assert r.pending() == deal[1]
