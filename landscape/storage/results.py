"""Probe results files: HDF5, plain arrays, no pickles; rewritten atomically after every direction.

Layout (format "awp-landscape-probe", version 2; C checkpoints, D directions, A alphas):

    /                          attrs: format, format_version, config (JSON: what decides the numbers),
                                      runtime (JSON: device, versions), created, updated
    /alphas                    float64 [A]
    /directions/seed, /index   int64 [D]: direction k is regenerated from (seed, k)
    /checkpoints/source        str [C]: absolute path of the run or .pt file
    /checkpoints/epoch         float64 [C] (NaN for a foreign .pt without one)
    /checkpoints/sha256        str [C]: hash of the state dict (`weights_sha256`)
    /checkpoints/label         str [C]
    /adv_loss, /nat_loss       float64 [C, D, A]: rho and the natural loss; NaN until computed
    /adv_acc, /nat_acc         float64 [C, D, A]
    /adv_loss_se, /nat_loss_se, /adv_acc_se, /nat_acc_se
                               float64 [C, D, A]: standard error over examples of each mean (sample
                                      std, ddof 1, / sqrt(n)); NaN until computed and for n = 1
    /done                      bool [C, D, A]
    /seconds                   float64 [C, D]: wall time of each direction; NaN until computed
    /sharpness/<field>         float64 [C] (see `landscape.core.sharpness.Sharpness`); attrs radius, fit_radius
    /sharpness/rise_per_direction, /curvature_per_direction, /rise_se_per_direction   float64 [C, D]

Version 1 had no `*_se` arrays: it still loads (standard errors NaN, so figures draw no band), but a
probe does not resume it (`ProbeResults.check_resumable`: `--overwrite` recomputes it).

The whole file is rebuilt from memory into `<file>.tmp` and moved over the old one, so an interrupted
probe leaves the previous complete file, and a resumed one recomputes only what `done` lacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import numpy as np
import torch

from awp.config import check_allocation
from awp.errors import UserError
from awp.store import transaction
from landscape.core import sharpness as metrics

FORMAT = "awp-landscape-probe"
FORMAT_VERSION = 2  # 2: standard errors over examples (`*_se`); version 1 files load with them NaN
VALUES = ("adv_loss", "nat_loss", "adv_acc", "nat_acc")
STANDARD_ERRORS = tuple(f"{v}_se" for v in VALUES)  # the standard error over examples of each value
FIELDS = VALUES + STANDARD_ERRORS  # every [C, D, A] float array of a results file
BYTES_PER_POINT = len(FIELDS) * 8 + 1  # float64 per field and a `done` flag, per (checkpoint, direction, alpha)


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order: the same
    weights hash the same whichever file or device they come from."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CheckpointId:
    """Which weights a row of results belongs to; a cached row is reused only if all of it matches."""

    source: str
    epoch: int | None
    sha256: str
    label: str


def flat_items(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'attack': {'eps': 0.1}} -> {'attack.eps': 0.1}, for naming differing keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flat_items(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ (or exist on one side only), sorted."""
    a, b = flat_items(stored), flat_items(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))


