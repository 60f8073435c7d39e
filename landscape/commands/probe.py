"""`landscape probe`: the 1-D weight loss landscape of Eq. 5 / Algorithm 1, along repeated random
directions (Appendix B.2) or the line to another checkpoint, for one or many checkpoints; resumable,
torchrun-ready, with every sharpness measure and a Figure-1-style PNG and HTML. A configuration of
the one pipeline (`landscape.pipeline.run`): [checkpoint, direction, alpha] coordinates."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rich import box
from rich.console import Console
from rich.table import Table

from awp.config import check_positive_int
from awp.errors import UserError
from awp.safeio import check_output, provenance, same_file, signed
from landscape.commands.options import LandscapeOptions, job_for, recorded_options, resolve_attack
from landscape.core import axes
from landscape.core import sharpness as sharp
from landscape.core.directions import DIRECTIONS, random_specs
from landscape.pipeline.run import Outcome, Plan, execute
from landscape.storage.results import FORMAT, LEGACY_PROBE, Grid, Landscape, check_size
from landscape.storage.sources import Source, open_source

# Keys that change only how the numbers are shown, not the numbers: a resumed probe may change them.
VIEW_KEYS = ("radius",)


@dataclass(frozen=True)
class ProbeConfig(LandscapeOptions):
    """Every option of `landscape probe`: the shared ones plus the alpha axis, the directions, the
    fixed-adversarial ablation and the sharpness radius (None: half the alpha range on the shorter side)."""

    alphas: str = "-1:1:41"  # MIN:MAX:NUM, Figure 1's range
    dirs: int = 10  # Appendix B.2 repeats the plot along 10 directions
    direction: str = "random"  # a kind of `DIRECTIONS`: random, or interpolate (the line to --to)
    to: str | None = None  # interpolate: the epoch of the same run the line leads to (best, last, N)
    fixed_adv: bool = False  # the ablation: examples made once at w and reused
    radius: float | None = None  # |alpha| of the sharpness rise
    png: str | None = None  # default: beside the results file

    def __post_init__(self) -> None:
        super().__post_init__()
        alphas = axes.parse_centred_range(self.alphas, "--alphas")  # MIN < 0 < MAX, 0 itself on the grid
        if len(alphas) < sharp.MIN_FIT_POINTS:
            raise UserError(f"--alphas {self.alphas!r} has {len(alphas)} points; the curvature fit needs at least "
                            f"{sharp.MIN_FIT_POINTS}")
        check_positive_int(self.dirs, "--dirs")
        kind = DIRECTIONS.lookup(self.direction)
        if not kind.regenerable:
            raise UserError(f"--direction {self.direction} is for the Python API (given tensors); "
                            f"the CLI accepts {', '.join(n for n, k in DIRECTIONS.items() if k.regenerable)}")
        if self.direction == "interpolate" and self.to is None:
            raise UserError("--direction interpolate needs --to EPOCH (best, last or a number of the same run)")
        if self.direction != "interpolate" and self.to is not None:
            raise UserError(f"--to is for --direction interpolate, not {self.direction}")
        if self.radius is not None:
            sharp.check_radius(alphas, self.radius)


def output_paths(cfg: ProbeConfig) -> tuple[Path, Path]:
    """The results file (default probe-CKPT.h5 in the working directory) and the PNG beside it."""
    out = Path(cfg.out) if cfg.out else Path(f"probe-{Path(cfg.checkpoint).stem}.h5")
    return out, Path(cfg.png) if cfg.png else out.with_suffix(".png")


def check_outputs(cfg: ProbeConfig) -> tuple[Path, Path, str]:
    """Before anything is read or computed: the results file may be created or resumed, the PNG may
    be written (the output rule of `awp.safeio`); returns both paths and the PNG's provenance tag."""
    out, png = output_paths(cfg)
    ckpt = Path(cfg.checkpoint)
    check_output(out, "-o", inputs=[ckpt], overwrite=cfg.overwrite, writes="landscape results file", resumes=(FORMAT, LEGACY_PROBE))
    tag = provenance("probe", [out], png.parent)
    if same_file(png, out):
        raise UserError(f"--png {str(png)!r} is the results file itself; choose another path")
    check_output(png, "--png", inputs=[ckpt], overwrite=cfg.overwrite, writes="figure", tag=tag)
    check_output(png.with_suffix(".html"), "--png (HTML beside it)", inputs=[ckpt], overwrite=cfg.overwrite,
                 writes="figure", tag=tag)
    return out, png, tag


def directions_for(cfg: ProbeConfig, source: Source) -> tuple[list[dict[str, Any]], dict]:
    """The direction specs and, for interpolate, the weights they lead to (by sha256)."""
    if cfg.direction == "random":
        return random_specs(cfg.dirs, cfg.seed, cfg.normalize, cfg.include_bn), {}
    if cfg.dirs != 1 and cfg.dirs != ProbeConfig.dirs:
        raise UserError(f"--direction interpolate is one line; drop --dirs {cfg.dirs}")
    target = open_source(cfg.checkpoint, cfg.to, cfg.arch, cfg.dataset, cfg.data_dir, arch_kwargs=cfg.arch_kwargs).checkpoints
    if len(target) != 1:
        raise UserError(f"--to {cfg.to!r} selects {len(target)} checkpoints; give best, last or one epoch number")
    return [{"kind": "interpolate", "to": asdict(target[0].ident)}], {target[0].ident.sha256: target[0].build}


