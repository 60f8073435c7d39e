"""Issue 7 end to end on a reduced demo: claims, caching, figures, and the offline HTML report in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from html.parser import HTMLParser

import numpy as np
import pytest

from conftest import run_cli
from landscape.core import engine
from landscape.commands.demo import DemoConfig, run_demo

STATUSES = {"holds", "fails", "not significant", "not measurable"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(seeds=(0, 1), quick=True, runs_dir=str(d / "runs"), figures_dir=str(d / "figures"),
                     report=str(d / "report.html"), progress=False, workers=2)  # the process pool's path
    outcome = run_demo(cfg)
    return cfg, outcome, d


def test_demo_judges_every_claim_per_seed_and_over_seeds(demo):
    cfg, outcome, d = demo
    assert set(outcome.per_seed) == {0, 1}
    for claims in outcome.per_seed.values():
        assert [c.key for c in claims] == ["1", "2a", "3", "4", "5"]
    assert [c.key for c in outcome.study] == ["1", "2a", "2b", "3", "4", "5"]
    for c in [*outcome.study, *(c for cs in outcome.per_seed.values() for c in cs)]:
        assert c.status in STATUSES and c.parts
        for p in c.parts:  # every part is decided from an interval, or says why it cannot be
            assert (p.estimate is not None) or p.note, p
    one = outcome.per_seed[0]
    assert "paired bootstrap" in one[0].evidence and "not used to choose it" in one[0].evidence
    assert "permutations within runs" in one[1].evidence
    assert "t interval over seeds" in outcome.study[3].evidence
    # across runs: AT, AT-AWP and the four Figure 1(b) methods of both seeds; natural is not in the test
    assert "12 runs, one point each" in outcome.study[2].evidence
    five = outcome.per_seed[0][4]
    assert [p.what for p in five.parts] == [f"{k} {m} - AT" for m in ("trades", "mart", "rst", "at-es") for k in ("gap", "rise")]
    assert "independently" in five.parts[6].method  # AT-ES trained on other examples (its validation split)
    for name in ("demo-curves.png", "demo-landscapes.png", "demo-gap-vs-sharpness.png", "demo-methods.png"):
        assert (d / "figures" / name).stat().st_size > 5000
    runs = sorted((d / "runs").glob("digits-*-quick.h5"))
    assert {p.name.split("-seed")[0].removeprefix("digits-") for p in runs} == set(cfg.labels)
    assert {p.name.split("-seed")[1][0] for p in runs} == {"0", "1"}


def test_second_analysis_computes_nothing(demo, monkeypatch):
    from landscape.commands.analysis import analyse

    cfg, _, d = demo
    runs = [str(p) for p in sorted((d / "runs").glob("digits-*-quick.h5"))]

    def forbidden(*a, **k):
        raise AssertionError("a cached landscape was recomputed")

    monkeypatch.setattr(engine, "evaluate_at", forbidden)
    main = [r for r in runs if "-at-seed" in r or "-at-awp-seed" in r]
    analyses = analyse(cfg.gap_config(main))  # AT and AT-AWP: over epochs
    analyses += analyse(cfg.gap_config([r for r in runs if r not in main], zoo=True))  # the zoo: as probed
    assert len(analyses) == len(runs) and all(a.landscapes.done.all() for a in analyses)
    assert {len(a.epochs) for a in analyses[len(main):]} == {1}


def test_gap_command_prints_both_tests(demo):
    cfg, _, d = demo
    runs = sorted(str(p) for p in (d / "runs").glob("digits-at*-seed*-quick.h5") if "-at-es-" not in str(p))
    r = run_cli("gap", *runs, "--every", "2", "--dirs", "2", "--alphas", "-1:1:7", "--samples", "50",
                "--out-dir", str(d / "gapfigs"), "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert re.search(r"within runs: Spearman [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\], p = [\d.e-]+ \(\d+ "
                     r"epoch-to-epoch changes in 4 runs", r.stdout), r.stdout
    assert "across runs: 4 runs; a test across runs needs at least 5" in r.stdout
    assert (d / "gapfigs" / "gap-vs-sharpness.html").exists() and (d / "gapfigs" / "gap-curves.png").exists()


def test_gap_ranks_many_measures_per_setting_and_caches_them(demo, monkeypatch, tmp_path):
    from landscape.commands.analysis import GapConfig, measures_path
    from landscape.commands.gap import run_gap
    from landscape.core import objective

    cfg, _, d = demo
    runs = sorted(str(p) for p in (d / "runs").glob("digits-at*-seed*-quick.h5") if "-at-es-" not in str(p))
    gcfg = GapConfig(runs=tuple(runs), every=2, dirs=2, alphas="-1:1:7", samples=20, device="cpu", progress=False,
                     measures="curvature,flatness-worst,hessian-top", out_dir=str(tmp_path), prefix="m")
    out = run_gap(gcfg)
    assert sorted(r.setting for r in out.rankings) == ["all runs", "at on digits", "at-awp on digits"]
    for r in out.rankings:
        assert r.measures == ("rise", "curvature", "flatness-worst", "hessian-top")
        assert sorted(r.order()) == [0, 1, 2, 3]
        ps = [t.within.p for t in r.tests]
        assert all(p is not None for p in ps)
        assert all(h >= p for h, p in zip(r.within_holm, ps))  # an adjustment never lowers a p-value
    assert all(measures_path(run).exists() for run in runs)
    a = out.analyses[0]
    assert np.isfinite(a.sharpness["hessian-top"]).all() and np.isfinite(a.sharpness_se["flatness-worst"]).all()
    assert (tmp_path / "m-measures.png").stat().st_size > 5000

    def forbidden(*args, **kw):
        raise AssertionError("a cached measure was recomputed")

    monkeypatch.setattr(objective.Objective, "rho", forbidden)
    again = run_gap(replace(gcfg, prefix="m2"))
    assert again.rankings[0].within_holm == out.rankings[0].within_holm


class _Checker(HTMLParser):
    """Collects tags and flags anything that would reach the network."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "source", "wbr", "embed", "track", "param"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.remote: list[str] = []
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for k, v in attrs:
            if k in ("src", "href") and v and re.match(r"(https?:)?//", v):
                self.remote.append(f"{tag} {k}={v}")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
            if tag in self.stack:
                while self.stack and self.stack.pop() != tag:
                    pass
        else:
            self.stack.pop()


