"""`landscape plot2d`: the 2-D landscape g(alpha, beta) = rho(w + alpha d + beta e) (Appendix B.2, Figure 6),
with PGD on the fly at every grid point, resumable, and split across torchrun ranks.

Every rank computes its own share of the grid (round-robin, `grid.shard`) with no per-point
communication; after each chunk of points one all_gather brings the results to rank 0, the only
writer, which rewrites the results file atomically. A killed run restarts from its `done` mask.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from awp import __version__
from awp.attacks import AttackConfig
from awp.config import check_positive_int
from awp.errors import Interrupted, UserError
from awp.safeio import check_output, exclusive, provenance, signed
from awp.stopping import graceful_stop, stop_requested
from awp.store import transaction
from landscape.pipeline import dist
from landscape.core import engine
from landscape.storage.sources import open_source
from landscape.core.directions import random_direction
from landscape.core.grid import GridSpec, parse_grid, parse_range, shard
from landscape.commands.options import LandscapeOptions
from landscape.commands.probe import PointBar, probe_data, resolve_attack
from landscape.storage.results import CheckpointId, StaleResults, open_results, refuse_if_stale

FORMAT = "awp-landscape-2d"
FORMAT_VERSION = 2  # 2: standard errors over examples (`*_se`); version 1 files load with them NaN
VALUES = ("adv_loss", "nat_loss", "adv_acc", "nat_acc")
STANDARD_ERRORS = tuple(f"{v}_se" for v in VALUES)  # standard error over examples of each value
FIELDS = VALUES + STANDARD_ERRORS


@dataclass(frozen=True)
class Plot2DConfig(LandscapeOptions):
    """Every option of `landscape plot2d`: the shared ones (d and e are `probe`'s directions 0 and 1
    for the same seed) plus the grid and how often results are flushed."""

    grid: str = "21x21"  # points along alpha x points along beta
    range: str = "-1:1,-1:1"  # AMIN:AMAX,BMIN:BMAX
    chunk: int = 4  # points per rank between two flushes of the results file

    def __post_init__(self) -> None:
        super().__post_init__()
        self.spec()
        check_positive_int(self.chunk, "--chunk")

    def spec(self) -> GridSpec:
        na, nb = parse_grid(self.grid)
        ar, br = parse_range(self.range)
        return GridSpec(na, nb, ar, br)


# ---------------------------------------------------------------------------------------------
# The results file
# ---------------------------------------------------------------------------------------------


@dataclass
class PlaneResults:
    """A 2-D landscape in memory; `save` writes it out whole, atomically.

    Layout (format "awp-landscape-2d", version 2), every grid [n_alpha, n_beta] (axis 0 = alpha):
        attrs: format, format_version, config (JSON), checkpoint (JSON: source, epoch, sha256, label),
               runtime (JSON), dims = "alpha,beta"
        /alphas [A], /betas [B], /directions/index [2] (d = 0, e = 1), /directions/seed
        /adv_loss, /nat_loss, /adv_acc, /nat_acc [A, B] float64, NaN until computed; /done [A, B] bool
        /adv_loss_se, /nat_loss_se, /adv_acc_se, /nat_acc_se [A, B]: standard error over examples
        /center/<value> scalars g(0, 0) etc. (and their `_se`); /relative [A, B] = |adv_loss - center adv_loss|
    Version 1 (no `*_se`) loads with them NaN; `plot2d` does not resume it.
    """

    alphas: np.ndarray
    betas: np.ndarray
    config: dict[str, Any]
    checkpoint: CheckpointId
    runtime: dict[str, Any] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    done: np.ndarray | None = None
    center: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION  # of the file it was loaded from

    def __post_init__(self) -> None:
        shape = (len(self.alphas), len(self.betas))
        for name in FIELDS:
            self.values.setdefault(name, np.full(shape, np.nan))
            self.center.setdefault(name, float("nan"))
        if self.done is None:
            self.done = np.zeros(shape, dtype=bool)

    @property
    def center_done(self) -> bool:
        return bool(np.isfinite(self.center["adv_loss"]))

    def todo(self) -> np.ndarray:
        """Flat indices of grid points still to compute; -1 stands for the centre g(0, 0)."""
        rest = np.flatnonzero(~self.done.reshape(-1))
        return rest if self.center_done else np.concatenate([[-1], rest])

    def set_point(self, flat: int, point: dict[str, float]) -> None:
        if flat < 0:
            self.center.update({k: float(point[k]) for k in FIELDS})
            return
        i, j = divmod(int(flat), len(self.betas))
        for k in FIELDS:
            self.values[k][i, j] = point[k]
        self.done[i, j] = True

    def relative(self) -> np.ndarray:
        """|g(alpha, beta) - g(0, 0)| (Appendix B.2), NaN where not computed."""
        return np.abs(self.values["adv_loss"] - self.center["adv_loss"])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with transaction(path, create=True) as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = json.dumps(self.config, sort_keys=True)
            f.attrs["checkpoint"] = json.dumps(asdict(self.checkpoint), sort_keys=True)
            f.attrs["runtime"] = json.dumps(self.runtime, sort_keys=True)
            f.attrs["dims"] = "alpha,beta"
            f["alphas"] = self.alphas
            f["betas"] = self.betas
            f["directions/index"] = np.array([0, 1], dtype=np.int64)
            f["directions/seed"] = np.full(2, self.config["seed"], dtype=np.int64)
            for k in FIELDS:
                f[k] = self.values[k]
                f[f"center/{k}"] = self.center[k]
            f["done"] = self.done
            f["relative"] = self.relative()

    @classmethod
    def load(cls, path: Path) -> "PlaneResults":
        with open_results(path, FORMAT, FORMAT_VERSION, "2-D landscape results") as f:
            version = int(f.attrs.get("format_version", 0))
            missing = STANDARD_ERRORS if version < 2 else ()  # version 1: no standard errors yet
            shape = f["done"].shape
            return cls(
                alphas=f["alphas"][()], betas=f["betas"][()], config=json.loads(f.attrs["config"]),
                checkpoint=CheckpointId(**json.loads(f.attrs["checkpoint"])),
                runtime=json.loads(f.attrs.get("runtime", "{}")),
                values={k: np.full(shape, np.nan) if k in missing else f[k][()] for k in FIELDS},
                done=f["done"][()].astype(bool),
                center={k: float("nan") if k in missing else float(f[f"center/{k}"][()]) for k in FIELDS},
                format_version=version,
            )

    def check_resumable(self, path: Path) -> None:
        """Only a file of this format version is continued: an older one lacks the standard errors."""
        if self.format_version != FORMAT_VERSION:
            raise StaleResults(f"{str(path)!r} has 2-D results format version {self.format_version} (no standard "
                               f"errors); this version resumes only version {FORMAT_VERSION}: pass --overwrite to "
                               f"recompute it, -o for a new file, or --from to redraw it as it is")


# ---------------------------------------------------------------------------------------------
# The computation
# ---------------------------------------------------------------------------------------------


def recorded_config(cfg: Plot2DConfig, spec: GridSpec, attack: AttackConfig, arch: str, dataset: str) -> dict[str, Any]:
    """What decides the numbers in the file; a rerun must match it to resume."""
    rec = {
        "arch": arch, "dataset": dataset, "grid": [spec.n_alpha, spec.n_beta],
        "alpha_range": list(spec.alpha_range), "beta_range": list(spec.beta_range),
        "attack": asdict(attack), "split": cfg.split, "samples": cfg.samples, "batch_size": cfg.batch_size,
        "seed": cfg.seed, "normalize": cfg.normalize, "include_bn": cfg.include_bn, "bn": cfg.bn,
        "bn_batches": cfg.bn_batches if cfg.bn == "recalibrate" else 0,
    }
    return json.loads(json.dumps(rec))


def _open_results(cfg: Plot2DConfig, out: Path, spec: GridSpec, config: dict, ident: CheckpointId) -> PlaneResults:
    if out.exists() and not cfg.overwrite:
        try:
            old = PlaneResults.load(out)
        except UserError:
            raise UserError(f"{str(out)!r} exists and is not a 2-D results file; choose another -o or pass --overwrite") from None
        old.check_resumable(out)
        same = (old.checkpoint.epoch, old.checkpoint.sha256) == (ident.epoch, ident.sha256)
        refuse_if_stale(out, old.config, config, [] if same else [f"weights (file: {old.checkpoint.label}, now: {ident.label})"])
        return old
    return PlaneResults(spec.alphas, spec.betas, config, ident)


@dataclass
class Plot2DOutcome:
    results_path: Path
    results: PlaneResults
    points: int
    seconds: float
    figures: list[Path] = field(default_factory=list)


def figure_paths(out: Path) -> list[Path]:
    """Contour PNG, surface PNG and interactive HTML, beside the results file."""
    return [out.with_name(out.stem + "-contour.png"), out.with_name(out.stem + "-surface.png"), out.with_suffix(".html")]


@dataclass
class Prepared:
    """Everything checked and resolved before a grid point is computed (and before torchrun starts)."""

    spec: GridSpec
    source: Any
    attack: AttackConfig
    config: dict[str, Any]
    out: Path
    tag: str


def prepare(cfg: Plot2DConfig) -> Prepared:
    """Validate paths, arguments and files the way a single process would, computing nothing:
    run first by `--workers` in the launching process, then by rank 0."""
    spec = cfg.spec()
    out = Path(cfg.out) if cfg.out else Path(f"plot2d-{Path(cfg.checkpoint).stem}.h5")
    ckpt = Path(cfg.checkpoint)
    check_output(out, "-o", inputs=[ckpt], overwrite=cfg.overwrite, writes="2-D results file", resumes=FORMAT)
    tag = provenance("plot2d", [out], out.parent)
    for fig in figure_paths(out):
        check_output(fig, "-o (figures beside it)", inputs=[ckpt], overwrite=cfg.overwrite, writes="figure", tag=tag)
    source = open_source(cfg.checkpoint, cfg.epochs, cfg.arch, cfg.dataset, cfg.data_dir)
    if len(source.checkpoints) != 1:
        raise UserError(f"plot2d draws one checkpoint; --epoch {cfg.epochs!r} selects {len(source.checkpoints)}: "
                        f"give best, last or one epoch number")
    attack = resolve_attack(cfg, source.train_attack, str(source.path))  # type: ignore[arg-type]
    config = recorded_config(cfg, spec, attack, source.arch, source.dataset)
    _open_results(cfg, out, spec, config, source.checkpoints[0].ident)  # refuses stale results
    return Prepared(spec, source, attack, config, out, tag)


def run_plot2d(cfg: Plot2DConfig, console: Console | None = None) -> Plot2DOutcome | None:
    """Compute the grid (this process's share of it under torchrun), flush after every chunk, render
    on rank 0. Returns the outcome on rank 0 and None on the other ranks. Ctrl-C stops after the
    current chunk, keeping every finished point."""
    console = console or Console(stderr=True)
    ctx = dist.init(cfg.device)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(graceful_stop())
            return _run(cfg, ctx, console, stack)
    finally:
        dist.shutdown(ctx)


def _run(cfg: Plot2DConfig, ctx: dist.DistContext, console: Console, stack: contextlib.ExitStack) -> Plot2DOutcome | None:
    t_start = time.perf_counter()
    # Rank 0 validates, takes the results file and creates it first; every rank then reads the same done mask.
    refused: UserError | None = None
    prep = None
    if ctx.is_main:
        try:
            prep = prepare(cfg)
            stack.enter_context(exclusive(prep.out))
            results = _open_results(cfg, prep.out, prep.spec, prep.config, prep.source.checkpoints[0].ident)
            results.runtime = {**results.runtime, "device": str(ctx.device), "world": ctx.world,
                               "awp": __version__, "torch": torch.__version__}
            results.save(prep.out)
        except UserError as e:
            refused = e
    if dist.broadcast_flag(ctx, refused is not None):
        if refused is not None:
            raise refused
        return None
    if not ctx.is_main:
        prep = prepare(cfg)  # rank 0 has written the file: it is resumed, not replaced
        results = PlaneResults.load(prep.out)
    spec, source, attack, out = prep.spec, prep.source, prep.attack, prep.out
    ckpt = source.checkpoints[0]
    todo = results.todo()
    mine = shard(todo, ctx.rank, ctx.world)
    per_rank = math.ceil(len(todo) / ctx.world) if len(todo) else 0
    rounds = math.ceil(per_rank / cfg.chunk) if per_rank else 0
    points = 0
    if rounds:
        model = ckpt.build(ctx.device).eval()
        batches, bn_inputs, n = probe_data(cfg, source, attack, ctx.device)  # type: ignore[arg-type]
        with engine.frozen(model):
            base = engine.snapshot(model)
            w_cpu = {k: t.to("cpu") for k, t in base.items()}
            # d and e: directions 0 and 1 of `probe` with this seed (Alg. 1 lines 2-7, twice)
            dirs = [random_direction(w_cpu, cfg.seed, k, cfg.normalize, cfg.include_bn) for k in (0, 1)]
            dirs = [{k: t.to(base[k].device, base[k].dtype) for k, t in d.items()} for d in dirs]
            if ctx.is_main:
                console.print(f"plot2d: {len(todo)} of {spec.size + 1} points to compute "
                              f"({spec.n_alpha}x{spec.n_beta} grid and its centre) on {ctx.world} process(es), "
                              f"{n} examples, PGD-{attack.steps}")
            t_compute = time.perf_counter()
            with PointBar(len(todo), cfg.progress and ctx.is_main) as bar:
                bar.describe("plot2d")
                for r in range(rounds):
                    chunk = mine[r * cfg.chunk : (r + 1) * cfg.chunk]
                    rows = torch.full((cfg.chunk, 1 + len(FIELDS)), -2.0, dtype=torch.float64)  # -2: padding
                    for slot, flat in enumerate(chunk):
                        a, b = (0.0, 0.0) if flat < 0 else spec.coords(flat)
                        sums = engine.evaluate_at(model, dirs, [a, b], batches, attack, base=base, bn=cfg.bn,
                                                  bn_inputs=bn_inputs)  # Eq. 5 at w + alpha d + beta e
                        point = sums.reduce()
                        rows[slot] = torch.tensor([float(flat)] + [point[k] for k in FIELDS], dtype=torch.float64)
                    gathered = dist.gather_rows(ctx, rows)  # one collective per chunk, not per point
                    if ctx.is_main:
                        for row in gathered.tolist():
                            if row[0] >= -1:
                                results.set_point(int(row[0]), dict(zip(FIELDS, row[1:])))
                                bar.advance()
                                points += 1
                        elapsed = time.perf_counter() - t_compute
                        results.runtime["compute_seconds"] = results.runtime.get("compute_seconds", 0.0) + elapsed
                        t_compute = time.perf_counter()
                        results.save(out)
                        if r == 0 and rounds > 1:
                            per_round = elapsed
                            console.print(f"estimated total: {per_round * rounds:.0f} s "
                                          f"({per_round / max(1, len(gathered)):.2f} s per point over {ctx.world} process(es))")
                    if dist.any_flag(ctx, stop_requested()) and r + 1 < rounds:  # Ctrl-C on any rank
                        left = int((~results.done).sum()) if ctx.is_main else 0
                        raise Interrupted(f"{str(out)!r} keeps every finished point ({left} of {spec.size} left)")
    if not ctx.is_main:
        return None
    with signed(prep.tag):
        figures = render(results, out)
    console.print(f"results: {out}\nfigures: {', '.join(str(p) for p in figures)}")
    return Plot2DOutcome(out, results, points, time.perf_counter() - t_start, figures)


def render(results: PlaneResults, out: Path) -> list[Path]:
    """Contour PNG, 3-D surface PNG and interactive HTML beside the results file."""
    from landscape.figures.plane import save_contour_png, save_html, save_surface_png

    rel = results.relative()
    ck = results.checkpoint
    att = results.config["attack"]
    title = (f"{results.config['arch']} {ck.label}: |g(α,β) − g(0,0)|, PGD-{att['steps']} "
             f"{att['norm']} eps={att['eps']:.3g}, g(0,0)={results.center['adv_loss']:.3f}")
    paths = figure_paths(out)
    save_contour_png(results.alphas, results.betas, rel, paths[0], title)
    save_surface_png(results.alphas, results.betas, rel, paths[1], title)
    save_html(results.alphas, results.betas, results.values, rel, paths[2], title)
    return paths


def rerender(path: str | Path, console: Console | None = None, overwrite: bool = False) -> list[Path]:
    """`landscape plot2d --from RESULTS.h5`: redraw the figures without computing."""
    path = Path(path)
    results = PlaneResults.load(path)
    tag = provenance("plot2d", [path], path.parent)
    for fig in figure_paths(path):
        check_output(fig, "--from (figures beside it)", inputs=[path], overwrite=overwrite, writes="figure", tag=tag)
    with signed(tag):
        figures = render(results, path)
    (console or Console(stderr=True)).print(f"figures: {', '.join(str(p) for p in figures)}")
    return figures
