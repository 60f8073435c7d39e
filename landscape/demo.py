"""`landscape demo`: the whole study on the embedded digits, in minutes on 2 CPU cores.

Trains every registered method (AT, AT-AWP, ...), probes their landscapes over epochs, writes the
Figure-1 figures and `report.html`, and then checks the paper's qualitative claims on the numbers it
just computed, printing each as holding, failing or not significant, with the numbers behind it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich import box
from rich.console import Console
from rich.table import Table

from awp.errors import UserError
from awp.safeio import check_dir, check_output, provenance, signed
from awp.methods import METHODS
from awp.store import open_run
from landscape import figures
from landscape.analysis import GapConfig, RunAnalysis, analyse, check_figures, gap_correlations, landscape_path
from landscape.probe import ProbeConfig, run_probe
from landscape.report import write_report
from landscape.stats import Estimate, paired_bootstrap_diff, verdict


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; `quick` shrinks everything for the test suite (seconds, not minutes)."""

    seed: int = 0
    quick: bool = False
    runs_dir: str = "runs/demo"
    figures_dir: str = "figures"
    report: str = "report.html"
    device: str = "cpu"
    progress: bool = True
    overwrite: bool = False  # replace figures, report and demo runs made with other settings

    def run_paths(self) -> list[Path]:
        suffix = "-quick" if self.quick else ""
        return [Path(self.runs_dir) / f"digits-{m}-seed{self.seed}{suffix}.h5" for m in METHODS]

    def train_flags(self, method: str) -> dict:
        flags = {"dataset": "digits", "method": method, "seed": self.seed, "device": self.device}
        if self.quick:
            flags.update(epochs=8, train_size=100, train_eval_size=100, test_size=200, awp_warmup=2, train_steps=3,
                         eval_steps=3)
        return flags

    def gap_config(self, runs: list[str]) -> GapConfig:
        return GapConfig(
            runs=tuple(runs), every=2 if self.quick else 10, dirs=2 if self.quick else 3, alphas="-1:1:7" if self.quick else "-1:1:11",
            samples=50 if self.quick else 200, seed=self.seed, device=self.device, out_dir=self.figures_dir,
            prefix="demo", progress=self.progress, n_boot=500 if self.quick else 2000, overwrite=self.overwrite,
        )


@dataclass
class Claim:
    text: str
    status: str  # holds | fails | not significant | not measurable
    evidence: str


def _train_all(cfg: DemoConfig, console: Console) -> list[str]:
    from awp.progress import ConsoleReporter
    from awp.train import train
    from awp.trainconfig import resolve_config

    paths = []
    for method, path in zip(METHODS, cfg.run_paths()):
        console.rule(f"training {method}")
        tcfg = resolve_config(cfg.train_flags(method))
        try:  # a finished run from an earlier demo is reused; an interrupted one continues
            train(tcfg, path, resume=True, reporter=ConsoleReporter(quiet=not cfg.progress))
        except UserError as e:
            if "the config differs" not in str(e):
                raise
            if not cfg.overwrite:
                raise UserError(f"{e}; pass --overwrite to train the demo's run again") from None
            console.print(f"{path}: made with other settings; training it again")
            train(tcfg, path, overwrite=True, reporter=ConsoleReporter(quiet=not cfg.progress))
        paths.append(str(path))
    return paths


FIGURES = ("demo-curves.png", "demo-landscapes.png", "demo-gap-vs-sharpness.png")


def check_outputs(cfg: DemoConfig) -> str:
    """Before training: the runs, figures and report may be written; returns the figures' provenance tag."""
    from awp.train import check_run_output

    runs = cfg.run_paths()
    check_dir(cfg.runs_dir, "--runs-dir")
    for run in runs:
        check_run_output(run, resume=True, overwrite=False)
    fig_tag = check_figures(cfg.gap_config([str(r) for r in runs]), list(FIGURES), "demo", "--figures-dir")
    report = Path(cfg.report)
    check_output(report, "--report", inputs=runs, overwrite=cfg.overwrite, writes="report",
                 tag=provenance("report", runs, report.parent))
    return fig_tag


def _correct(run: str, epoch: int, device: str) -> np.ndarray:
    """Per-test-example robust correctness of a run's checkpoint under its evaluation attack."""
    from awp.evaluate import robust_correct
    from awp.trainconfig import TrainConfig

    reader = open_run(run)
    tcfg = TrainConfig.from_dict(reader.config)
    _, test = reader.datasets()
    model = reader.build_model(epoch, device)
    return robust_correct(model, test, tcfg.eval_attack, device=device, seed=tcfg.seed).numpy().astype(float)


