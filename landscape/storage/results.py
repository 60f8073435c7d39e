"""Landscape results files: one type over a coordinate grid, HDF5 of plain arrays and JSON, no pickles;
rewritten atomically after every chunk of points.

Layout (format "awp-landscape", version 3; C checkpoints, grid shape S, e.g. [D, A] or [A, B]):

    /                       attrs: format, format_version, dims (JSON list of dim names), config (JSON:
                                   what decides the numbers), runtime (JSON: device, versions), created, updated
    /axes/<dim>             float64: the coordinates along each dim ("direction" is 0..D-1)
    /directions/spec        str [K]: JSON of each direction (`landscape.core.directions.DIRECTIONS`: its
                                   kind and what rebuilds it, e.g. seed and index of a random one)
    /directions/tensors/c<C>_k<K>/<param>   float32: the tensors of a direction that cannot be rebuilt
    /checkpoints/source, /sha256, /label   str [C]; /checkpoints/epoch float64 [C] (NaN: none)
    /adv_loss, /nat_loss, /adv_acc, /nat_acc   float64 [C, *S]: NaN until computed
    /adv_loss_se, ... (`STANDARD_ERRORS`)      float64 [C, *S]: standard error over examples of each mean
    /done                   bool [C, *S]
    /origin/<field>         float64 [C]: the values at w itself (every coefficient 0), computed once per
                                   checkpoint; grid cells at the origin take them instead of a second run
    /origin/done            bool [C]
    /sharpness/<measure>, <measure>_std, <measure>_se   float64 [C] (1-D grids, `SHARPNESS` registry),
    /sharpness/<measure>_per_direction, <measure>_se_per_direction   float64 [C, D]; attrs radius

A point (r, i_1, ..., i_N) of a grid with a leading "direction" dim is w + sum_m axes_m[i_m] d_{r N + m};
without it, w + sum_m axes_m[i_m] d_m (see `Grid`). Files of the older formats "awp-landscape-probe"
and "awp-landscape-2d" (versions 1 and 2) load into this type (`format_version` tells which); only
version 3 files are resumed.

The whole file is rebuilt from memory into `<file>.tmp` and moved over the old one, so an interrupted
computation leaves the previous complete file, and a resumed one computes only what `done` lacks.
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
from landscape.core import sharpness as sharp
from landscape.core.directions import random_specs

FORMAT = "awp-landscape"
FORMAT_VERSION = 3  # 3: one format for 1-D and 2-D; 2: standard errors; 1: the first probe/plane files
LEGACY_PROBE, LEGACY_PLANE = "awp-landscape-probe", "awp-landscape-2d"
VALUES = ("adv_loss", "nat_loss", "adv_acc", "nat_acc")
STANDARD_ERRORS = tuple(f"{v}_se" for v in VALUES)  # the standard error over examples of each value
FIELDS = VALUES + STANDARD_ERRORS  # every float array over the grid
BYTES_PER_POINT = len(FIELDS) * 8 + 1  # float64 per field and a `done` flag
DIRECTION_DIM = "direction"


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


def weights_differ(was: list[CheckpointId], now: list[CheckpointId]) -> list[str]:
    """[] when a resumed file holds the same checkpoints (epochs and weights) as now, else one difference
    for `refuse_if_stale`, naming the first few of each side."""
    if [(c.epoch, c.sha256) for c in now] == [(c.epoch, c.sha256) for c in was]:
        return []
    return [f"weights (file: {', '.join(c.label for c in was[:3])}, now: {', '.join(c.label for c in now[:3])})"]


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


# ---------------------------------------------------------------------------------------------
# The coordinate grid
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """Named dims with one axis each. An optional leading "direction" dim indexes sets of directions
    (a 1-D probe repeats along D directions, Appendix B.2); every other dim is the coefficient of one
    direction of a set, so a set has N = len(coefficient dims) directions and there are R * N in all."""

    dims: tuple[str, ...]
    axes: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if len(self.dims) != len(self.axes) or not self.coef_dims or DIRECTION_DIM in self.dims[1:]:
            raise ValueError(f"a grid needs one axis per dim and at least one coefficient dim, got {self.dims}")

    @classmethod
    def curves(cls, alphas: np.ndarray, dirs: int) -> "Grid":
        """1-D landscapes rho(w + alpha d_k) along `dirs` directions: [direction, alpha]."""
        return cls((DIRECTION_DIM, "alpha"), (np.arange(dirs, dtype=np.float64), np.asarray(alphas, dtype=np.float64)))

    @classmethod
    def plane(cls, alphas: np.ndarray, betas: np.ndarray) -> "Grid":
        """The 2-D landscape g(w + alpha d + beta e): [alpha, beta]."""
        return cls(("alpha", "beta"), (np.asarray(alphas, dtype=np.float64), np.asarray(betas, dtype=np.float64)))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.axes)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=object))

    @property
    def repeats(self) -> int:
        return len(self.axes[0]) if self.dims[0] == DIRECTION_DIM else 1

    @property
    def coef_dims(self) -> tuple[str, ...]:
        return tuple(d for d in self.dims if d != DIRECTION_DIM)

    @property
    def n_directions(self) -> int:
        return self.repeats * len(self.coef_dims)

    @property
    def kind(self) -> str:
        """"curves" ([direction, alpha]), "plane" ([alpha, beta]) or "grid" (anything else)."""
        return {(DIRECTION_DIM, "alpha"): "curves", ("alpha", "beta"): "plane"}.get(self.dims, "grid")

    def axis(self, dim: str) -> np.ndarray:
        return self.axes[self.dims.index(dim)]

    def terms(self, flat: int) -> list[tuple[int, float]]:
        """[(direction index, coefficient)] of grid point `flat` (row-major over `shape`)."""
        index = np.unravel_index(int(flat), self.shape)
        r, coef_index = (int(index[0]), index[1:]) if self.dims[0] == DIRECTION_DIM else (0, index)
        n = len(self.coef_dims)
        axes = self.axes[1:] if self.dims[0] == DIRECTION_DIM else self.axes
        return [(r * n + m, float(axes[m][i])) for m, i in enumerate(coef_index)]

    def at_origin(self) -> np.ndarray:
        """Flat indices of the points with every coefficient 0: w itself, computed once as the origin."""
        return np.array([f for f in range(self.size) if all(c == 0.0 for _, c in self.terms(f))], dtype=np.int64)


def check_size(checkpoints: int, dims: tuple[str, ...], shape: tuple[int, ...]) -> None:
    """Refuse, in one line, results that would not fit in memory (before anything is allocated)."""
    points = checkpoints * int(np.prod(shape, dtype=object))  # Python ints: a huge --dirs cannot overflow
    check_allocation(points * BYTES_PER_POINT, f"the landscape results ({checkpoints} checkpoint(s) x "
                                               f"{' x '.join(f'{n} {d}' for d, n in zip(dims, shape))} = {points:,} points)")


# ---------------------------------------------------------------------------------------------
# Results in memory
# ---------------------------------------------------------------------------------------------


@dataclass
class Landscape:
    """A landscape in memory, the source of truth that `save` writes out in full: every field over
    [checkpoint, *grid.shape], the origin w of each checkpoint, and what rebuilds every direction."""

    grid: Grid
    directions: list[dict[str, Any]]  # JSON spec of each of the grid's n_directions directions
    checkpoints: list[CheckpointId]
    config: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # FIELDS name -> [C, *shape]
    done: np.ndarray | None = None  # [C, *shape] bool
    origin: dict[str, np.ndarray] = field(default_factory=dict)  # FIELDS name -> [C]
    origin_done: np.ndarray | None = None  # [C] bool
    stored: dict[tuple[int, int], dict[str, torch.Tensor]] = field(default_factory=dict)  # (c, k) -> tensors
    created: str = ""
    format_version: int = FORMAT_VERSION  # of the file it was loaded from

    def __post_init__(self) -> None:
        c = len(self.checkpoints)
        shape = (c, *self.grid.shape)
        check_size(c, self.grid.dims, self.grid.shape)
        if len(self.directions) != self.grid.n_directions:
            raise ValueError(f"{len(self.directions)} direction specs for a grid of {self.grid.n_directions}")
        for name in FIELDS:
            self.values.setdefault(name, np.full(shape, np.nan))
            self.origin.setdefault(name, np.full(c, np.nan))
        if self.done is None:
            self.done = np.zeros(shape, dtype=bool)
        if self.origin_done is None:
            self.origin_done = np.zeros(c, dtype=bool)
        self.created = self.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")

    # -- bookkeeping ---------------------------------------------------------------------------

    @property
    def shard(self) -> tuple[int, int] | None:
        """(K, N) when this file computes only shard K of N of its grid (`config["shard"]`, plot2d --shard)."""
        s = self.config.get("shard")
        return None if s is None else (int(s[0]), int(s[1]))

    def points(self, shard: tuple[int, int] | None = None) -> list[tuple[int, int | None]]:
        """Every point to compute, done or not, in order: (c, None) for checkpoint c's origin, then (c, flat)
        for its grid points off the origin (those are filled from it). Shard (K, N) is every N-th of them
        from the K-th: round-robin, so shards are near-equal, fixed by the grid alone, the origin in shard 1."""
        off = np.ones(self.grid.size, dtype=bool)
        off[self.grid.at_origin()] = False
        flats = [int(f) for f in np.flatnonzero(off)]
        out = [p for c in range(len(self.checkpoints)) for p in [(c, None), *((c, f) for f in flats)]]
        return out if shard is None else out[shard[0] - 1 :: shard[1]]

    def pending(self) -> list[tuple[int, int | None]]:
        """Work left, in order: the points of this file's shard (all of them without one) not yet done."""
        done = self.done.reshape(len(self.checkpoints), -1)
        return [(c, f) for c, f in self.points(self.shard) if not (self.origin_done[c] if f is None else done[c, f])]

    def set_point(self, c: int, flat: int | None, point: Mapping[str, float]) -> None:
        """Store one point (`point` has every name of FIELDS: `engine.PointSums.reduce()`); flat None is
        the origin, which also fills every grid cell at the origin."""
        if flat is None:
            for name in FIELDS:
                self.origin[name][c] = point[name]
            self.origin_done[c] = True
            cells = self.grid.at_origin()
        else:
            cells = [flat]
        for f in cells:
            index = (c, *np.unravel_index(int(f), self.grid.shape))
            for name in FIELDS:
                self.values[name][index] = point[name]
            self.done[index] = True

    @property
    def complete(self) -> bool:
        return bool(self.done.all() and self.origin_done.all())

    def check_resumable(self, path: str | Path) -> None:
        """Only a file of this format version is continued (`StaleResults`, so a cache is recomputed)."""
        if self.format_version != FORMAT_VERSION:
            raise StaleResults(f"{str(path)!r} has landscape results format version {self.format_version}; this version "
                               f"resumes only version {FORMAT_VERSION}: pass --overwrite to recompute it, -o for a "
                               f"new file, or --from to redraw it as it is")

    # -- views ---------------------------------------------------------------------------------

    @property
    def alphas(self) -> np.ndarray:
        return self.grid.axis("alpha")

    @property
    def dirs(self) -> int:
        return self.grid.repeats

    def _require(self, kind: str, what: str) -> None:
        if self.grid.kind != kind:
            raise UserError(f"{what} needs a {kind} landscape; this one has dims {list(self.grid.dims)}")

    def radius(self) -> float:
        """The sharpness radius the config records, else half the alpha range on the shorter side."""
        r = self.config.get("radius")
        return float(r) if r is not None else sharp.default_radius(self.alphas)

    def sharpness(self, radius: float | None = None) -> list[sharp.Sharpness]:
        """Sharpness of rho (the adversarial loss) per checkpoint over its complete directions, every
        measure of `SHARPNESS` (1-D landscapes)."""
        self._require("curves", "sharpness")
        r = self.radius() if radius is None else radius
        return [sharp.sharpness(self.alphas, self.values["adv_loss"][c], r, se=self.values["adv_loss_se"][c])
                for c in range(len(self.checkpoints))]

    def per_direction(self, radius: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Every measure per (checkpoint, direction) [C, D] and its standard error over examples."""
        self._require("curves", "sharpness per direction")
        r = self.radius() if radius is None else radius
        return sharp.per_direction(self.alphas, self.values["adv_loss"], r, self.values["adv_loss_se"])

    def relative(self, name: str = "adv_loss") -> np.ndarray:
        """|g(point) - g(w)| per checkpoint [C, *shape] (Appendix B.2's 2-D plot), NaN where not computed."""
        return np.abs(self.values[name] - self.origin[name].reshape(-1, *([1] * len(self.grid.shape))))

    def plot(self, path: str | Path) -> list[Path]:
        """The figure(s) of this landscape as PNG: curves (1-D) or contour and surface (2-D)."""
        from landscape.figures import render

        return render.png(self, Path(path))

    def html(self, path: str | Path) -> Path:
        """An interactive, self-contained (offline) plotly HTML page of this landscape."""
        from landscape.figures import render

        return render.html(self, Path(path))

    # -- files ---------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write everything to `path` atomically (a temporary file moved over the old one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with transaction(path, create=True) as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["dims"] = json.dumps(list(self.grid.dims))
            f.attrs["config"] = json.dumps(self.config, sort_keys=True)
            f.attrs["runtime"] = json.dumps(self.runtime, sort_keys=True)
            f.attrs["created"] = self.created
            f.attrs["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            for dim, axis in zip(self.grid.dims, self.grid.axes):
                f[f"axes/{dim}"] = axis
            strings = h5py.string_dtype()
            f.create_dataset("directions/spec", data=[json.dumps(d, sort_keys=True) for d in self.directions], dtype=strings)
            for (c, k), tensors in self.stored.items():
                for name, t in tensors.items():
                    f[f"directions/tensors/c{c}_k{k}/{name}"] = t.detach().to("cpu", torch.float32).numpy()
            g = f.create_group("checkpoints")
            g.create_dataset("source", data=[c.source for c in self.checkpoints], dtype=strings)
            g.create_dataset("sha256", data=[c.sha256 for c in self.checkpoints], dtype=strings)
            g.create_dataset("label", data=[c.label for c in self.checkpoints], dtype=strings)
            g["epoch"] = np.array([np.nan if c.epoch is None else c.epoch for c in self.checkpoints], dtype=np.float64)
            for name in FIELDS:
                f[name] = self.values[name]
                f[f"origin/{name}"] = self.origin[name]
            f["done"] = self.done
            f["origin/done"] = self.origin_done
            if self.grid.kind == "curves" and self.checkpoints:
                self._save_sharpness(f.create_group("sharpness"))

    def _save_sharpness(self, g: h5py.Group) -> None:
        r = self.radius()
        g.attrs["radius"] = r
        summaries = self.sharpness(r)
        values, errors = self.per_direction(r)
        for name in sharp.SHARPNESS:
            g[name] = np.array([s.mean[name] for s in summaries])
            g[f"{name}_std"] = np.array([s.std[name] for s in summaries])
            g[f"{name}_se"] = np.array([s.se[name] for s in summaries])
            g[f"{name}_per_direction"] = values[name]
            g[f"{name}_se_per_direction"] = errors[name]
        g["rho0"] = np.array([s.rho0 for s in summaries])
        g["n_dirs"] = np.array([s.n_dirs for s in summaries], dtype=np.float64)

    @classmethod
    def load(cls, path: str | Path) -> "Landscape":
        """Read a results file of this format or an older one; anything else is a one-line `UserError`."""
        path = Path(path)
        fmt = _peek_format(path)
        reader = {FORMAT: (_read, FORMAT_VERSION), LEGACY_PROBE: (_read_legacy_probe, 2),
                  LEGACY_PLANE: (_read_legacy_plane, 2)}.get(fmt, (_read, FORMAT_VERSION))
        with open_results(path, fmt if fmt in (LEGACY_PROBE, LEGACY_PLANE) else FORMAT, reader[1],
                          "landscape results") as f:
            return reader[0](f)


def _peek_format(path: Path) -> str | None:
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format")
    except (OSError, FileNotFoundError):
        return None


def _checkpoints(g: h5py.Group) -> list[CheckpointId]:
    return [CheckpointId(s, None if np.isnan(e) else int(e), h, lab)
            for s, e, h, lab in zip(g["source"].asstr()[()], g["epoch"][()], g["sha256"].asstr()[()], g["label"].asstr()[()])]


def _read(f: h5py.File) -> Landscape:
    dims = tuple(json.loads(f.attrs["dims"]))
    grid = Grid(dims, tuple(f[f"axes/{d}"][()] for d in dims))
    stored: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    if "directions/tensors" in f:
        for key, group in f["directions/tensors"].items():
            c, k = (int(part[1:]) for part in key.split("_"))
            stored[(c, k)] = {name: torch.from_numpy(ds[()]) for name, ds in group.items()}
    return Landscape(
        grid=grid, directions=[json.loads(s) for s in f["directions/spec"].asstr()[()]],
        checkpoints=_checkpoints(f["checkpoints"]), config=json.loads(f.attrs["config"]),
        runtime=json.loads(f.attrs.get("runtime", "{}")), values={n: f[n][()] for n in FIELDS},
        done=f["done"][()].astype(bool), origin={n: f[f"origin/{n}"][()] for n in FIELDS},
        origin_done=f["origin/done"][()].astype(bool), stored=stored, created=str(f.attrs.get("created", "")),
        format_version=int(f.attrs["format_version"]),
    )


def _legacy_values(f: h5py.File, version: int, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The fields of an older file; version 1 had no standard errors (they load as NaN)."""
    return {n: np.full(shape, np.nan) if (version < 2 and n in STANDARD_ERRORS) else f[n][()].reshape(shape) for n in FIELDS}


def _read_legacy_probe(f: h5py.File) -> Landscape:
    """A probe file of format versions 1-2: [C, D, A], random directions (seed, k); the origin is the
    alpha = 0 column, the same point for every direction."""
    version = int(f.attrs.get("format_version", 0))
    config = json.loads(f.attrs["config"])
    seeds = f["directions/seed"][()]
    alphas = f["alphas"][()]
    done = f["done"][()].astype(bool)
    grid = Grid.curves(alphas, len(seeds))
    values = _legacy_values(f, version, done.shape)
    zero = int(np.flatnonzero(alphas == 0.0)[0]) if (alphas == 0.0).any() else None
    origin, origin_done = {n: np.full(done.shape[0], np.nan) for n in FIELDS}, np.zeros(done.shape[0], dtype=bool)
    if zero is not None:
        for c in range(done.shape[0]):
            ks = np.flatnonzero(done[c, :, zero])
            if len(ks):
                origin_done[c] = True
                for n in FIELDS:
                    origin[n][c] = values[n][c, ks[0], zero]
    specs = random_specs(len(seeds), int(seeds[0]) if len(seeds) else 0, config.get("normalize", "filter"),
                         bool(config.get("include_bn", False)))
    return Landscape(grid, specs, _checkpoints(f["checkpoints"]), config, json.loads(f.attrs.get("runtime", "{}")),
                     values, done, origin, origin_done, created=str(f.attrs.get("created", "")), format_version=version)


def _read_legacy_plane(f: h5py.File) -> Landscape:
    """A plot2d file of format versions 1-2: one checkpoint, [A, B], its centre g(0, 0) kept apart."""
    version = int(f.attrs.get("format_version", 0))
    config = json.loads(f.attrs["config"])
    done = f["done"][()].astype(bool)[None]
    grid = Grid.plane(f["alphas"][()], f["betas"][()])
    values = _legacy_values(f, version, done.shape)
    origin = {n: np.array([np.nan if (version < 2 and n in STANDARD_ERRORS) else float(f[f"center/{n}"][()])]) for n in FIELDS}
    ident = CheckpointId(**json.loads(f.attrs["checkpoint"]))
    specs = random_specs(2, int(config.get("seed", 0)), config.get("normalize", "filter"), bool(config.get("include_bn", False)))
    return Landscape(grid, specs, [ident], config, json.loads(f.attrs.get("runtime", "{}")), values, done, origin,
                     np.isfinite(origin["adv_loss"]), format_version=version)
