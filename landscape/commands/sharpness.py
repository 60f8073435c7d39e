"""`landscape sharpness`: the menu of robust sharpness measures (`landscape.core.measures.MEASURES`) at
every checkpoint of a run file or .pt, over every parameter, a glob of them, or each block in turn;
PGD re-run at every perturbed weight point. Resumable value by value; a table, a PNG and an HTML."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import json
import numpy as np
import torch
from rich import box
from rich.console import Console
from rich.table import Table

from awp import __version__
from awp.config import resolve_device
from awp.errors import Interrupted, UserError
from awp.safeio import check_output, exclusive, provenance, same_file, signed
from awp.stopping import graceful_stop, stop_requested
from landscape.commands.options import LandscapeOptions, probe_data, recorded_options, resolve_attack
from landscape.core import engine
from landscape.core import measures as M
from landscape.core.objective import Objective
from landscape.core.scope import parse_globs, scopes as make_scopes
from landscape.pipeline.progress import PointBar
from landscape.storage.measures import FORMAT, MeasureResults
from landscape.storage.results import refuse_if_stale, weights_differ
from landscape.storage.sources import Source, open_source


@dataclass(frozen=True)
class SharpnessConfig(LandscapeOptions):
    """Every option of `landscape sharpness`: the shared landscape options, which measures (None: the
    defaults), over which parameters (`params` globs; `per_layer`: each block in turn), and the measure
    parameters (`MEASURE_PARAMS`; None: the defaults)."""

    measures: str | None = None
    params: str | None = None
    per_layer: bool = False
    measure_params: dict[str, Any] = field(default_factory=dict)
    png: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        M.parse_measures(self.measures)
        parse_globs(self.params)
        M.resolve_params(self.measure_params)
        if self.workers != 1:
            raise UserError(f"--workers {self.workers}: sharpness runs in one process (its measures are sequential); "
                            f"run one command per run file or epoch side by side instead")

    @property
    def names(self) -> tuple[str, ...]:
        return M.parse_measures(self.measures)

    @property
    def resolved_params(self) -> dict[str, Any]:
        """The parameters the chosen measures read (the rest do not decide the numbers)."""
        used = {p for n in self.names for p in M.MEASURES[n].params}
        return {k: v for k, v in M.resolve_params(self.measure_params).items() if k in used}


def output_paths(cfg: SharpnessConfig) -> tuple[Path, Path]:
    out = Path(cfg.out) if cfg.out else Path(f"sharpness-{Path(cfg.checkpoint).stem}.h5")
    return out, Path(cfg.png) if cfg.png else out.with_suffix(".png")


def check_outputs(cfg: SharpnessConfig) -> tuple[Path, Path, str]:
    """Before anything is computed: the results file may be created or resumed, the figures written."""
    out, png = output_paths(cfg)
    ckpt = Path(cfg.checkpoint)
    check_output(out, "-o", inputs=[ckpt], overwrite=cfg.overwrite, writes="sharpness results file", resumes=FORMAT)
    tag = provenance("sharpness", [out], png.parent)
    if same_file(png, out):
        raise UserError(f"--png {str(png)!r} is the results file itself; choose another path")
    for path, flag in ((png, "--png"), (png.with_suffix(".html"), "--png (HTML beside it)")):
        check_output(path, flag, inputs=[ckpt], overwrite=cfg.overwrite, writes="figure", tag=tag)
    return out, png, tag


def resolve_scopes(shapes: dict[str, torch.Size], params: str | None = None, per_layer: bool = False,
                   include_bn: bool = False) -> dict[str, list[str]]:
    """The scopes to measure over, each restricted to the parameters the measures move: weights with
    dim > 1 (AWP's and the directions' default), biases and BN too with `include_bn` (--include-bn)."""
    eligible = [n for n, s in shapes.items() if len(s) > 1 or include_bn]
    out = make_scopes(list(shapes), parse_globs(params), per_layer, eligible)
    keep = set(eligible)
    out = {label: [n for n in names if n in keep] for label, names in out.items()}
    empty = [label for label, names in out.items() if not names]
    if empty:
        raise UserError(f"--params {params!r} matches only biases and BatchNorm parameters ({empty[0]}); "
                        f"add --include-bn to measure them, or choose weights")
    return out


def fresh_results(cfg: SharpnessConfig, source: Source, attack) -> MeasureResults:
    shapes = {n: p.shape for n, p in source.parameters().items()}
    scopes = resolve_scopes(shapes, cfg.params, cfg.per_layer, cfg.include_bn)
    config = json.loads(json.dumps({
        "command": "sharpness", "checkpoint": str(source.path), "kind": source.kind, "arch": source.arch,
        "dataset": source.dataset, "epochs": [c.ident.epoch for c in source.checkpoints],
        "measures": list(cfg.names), "measure_params": cfg.resolved_params, "scopes": scopes,
        **recorded_options(cfg, attack),
    }))
    return MeasureResults([c.ident for c in source.checkpoints], list(cfg.names), scopes, config)


def open_or_resume(out: Path, fresh: MeasureResults, overwrite: bool) -> MeasureResults:
    """`fresh`, or the file's results when it holds the same settings and weights."""
    if not out.exists() or overwrite:
        return fresh
    old = MeasureResults.load(out)
    refuse_if_stale(out, old.config, fresh.config, weights_differ(old.checkpoints, fresh.checkpoints))
    return old


