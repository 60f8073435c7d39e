"""`landscape probe`: the 1-D weight loss landscape of Eq. 5 / Algorithm 1, along repeated random
directions (Appendix B.2), the line to another checkpoint (of this run or another file), the top
Hessian eigenvectors, AWP's direction or the training trajectory's principal directions, for one or
many checkpoints, moving every parameter, those of `--params`, or each block in turn (`--per-layer`);
resumable, torchrun-ready, with every sharpness measure and a Figure-1-style PNG and HTML. A
configuration of the one pipeline (`landscape.pipeline.run`): [checkpoint, direction, alpha] coordinates.
`plan_directions` resolves the direction specs for plot2d too."""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import torch

from rich import box
from rich.console import Console
from rich.table import Table

from awp.config import check_positive_int
from awp.errors import UserError
from awp.perturb import AWPConfig
from awp.safeio import check_output, provenance, same_file, signed
from landscape.commands.options import LandscapeOptions, job_for, recorded_options, resolve_attack
from landscape.core import axes
from landscape.core import sharpness as sharp
from landscape.core import scope
from landscape.core.directions import (DIRECTIONS, SCALE_OF_NORMALIZE, awp_spec, check_fits, found_text,
                                       hessian_specs, moved_names, pca_direction, pca_specs, random_specs, scoped,
                                       trajectory_pca)
from landscape.pipeline.run import Outcome, Plan, execute
from landscape.storage.results import FORMAT, LEGACY_PROBE, Grid, Landscape, check_size
from landscape.storage.sources import Source, open_source

# Keys that change only how the numbers are shown, not the numbers: a resumed probe may change them.
VIEW_KEYS = ("radius",)


# --gamma of an awp direction when not given: AWPConfig's 5e-3 (Section 5.1: WideResNets; the digits and
# PreAct ResNet-18 runs of this toolkit train with 1e-2). With one ascent step from v = 0 (K2 = A = 1) it
# changes only AWP's point alpha = gamma, not the direction.
DEFAULT_GAMMA = AWPConfig.gamma
# Kinds whose scale is their own: --normalize (random and hessian) does not apply to them.
OWN_SCALE = {"interpolate": "w_to - w", "awp": "v_l / ||v_l|| * ||w_l|| per layer",
             "pca": "the trajectory spans alpha in [-1, 1]"}


@dataclass(frozen=True)
class ProbeConfig(LandscapeOptions):
    """Every option of `landscape probe`: the shared ones plus the alpha axis, the directions (their kind,
    how many, what they move), the fixed-adversarial ablation and the sharpness radius (None: half the
    alpha range on the shorter side)."""

    alphas: str = "-1:1:41"  # MIN:MAX:NUM, Figure 1's range
    dirs: int | None = None  # per scope; None: the kind's default (random 10, as Appendix B.2; the others 1)
    direction: str = "random"  # a kind of `DIRECTIONS` that the CLI makes
    to: str | None = None  # interpolate: an epoch of the same run (best, last, N), OTHER.h5[:EPOCH] or a .pt
    gamma: float | None = None  # awp: gamma of Eq. 8 (None: DEFAULT_GAMMA)
    params: str | tuple[str, ...] | None = None  # globs on parameter names: only these move (None: all)
    per_layer: bool = False  # each block in turn, --dirs directions each
    fixed_adv: bool = False  # the ablation: examples made once at w and reused
    radius: float | None = None  # |alpha| of the sharpness rise
    png: str | None = None  # default: beside the results file

    def __post_init__(self) -> None:
        super().__post_init__()
        alphas = axes.parse_centred_range(self.alphas, "--alphas")  # MIN < 0 < MAX, 0 itself on the grid
        if len(alphas) < sharp.MIN_FIT_POINTS:
            raise UserError(f"--alphas {self.alphas!r} has {len(alphas)} points; the curvature fit needs at least "
                            f"{sharp.MIN_FIT_POINTS}")
        kind = DIRECTIONS.lookup(self.direction)
        if not kind.cli:
            raise UserError(f"--direction {self.direction} is for the Python API (given tensors); "
                            f"the CLI accepts {', '.join(n for n, k in DIRECTIONS.items() if k.cli)}")
        if self.dirs is not None:
            check_positive_int(self.dirs, "--dirs")
            if kind.max_dirs is not None and self.dirs > kind.max_dirs:
                what = "is one line" if kind.max_dirs == 1 else f"gives at most {kind.max_dirs} directions"
                raise UserError(f"--direction {self.direction} {what}; drop --dirs {self.dirs}")
        check_directions(self.direction, self.normalize, self.gamma)
        if self.direction == "interpolate" and self.to is None:
            raise UserError("--direction interpolate needs --to: an epoch of the same run (best, last, N), "
                            "OTHER.h5[:EPOCH] or a .pt")
        if self.direction != "interpolate" and self.to is not None:
            raise UserError(f"--to is for --direction interpolate, not {self.direction}")
        scope.parse_globs(self.params)
        if self.radius is not None:
            sharp.check_radius(alphas, self.radius)

    @property
    def n_dirs(self) -> int:
        """Directions per scope: --dirs, or the kind's default."""
        return self.dirs if self.dirs is not None else DIRECTIONS.lookup(self.direction).dirs