@contextlib.contextmanager
def open_results(path: str | Path, fmt: str, version: int, what: str) -> Iterator[h5py.File]:
    """Open a results file for reading: it must exist, be HDF5, carry format `fmt` and a version this
    code reads; anything else is a one-line `UserError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no {what} file at {str(path)!r}")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{str(path)!r} is not an HDF5 file, so not a {what} file") from None
    with f:
        if f.attrs.get("format") != fmt:
            raise UserError(f"{str(path)!r} is an HDF5 file but not a {what} file ({fmt})")
        found = int(f.attrs.get("format_version", 0))
        if found > version:
            raise UserError(f"{str(path)!r} has {what} format version {found}; this version reads up to {version}")
        yield f


class StaleResults(UserError):
    """A results file exists but was computed with other settings or other weights."""


def _short(v: Any) -> str:
    """A value for a one-line message: long lists (e.g. 200 epochs) are elided."""
    if isinstance(v, list) and len(v) > 6:
        return f"[{', '.join(map(str, v[:3]))}, ..., {v[-1]}] ({len(v)} items)"
    return repr(v)


def refuse_if_stale(out: Path, stored: Mapping[str, Any], new: Mapping[str, Any], extra: list[str] = (),
                    ignore: tuple[str, ...] = ()) -> None:
    """Raise `StaleResults` naming every differing config key (and `extra` differences, e.g. weights),
    so a resume never mixes numbers computed under two settings."""
    a, b = flat_items(stored), flat_items(new)
    diff = [f"{k} (file: {_short(a.get(k))}, now: {_short(b.get(k))})"
            for k in config_differences(stored, new) if k not in ignore] + list(extra)
    if diff:
        raise StaleResults(f"{str(out)!r} was computed with other settings ({', '.join(diff)}); "
                           f"pass --overwrite to start over or -o for a new file")


@dataclass
class ProbeResults:
    """A probe in memory: the source of truth that `save` writes out in full."""

    alphas: np.ndarray  # [A]
    seed: int
    dirs: int
    checkpoints: list[CheckpointId]
    config: dict[str, Any]
    runtime: dict[str, Any] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # FIELDS name -> [C, D, A]
    done: np.ndarray | None = None  # [C, D, A] bool
    seconds: np.ndarray | None = None  # [C, D]
    created: str = ""
    format_version: int = FORMAT_VERSION  # of the file it was loaded from

    def __post_init__(self) -> None:
        shape = (len(self.checkpoints), self.dirs, len(self.alphas))
        points = int(np.prod(shape, dtype=object))  # Python ints: a huge --dirs cannot overflow the count
        check_allocation(points * BYTES_PER_POINT + shape[0] * self.dirs * 8,
                         f"the probe results ({shape[0]} checkpoint(s) x --dirs {self.dirs} x {shape[2]} alphas = "
                         f"{points:,} points)")
        for name in FIELDS:
            self.values.setdefault(name, np.full(shape, np.nan))
        if self.done is None:
            self.done = np.zeros(shape, dtype=bool)
        if self.seconds is None:
            self.seconds = np.full(shape[:2], np.nan)
        self.created = self.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")

    # -- bookkeeping ---------------------------------------------------------------------------

    def pending(self, c: int) -> list[int]:
        """Directions of checkpoint c with any alpha not computed yet."""
        return [k for k in range(self.dirs) if not self.done[c, k].all()]

    def set_point(self, c: int, k: int, i: int, point: Mapping[str, float]) -> None:
        """Store one point: `point` has every name of FIELDS (`engine.PointSums.reduce()`)."""
        for name in FIELDS:
            self.values[name][c, k, i] = point[name]
        self.done[c, k, i] = True

    def check_resumable(self, path: str | Path) -> None:
        """A probe continues only a file of this format version: an older one lacks the standard errors
        of its points, so continuing it would mix points with and without them (`StaleResults`, so a
        `landscape gap` cache is simply recomputed)."""
        if self.format_version != FORMAT_VERSION:
            raise StaleResults(f"{str(path)!r} has probe results format version {self.format_version} (no standard "
                               f"errors); this version resumes only version {FORMAT_VERSION}: pass --overwrite to "
                               f"recompute it, -o for a new file, or --from to redraw it as it is")

    def sharpness(self, radius: float | None = None, fit_radius: float | None = None) -> list[metrics.Sharpness]:
        """Sharpness of rho (the adversarial loss) per checkpoint, over its complete directions."""
        r = self.config.get("radius") if radius is None else radius
        fr = self.config.get("fit_radius") if fit_radius is None else fit_radius
        return [metrics.sharpness(self.alphas, self.values["adv_loss"][c], r, fr, se=self.values["adv_loss_se"][c])
                for c in range(len(self.checkpoints))]

    # -- files ---------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write everything to `path` atomically (a temporary file moved over the old one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sharp = self.sharpness()
        with transaction(path, create=True) as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = json.dumps(self.config, sort_keys=True)
            f.attrs["runtime"] = json.dumps(self.runtime, sort_keys=True)
            f.attrs["created"] = self.created
            f.attrs["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            f["alphas"] = self.alphas
            g = f.create_group("directions")
            g["seed"] = np.full(self.dirs, self.seed, dtype=np.int64)
            g["index"] = np.arange(self.dirs, dtype=np.int64)
            g = f.create_group("checkpoints")
            strings = h5py.string_dtype()
            g.create_dataset("source", data=[c.source for c in self.checkpoints], dtype=strings)
            g.create_dataset("sha256", data=[c.sha256 for c in self.checkpoints], dtype=strings)
            g.create_dataset("label", data=[c.label for c in self.checkpoints], dtype=strings)
            g["epoch"] = np.array([np.nan if c.epoch is None else c.epoch for c in self.checkpoints], dtype=np.float64)
            for name in FIELDS:
                f[name] = self.values[name]
            f["done"] = self.done
            f["seconds"] = self.seconds
            g = f.create_group("sharpness")
            g.attrs["radius"] = sharp[0].radius if sharp else np.nan
            g.attrs["fit_radius"] = sharp[0].fit_radius if sharp else np.nan
            for name in ("rise", "rise_std", "rise_se", "curvature", "curvature_std", "rho0", "n_dirs"):
                g[name] = np.array([getattr(s, name) for s in sharp], dtype=np.float64)
            adv = self.values["adv_loss"]
            r, fr = (sharp[0].radius, sharp[0].fit_radius) if sharp else (None, None)
            if sharp:
                g["rise_per_direction"] = metrics.rise(self.alphas, adv, r)  # NaN where not done
                g["curvature_per_direction"] = _curvature_or_nan(self.alphas, adv, fr)
                g["rise_se_per_direction"] = metrics.rise_se(self.alphas, self.values["adv_loss_se"], r)

    @classmethod
    def load(cls, path: str | Path) -> "ProbeResults":
        """Read a results file; anything else is a one-line `UserError`. A version 1 file (before the
        standard errors) loads with them NaN and `format_version` 1."""
        with open_results(path, FORMAT, FORMAT_VERSION, "probe results") as f:
            version = int(f.attrs.get("format_version", 0))
            missing = STANDARD_ERRORS if version < 2 else ()  # version 1: no standard errors yet
            g = f["checkpoints"]
            epochs = g["epoch"][()]
            ckpts = [
                CheckpointId(s, None if np.isnan(e) else int(e), h, lab)
                for s, e, h, lab in zip(g["source"].asstr()[()], epochs, g["sha256"].asstr()[()], g["label"].asstr()[()])
            ]
            seeds = f["directions/seed"][()]
            return cls(
                alphas=f["alphas"][()],
                seed=int(seeds[0]) if len(seeds) else 0,
                dirs=len(seeds),
                checkpoints=ckpts,
                config=json.loads(f.attrs["config"]),
                runtime=json.loads(f.attrs.get("runtime", "{}")),
                values={name: np.full(f["done"].shape, np.nan) if name in missing else f[name][()] for name in FIELDS},
                done=f["done"][()].astype(bool),
                seconds=f["seconds"][()],
                created=str(f.attrs.get("created", "")),
                format_version=version,
            )


def _curvature_or_nan(alphas: np.ndarray, curves: np.ndarray, fit_radius: float) -> np.ndarray:
    """Per-curve curvature [...]; NaN for curves with any missing value."""
    out = np.full(curves.shape[:-1], np.nan)
    ok = np.isfinite(curves).all(axis=-1)
    if ok.any():
        out[ok] = metrics.curvature(alphas, curves[ok], fit_radius)
    return out