def _sig(est: Estimate, what: str) -> str:
    return f"{what} {est.value:+.3f}, 95% CI [{est.lo:+.3f}, {est.hi:+.3f}] (paired bootstrap over test examples)"


def _all(statuses: list[str]) -> str:
    """A claim of several parts: it fails if a part fails, else it is only as strong as its weakest part."""
    for s in ("fails", "not measurable", "not significant"):
        if s in statuses:
            return s
    return "holds"


def check_claims(cfg: DemoConfig, analyses: list[RunAnalysis], corr: dict[str, Estimate], gap_cfg: GapConfig) -> list[Claim]:
    """The paper's four qualitative findings, judged on this run's numbers."""
    by = {a.curves.config["method"]: a for a in analyses}
    cache: dict[tuple[str, int], np.ndarray] = {}

    def correct(run: Path, epoch: int) -> np.ndarray:  # claims (1) and (3) share AT's last checkpoint
        if (str(run), epoch) not in cache:
            cache[str(run), epoch] = _correct(str(run), epoch, cfg.device)
        return cache[str(run), epoch]

    claims = []
    sharp = gap_cfg.sharpness

    # (1) AT: test robustness peaks then falls, the gap grows, the landscape sharpens after the best epoch.
    at = by.get("at")
    if at is not None and at.curves.best_epoch is not None and at.curves.last_epoch is not None:
        c, b, l = at.curves, at.curves.best_epoch, at.curves.last_epoch
        drop = paired_bootstrap_diff(correct(c.path, b), correct(c.path, l),
                                     seed=cfg.seed)
        gap_b, gap_l = c.at(b, c.gap), c.at(l, c.gap)
        s = dict(zip(at.epochs.tolist(), at.sharpness[sharp]))
        before = [v for e, v in s.items() if e <= b and np.isfinite(v)]
        after = [v for e, v in s.items() if e > b and np.isfinite(v)]
        parts = [
            verdict(drop) if b < l else "fails",
            "holds" if gap_l > gap_b else "fails",
            ("holds" if np.mean(after) > np.mean(before) else "fails") if before and after else "not measurable",
        ]
        status = _all(parts)
        claims.append(Claim(
            "(1) AT: test robustness peaks then falls while the gap grows; the landscape sharpens after the best epoch",
            status,
            f"best epoch {b} of {l}; {_sig(drop, 'test robust acc best - last')} -> {parts[0]}; "
            f"gap best {gap_b:+.3f} -> last {gap_l:+.3f} -> {parts[1]}; mean {sharp} before/at best "
            f"{np.mean(before) if before else float('nan'):.4f}, after {np.mean(after) if after else float('nan'):.4f} -> {parts[2]}",
        ))

    # (2) gap and sharpness correlate positively across epochs.
    sp = corr["spearman"]
    claims.append(Claim(
        "(2) robust generalization gap and sharpness correlate positively across epochs",
        {"holds": "holds", "fails": "fails"}.get(verdict(sp), "not significant"),
        "; ".join(f"{k} {v}" for k, v in corr.items()) + " (bootstrap 95% intervals over (run, epoch) points)",
    ))

    # (3) AT-AWP: smaller final gap, flatter final landscape, higher last-epoch test robust accuracy than AT.
    awp = by.get("at-awp")
    if at is not None and awp is not None:
        la, lw = at.curves.last_epoch, awp.curves.last_epoch
        gap_a, gap_w = at.curves.at(la, at.curves.gap), awp.curves.at(lw, awp.curves.gap)
        s_a = float(at.sharpness[sharp][at.epochs == la][0])
        s_w = float(awp.sharpness[sharp][awp.epochs == lw][0])
        better = paired_bootstrap_diff(correct(awp.curves.path, lw),
                                       correct(at.curves.path, la), seed=cfg.seed)
        parts = ["holds" if gap_w < gap_a else "fails", "holds" if s_w < s_a else "fails", verdict(better)]
        claims.append(Claim(
            "(3) AT-AWP ends with a smaller gap, a flatter landscape and higher last-epoch test robustness than AT",
            _all(parts),
            f"final gap AT {gap_a:+.3f} vs AT-AWP {gap_w:+.3f} -> {parts[0]}; final {sharp} AT {s_a:.4f} vs "
            f"AT-AWP {s_w:.4f} -> {parts[1]}; {_sig(better, 'last test robust acc AT-AWP - AT')} -> {parts[2]}",
        ))

    # (4) the on-the-fly landscape lies above the fixed-adversarial-example one (AT, last checkpoint).
    if at is not None:
        fixed_path = landscape_path(at.curves.path).with_name(at.curves.path.stem + ".fixed-adv.h5")
        pcfg = ProbeConfig(
            checkpoint=str(at.curves.path), epochs="last", alphas=gap_cfg.alphas, dirs=gap_cfg.dirs,
            steps=at.landscapes.config["attack"]["steps"], samples=gap_cfg.samples, seed=gap_cfg.seed,
            device=cfg.device, fixed_adv=True, out=str(fixed_path), png=str(fixed_path.with_suffix(".png")),
            progress=False,
        )
        fixed = run_probe(pcfg, console=Console(quiet=True)).results
        last = int(np.flatnonzero(at.epochs == at.curves.last_epoch)[0])
        fly = np.nanmean(at.landscapes.values["adv_loss"][last], axis=0)  # [A], mean over directions
        fix = np.nanmean(fixed.values["adv_loss"][0], axis=0)
        off = at.landscapes.alphas != 0
        diff = fly[off] - fix[off]
        claims.append(Claim(
            "(4) the on-the-fly landscape lies above the fixed-adversarial-example landscape",
            "holds" if (diff >= 0).all() and (diff > 0).any() else "fails",
            f"AT last epoch, mean over {gap_cfg.dirs} directions: on-the-fly - fixed at alpha != 0 ranges "
            f"{diff.min():+.4f} .. {diff.max():+.4f}; at |alpha| = 1: {fly[0]:.3f} vs {fix[0]:.3f}, {fly[-1]:.3f} vs {fix[-1]:.3f}",
        ))
    return claims