def check_directions(kind: str, normalize: str, gamma: float | None) -> None:
    """--normalize and --gamma only where the kind uses them (one line otherwise)."""
    if gamma is not None and kind != "awp":
        raise UserError(f"--gamma is for --direction awp, not {kind}")
    if kind == "awp":
        awp_spec(DEFAULT_GAMMA if gamma is None else gamma)
    if kind in OWN_SCALE and normalize != LandscapeOptions.normalize:
        raise UserError(f"--normalize {normalize} is for random and hessian directions; --direction {kind} has its "
                        f"own scale ({OWN_SCALE[kind]})")


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


# ---------------------------------------------------------------------------------------------
# Directions: specs, with what some kinds find when planned (PCA) and the weights others lead to
# ---------------------------------------------------------------------------------------------


@dataclass
class Planned:
    """The direction specs of a landscape (what the config records), what was found for some when
    planned (`found[k][c]`, e.g. a PC's explained variance and the trajectory's coordinates), the tensors
    of those that cannot be rebuilt (`stored[(c, k)]`), and the weights interpolate lines lead to."""

    specs: list[dict[str, Any]]
    found: dict[int, dict[int, dict]] = field(default_factory=dict)
    stored: dict[tuple[int, int], dict[str, torch.Tensor]] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)

    def recorded(self) -> list[dict[str, Any]]:
        """The specs as the results file keeps them: with what was found, per checkpoint."""
        out = copy.deepcopy(self.specs)
        for k, per in self.found.items():
            out[k]["found"] = {str(c): f for c, f in per.items()}
        return out


def _scopes(kind: str, params: Mapping[str, torch.Tensor], globs: Sequence[str], per_layer: bool,
            include_bn: bool) -> list[tuple[str | None, list[str]]]:
    """[(block or None, parameter names)]: the one scope of the globs (every parameter without them), or
    one per block with a parameter the kind moves (`scope.scopes`)."""
    names = list(params)
    moves = DIRECTIONS.lookup(kind).moves_1d or include_bn
    eligible = [n for n in names if moves or params[n].dim() > 1]
    if per_layer:
        return list(scope.scopes(names, globs, per_layer=True, eligible=eligible).items())
    chosen = scope.matching(names, globs)
    if not set(chosen) & set(eligible):
        raise UserError(f"--params {','.join(globs)} matches only 1-D parameters ({', '.join(chosen[:4])}), which "
                        f"--direction {kind} moves only with --include-bn")
    return [(None, chosen)]


def _trajectory(source: Source) -> tuple[list[int], Any]:
    """The saved epochs of a run file and its reader; fewer than 3 is a one-line error saying how to keep more."""
    from awp.store import open_run

    if source.kind != "run":
        raise UserError(f"--direction pca takes the training trajectory from a run file's saved checkpoints; "
                        f"{str(source.path)!r} is a single {source.kind} checkpoint")
    reader = open_run(source.path)
    saved = [e for e in reader.epochs_saved() if reader.last_epoch is None or e <= reader.last_epoch]
    if len(saved) < 3:
        raise UserError(f"--direction pca needs at least 3 saved checkpoints of the run for 2 principal directions; "
                        f"{source.path.name} has {len(saved)} (epochs {', '.join(map(str, saved)) or 'none'}): "
                        f"train with `landscape train-awp --save-every N` (e.g. 1) to keep more")
    return saved, reader


