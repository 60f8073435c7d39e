"""`landscape plot2d`: the 2-D landscape g(alpha, beta) = rho(w + alpha d + beta e) (Appendix B.2, Figure 6),
with PGD on the fly at every grid point, resumable, and split across torchrun ranks. A configuration
of the one pipeline (`landscape.pipeline.run`): [checkpoint, alpha, beta] coordinates, d and e being
`probe`'s random directions 0 and 1 for the same seed; the origin g(0, 0) is computed once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from awp.errors import UserError
from awp.safeio import check_output, provenance, signed
from landscape.commands.options import LandscapeOptions, job_for, recorded_options, resolve_attack
from landscape.core.directions import random_specs
from landscape.core.axes import GridSpec, parse_grid, parse_ranges
from landscape.pipeline.run import Outcome, Plan, execute
from landscape.storage.results import FORMAT, LEGACY_PLANE, Grid, Landscape
from landscape.storage.sources import open_source


@dataclass(frozen=True)
class Plot2DConfig(LandscapeOptions):
    """Every option of `landscape plot2d`: the shared ones plus the grid."""

    grid: str = "21x21"  # points along alpha x points along beta
    range: str = "-1:1,-1:1"  # AMIN:AMAX,BMIN:BMAX

    def __post_init__(self) -> None:
        super().__post_init__()
        self.spec()

    def spec(self) -> GridSpec:
        na, nb = parse_grid(self.grid)
        ar, br = parse_ranges(self.range)
        return GridSpec(na, nb, ar, br)


def figure_paths(out: Path) -> list[Path]:
    """Contour PNG, surface PNG and interactive HTML, beside the results file."""
    return [out.with_name(out.stem + "-contour.png"), out.with_name(out.stem + "-surface.png"), out.with_suffix(".html")]


def plan(cfg: Plot2DConfig) -> Plan:
    """Validate paths, arguments and files the way a single process would, computing nothing: run
    first by `--workers` in the launching process, then by every rank."""
    spec = cfg.spec()
    out = Path(cfg.out) if cfg.out else Path(f"plot2d-{Path(cfg.checkpoint).stem}.h5")
    ckpt = Path(cfg.checkpoint)
    check_output(out, "-o", inputs=[ckpt], overwrite=cfg.overwrite, writes="landscape results file", resumes=(FORMAT, LEGACY_PLANE))
    tag = provenance("plot2d", [out], out.parent)
    for fig in figure_paths(out):
        check_output(fig, "-o (figures beside it)", inputs=[ckpt], overwrite=cfg.overwrite, writes="figure", tag=tag)
    source = open_source(cfg.checkpoint, cfg.epochs, cfg.arch, cfg.dataset, cfg.data_dir, arch_kwargs=cfg.arch_kwargs)
    if len(source.checkpoints) != 1:
        raise UserError(f"plot2d draws one checkpoint; --epoch {cfg.epochs!r} selects {len(source.checkpoints)}: "
                        f"give best, last or one epoch number")
    attack = resolve_attack(cfg, source.train_attack, str(source.path))
    specs = random_specs(2, cfg.seed, cfg.normalize, cfg.include_bn)  # d, e: Alg. 1 lines 2-7, twice
    config = json.loads(json.dumps({
        "command": "plot2d", "checkpoint": str(source.path), "arch": source.arch, "dataset": source.dataset,
        "grid": [spec.n_alpha, spec.n_beta], "alpha_range": list(spec.alpha_range), "beta_range": list(spec.beta_range),
        "directions": specs, **recorded_options(cfg, attack),
    }))
    fresh = Landscape(Grid.plane(spec.alphas, spec.betas), specs, [source.checkpoints[0].ident], config)
    return Plan(
        out=out, results=fresh, tag=tag,
        job=lambda results, device: job_for(cfg, source, attack, results, device, 4),
        render=lambda results, out_: results.plot(out_) + [results.html(out_.with_suffix(".html"))],
        summary=lambda results, out_, figures, console: console.print(
            f"results: {out_}\nfigures: {', '.join(str(p) for p in figures)}"),
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
    tag = provenance("plot2d", [path], path.parent)
    for fig in figure_paths(path):
        check_output(fig, "--from (figures beside it)", inputs=[path], overwrite=overwrite, writes="figure", tag=tag)
    with signed(tag):
        figures = results.plot(path) + [results.html(path.with_suffix(".html"))]
    (console or Console(stderr=True)).print(f"figures: {', '.join(str(p) for p in figures)}")
    return figures
