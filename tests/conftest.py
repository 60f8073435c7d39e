"""Shared fixtures: tiny models on the embedded digits, fixed seeds, seconds each."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# One torch thread in the tests and in the CLI processes they start (OMP_NUM_THREADS): tiny models gain
# nothing from a second thread, and on a busy 2-core machine 2 threads ran test_engine + test_eval 6x
# slower (148 s against 23 s, measured here). AWP_TEST_THREADS=N chooses another count.
THREADS = int(os.environ.get("AWP_TEST_THREADS", "1"))
torch.set_num_threads(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the `landscape` CLI in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@contextlib.contextmanager
def held_elsewhere(path: Path):
    """`path`'s lock (`awp.safeio.exclusive`) held by another process for the block: what only a worker
    meets after every check of the launching process passed. Yields the holding process."""
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from awp.safeio import exclusive\nimport time\nwith exclusive({str(path)!r}):\n"
                               f"    print('held', flush=True)\n    time.sleep(120)"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def one_line(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    """The UserError's message: one line holding every needle."""
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


@pytest.fixture(scope="session")
def digits():
    from awp.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_smallcnn(digits):
    """A smallcnn adversarially trained for a few epochs on digits (eval mode), shared by the suite."""
    from awp.attacks import pgd
    from awp.data import batches
    from awp.models import create_model

    info = digits.info
    torch.manual_seed(0)
    model = create_model("smallcnn", info.num_classes, info.in_channels, info.mean, info.std)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    model.train()
    x_all, y_all = digits.train.tensors
    subset = torch.utils.data.TensorDataset(x_all[:600], y_all[:600])  # seconds, not tens of seconds
    for _ in range(4):
        for x, y in batches(subset, 64, shuffle=True, generator=gen):
            x_adv = pgd(model, x, y, eps=0.2, step_size=0.05, steps=3, generator=gen)
            loss = F.cross_entropy(model(x_adv), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# Files of the older results formats, written here the way those versions wrote them (their
# writers are gone from the library; its readers must still load them)
# ---------------------------------------------------------------------------------------------

LEGACY_VALUES = ("adv_loss", "nat_loss", "adv_acc", "nat_acc")
LEGACY_SE = tuple(f"{v}_se" for v in LEGACY_VALUES)


def _legacy_checkpoints(f, checkpoints) -> None:
    import h5py
    import numpy as np

    g = f.create_group("checkpoints")
    strings = h5py.string_dtype()
    g.create_dataset("source", data=[c.source for c in checkpoints], dtype=strings)
    g.create_dataset("sha256", data=[c.sha256 for c in checkpoints], dtype=strings)
    g.create_dataset("label", data=[c.label for c in checkpoints], dtype=strings)
    g["epoch"] = np.array([np.nan if c.epoch is None else c.epoch for c in checkpoints], dtype=np.float64)


def write_legacy_probe(path, *, alphas, seed, checkpoints, config, values, done, version=1, runtime=None) -> None:
    """A probe results file of format "awp-landscape-probe" as versions 1 and 2 wrote it: [C, D, A]
    arrays, directions (seed, k), /seconds [C, D], a /sharpness group; version 1 without the `*_se`
    arrays. `values` maps every field name (the `*_se` ones are only written for version 2)."""
    import json

    import h5py
    import numpy as np

    from landscape.core import sharpness as metrics

    alphas = np.asarray(alphas, dtype=np.float64)
    done = np.asarray(done, dtype=bool)
    c, dirs = done.shape[:2]
    names = LEGACY_VALUES + (LEGACY_SE if version >= 2 else ())
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "awp-landscape-probe"
        f.attrs["format_version"] = version
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        f.attrs["runtime"] = json.dumps(runtime or {"device": "cpu"}, sort_keys=True)
        f.attrs["created"] = f.attrs["updated"] = "2025-01-01T00:00:00+0000"
        f["alphas"] = alphas
        f["directions/seed"] = np.full(dirs, seed, dtype=np.int64)
        f["directions/index"] = np.arange(dirs, dtype=np.int64)
        _legacy_checkpoints(f, checkpoints)
        for name in names:
            f[name] = np.asarray(values[name], dtype=np.float64)
        f["done"] = done
        f["seconds"] = np.where(done.all(axis=-1), 1.0, np.nan)
        g = f.create_group("sharpness")
        r = float(config.get("radius", metrics.default_radius(alphas)))
        g.attrs["radius"], g.attrs["fit_radius"] = r, r / 2
        adv = np.asarray(values["adv_loss"], dtype=np.float64)
        summaries = [metrics.sharpness(alphas, adv[k], r) for k in range(c)]
        g["rise"] = np.array([s.mean["rise"] for s in summaries])
        g["curvature"] = np.array([s.mean["curvature"] for s in summaries])
        if version >= 2:
            g["rise_se"] = np.array([metrics.sharpness(alphas, adv[k], r, se=values["adv_loss_se"][k]).se["rise"]
                                     for k in range(c)])


def write_legacy_plane(path, *, alphas, betas, checkpoint, config, values, done, center, version=1) -> None:
    """A plot2d results file of format "awp-landscape-2d" as versions 1 and 2 wrote it: [A, B] arrays,
    the centre g(0, 0) apart under /center, one checkpoint in an attribute; version 1 without `*_se`."""
    import json
    from dataclasses import asdict

    import h5py
    import numpy as np

    names = LEGACY_VALUES + (LEGACY_SE if version >= 2 else ())
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "awp-landscape-2d"
        f.attrs["format_version"] = version
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        f.attrs["checkpoint"] = json.dumps(asdict(checkpoint), sort_keys=True)
        f.attrs["runtime"] = json.dumps({"device": "cpu"})
        f.attrs["dims"] = "alpha,beta"
        f["alphas"] = np.asarray(alphas, dtype=np.float64)
        f["betas"] = np.asarray(betas, dtype=np.float64)
        f["directions/index"] = np.array([0, 1], dtype=np.int64)
        f["directions/seed"] = np.full(2, config["seed"], dtype=np.int64)
        for name in names:
            f[name] = np.asarray(values[name], dtype=np.float64)
            f[f"center/{name}"] = float(center[name])
        f["done"] = np.asarray(done, dtype=bool)
        f["relative"] = np.abs(np.asarray(values["adv_loss"]) - center["adv_loss"])


def as_version_1(path) -> None:
    """Rewrite a probe results file of this version (random directions of one seed) in place as a
    version 1 probe file (format "awp-landscape-probe", before the standard errors) would hold it."""
    import json

    import h5py
    import numpy as np

    from landscape.storage.results import CheckpointId

    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "awp-landscape" and json.loads(f.attrs["dims"]) == ["direction", "alpha"]
        specs = [json.loads(s) for s in f["directions/spec"].asstr()[()]]
        assert all(s["kind"] == "random" and s["seed"] == specs[0]["seed"] for s in specs)
        assert [s["index"] for s in specs] == list(range(len(specs)))
        g = f["checkpoints"]
        checkpoints = [CheckpointId(s, None if np.isnan(e) else int(e), h, lab) for s, e, h, lab in
                       zip(g["source"].asstr()[()], g["epoch"][()], g["sha256"].asstr()[()], g["label"].asstr()[()])]
        kw = dict(alphas=f["axes/alpha"][()], seed=int(specs[0]["seed"]), checkpoints=checkpoints,
                  config=json.loads(f.attrs["config"]), runtime=json.loads(f.attrs["runtime"]),
                  values={n: f[n][()] for n in LEGACY_VALUES}, done=f["done"][()])
    write_legacy_probe(path, version=1, **kw)