def plan(cfg: ProbeConfig) -> Plan:
    """Everything checked and resolved, nothing computed: what `execute` runs."""
    out, png, tag = check_outputs(cfg)
    alphas = axes.parse_centred_range(cfg.alphas, "--alphas")
    source = open_source(cfg.checkpoint, cfg.epochs, cfg.arch, cfg.dataset, cfg.data_dir, arch_kwargs=cfg.arch_kwargs)
    attack = resolve_attack(cfg, source.train_attack, str(source.path))
    check_size(len(source.checkpoints), ("--dirs", "--alphas"), (cfg.dirs, len(alphas)))  # before any allocation
    specs, targets = directions_for(cfg, source)
    radius = sharp.default_radius(alphas) if cfg.radius is None else cfg.radius
    sharp.check_radius(alphas, radius)
    config = json.loads(json.dumps({
        "command": "probe", "checkpoint": str(source.path), "kind": source.kind, "arch": source.arch,
        "dataset": source.dataset, "epochs": [c.ident.epoch for c in source.checkpoints],
        "alphas": [float(alphas[0]), float(alphas[-1]), len(alphas)], "dirs": len(specs), "directions": specs,
        "fixed_adv": cfg.fixed_adv, "radius": radius, **recorded_options(cfg, attack),
    }))
    fresh = Landscape(Grid.curves(alphas, len(specs)), specs, [c.ident for c in source.checkpoints], config)
    return Plan(
        out=out, results=fresh, tag=tag, view_keys=VIEW_KEYS,
        job=lambda results, device: job_for(cfg, source, attack, results, device, len(alphas), cfg.fixed_adv, targets),
        render=lambda results, _out: render(results, png),
        summary=lambda results, _out, figures, console: print_summary(results, console, out, figures),
    )


def run_probe(cfg: ProbeConfig, console: Console | None = None) -> Outcome | None:
    """Probe every selected checkpoint along its directions, flushing the results file after each
    direction (per process), then write the PNG and HTML and print the sharpness table. Ctrl-C stops
    after the current chunk, keeping every finished point. None on ranks other than 0."""
    return execute(lambda: plan(cfg), device=cfg.device, overwrite=cfg.overwrite, progress=cfg.progress,
                   console=console or _console())


def _console() -> Console:
    """stdout; 120 columns when it is not a terminal (rich would wrap the table at 80)."""
    return Console() if sys.stdout.isatty() else Console(width=120)


def render(results: Landscape, png: Path) -> list[Path]:
    """The probe's PNG and, beside it, its interactive HTML."""
    return [*results.plot(png), results.html(png.with_suffix(".html"))]


def rerender(results_path: str | Path, png: str | None = None, radius: float | None = None,
             console: Console | None = None, overwrite: bool = False) -> Outcome:
    """`landscape probe --from RESULTS.h5`: redraw the PNG and HTML and reprint the table, no computing."""
    path = Path(results_path)
    results = Landscape.load(path)
    if results.grid.kind != "curves":
        raise UserError(f"{str(path)!r} holds a {results.grid.kind} landscape; redraw it with `landscape plot2d --from`")
    if radius is not None:
        sharp.check_radius(results.alphas, radius)
        results.config = {**results.config, "radius": radius}
    out_png = Path(png) if png else path.with_suffix(".png")
    tag = provenance("probe", [path], out_png.parent)
    inputs = [path, Path(results.checkpoints[0].source)] if results.checkpoints else [path]
    for fig, flag in ((out_png, "--png"), (out_png.with_suffix(".html"), "--png (HTML beside it)")):
        check_output(fig, flag, inputs=inputs, overwrite=overwrite, writes="figure", tag=tag)
    with signed(tag):
        figures = render(results, out_png)
    print_summary(results, console or _console(), path, figures)
    return Outcome(path, results, 0, 0.0, figures)


def _fmt(v: float, spec: str = ".4f") -> str:
    return "–" if not np.isfinite(v) else format(v, spec)


def print_summary(results: Landscape, console: Console, out: Path, figures: list[Path]) -> None:
    """The sharpness table (one row per checkpoint, a column group per measure) and where the files are."""
    summaries = results.sharpness()
    r = results.radius()
    att = results.config.get("attack", {})
    captions = "; ".join(f"{name}: {m.summary}" for name, m in sharp.SHARPNESS.items())
    table = Table(
        box=box.SIMPLE_HEAD,
        title=(f"sharpness of rho (PGD-{att.get('steps')}, {att.get('norm')}, eps={att.get('eps', float('nan')):.4g})"
               if att.get("steps") else "sharpness of the natural loss (--pgd 0)"),
        caption=f"r = {r:g}. {captions}. ± std: across directions; ± se: standard error over examples "
                f"(points taken as independent)",
    )
    table.add_column("checkpoint", justify="left")
    for col in ("rho(0)", "acc(0)"):
        table.add_column(col, justify="right")
    for name, m in sharp.SHARPNESS.items():
        table.add_column(name, justify="right")
        table.add_column("± std", justify="right")
        if m.mean_se is not None:
            table.add_column("± se", justify="right")
    table.add_column("dirs", justify="right")
    for c, (ckpt, s) in enumerate(zip(results.checkpoints, summaries)):
        acc0 = results.origin["adv_acc"][c]
        cells = [ckpt.label, _fmt(s.rho0), _fmt(acc0, ".3f")]
        for name, m in sharp.SHARPNESS.items():
            cells += [_fmt(s.mean[name]), _fmt(s.std[name])] + ([_fmt(s.se[name])] if m.mean_se is not None else [])
        cells.append(f"{int(results.done[c].all(axis=-1).sum())}/{results.dirs}")
        table.add_row(*cells)
    console.print(table)
    console.print(f"results: {out}\nfigures: {', '.join(str(p) for p in figures)}")



