"""`landscape report`: one self-contained HTML page per study: configs, learning curves, 1-D landscapes
with an epoch slider, any 2-D landscapes of the runs, gap vs sharpness, and best/last accuracies.

plotly.js is inlined once; the page makes no network request, so it opens offline and can be mailed.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from landscape.figures import study as figures
from awp.safeio import check_output, provenance, signed
from landscape.commands.analysis import (GapConfig, GapTests, MeasureRanking, RunAnalysis, analyse, check_caches,
                                         gap_tests, landscape_path, rank_measures)
from landscape.core.stats import ALPHA
from landscape.storage.results import FORMAT, LEGACY_PLANE, Landscape
from landscape.figures.output import save_text
from landscape.figures.plane import html_figure

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; } td, th { padding: 4px 10px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f8f8f8; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
"""


def find_planes(run: Path) -> list[Landscape]:
    """2-D results files in the run's directory whose checkpoint came from this run (any format version)."""
    found = []
    for p in sorted(run.parent.glob("*.h5")):
        try:
            with h5py.File(p, "r") as f:
                fmt, dims = f.attrs.get("format"), f.attrs.get("dims", "")
        except OSError:
            continue
        if fmt == LEGACY_PLANE or (fmt == FORMAT and "beta" in str(dims)):
            res = Landscape.load(p)
            if res.grid.kind == "plane" and Path(res.checkpoints[0].source).resolve() == run.resolve():
                found.append(res)
    return found


def _fmt(v: float) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"