def _interpolation_target(cfg: LandscapeOptions, to: str, source: Source):
    """The one checkpoint `--to` names: an epoch of the same run (best, last, N), OTHER.h5 (its reported,
    i.e. last, epoch), OTHER.h5:EPOCH, or a .pt file."""
    word = to.strip().lower()
    if word in ("best", "last", "best_val", "reported", "all") or word.isdigit() or word.startswith("every:"):
        path, epoch = cfg.checkpoint, to
    else:
        path, epoch = to, None
        if not Path(to).is_file() and ":" in to and Path(to.rsplit(":", 1)[0]).is_file():
            path, epoch = to.rsplit(":", 1)
        if not Path(path).is_file():
            raise UserError(f"--to {to!r} is neither an epoch of this run (best, last, N) nor a checkpoint file "
                            f"(OTHER.h5, OTHER.h5:EPOCH or a .pt)")
    other = str(Path(path).resolve()) != str(Path(cfg.checkpoint).resolve())
    run = h5py.is_hdf5(path)
    epoch = epoch if epoch is not None else ("reported" if run else "last")
    try:  # a run file or an export knows its architecture; a bare state dict takes this checkpoint's
        target = open_source(path, epoch, None if other else cfg.arch, None if other else cfg.dataset, cfg.data_dir,
                             arch_kwargs=None if other else cfg.arch_kwargs).checkpoints
    except UserError:
        if not other or run:
            raise
        target = open_source(path, epoch, source.arch, source.dataset, cfg.data_dir, arch_kwargs=cfg.arch_kwargs).checkpoints
    if len(target) != 1:
        raise UserError(f"--to {to!r} selects {len(target)} checkpoints; give best, last or one epoch number")
    ident = target[0].ident
    if other:
        ident = replace(ident, label=f"{Path(path).name} {ident.label}")
    return ident, target[0].build


def plan_directions(cfg: LandscapeOptions, source: Source, kind: str, n: int, *, to: str | None = None,
                    gamma: float | None = None, globs: Sequence[str] = (), per_layer: bool = False,
                    plane: bool = False) -> Planned:
    """The direction specs of `kind`, `n` per scope (the globs' or each block's), checked against the
    checkpoint's parameters before anything is written. For a plane (plot2d) the kind gives both axes,
    except awp (one direction: e is the random direction 1, as plot2d's default e)."""
    check_directions(kind, cfg.normalize, gamma)
    seed, include_bn = cfg.seed, cfg.include_bn
    if kind == "random" and not globs and not per_layer:
        return Planned(random_specs(n, seed, cfg.normalize, include_bn))  # Alg. 1 lines 2-7; nothing to load
    params = source.parameters()
    if kind == "interpolate":
        ident, build = _interpolation_target(cfg, to, source)
        check_fits({name: p for name, p in build(torch.device("cpu")).named_parameters()}, params, f"the target {ident.label}")
        base = [{"kind": "interpolate", "to": asdict(ident)}]
        planned = Planned([], targets={ident.sha256: build})
    elif kind == "random":
        base, planned = random_specs(n, seed, cfg.normalize, include_bn), Planned([])
    elif kind == "hessian":
        base, planned = hessian_specs(n, seed, SCALE_OF_NORMALIZE[cfg.normalize], include_bn), Planned([])
    elif kind == "awp":
        base = [awp_spec(DEFAULT_GAMMA if gamma is None else gamma, include_bn)]
        base += random_specs(1, seed, cfg.normalize, include_bn, start=1) if plane else []
        planned = Planned([])
    elif kind == "pca":
        saved, reader = _trajectory(source)
        points = [(e, reader.state_dict(e)) for e in saved]  # the trajectory, in training order
        base, planned = pca_specs(saved, n, include_bn), Planned([])
    else:
        raise UserError(f"--direction {kind} is for the Python API (given tensors)")
    for block, names in _scopes(kind, params, globs, per_layer, include_bn):
        start = len(planned.specs)
        specs = [scoped(b, names, globs, block) for b in base]
        planned.specs += specs
        moved = moved_names(specs[0], params)
        size = sum(params[m].numel() for m in moved)
        where = f" of {block}" if block else (f" of --params {','.join(globs)}" if globs else "")
        if kind == "hessian" and not n < size:
            raise UserError(f"--dirs {n}: Lanczos finds at most {size - 1} eigenvectors of the Hessian over the "
                            f"{size} weights{where}")
        if kind == "pca":
            pca = trajectory_pca(points, moved, components=2)
            for k in range(n):
                for c, ckpt in enumerate(source.checkpoints):
                    d, found = pca_direction(pca, k, ckpt.ident.epoch)
                    planned.stored[(c, start + k)] = d
                    planned.found.setdefault(start + k, {})[c] = found
    return planned


