"""Figure 1, generalized: learning curves, landscapes before/after the best epoch, gap vs sharpness.

Each figure exists twice: a matplotlib PNG (`*_png`) and a plotly figure (`*_fig`) that `gap` writes as
offline HTML and `report` embeds. They read only `RunCurves` / `RunAnalysis`: no computing here.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import cm, colors  # noqa: E402

from landscape.analysis import RunAnalysis, RunCurves  # noqa: E402
from landscape.output import save_png  # noqa: E402
from landscape.stats import Estimate  # noqa: E402

RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
SHARPNESS_LABEL = {"rise": "sharpness: rise of ρ at |α| = r", "curvature": "sharpness: curvature ρ''(0)"}


def _save(fig, path: Path) -> Path:
    return save_png(fig, path, dpi=130, bbox_inches="tight")


def mean_curves(a: RunAnalysis) -> np.ndarray:
    """Mean over complete directions of rho(w + alpha d) per probed checkpoint: [C, A]."""
    adv = a.landscapes.values["adv_loss"]  # [C, D, A]
    out = np.full((adv.shape[0], adv.shape[2]), np.nan)
    for c in range(adv.shape[0]):
        done = adv[c][np.isfinite(adv[c]).all(axis=1)]
        if len(done):
            out[c] = done.mean(axis=0)
    return out


# ---------------------------------------------------------------------------------------------
# (a) learning curves
# ---------------------------------------------------------------------------------------------


def learning_curves_png(runs: list[RunCurves], path: Path) -> Path:
    """Train and test robust accuracy and the gap against epoch, best epoch marked (Figure 1a, left)."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.0 * len(runs), 3.8), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], runs):
        ax.plot(r.epochs, r.train_adv, color="#1f77b4", label="train robust")
        ax.plot(r.epochs, r.test_adv, color="#d62728", label="test robust")
        ax.plot(r.epochs, r.gap, color="#2ca02c", label="robust gen. gap")
        if r.best_epoch is not None:
            ax.axvline(r.best_epoch, color="0.4", ls="--", lw=0.9)
            ax.annotate(f"best {r.best_epoch} ", (r.best_epoch, 0.02), xycoords=("data", "axes fraction"),
                        ha="right", va="bottom", fontsize=8, color="0.3")
        ax.set_title(r.label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.25)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(frameon=False, fontsize=8)
    return _save(fig, path)


def learning_curves_fig(runs: list[RunCurves]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, r in enumerate(runs):
        c = RUN_COLOURS[i % len(RUN_COLOURS)]
        for name, values, dash in (("train robust", r.train_adv, "dot"), ("test robust", r.test_adv, "solid"),
                                   ("gap", r.gap, "dash")):
            fig.add_trace(go.Scatter(x=r.epochs, y=values, name=f"{r.label}: {name}", line=dict(color=c, dash=dash),
                                     hovertemplate="epoch %{x}<br>%{y:.3f}<extra>" + f"{r.label}: {name}</extra>"))
        if r.best_epoch is not None:
            fig.add_vline(x=r.best_epoch, line=dict(color=c, width=1, dash="dot"))
    fig.update_layout(title="Learning curves (dotted: train robust, solid: test robust, dashed: gap; "
                            "vertical: best epoch)", xaxis_title="epoch", yaxis_title="accuracy", height=460)
    return fig


# ---------------------------------------------------------------------------------------------
# (b) landscapes before / after the best epoch
# ---------------------------------------------------------------------------------------------


def landscapes_png(analyses: list[RunAnalysis], path: Path) -> Path:
    """Per run: mean landscape of each probed epoch up to the best (left) and after it (right),
    coloured by epoch (Figure 1a, middle and right)."""
    fig, axes = plt.subplots(len(analyses), 2, figsize=(10, 3.6 * len(analyses)), squeeze=False, sharey=True,
                             constrained_layout=True)
    top = max(1, max(int(a.epochs.max()) for a in analyses))
    norm = colors.Normalize(vmin=0, vmax=top)
    for row, a in zip(axes, analyses):
        curves, alphas, best = mean_curves(a), a.landscapes.alphas, a.curves.best_epoch or 0
        for ax, side in zip(row, ("before", "after")):
            for e, y in zip(a.epochs, curves):
                if (e <= best) == (side == "before") and np.isfinite(y).all():
                    ax.plot(alphas, y, color=cm.viridis(norm(e)), lw=1.8)
            ax.set_title(f"{a.curves.label}: epochs {'≤' if side == 'before' else '>'} best ({best})", fontsize=10)
            ax.set_xlabel("α")
            ax.grid(alpha=0.25)
        row[0].set_ylabel("adversarial loss ρ(w + αd)")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes, label="epoch", shrink=0.8)
    return _save(fig, path)