def print_table(analyses: list[RunAnalysis], corr: dict[str, Estimate], sharp: str, console: Console) -> None:
    table = Table(box=box.SIMPLE_HEAD, title="digits: best and last test robust accuracy, final gap and sharpness")
    for col in ("method", "best epoch", "best test rob.", "last test rob.", "last test nat.", "final gap", f"final {sharp}"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for a in analyses:
        c = a.curves
        b, l = c.best_epoch, c.last_epoch
        s = a.sharpness[sharp][a.epochs == l]
        table.add_row(c.label, str(b), f"{c.at(b, c.test_adv):.3f}", f"{c.at(l, c.test_adv):.3f}",
                      f"{c.at(l, c.test_nat):.3f}", f"{c.at(l, c.gap):+.3f}", f"{float(s[0]) if len(s) else float('nan'):.4f}")
    console.print(table)
    console.print("gap-sharpness correlation over (run, epoch) points: "
                  + "; ".join(f"{k} {v}" for k, v in corr.items()))


def run_demo(cfg: DemoConfig, console: Console | None = None) -> list[Claim]:
    console = console or (Console() if sys.stdout.isatty() else Console(width=130))
    t0 = time.perf_counter()
    fig_tag = check_outputs(cfg)
    torch.set_num_threads(1)  # the digits models are tiny: one thread is as fast and keeps the machine usable
    runs = _train_all(cfg, console)
    console.rule("weight loss landscapes (PGD on the fly)")
    gap_cfg = cfg.gap_config(runs)
    analyses = analyse(gap_cfg, console if cfg.progress else None)
    corr = gap_correlations(analyses, gap_cfg.sharpness, gap_cfg.n_boot, cfg.seed)
    out = Path(cfg.figures_dir)
    with signed(fig_tag):
        files = [
            figures.learning_curves_png([a.curves for a in analyses], out / FIGURES[0]),
            figures.landscapes_png(analyses, out / FIGURES[1]),
            figures.scatter_png(analyses, gap_cfg.sharpness, corr, out / FIGURES[2]),
        ]
    files.append(write_report(gap_cfg, cfg.report, title="AWP weight-loss-landscape demo on digits", analyses=analyses))
    console.rule("results")
    print_table(analyses, corr, gap_cfg.sharpness, console)
    claims = check_claims(cfg, analyses, corr, gap_cfg)
    console.rule("the paper's claims, on this run")
    for c in claims:
        colour = {"holds": "green", "fails": "red"}.get(c.status, "yellow")
        console.print(f"[bold]{c.text}[/bold]: [{colour}]{c.status}[/{colour}]")
        console.print(f"    {c.evidence}", soft_wrap=True, highlight=False)
    console.print(f"figures: {', '.join(str(f) for f in files)}")
    console.print(f"done in {time.perf_counter() - t0:.0f} s")
    return claims