def accuracy_table(analyses: list[RunAnalysis]) -> str:
    """Best and last natural/robust test accuracy per run (never best alone), with the gap."""
    rows = []
    for a in analyses:
        c = a.curves
        marks = [("best", c.best_epoch), ("last", c.last_epoch)]
        if c.final_epoch != c.last_epoch:
            marks.append(("reported (early-stopped)", c.final_epoch))
        for which, e in marks:
            if e is None:
                continue
            rows.append(
                f"<tr><td>{html.escape(c.label)}</td><td>{html.escape(c.path.name)}</td><td>{which}</td>"
                f"<td class=num>{e}</td><td class=num>{_fmt(c.at(e, c.test_nat))}</td>"
                f"<td class=num>{_fmt(c.at(e, c.test_adv))}</td><td class=num>{_fmt(c.at(e, c.train_adv))}</td>"
                f"<td class=num>{_fmt(c.at(e, c.gap))}</td></tr>"
            )
    head = ("<tr><th>run</th><th>file</th><th></th><th>epoch</th><th>test natural</th><th>test robust</th>"
            "<th>train robust</th><th>gap</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def tests_table(tests: GapTests) -> str:
    """The two tests of gap vs sharpness: statistic, interval, p-value, units and method, or why none."""
    rows = ""
    for t in tests:
        if t.estimate is None:
            rows += f"<tr><td>{t.scope}</td><td colspan=3>no test: {html.escape(t.reason or '')}</td><td>{html.escape(t.units)}</td></tr>"
        else:
            e = t.estimate
            rows += (f"<tr><td>{t.scope}</td><td class=num>{e.value:+.3f}</td><td class=num>[{e.lo:+.3f}, {e.hi:+.3f}]</td>"
                     f"<td class=num>{t.p:.3g}</td><td>{html.escape(t.units)}; {html.escape(t.method)}</td></tr>")
    return (f"<table><tr><th>Spearman (sharpness, gap)</th><th>value</th><th>95% interval</th><th>p</th>"
            f"<th>units and method</th></tr>{rows}</table><p class=note>Within runs: the epoch-to-epoch changes "
            f"(epochs of one run are not independent, both series trend with the epoch). Across runs: each run's "
            f"last epoch, one point per run.</p>")


def evaluations_table(analyses: list[RunAnalysis]) -> str:
    """Every `landscape eval` recorded in the runs: each attack's robust accuracy, its 95% interval over
    test examples, and the per-example worst case over the attacks."""
    from awp.robustness.record import summary_rows
    from awp.store import open_run

    rows = []
    for a in analyses:
        for r in open_run(a.curves.path).evaluations():
            cells = "".join(f"<td class=num>{html.escape(name)} {html.escape(v)}</td>" for name, v in summary_rows(r))
            rows.append(f"<tr><td>{html.escape(a.curves.label)}</td><td>{html.escape(r['checkpoint'].get('label', ''))}</td>"
                        f"<td>{html.escape(r['threat_model'])} {html.escape(r['eps'])}</td>"
                        f"<td class=num>{r['n_examples']}</td>{cells}</tr>")
    if not rows:
        return ""
    return ("<table><tr><th>run</th><th>weights</th><th>threat</th><th>examples</th><th colspan=8>robust accuracy % "
            f"[95% CI] per attack</th></tr>{''.join(rows)}</table><p class=note>From <code>landscape eval</code>; "
            "intervals: Wilson, over test examples. The worst case counts an example robust only if every attack "
            "fails on it.</p>")


def ranking_table(r: MeasureRanking) -> str:
    """The measures ranked by how well they track the gap, with Holm-adjusted p-values over the measures."""
    from landscape.core.measures import MEASURES

    rows = ""
    for rank, i in enumerate(r.order(), 1):
        name = r.measures[i]
        kind = MEASURES.get(name)
        cells = ""
        for sc, adj in (("within", r.within_holm[i]), ("across", r.across_holm[i])):
            t = getattr(r.tests[i], sc)
            if t.estimate is None:
                cells += f"<td colspan=3 class=note>{html.escape(t.reason or '')}</td>"
            else:
                cells += (f"<td class=num>{html.escape(str(t.estimate))}</td><td class=num>{t.p:.3g} / {adj:.3g}</td>"
                          f"<td>{r.verdict(i, sc)}</td>")
        inv = "–" if kind is None else ("yes" if kind.invariant else "no")
        rows += f"<tr><td class=num>{rank}</td><td>{html.escape(name)}</td>{cells}<td>{inv}</td></tr>"
    return (f"<h3>{html.escape(r.setting)}</h3><table><tr><th>rank</th><th>measure</th><th>within runs: Spearman [95%]</th>"
            f"<th>p / Holm</th><th></th><th>across runs: Spearman [95%]</th><th>p / Holm</th><th></th>"
            f"<th>ReLU-rescaling invariant</th></tr>{rows}</table>")


@dataclass
class Section:
    title: str
    body: str


def build_report(analyses: list[RunAnalysis], tests: GapTests, sharpness: str, title: str,
                 rankings: list[MeasureRanking] = ()) -> str:
    import plotly.offline

    def fig_html(fig) -> str:
        return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})

    sections = [Section("Best and last accuracy", accuracy_table(analyses))]
    evaluated = evaluations_table(analyses)
    if evaluated:
        sections.append(Section("Robustness evaluations (FGSM, PGD, CW, AutoAttack)", evaluated))
    sections.append(Section("Learning curves", fig_html(figures.learning_curves_fig([a.curves for a in analyses]))))
    sections.append(Section("Weight loss landscapes (1-D, PGD on the fly; slider: epoch; bands: ±1.96 SE)",
                            "".join(fig_html(figures.landscape_slider_fig(a)) for a in analyses)
                            + "<p class=note>Bands: ±1.96 standard errors. Around a direction: over examples "
                              "(sample std / √n). Around the mean: over directions and examples, SE² = s²/D over "
                              "the D directions plus the mean example SE², a bound on the noise of the examples "
                              "all directions share (at α = 0 every direction is w, so s = 0).</p>"))
    sections.append(Section("Robust generalization gap vs sharpness",
                            fig_html(figures.scatter_fig(analyses, sharpness, tests)) + tests_table(tests)))
    if len({figures.method_of(a) for a in analyses}) > 1:
        sections.append(Section("Across methods (Figure 1b): each run at the checkpoint it reports",
                                fig_html(figures.methods_fig(analyses, sharpness, tests))
                                + "<p class=note>One point per run (seed); AT-ES at its early-stopped epoch, every other "
                                  "method at its last. The Spearman test across runs uses the runs of the test table "
                                  "above (independent trainings as units).</p>"))
    if rankings:
        from landscape.figures import measures as mfig

        body = fig_html(mfig.ranking_html(rankings[0])) + "".join(ranking_table(r) for r in rankings)
        body += (f"<p class=note>Each measure is tested as the x axis above is: Spearman of the epoch-to-epoch changes "
                 f"within runs and of one point per run across runs. p-values are Holm-adjusted over the "
                 f"{len(rankings[0].measures)} measures of each table, so the chance of any false 'holds' in a table is "
                 f"at most {ALPHA:.0%}. Per setting: the runs of one method and dataset.</p>")
        body += "".join(fig_html(mfig.html_figure(a.measures, f"{a.curves.label} · {a.curves.path.stem}"))
                        for a in analyses if a.measures is not None)
        sections.append(Section("Which sharpness measure tracks the robust gap", body))
    planes = [(a, p) for a in analyses for p in find_planes(a.curves.path)]
    if planes:
        body = ""
        for a, p in planes:
            att = p.config["attack"]
            t = f"{a.curves.label} {p.checkpoints[0].label}: |g(α,β) − g(0,0)|, PGD-{att['steps']}"
            grids = {k: v[0] for k, v in p.values.items()}
            body += fig_html(html_figure(p.grid.axis("alpha"), p.grid.axis("beta"), grids, p.relative()[0], t))
        sections.append(Section("2-D landscapes", body))
    configs = "".join(
        f"<details><summary>{html.escape(a.curves.label)} — {html.escape(str(a.curves.path))}</summary>"
        f"<pre>{html.escape(json.dumps(a.curves.config, indent=2, sort_keys=True))}</pre>"
        f"<p class=note>landscape probe: {html.escape(json.dumps(a.landscapes.config, sort_keys=True))}</p></details>"
        for a in analyses
    )
    sections.append(Section("Configurations", configs))
    body = "".join(f"<h2>{html.escape(s.title)}</h2>\n{s.body}\n" for s in sections)
    js = plotly.offline.get_plotlyjs()
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style><script type=\"text/javascript\">{js}</script></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def write_report(cfg: GapConfig, out: str | Path, title: str = "Weight loss landscape report",
                 analyses: list[RunAnalysis] | None = None, tests: GapTests | None = None) -> Path:
    """Analyse the runs (reusing cached landscapes) and write the page atomically; every output is
    checked before anything is computed. `tests`: the gap-vs-sharpness tests to show (default: over
    every run)."""
    out = Path(out)
    tag = check_report(cfg, out) if analyses is None else provenance("report", cfg.runs, out.parent)
    analyses = analyses if analyses is not None else analyse(cfg)
    tests = tests if tests is not None else gap_tests(analyses, cfg.sharpness, cfg.seed)
    rankings = rank_measures(analyses, cfg.tested, cfg.seed) if cfg.measures else []
    page = build_report(analyses, tests, cfg.sharpness, title, rankings)
    with signed(tag):
        return save_text(page, out)


def check_report(cfg: GapConfig, out: Path) -> str:
    """The page may be written at `out` and the landscape caches beside the runs; returns its tag."""
    tag = provenance("report", cfg.runs, out.parent)
    caches = [landscape_path(r) for r in cfg.runs]
    check_output(out, "-o", inputs=[*cfg.runs, *caches], overwrite=cfg.overwrite, writes="report", tag=tag)
    check_caches(cfg)
    return tag
