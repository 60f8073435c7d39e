"""`landscape plot2d`: the 2-D landscape g(alpha, beta) = rho(w + alpha d + beta e) (Appendix B.2, Figure 6),
with PGD on the fly at every grid point, resumable, and split across torchrun ranks. A configuration
of the one pipeline (`landscape.pipeline.run`): [checkpoint, alpha, beta] coordinates, d and e being
`probe`'s random directions 0 and 1 for the same seed (`--direction random`), the top two Hessian
eigenvectors (`hessian`), the training trajectory's PC1 and PC2 with the path drawn on the contour
(`pca`, Li et al. 2018), or AWP's direction against random direction 1 (`awp`); the origin g(0, 0)
is computed once.

On a cluster the grid splits into shards (`--shard K/N`, one results file each, any scheduler), which
`merge_plot2d` (`landscape merge`) combines; `launch_plot2d` (`--launcher`) submits them as one job
array, waits and merges.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from awp.config import check_positive_int
from awp.errors import Interrupted, UserError
from awp.safeio import check_dir, check_output, provenance, signed
from landscape.commands.options import LandscapeOptions, job_for, recorded_options, resolve_attack
from landscape.commands.probe import check_directions, plan_directions
from landscape.core.directions import DIRECTIONS
from landscape.core.axes import GridSpec, parse_grid, parse_ranges
from landscape.pipeline import launch
from landscape.pipeline.run import Outcome, Plan, execute, open_or_resume
from landscape.storage.merge import Merged, check_arguments, merge_files, shard_label
from landscape.storage.results import FORMAT, LEGACY_PLANE, Grid, Landscape
from landscape.storage.sources import open_source


@dataclass(frozen=True)
class Plot2DConfig(LandscapeOptions):
    """Every option of `landscape plot2d`: the shared ones plus the grid."""

    grid: str = "21x21"  # points along alpha x points along beta
    range: str = "-1:1,-1:1"  # AMIN:AMAX,BMIN:BMAX
    shard: tuple[int, int] | None = None  # (K, N): compute only shard K of N of the grid (1-based)
    direction: str = "random"  # a kind of `DIRECTIONS` with `plane`: random, hessian, pca, awp
    gamma: float | None = None  # awp: gamma of Eq. 8 (None: `probe.DEFAULT_GAMMA`)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.spec()
        kind = DIRECTIONS.lookup(self.direction)
        if not kind.plane:
            planes = ", ".join(n for n, k in DIRECTIONS.items() if k.plane)
            raise UserError(f"--direction {self.direction} gives no plane for plot2d (it takes {planes}); draw it "
                            f"in 1-D with `landscape probe --direction {self.direction}`")
        check_directions(self.direction, self.normalize, self.gamma)
        if self.shard is not None:
            launch.check_shard(self.shard)

    def spec(self) -> GridSpec:
        na, nb = parse_grid(self.grid)
        ar, br = parse_ranges(self.range)
        return GridSpec(na, nb, ar, br)


def figure_paths(out: Path) -> list[Path]:
    """Contour PNG, surface PNG and interactive HTML, beside the results file."""
    return [out.with_name(out.stem + "-contour.png"), out.with_name(out.stem + "-surface.png"), out.with_suffix(".html")]


def render(results: Landscape, out: Path) -> list[Path]:
    """The figures of a complete grid beside its results file (`figure_paths`)."""
    return results.plot(out) + [results.html(out.with_suffix(".html"))]


def summarize(results: Landscape, out: Path, figures: list[Path], console: Console) -> None:
    console.print(f"results: {out}\nfigures: {', '.join(str(p) for p in figures)}")


def default_out(cfg: Plot2DConfig) -> Path:
    """plot2d-RUN.h5, and for shard K of N plot2d-RUN-shardKofN.h5."""
    out = Path(f"plot2d-{Path(cfg.checkpoint).stem}.h5")
    return out if cfg.shard is None else launch.shard_path(out, cfg.shard)


def check_figures(out: Path, flag: str, inputs: list[Path], overwrite: bool) -> str:
    """Refuse figure paths beside `out` that may not be written; returns the provenance tag to sign them."""
    tag = provenance("plot2d", [out], out.parent)
    for fig in figure_paths(out):
        check_output(fig, flag, inputs=inputs, overwrite=overwrite, writes="figure", tag=tag)
    return tag


def summarize_shard(results: Landscape, out: Path, figures: list[Path], console: Console) -> None:
    """A shard draws nothing (a partial grid): say what it holds and how to merge."""
    k, n = results.shard
    mine, left = len(results.points(results.shard)), len(results.pending())
    default = out.name.endswith(f"-shard{k}of{n}{out.suffix}")
    whole = out.with_name(out.name[: -len(f"-shard{k}of{n}{out.suffix}")] + out.suffix) if default else Path("MERGED.h5")
    shards = out.with_name(f"{whole.stem}-shard*of{n}{out.suffix}") if default else f"<the {n} shard files>"
    console.print(f"results: {out} holds shard {k} of {n} ({mine - left} of its {mine} points done); when every shard "
                  f"is done, merge them and draw the figures with: landscape merge {whole} {shards}")


def plan(cfg: Plot2DConfig) -> Plan:
    """Validate paths, arguments and files the way a single process would, computing nothing: run
    first by `--workers` in the launching process, then by every rank."""
    spec = cfg.spec()
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    ckpt = Path(cfg.checkpoint)
    check_output(out, "-o", inputs=[ckpt], overwrite=cfg.overwrite, writes="landscape results file", resumes=(FORMAT, LEGACY_PLANE))
    tag = "" if cfg.shard else check_figures(out, "-o (figures beside it)", [ckpt], cfg.overwrite)  # a shard draws none
    source = open_source(cfg.checkpoint, cfg.epochs, cfg.arch, cfg.dataset, cfg.data_dir, arch_kwargs=cfg.arch_kwargs)
    if len(source.checkpoints) != 1:
        raise UserError(f"plot2d draws one checkpoint; --epoch {cfg.epochs!r} selects {len(source.checkpoints)}: "
                        f"give best, last or one epoch number")
    attack = resolve_attack(cfg, source.train_attack, str(source.path))
    planned = plan_directions(cfg, source, cfg.direction, 2, gamma=cfg.gamma, plane=True)  # d, e
    specs = planned.specs  # random: Alg. 1 lines 2-7, twice
    config = json.loads(json.dumps({
        "command": "plot2d", "checkpoint": str(source.path), "arch": source.arch, "dataset": source.dataset,
        "grid": [spec.n_alpha, spec.n_beta], "alpha_range": list(spec.alpha_range), "beta_range": list(spec.beta_range),
        "directions": specs, **recorded_options(cfg, attack),
        **({"shard": list(cfg.shard)} if cfg.shard else {}),  # a resume under another --shard is refused, naming it
    }))
    fresh = Landscape(Grid.plane(spec.alphas, spec.betas), planned.recorded(), [source.checkpoints[0].ident], config,
                      stored=planned.stored)
    return Plan(
        out=out, results=fresh, tag=tag,
        job=lambda results, device: job_for(cfg, source, attack, results, device, 4),
        render=(lambda results, out_: []) if cfg.shard else render,
        summary=summarize_shard if cfg.shard else summarize,
    )


def run_plot2d(cfg: Plot2DConfig, console: Console | None = None) -> Outcome | None:
    """Compute the grid (this process's share of it under torchrun), flush after every chunk, render
    on rank 0. Returns the outcome on rank 0 and None on the other ranks."""
    return execute(lambda: plan(cfg), device=cfg.device, overwrite=cfg.overwrite, progress=cfg.progress, console=console)


def rerender(path: str | Path, console: Console | None = None, overwrite: bool = False) -> list[Path]:
    """`landscape plot2d --from RESULTS.h5`: redraw the figures without computing."""
    path = Path(path)
    results = Landscape.load(path)
    if results.grid.kind != "plane":
        raise UserError(f"{str(path)!r} holds a {results.grid.kind} landscape; redraw it with `landscape probe --from`")
    if results.shard is not None:
        raise UserError(f"{str(path)!r} holds shard {shard_label(results.shard)} of a grid, too little to draw; "
                        f"merge the shards with `landscape merge OUT.h5 SHARD.h5 ...`, which draws the whole grid")
    tag = provenance("plot2d", [path], path.parent)
    for fig in figure_paths(path):
        check_output(fig, "--from (figures beside it)", inputs=[path], overwrite=overwrite, writes="figure", tag=tag)
    with signed(tag):
        figures = render(results, path)
    (console or Console(stderr=True)).print(f"figures: {', '.join(str(p) for p in figures)}")
    return figures


# ---------------------------------------------------------------------------------------------
# Shards: merged into one grid, or submitted as a job array
# ---------------------------------------------------------------------------------------------


def merge_plot2d(out: str | Path, shards: list[str | Path], overwrite: bool = False,
                 console: Console | None = None) -> Merged:
    """`landscape merge`: combine shard results files into `out` (`merge_files`); a complete grid gets
    plot2d's figures and summary, an incomplete one a line saying what is missing."""
    console = console or Console(stderr=True)
    out = check_arguments(out, shards)
    tag = check_figures(out, "OUT (figures beside it)", [Path(p) for p in shards], overwrite)  # before OUT is written
    merged = merge_files(out, shards, overwrite)
    results = merged.results
    console.print(f"merged {len(shards)} file(s) into {out}: {merged.added} new point(s), "
                  f"{merged.total - merged.missing} of {merged.total} held")
    if not merged.complete:
        which = f" (in shard(s) {', '.join(merged.missing_shards)})" if merged.missing_shards else ""
        console.print(f"{out}: {merged.missing} point(s) missing{which}; merge them in when they are done, or compute "
                      f"the rest with `landscape plot2d {results.config.get('checkpoint', 'CKPT')} -o {out}` and the same options")
    elif results.grid.kind == "plane":
        with signed(tag):
            summarize(results, out, render(results, out), console)
    else:
        console.print(f"results: {out} (a {results.grid.kind} landscape: draw it with `landscape probe --from {out}`)")
    return merged


@dataclass(frozen=True)
class ShardReport:
    """What one shard job did: the points it computed, or the one-line error that stopped it."""

    shard: tuple[int, int]
    out: str
    points: int = 0
    error: str | None = None


def run_shard(cfg: Plot2DConfig) -> ShardReport:
    """One job of `launch_plot2d`'s array: compute shard `cfg.shard` into `cfg.out`. A user error or
    an interruption is reported back, not raised, so the launcher can name the shard in one line."""
    try:
        outcome = run_plot2d(cfg)
    except (UserError, Interrupted) as e:
        return ShardReport(cfg.shard, str(cfg.out), error=str(e))
    return ShardReport(cfg.shard, str(cfg.out), outcome.points if outcome else 0)


def launch_plot2d(cfg: Plot2DConfig, launcher: str, shards: int, folder: str | Path | None = None,
                  params: dict[str, Any] | None = None, console: Console | None = None) -> Merged:
    """`plot2d --launcher L --shards N`: check everything here, submit the shards that have points left
    as one job array (`launch.run_array`), wait, and merge all N into the results file (`merge_plot2d`)."""
    console = console or Console(stderr=True)
    if cfg.shard is not None:
        raise UserError(f"--shard {shard_label(cfg.shard)} computes one shard here; --launcher submits all --shards "
                        f"itself: give one of them")
    if cfg.workers > 1:
        raise UserError(f"--workers {cfg.workers} with --launcher: each shard job is one process; give more --shards instead")
    check_positive_int(shards, "--shards")
    launch.check_launcher(launcher)
    whole = plan(cfg)  # -o and the figures beside it, before anything is submitted
    here = dict(checkpoint=str(Path(cfg.checkpoint).absolute()), data_dir=str(Path(cfg.data_dir).absolute()))  # jobs may start elsewhere
    parts = [replace(cfg, **here, shard=(k, shards), out=str(launch.shard_path(whole.out, (k, shards)).absolute()),
                     progress=False) for k in range(1, shards + 1)]
    todo = []
    for part in parts:  # each shard's file checked (resumable, same settings) and skipped when finished
        p = plan(part)
        if open_or_resume(p.out, p.results, part.overwrite, p.view_keys).pending():
            todo.append(part)
    folder = check_dir(folder if folder is not None else whole.out.with_name(whole.out.stem + "-jobs"), "--launcher-folder")
    if todo:
        outcomes = launch.run_array(run_shard, todo, launcher, Path(folder), params, console)
        failed = [(part, o) for part, o in zip(todo, outcomes) if o.error or (o.value and o.value.error)]
        if failed:
            part, o = failed[0]
            raise UserError(f"{len(failed)} of {len(todo)} shard job(s) failed, first shard {shard_label(part.shard)} "
                            f"(job {o.job_id}): {o.error or o.value.error} (log: {o.log}); the finished shards and points "
                            f"are kept: rerun the same command to retry the rest")
    else:
        console.print(f"every shard of {whole.out} is already computed")
    return merge_plot2d(whole.out, [p.out for p in parts], overwrite=cfg.overwrite, console=console)
