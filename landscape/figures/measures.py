"""Figures of a sharpness results file: one panel per measure, the value against the epoch with one
line per scope (all parameters, a glob, or each block: sharpness by layer over epochs), error bars of
+-1.96 of each value's uncertainty; with one checkpoint, one bar per scope. PNG and offline HTML."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from landscape.core.measures import MEASURES  # noqa: E402
from landscape.core.sharpness import BAND_Z  # noqa: E402
from landscape.figures.output import save_plotly_html, save_png  # noqa: E402
from landscape.storage.measures import MeasureResults  # noqa: E402


def _x(results: MeasureResults) -> tuple[np.ndarray, str]:
    """Epochs when every checkpoint has one, else the checkpoint order."""
    e = results.epochs
    return (e, "epoch") if np.isfinite(e).all() else (np.arange(len(e), dtype=float), "checkpoint")


def _layout(n: int) -> tuple[int, int]:
    cols = min(3, n)
    return math.ceil(n / cols), cols


def figure(results: MeasureResults):
    """The matplotlib figure: a panel per measure."""
    rows, cols = _layout(len(results.measures))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    x, xlabel = _x(results)
    labels = results.scope_labels
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(1, len(labels))))
    single = len(results.checkpoints) == 1
    for i, name in enumerate(results.measures):
        ax = axes[i // cols][i % cols]
        kind = MEASURES[name] if name in MEASURES else None
        for s, label in enumerate(labels):
            v, se = results.value[:, i, s], results.se[:, i, s]
            err = np.where(np.isfinite(se), BAND_Z * se, 0.0)
            if single:
                ax.bar([s], v, yerr=err, color=colours[s], capsize=3)
            else:
                ax.errorbar(x, v, yerr=err, color=colours[s], marker="o", ms=3, capsize=2, lw=1.2,
                            label=label if len(labels) > 1 else None)
        if single:
            ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center", fontsize=7)
        else:
            ax.set_xlabel(xlabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{name}" + ("" if kind is None else f" ({'rescaling-invariant' if kind.invariant else 'not invariant'})"),
                     fontsize=9)
        ax.set_ylabel(kind.label if kind else name, fontsize=8)
        ax.grid(alpha=0.3)
        if i == 0 and len(labels) > 1 and not single:
            ax.legend(fontsize=6, ncol=2, title="scope", title_fontsize=6)
    for j in range(len(results.measures), rows * cols):
        axes[j // cols][j % cols].axis("off")
    ckpts = results.checkpoints
    fig.suptitle(f"robust sharpness of {Path(ckpts[0].source).name} ({len(ckpts)} checkpoint(s)); "
                 f"bars: ±{BAND_Z} × uncertainty", fontsize=10)
    fig.tight_layout()
    return fig


def html_figure(results: MeasureResults, title: str | None = None):
    """The same panels in plotly, hover showing value, uncertainty and scope."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    rows, cols = _layout(len(results.measures))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=results.measures)
    x, xlabel = _x(results)
    labels = results.scope_labels
    single = len(results.checkpoints) == 1
    for i, name in enumerate(results.measures):
        r, c = i // cols + 1, i % cols + 1
        for s, label in enumerate(labels):
            v, se = results.value[:, i, s], results.se[:, i, s]
            err = dict(type="data", array=np.where(np.isfinite(se), BAND_Z * se, 0.0), visible=True)
            common = dict(name=label, legendgroup=label, showlegend=(i == 0 and len(labels) > 1), error_y=err,
                          customdata=np.stack([se], axis=-1),
                          hovertemplate=f"{name}<br>{label}<br>%{{x}}: %{{y:.4g}} ± %{{customdata[0]:.2g}}<extra></extra>")
            trace = (go.Bar(x=[label], y=v, **common) if single
                     else go.Scatter(x=x, y=v, mode="lines+markers", **common))
            fig.add_trace(trace, row=r, col=c)
        if not single:
            fig.update_xaxes(title_text=xlabel, row=r, col=c)
    name = title or Path(results.checkpoints[0].source).name
    fig.update_layout(title=f"robust sharpness of {name} (PGD re-run at every weight point); error bars ±1.96 × uncertainty",
                      height=320 * rows + 60, template="plotly_white",
                      legend=dict(orientation="h", yanchor="top", y=-0.12, title="scope"))
    return fig


def render(results: MeasureResults, png: Path) -> list[Path]:
    """The PNG and the HTML beside it."""
    png = Path(png)
    fig = figure(results)
    out = [save_png(fig, png, dpi=120)]
    out.append(save_plotly_html(html_figure(results), png.with_suffix(".html")))
    return out


def ranking_figure(ranking):
    """Spearman's rho of each measure with the gap, within runs and across runs, with 95% intervals, in
    the ranking's order (matplotlib)."""
    order = ranking.order()
    names = [ranking.measures[i] for i in order]
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(names) + 2.0))
    y = np.arange(len(names))
    for off, scope, colour in ((-0.18, "within", "#1f5fa8"), (0.18, "across", "#c8553d")):
        label = f"{scope} runs"
        for row, i in enumerate(order):
            t = getattr(ranking.tests[i], scope)
            if t.estimate is None:
                continue
            e = t.estimate
            ax.errorbar([e.value], [row + off], xerr=[[e.value - e.lo], [e.hi - e.value]], fmt="o", color=colour,
                        capsize=3, label=label)
            label = None  # one legend entry per scope
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("Spearman ρ (sharpness, robust gap) with 95% interval")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.set_title(f"which measure tracks the robust gap ({ranking.setting})\nranked by Holm-adjusted p within runs", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def ranking_html(ranking):
    import plotly.graph_objects as go

    order = ranking.order()
    fig = go.Figure()
    for scope, colour in (("within", "#1f5fa8"), ("across", "#c8553d")):
        xs, ys, lo, hi, text = [], [], [], [], []
        for i in order:
            t = getattr(ranking.tests[i], scope)
            if t.estimate is None:
                continue
            xs.append(t.estimate.value)
            ys.append(ranking.measures[i])
            lo.append(t.estimate.value - t.estimate.lo)
            hi.append(t.estimate.hi - t.estimate.value)
            text.append(f"p = {t.p:.3g}; {t.units}")
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"{scope} runs", marker=dict(color=colour, size=9),
                                 error_x=dict(type="data", symmetric=False, array=hi, arrayminus=lo), text=text,
                                 hovertemplate="%{y}: ρ = %{x:.3f}<br>%{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=f"Spearman ρ of each measure with the robust gap ({ranking.setting}), 95% intervals",
                      xaxis=dict(range=[-1.05, 1.05], title="Spearman ρ"), template="plotly_white",
                      height=140 + 40 * len(order))
    return fig


def render_ranking(ranking, png: Path) -> list[Path]:
    png = Path(png)
    return [save_png(ranking_figure(ranking), png, dpi=120), save_plotly_html(ranking_html(ranking), png.with_suffix(".html"))]