def plan(cfg: ProbeConfig) -> Plan:
    """Everything checked and resolved, nothing computed: what `execute` runs."""
    out, png, tag = check_outputs(cfg)
    alphas = axes.parse_centred_range(cfg.alphas, "--alphas")
    source = open_source(cfg.checkpoint, cfg.epochs, cfg.arch, cfg.dataset, cfg.data_dir, arch_kwargs=cfg.arch_kwargs)
    attack = resolve_attack(cfg, source.train_attack, str(source.path))
    check_size(len(source.checkpoints), ("--dirs", "--alphas"), (cfg.n_dirs, len(alphas)))  # before any allocation
    planned = plan_directions(cfg, source, cfg.direction, cfg.n_dirs, to=cfg.to, gamma=cfg.gamma,
                              globs=scope.parse_globs(cfg.params), per_layer=cfg.per_layer)
    specs, targets = planned.specs, planned.targets
    radius = sharp.default_radius(alphas) if cfg.radius is None else cfg.radius
    sharp.check_radius(alphas, radius)
    config = json.loads(json.dumps({
        "command": "probe", "checkpoint": str(source.path), "kind": source.kind, "arch": source.arch,
        "dataset": source.dataset, "epochs": [c.ident.epoch for c in source.checkpoints],
        "alphas": [float(alphas[0]), float(alphas[-1]), len(alphas)], "dirs": len(specs), "directions": specs,
        "fixed_adv": cfg.fixed_adv, "radius": radius, **recorded_options(cfg, attack),
    }))
    fresh = Landscape(Grid.curves(alphas, len(specs)), planned.recorded(), [c.ident for c in source.checkpoints], config,
                      stored=planned.stored)
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


def found_lines(results: Landscape) -> list[str]:
    """One line per checkpoint naming what its directions' kinds found (eigenvalues with their residuals,
    fractions of variance, AWP's ||v|| / ||w||); none for random directions and lines."""
    lines = []
    for c, ckpt in enumerate(results.checkpoints):
        parts = [t for t in (found_text(spec, c) for spec in results.directions) if t]
        if parts:
            lines.append(f"{ckpt.label}: {'; '.join(parts)}")
    return lines


def print_summary(results: Landscape, console: Console, out: Path, figures: list[Path]) -> None:
    """The sharpness table (one row per checkpoint, and per block with --per-layer; a column group per
    measure), what the directions' kinds found, and where the files are."""
    from landscape.figures.curves import subset

    groups = scope.by_block(results.directions)
    blocks = groups[0][0] is not None
    parts = [(block, results if block is None else subset(results, rows)) for block, rows in groups]
    summaries = {block: part.sharpness() for block, part in parts}
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
    if blocks:
        table.add_column("block", justify="left")
    for col in ("rho(0)", "acc(0)"):
        table.add_column(col, justify="right")
    for name, m in sharp.SHARPNESS.items():
        table.add_column(name, justify="right")
        table.add_column("± std", justify="right")
        if m.mean_se is not None:
            table.add_column("± se", justify="right")
    table.add_column("dirs", justify="right")
    for c, ckpt in enumerate(results.checkpoints):
        acc0 = results.origin["adv_acc"][c]
        for block, part in parts:
            s = summaries[block][c]
            cells = [ckpt.label] + ([block] if blocks else []) + [_fmt(s.rho0), _fmt(acc0, ".3f")]
            for name, m in sharp.SHARPNESS.items():
                cells += [_fmt(s.mean[name]), _fmt(s.std[name])] + ([_fmt(s.se[name])] if m.mean_se is not None else [])
            cells.append(f"{int(part.done[c].all(axis=-1).sum())}/{part.dirs}")
            table.add_row(*cells)
    console.print(table)
    for line in found_lines(results):
        console.print(line, soft_wrap=True, highlight=False)
    console.print(f"results: {out}\nfigures: {', '.join(str(p) for p in figures)}")