def test_report_is_well_formed_and_self_contained(demo):
    _, _, d = demo
    page = (d / "report.html").read_text()
    p = _Checker()
    p.feed(page)
    p.close()
    assert not p.errors and not p.stack
    assert not p.remote, p.remote  # no script or stylesheet from the network
    assert p.tags["script"] >= 5 and p.tags["table"] >= 2 and p.tags["details"] >= 2
    assert "Plotly" in page and "cdn.plot.ly" not in page.split("</head>")[1]


BENIGN = ("willReadFrequently", "GL Driver Message", "swiftshader", "WebGL")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium not installed (apt-get install chromium); CI installs it")
def test_report_renders_in_chromium(demo, tmp_path):
    _, _, d = demo
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--enable-unsafe-swiftshader",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000",
           "--window-size=1200,2400"]
    r = subprocess.run(cmd + ["--dump-dom", (d / "report.html").as_uri()], capture_output=True, text=True, timeout=180)
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line and not any(b in line for b in BENIGN)]
    assert not console, console
    # Every plot div was drawn by plotly (it adds its SVG layers), not left empty.
    n_divs = r.stdout.count('class="plotly-graph-div')
    assert n_divs >= 3 and r.stdout.count('class="main-svg"') >= n_divs
    shot = tmp_path / "report.png"
    subprocess.run(cmd + [f"--screenshot={shot}", (d / "report.html").as_uri()], capture_output=True, timeout=180)
    assert shot.stat().st_size > 20_000


def test_report_includes_2d_landscapes_and_evaluations_of_its_runs(demo, tmp_path):
    from landscape.commands.evaluate import EvalConfig, run_eval
    from landscape.commands.plot2d import Plot2DConfig, run_plot2d
    from landscape.commands.report import write_report

    cfg, _, d = demo
    # AT and AT-AWP, probed over epochs by the demo already (the zoo was probed at one checkpoint each)
    runs = sorted(str(p) for p in (d / "runs").glob("digits-at*-seed*-quick.h5") if "-at-es-" not in str(p))
    run_plot2d(Plot2DConfig(checkpoint=runs[0], grid="3x3", steps=1, samples=20, device="cpu",
                            out=str(Path(runs[0]).with_name("twod.h5")), progress=False))
    run_eval(EvalConfig(checkpoint=runs[0], attacks="fgsm,pgd3", samples=30, device="cpu",
                        out=str(tmp_path / "ev.json"), progress=False))
    page = write_report(cfg.gap_config(runs), tmp_path / "r.html").read_text()
    evaluations = page.split("<h2>Robustness evaluations")[1].split("<h2>")[0]
    assert evaluations.count("<tr><td>") == 1 and "pgd3" in evaluations and "worst case" in evaluations
    section = page.split("<h2>2-D landscapes</h2>")[1].split("<h2>")[0]
    assert section.count('class="plotly-graph-div') == 1  # the one 2-D result of these runs