def landscape_slider_fig(a: RunAnalysis):
    """Mean and single-direction landscapes of one run, one slider step per probed epoch."""
    import plotly.graph_objects as go

    adv = a.landscapes.values["adv_loss"]
    alphas = a.landscapes.alphas
    curves = mean_curves(a)
    fig = go.Figure()
    per = adv.shape[1] + 1
    for c, e in enumerate(a.epochs):
        for k in range(adv.shape[1]):
            fig.add_trace(go.Scatter(x=alphas, y=adv[c, k], mode="lines", line=dict(width=1, color="rgba(80,80,80,0.45)"),
                                     name=f"direction {k}", visible=c == 0, showlegend=False,
                                     hovertemplate="α=%{x:.2f}<br>ρ=%{y:.4f}<extra>direction " + str(k) + "</extra>"))
        fig.add_trace(go.Scatter(x=alphas, y=curves[c], mode="lines", line=dict(width=3, color="#d62728"),
                                 name="mean over directions", visible=c == 0,
                                 hovertemplate="α=%{x:.2f}<br>mean ρ=%{y:.4f}<extra>epoch " + str(e) + "</extra>"))
    steps = []
    for c, e in enumerate(a.epochs):
        vis = [False] * (per * len(a.epochs))
        vis[c * per : (c + 1) * per] = [True] * per
        mark = " (best)" if e == a.curves.best_epoch else (" (last)" if e == a.curves.last_epoch else "")
        steps.append(dict(method="update", label=f"{e}{mark}", args=[{"visible": vis},
                          {"title": f"{a.curves.label}: landscape at epoch {e}{mark}"}]))
    finite = adv[np.isfinite(adv)]
    fig.update_layout(
        sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="epoch "), pad=dict(t=40))],
        title=f"{a.curves.label}: landscape at epoch {a.epochs[0]}", xaxis_title="α",
        yaxis_title="adversarial loss ρ(w + αd)", height=480,
        yaxis_range=[float(finite.min()) * 0.95, float(finite.max()) * 1.05] if len(finite) else None,
    )
    return fig


# ---------------------------------------------------------------------------------------------
# (c) gap vs sharpness
# ---------------------------------------------------------------------------------------------


def _corr_text(corr: dict[str, Estimate]) -> str:
    return "\n".join(f"{k:8s} {v}" for k, v in corr.items())


def scatter_png(analyses: list[RunAnalysis], sharpness: str, corr: dict[str, Estimate], path: Path) -> Path:
    """One point per (run, probed epoch): robust generalization gap against sharpness (Figure 1b
    generalized), correlations with bootstrap 95% intervals in the corner."""
    fig, ax = plt.subplots(figsize=(6.6, 4.8))
    for i, a in enumerate(analyses):
        x, y = a.sharpness[sharpness], a.gap
        sc = ax.scatter(x, y, c=a.epochs, cmap="viridis", edgecolors=RUN_COLOURS[i % len(RUN_COLOURS)],
                        linewidths=1.6, s=46, label=a.curves.label)
        ax.plot(x, y, color=RUN_COLOURS[i % len(RUN_COLOURS)], lw=0.6, alpha=0.5)
    fig.colorbar(sc, ax=ax, label="epoch")
    ax.text(0.02, 0.98, _corr_text(corr), transform=ax.transAxes, va="top", ha="left", family="monospace", fontsize=8,
            bbox=dict(facecolor="white", alpha=0.8, edgecolor="0.8"))
    ax.set_xlabel(SHARPNESS_LABEL[sharpness])
    ax.set_ylabel("robust generalization gap (train − test robust acc.)")
    ax.legend(frameon=False, fontsize=8, loc="lower right", title="run (edge colour)", title_fontsize=8)
    ax.grid(alpha=0.25)
    return _save(fig, path)


def scatter_fig(analyses: list[RunAnalysis], sharpness: str, corr: dict[str, Estimate]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, a in enumerate(analyses):
        fig.add_trace(go.Scatter(
            x=a.sharpness[sharpness], y=a.gap, mode="markers+lines", name=a.curves.label, text=[str(e) for e in a.epochs],
            marker=dict(size=10, color=RUN_COLOURS[i % len(RUN_COLOURS)]), line=dict(width=0.8),
            hovertemplate="epoch %{text}<br>sharpness %{x:.4f}<br>gap %{y:.3f}<extra>" + a.curves.label + "</extra>",
        ))
    fig.update_layout(
        title="Robust generalization gap vs sharpness — " + "; ".join(f"{k} {v}" for k, v in corr.items()),
        xaxis_title=SHARPNESS_LABEL[sharpness], yaxis_title="robust generalization gap", height=480,
    )
    return fig
