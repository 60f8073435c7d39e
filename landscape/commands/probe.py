"""`landscape probe`: the 1-D weight loss landscape of Eq. 5 / Algorithm 1, with repeated directions
(Appendix B.2), for one or many checkpoints, resumable, with sharpness numbers and a Figure-1-style PNG.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from awp import __version__
from awp.attacks import AttackConfig
from awp.config import check_positive_int, resolve_device
from awp.data import class_stratified_subset
from awp.errors import Interrupted, UserError
from awp.safeio import check_output, exclusive, provenance, same_file, signed
from awp.stopping import graceful_stop, stop_requested
from landscape.core import coords
from landscape.core import engine
from landscape.core import sharpness as metrics
from landscape.storage.sources import Source, open_source
from landscape.core.directions import random_direction
from landscape.commands.options import LandscapeOptions
from landscape.storage.results import FORMAT, ProbeResults, refuse_if_stale

# Keys that change only how the numbers are shown, not the numbers: a resumed probe may change them.
VIEW_KEYS = ("radius", "fit_radius")


@dataclass(frozen=True)
class ProbeConfig(LandscapeOptions):
    """Every option of `landscape probe`: the shared ones plus the alpha axis, the directions, the
    fixed-adversarial ablation and the sharpness radius (None: half the alpha range on the shorter side)."""

    alphas: str = "-1:1:41"  # MIN:MAX:NUM, Figure 1's range
    dirs: int = 10  # Appendix B.2 repeats the plot along 10 directions
    fixed_adv: bool = False  # the ablation: examples made once at w and reused
    radius: float | None = None  # |alpha| of the sharpness rise
    png: str | None = None  # default: beside the results file

    def __post_init__(self) -> None:
        super().__post_init__()
        alphas = coords.parse_centred_range(self.alphas, "--alphas")  # MIN < 0 < MAX, 0 itself on the grid
        if len(alphas) < metrics.MIN_FIT_POINTS:
            raise UserError(f"--alphas {self.alphas!r} has {len(alphas)} points; the curvature fit needs at least "
                            f"{metrics.MIN_FIT_POINTS}")
        check_positive_int(self.dirs, "--dirs")
        if self.radius is not None:
            metrics.check_radius(alphas, self.radius)


@dataclass
class ProbeOutcome:
    results_path: Path
    png_path: Path
    results: ProbeResults
    points: int  # points computed by this call
    seconds: float


# ---------------------------------------------------------------------------------------------
# Resolution: threat model, config recorded in the file, data
# ---------------------------------------------------------------------------------------------


def resolve_attack(cfg: ProbeConfig, trained: AttackConfig | None, source: str) -> AttackConfig:
    """--eps/--pgd-step/--norm, defaulting to the training threat model the file records (its L2 random
    start included; the reference's for a file that records none)."""
    norm = cfg.norm or (trained.norm if trained else "linf")
    if cfg.steps == 0 and cfg.eps is None and trained is None:  # the natural landscape needs no radius
        return AttackConfig(norm=norm, eps=0.0, step_size=0.0, steps=0)
    if cfg.eps is None:
        if trained is None:
            raise UserError(f"{source!r} does not record its training threat model; give --eps (and --norm, --pgd-step)")
        if norm != trained.norm:
            raise UserError(f"--norm {norm} differs from the training threat model ({trained.norm}); give --eps too")
        eps = trained.eps
        step = cfg.step_size if cfg.step_size is not None else trained.step_size
    else:
        eps = cfg.eps
        step = cfg.step_size if cfg.step_size is not None else eps / 4  # the paper's 2/255 for 8/255
    l2_start = trained.l2_start if trained is not None else AttackConfig.l2_start
    return AttackConfig(norm=norm, eps=eps, step_size=step, steps=cfg.steps, l2_start=l2_start)


def recorded_config(cfg: ProbeConfig, source: Source, attack: AttackConfig, alphas: np.ndarray) -> dict[str, Any]:
    """Everything that decides the numbers in the results file (JSON-normalized)."""
    radius = metrics.default_radius(alphas) if cfg.radius is None else cfg.radius
    if cfg.radius is None:
        metrics.check_radius(alphas, radius)
    rec = {
        "checkpoint": str(source.path),
        "kind": source.kind,
        "epochs": [c.ident.epoch for c in source.checkpoints],
        "arch": source.arch,
        "dataset": source.dataset,
        "alphas": [float(alphas[0]), float(alphas[-1]), len(alphas)],
        "dirs": cfg.dirs,
        "seed": cfg.seed,
        "normalize": cfg.normalize,
        "include_bn": cfg.include_bn,
        "attack": asdict(attack),
        "split": cfg.split,
        "samples": cfg.samples,
        "batch_size": cfg.batch_size,
        "fixed_adv": cfg.fixed_adv,
        "bn": cfg.bn,
        "bn_batches": cfg.bn_batches if cfg.bn == "recalibrate" else 0,
        "radius": radius,
        "fit_radius": radius / 2,
    }
    return json.loads(json.dumps(rec))


def _open_results(cfg: ProbeConfig, out: Path, source: Source, config: dict[str, Any], alphas: np.ndarray) -> ProbeResults:
    """A new results object, or the existing file's when it was made with the same settings and weights."""
    idents = [c.ident for c in source.checkpoints]
    if out.exists() and not cfg.overwrite:
        try:
            old = ProbeResults.load(out)
        except UserError:
            raise UserError(f"{str(out)!r} exists and is not a probe results file; choose another -o or pass --overwrite") from None
        old.check_resumable(out)  # an older format version lacks the standard errors
        stale = [c.label for c, o in zip(idents, old.checkpoints) if (c.epoch, c.sha256) != (o.epoch, o.sha256)]
        refuse_if_stale(out, old.config, config, [f"weights of {', '.join(stale[:3])}"] if stale else [], VIEW_KEYS)
        old.config = config  # a new radius only changes the sharpness view
        return old
    return ProbeResults(alphas=alphas, seed=cfg.seed, dirs=cfg.dirs, checkpoints=idents, config=config)


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


class PointBar:
    """A rich progress bar over (checkpoint, direction, alpha) points with ETA, on stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("points"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not enabled, transient=False,
        )
        self.task = self.progress.add_task("probe", total=total)

    def __enter__(self) -> "PointBar":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def describe(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def advance(self) -> None:
        self.progress.advance(self.task)


# ---------------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------------


def probe_data(cfg: ProbeConfig, source: Source, attack: AttackConfig, device: torch.device):
    """Fixed batches with their random starts, and the clean inputs BN recalibration uses."""
    train_ds, test_ds = source.datasets()
    ds = class_stratified_subset({"train": train_ds, "test": test_ds}[cfg.split], cfg.samples, cfg.seed)
    batches = engine.fixed_batches(ds, cfg.batch_size, attack, seed=cfg.seed, device=device)
    bn_inputs: list[torch.Tensor] = []
    if cfg.bn == "recalibrate":
        calib = class_stratified_subset(train_ds, cfg.bn_batches * cfg.batch_size, cfg.seed + 1)
        natural = AttackConfig(attack.norm, attack.eps, attack.step_size, steps=0)
        bn_inputs = [b.x for b in engine.fixed_batches(calib, cfg.batch_size, natural, cfg.seed, device)]
    return batches, bn_inputs, len(ds)


def _curves(
    cfg: ProbeConfig, results: ProbeResults, source: Source, attack: AttackConfig, device: torch.device,
    batches: list[engine.ProbeBatch], bn_inputs: list[torch.Tensor], bar: PointBar,
) -> Iterator[tuple[int, int, float]]:
    """Compute every pending (checkpoint, direction), yielding (c, k, seconds) after each."""
    alphas = results.alphas
    for c, ckpt in enumerate(source.checkpoints):
        todo = results.pending(c)
        if not todo:
            continue
        model = ckpt.build(device).eval()
        with engine.frozen(model):
            base = engine.snapshot(model)
            w_cpu = {n: t.to("cpu") for n, t in base.items()}  # directions come from CPU weights
            fixed = None
            if cfg.fixed_adv:  # the ablation: examples made once against w
                with engine.bn_mode(cfg.bn)(model, bn_inputs):
                    fixed = engine.adversarial_examples(model, batches, attack)
            for k in todo:
                bar.describe(f"{ckpt.ident.label} · dir {k + 1}/{cfg.dirs}")
                d = random_direction(w_cpu, cfg.seed, k, cfg.normalize, cfg.include_bn)  # Alg. 1 lines 2-7
                t0 = time.perf_counter()
                for i, sums in engine.sweep(model, [d], alphas[:, None], batches, attack, base=base, bn=cfg.bn,
                                            bn_inputs=bn_inputs, fixed_adv=fixed):  # Alg. 1 lines 8-16
                    results.set_point(c, k, i, sums.reduce())
                    bar.advance()
                    if stop_requested():  # Ctrl-C: keep the finished points of this direction
                        break
                yield c, k, time.perf_counter() - t0
        del model, base


def _console() -> Console:
    """stdout; 120 columns when it is not a terminal (rich would wrap the table at 80)."""
    return Console() if sys.stdout.isatty() else Console(width=120)


def output_paths(cfg: ProbeConfig) -> tuple[Path, Path]:
    """The results file (default probe-CKPT.h5 in the working directory) and the PNG beside it."""
    out = Path(cfg.out) if cfg.out else Path(f"probe-{Path(cfg.checkpoint).stem}.h5")
    return out, Path(cfg.png) if cfg.png else out.with_suffix(".png")


def check_outputs(cfg: ProbeConfig) -> tuple[Path, Path, str]:
    """Before anything is read or computed: the results file may be created or resumed, the PNG may
    be written (the output rule of `awp.safeio`); returns both paths and the PNG's provenance tag."""
    out, png = output_paths(cfg)
    ckpt = Path(cfg.checkpoint)
    check_output(out, "-o", inputs=[ckpt], overwrite=cfg.overwrite, writes="probe results file", resumes=FORMAT)
    tag = provenance("probe", [out], png.parent)
    if same_file(png, out):
        raise UserError(f"--png {str(png)!r} is the results file itself; choose another path")
    check_output(png, "--png", inputs=[ckpt], overwrite=cfg.overwrite, writes="figure", tag=tag)
    return out, png, tag


def run_probe(cfg: ProbeConfig, console: Console | None = None) -> ProbeOutcome:
    """Probe every selected checkpoint along `dirs` directions, flushing the results file after each
    direction, then write the PNG and print the sharpness table. Ctrl-C stops after the current
    point, keeping every finished one."""
    console = console or _console()
    out, png, tag = check_outputs(cfg)
    with exclusive(out), graceful_stop():
        return _run_probe(cfg, console, out, png, tag)


def _run_probe(cfg: ProbeConfig, console: Console, out: Path, png: Path, tag: str) -> ProbeOutcome:
    t_start = time.perf_counter()
    alphas = coords.parse_centred_range(cfg.alphas, "--alphas")
    device = resolve_device(cfg.device)
    source = open_source(cfg.checkpoint, cfg.epochs, cfg.arch, cfg.dataset, cfg.data_dir)
    attack = resolve_attack(cfg, source.train_attack, str(source.path))
    config = recorded_config(cfg, source, attack, alphas)
    results = _open_results(cfg, out, source, config, alphas)
    results.runtime = {**results.runtime, "device": str(device), "awp": __version__, "torch": torch.__version__}
    total = sum(len(results.pending(c)) for c in range(len(source.checkpoints))) * len(alphas)
    points = 0
    if total:
        batches, bn_inputs, n = probe_data(cfg, source, attack, device)
        results.runtime["examples"] = n
        with PointBar(total, cfg.progress) as bar:
            for c, k, seconds in _curves(cfg, results, source, attack, device, batches, bn_inputs, bar):
                results.seconds[c, k] = seconds
                results.runtime["compute_seconds"] = results.runtime.get("compute_seconds", 0.0) + seconds
                results.save(out)  # flush per (checkpoint, direction): a resume starts here
                points += len(alphas)
                if stop_requested():
                    done = int(results.done.all(axis=-1).sum())
                    raise Interrupted(f"{str(out)!r} keeps {done} of {results.done.shape[0] * results.dirs} "
                                      f"(checkpoint, direction) curves")
    else:
        console.print(f"{out}: every point is already computed; re-rendering")
        results.save(out)  # records a changed --radius
    with signed(tag):
        render(results, png)
    print_summary(results, console, out, png)
    return ProbeOutcome(out, png, results, points, time.perf_counter() - t_start)


def render(results: ProbeResults, png: Path) -> None:
    from landscape.figures.curves import save_probe_png

    save_probe_png(results, png)


def rerender(results_path: str | Path, png: str | None = None, radius: float | None = None,
             console: Console | None = None, overwrite: bool = False) -> ProbeOutcome:
    """`landscape probe --from RESULTS.h5`: redraw the PNG and reprint the table, no computing."""
    console = console or _console()
    path = Path(results_path)
    results = ProbeResults.load(path)
    if radius is not None:
        metrics.check_radius(results.alphas, radius)
        results.config = {**results.config, "radius": radius, "fit_radius": radius / 2}
    out_png = Path(png) if png else path.with_suffix(".png")
    tag = provenance("probe", [path], out_png.parent)
    check_output(out_png, "--png", inputs=[path, results.checkpoints[0].source] if results.checkpoints else [path],
                 overwrite=overwrite, writes="figure", tag=tag)
    with signed(tag):
        render(results, out_png)
    print_summary(results, console, path, out_png)
    return ProbeOutcome(path, out_png, results, 0, 0.0)


def _fmt(v: float, spec: str = ".4f") -> str:
    return "–" if not np.isfinite(v) else format(v, spec)


def print_summary(results: ProbeResults, console: Console, out: Path, png: Path) -> None:
    """The sharpness table (one row per checkpoint) and where the files are."""
    sharp = results.sharpness()
    r = sharp[0].radius if sharp else float("nan")
    att = results.config.get("attack", {})
    table = Table(
        box=box.SIMPLE_HEAD,
        title=(f"sharpness of rho (PGD-{att.get('steps')}, {att.get('norm')}, eps={att.get('eps', float('nan')):.4g})"
               if att.get("steps") else "sharpness of the natural loss (--pgd 0)"),
        caption=f"rise: (rho(r) + rho(-r))/2 - rho(0) at r={r:g}; curvature: rho''(0) of a quadratic fit on "
                f"|alpha| <= {r / 2:g}; ± std across directions; ± se: standard error of the rise over examples "
                f"(points taken as independent)",
    )
    for col in ("checkpoint", "rho(0)", "acc(0)", "rise", "± std", "± se", "curvature", "± std", "dirs"):
        table.add_column(col, justify="left" if col == "checkpoint" else "right")
    i0 = int(np.argmin(np.abs(results.alphas)))
    for c, (ckpt, s) in enumerate(zip(results.checkpoints, sharp)):
        acc0 = results.values["adv_acc"][c, :, i0]
        acc0 = float(np.nanmean(acc0)) if np.isfinite(acc0).any() else float("nan")
        table.add_row(ckpt.label, _fmt(s.rho0), _fmt(acc0, ".3f"), _fmt(s.rise), _fmt(s.rise_std), _fmt(s.rise_se),
                      _fmt(s.curvature, ".3f"), _fmt(s.curvature_std, ".3f"), f"{int(results.done[c].all(axis=-1).sum())}/{results.dirs}")
    console.print(table)
    console.print(f"results: {out}\nfigure:  {png}")