def run_sharpness(cfg: SharpnessConfig, console: Console | None = None) -> MeasureResults:
    """Compute (or resume) every pending measure, save after each value, then draw and print."""
    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
    out, png, tag = check_outputs(cfg)
    source = open_source(cfg.checkpoint, cfg.epochs, cfg.arch, cfg.dataset, cfg.data_dir, arch_kwargs=cfg.arch_kwargs)
    attack = resolve_attack(cfg, source.train_attack, str(source.path))
    device = resolve_device(cfg.device)
    with exclusive(out), graceful_stop():
        results = open_or_resume(out, fresh_results(cfg, source, attack), cfg.overwrite)
        results.runtime.update(device=str(device), awp=__version__, torch=torch.__version__)
        results.save(out)
        if results.pending():
            compute(results, cfg, source, attack, device, flush=lambda: results.save(out))
    with signed(tag):
        from landscape.figures import measures as fig

        figures = fig.render(results, png)
    print_table(results, console)
    console.print(f"results: {out}\nfigures: {', '.join(str(p) for p in figures)}")
    return results


def compute(results: MeasureResults, cfg: SharpnessConfig, source: Source, attack, device: torch.device,
            flush) -> None:
    """The pending values of `results` for the checkpoints of `source` (`measure_pending`)."""
    kernels = cfg.kernels
    kernels.check(device)
    batches, bn_inputs, n = probe_data(cfg, source, attack, device)
    results.runtime["examples"] = n
    measure_pending(results, [c.build for c in source.checkpoints], batches, attack, device,
                    M.resolve_params(cfg.measure_params), cfg.seed, bn=cfg.bn, bn_inputs=bn_inputs, kernels=kernels,
                    progress=cfg.progress, flush=flush)


def measure_pending(results: MeasureResults, builds, batches, attack, device: torch.device, params: dict, seed: int, *,
                    bn: str = "eval", bn_inputs=(), kernels=None, progress: bool = False, flush=lambda: None) -> None:
    """Every pending (checkpoint, measure, scope) value, one checkpoint's model (`builds[c](device)`) at a
    time, measures of one scope sharing their work; `flush` after each value. Ctrl-C stops after the value
    in flight (`Interrupted`), keeping every finished one."""
    from awp.kernels import Kernels

    kernels = kernels or Kernels()
    todo = results.pending()
    labels = results.scope_labels
    with PointBar(len(todo), progress, "sharpness", unit="values") as bar:
        for c in sorted({c for c, _, _ in todo}):
            model = kernels.prepare(builds[c](device)).eval()
            with engine.frozen(model):
                for s in sorted({s for cc, _, s in todo if cc == c}):
                    objective = Objective(model, batches, attack, results.scopes[labels[s]], bn, bn_inputs,
                                          autocast=lambda: kernels.autocast(device))
                    cache: dict = {}
                    for m in [m for cc, m, ss in todo if (cc, ss) == (c, s)]:
                        name = results.measures[m]
                        bar.describe(f"{results.checkpoints[c].label} {labels[s]} {name}")
                        results.set(c, m, s, M.compute(name, objective, params, seed, cache))
                        flush()
                        bar.advance()
                        if stop_requested():
                            raise Interrupted(f"{len(results.pending())} value(s) left; every finished one is kept")


def _fmt(v: float, se: float) -> str:
    if not np.isfinite(v):
        return "–"
    return f"{v:.4g} ± {se:.2g}" if np.isfinite(se) else f"{v:.4g}"


def print_table(results: MeasureResults, console: Console) -> None:
    """A table per checkpoint: one row per measure (value ± its uncertainty), one column per scope."""
    labels = results.scope_labels
    for c, ckpt in enumerate(results.checkpoints):
        table = Table(box=box.SIMPLE_HEAD, title=f"robust sharpness of {ckpt.label} (PGD re-run at every weight point)")
        table.add_column("measure")
        for label in labels:
            table.add_column(label, justify="right")
        table.add_column("±: uncertainty", justify="left")
        table.add_column("ReLU-rescaling invariant")
        for m, name in enumerate(results.measures):
            kind = M.MEASURES[name]
            table.add_row(name, *(_fmt(results.value[c, m, s], results.se[c, m, s]) for s in range(len(labels))),
                          kind.uncertainty, "yes" if kind.invariant else "no")
        console.print(table)
    console.print("; ".join(f"{n}: {M.MEASURES[n].summary}" for n in results.measures), soft_wrap=True, highlight=False)
