"""`landscape gap`: the Figure 1 analysis for one or more runs: curves, landscapes, gap vs sharpness."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rich import box
from rich.console import Console
from rich.table import Table

from landscape.figures import study as figures
from awp.safeio import signed
from landscape.commands.analysis import (GapConfig, GapTests, MeasureRanking, RunAnalysis, analyse, check_caches,
                                         check_figures, gap_tests, rank_measures)
from landscape.core.stats import ALPHA
from landscape.figures.output import save_plotly_html


@dataclass
class GapOutcome:
    analyses: list[RunAnalysis]
    tests: GapTests
    files: list[Path]
    rankings: list[MeasureRanking] = field(default_factory=list)


def run_gap(cfg: GapConfig, console: Console | None = None) -> GapOutcome:
    """Probe (or reuse) the landscapes of every run, correlate sharpness with the gap, draw figures."""
    console = console or (Console() if sys.stdout.isatty() else Console(width=120))
    p = cfg.prefix
    names = [f"{p}-curves.png", f"{p}-landscapes.png", f"{p}-vs-sharpness.png", f"{p}-curves.html",
             f"{p}-vs-sharpness.html", *(f"{p}-landscapes-{i}.html" for i in range(len(cfg.runs)))]
    if cfg.measures:
        names += [f"{p}-measures.png", f"{p}-measures.html"]
    tag = check_figures(cfg, names, "gap")
    check_caches(cfg)
    analyses = analyse(cfg, console if cfg.progress else None)
    tests = gap_tests(analyses, cfg.sharpness, cfg.seed)
    rankings = rank_measures(analyses, cfg.tested, cfg.seed) if cfg.measures else []
    out = Path(cfg.out_dir)
    with signed(tag):
        files = _draw(analyses, tests, cfg, out)
        if rankings:
            from landscape.figures import measures as mfig

            files += mfig.render_ranking(rankings[0], out / f"{p}-measures.png")
    print_gap(analyses, tests, cfg.sharpness, console)
    for r in rankings:
        print_ranking(r, console)
    console.print("figures: " + ", ".join(str(f) for f in files))
    return GapOutcome(analyses, tests, files, rankings)


def _draw(analyses: list[RunAnalysis], tests: GapTests, cfg: GapConfig, out: Path) -> list[Path]:
    p = cfg.prefix
    files = [
        figures.learning_curves_png([a.curves for a in analyses], out / f"{p}-curves.png"),
        figures.landscapes_png(analyses, out / f"{p}-landscapes.png"),
        figures.scatter_png(analyses, cfg.sharpness, tests, out / f"{p}-vs-sharpness.png"),
        save_plotly_html(figures.learning_curves_fig([a.curves for a in analyses]), out / f"{p}-curves.html"),
        save_plotly_html(figures.scatter_fig(analyses, cfg.sharpness, tests), out / f"{p}-vs-sharpness.html"),
    ]
    files += [save_plotly_html(figures.landscape_slider_fig(a), out / f"{p}-landscapes-{i}.html")
              for i, a in enumerate(analyses)]
    return files


def print_gap(analyses: list[RunAnalysis], tests: GapTests, sharpness: str, console: Console) -> None:
    table = Table(box=box.SIMPLE_HEAD, title=f"robust generalization gap vs {sharpness}")
    for col in ("run", "epoch", "train rob.", "test rob.", "gap ± se", sharpness, "± se", ""):
        table.add_column(col, justify="left" if col in ("run", "") else "right")
    for a in analyses:
        for e, g, g_se, s, se in zip(a.epochs, a.gap, a.gap_se, a.sharpness[sharpness], a.sharpness_se[sharpness]):
            mark = "best" if e == a.curves.best_epoch else ("last" if e == a.curves.last_epoch else "")
            table.add_row(a.curves.label, str(e), f"{a.curves.at(e, a.curves.train_adv):.3f}",
                          f"{a.curves.at(e, a.curves.test_adv):.3f}",
                          f"{g:+.3f} ± {g_se:.3f}" if np.isfinite(g_se) else f"{g:+.3f}", f"{s:.4f}",
                          f"{se:.4f}" if np.isfinite(se) else "–", mark)
    console.print(table)
    console.print("± se: over examples (binomial for the gap; PGD on the fly for the sharpness, whose spread over "
                  "directions is in the probe table)", soft_wrap=True, highlight=False)
    for t in tests:
        console.print(t.summary(), soft_wrap=True, highlight=False)


def _cell(t) -> tuple[str, str]:
    if t.estimate is None:
        return "–", "–"
    return str(t.estimate), f"{t.p:.3g}"


def print_ranking(r: MeasureRanking, console: Console) -> None:
    """Measures ranked by how well they track the gap: Spearman of the changes within runs and of the
    final points across runs, each with its 95% interval, p and Holm-adjusted p over the measures."""
    table = Table(box=box.SIMPLE_HEAD, title=f"which sharpness measure tracks the robust gap ({r.setting})",
                  caption=f"Spearman [95% interval]; p and Holm-adjusted p over the {len(r.measures)} measures "
                          f"(a 'holds' needs adjusted p < {ALPHA}); within: epoch-to-epoch changes, across: one point per run")
    scopes = [sc for sc in ("within", "across") if any(getattr(t, sc).estimate is not None for t in r.tests)]
    table.add_column("rank", justify="right")
    table.add_column("measure")
    for sc in scopes:
        for col in (f"{sc} runs", "p", "p (Holm)", ""):
            table.add_column(col, justify="left" if col == "" else "right")
    for rank, i in enumerate(r.order(), 1):
        cells = [str(rank), r.measures[i]]
        for sc in scopes:
            t, adj = getattr(r.tests[i], sc), (r.within_holm if sc == "within" else r.across_holm)[i]
            est, p = _cell(t)
            cells += [est, p, "–" if adj is None else f"{adj:.3g}", r.verdict(i, sc) or "–"]
        table.add_row(*cells)
    console.print(table)
    reasons = dict.fromkeys(f"{t.scope}: {t.reason}" for pair in r.tests for t in pair if t.estimate is None)
    for line in reasons:  # e.g. too few runs for a test across runs: said once, not per measure
        console.print(line, soft_wrap=True, highlight=False)
