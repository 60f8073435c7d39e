"""Shared fixtures: tiny models on the embedded digits, fixed seeds, seconds each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the `landscape` CLI in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


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


def as_version_1(path) -> None:
    """A probe results file as version 1 (before the standard errors) wrote it."""
    import h5py

    from landscape.storage.results import STANDARD_ERRORS

    with h5py.File(path, "r+") as f:
        for k in STANDARD_ERRORS:
            del f[k]
        del f["sharpness/rise_se"], f["sharpness/rise_se_per_direction"]
        f.attrs["format_version"] = 1
