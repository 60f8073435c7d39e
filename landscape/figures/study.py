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

from landscape.commands.analysis import GapTests, RunAnalysis, RunCurves, proportion_se  # noqa: E402
from landscape.core.sharpness import BAND_Z, SHARPNESS  # noqa: E402
from landscape.figures.output import save_png  # noqa: E402

RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
def sharpness_label(name: str) -> str:
    return f"sharpness: {SHARPNESS[name].label}"


def _save(fig, path: Path) -> Path:
    return save_png(fig, path, dpi=130, bbox_inches="tight")


def mean_curves(a: RunAnalysis) -> tuple[np.ndarray, np.ndarray]:
    """Mean over complete directions of rho(w + alpha d) per probed checkpoint and its standard error,
    both [C, A] (`metrics.mean_curve`): se^2 = s_dir^2 / D + mean_k se_k^2, the spread over directions
    plus a bound on the example noise the directions share (they use the same examples, so at
    alpha = 0, where every direction is w, the spread is 0 but the example noise is not). NaN where
    no direction is complete, and the standard error NaN for files without per-point ones."""
    from landscape.core import sharpness as metrics

    adv, se = a.landscapes.values["adv_loss"], a.landscapes.values["adv_loss_se"]  # [C, D, A]
    pairs = [metrics.mean_curve(adv[c], se[c]) for c in range(adv.shape[0])]
    if not pairs:
        return np.full((0, adv.shape[2]), np.nan), np.full((0, adv.shape[2]), np.nan)
    return np.stack([m for m, _ in pairs]), np.stack([e for _, e in pairs])


# ---------------------------------------------------------------------------------------------
# (a) learning curves
# ---------------------------------------------------------------------------------------------


def _curves(r: RunCurves) -> list[tuple[np.ndarray, np.ndarray, str, str]]:
    """(values, standard error over examples, colour, label) of the three learning curves."""
    return [
        (r.train_adv, proportion_se(r.train_adv, r.n_train), "#1f77b4", "train robust"),
        (r.test_adv, proportion_se(r.test_adv, r.n_test), "#d62728", "test robust"),
        (r.gap, r.gap_se, "#2ca02c", "robust gen. gap"),
    ]


def learning_curves_png(runs: list[RunCurves], path: Path) -> Path:
    """Train and test robust accuracy and the gap against epoch, best epoch marked (Figure 1a, left)."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.0 * len(runs), 3.8), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], runs):
        for values, se, colour, label in _curves(r):
            ax.plot(r.epochs, values, color=colour, label=label)
            ax.fill_between(r.epochs, values - BAND_Z * se, values + BAND_Z * se, color=colour, alpha=0.15, lw=0)
        if r.best_epoch is not None:
            ax.axvline(r.best_epoch, color="0.4", ls="--", lw=0.9)
            ax.annotate(f"best {r.best_epoch} ", (r.best_epoch, 0.02), xycoords=("data", "axes fraction"),
                        ha="right", va="bottom", fontsize=8, color="0.3")
        ax.set_title(r.label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.25)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(frameon=False, fontsize=8, title=f"bands: ±{BAND_Z:g} se over examples", title_fontsize=7)
    return _save(fig, path)


def learning_curves_fig(runs: list[RunCurves]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, r in enumerate(runs):
        c = RUN_COLOURS[i % len(RUN_COLOURS)]
        for (values, se, _, name), dash in zip(_curves(r), ("dot", "solid", "dash")):
            fig.add_trace(go.Scatter(x=r.epochs, y=values, name=f"{r.label}: {name}", line=dict(color=c, dash=dash),
                                     customdata=se, legendgroup=f"{r.label}: {name}",
                                     hovertemplate="epoch %{x}<br>%{y:.3f} ± %{customdata:.3f}<extra>" + f"{r.label}: {name}</extra>"))
            fig.add_trace(go.Scatter(x=np.concatenate([r.epochs, r.epochs[::-1]]),
                                     y=np.concatenate([values + BAND_Z * se, (values - BAND_Z * se)[::-1]]),
                                     fill="toself", fillcolor=c, opacity=0.12, line=dict(width=0), hoverinfo="skip",
                                     showlegend=False, legendgroup=f"{r.label}: {name}"))
        if r.best_epoch is not None:
            fig.add_vline(x=r.best_epoch, line=dict(color=c, width=1, dash="dot"))
    fig.update_layout(title="Learning curves (dotted: train robust, solid: test robust, dashed: gap; "
                            f"vertical: best epoch; bands: ±{BAND_Z:g} se over examples)", xaxis_title="epoch",
                      yaxis_title="accuracy", height=460)
    return fig


# ---------------------------------------------------------------------------------------------
# (b) landscapes before / after the best epoch
# ---------------------------------------------------------------------------------------------


def landscapes_png(analyses: list[RunAnalysis], path: Path) -> Path:
    """Per run: mean landscape of each probed epoch up to the best (left) and after it (right),
    coloured by epoch (Figure 1a, middle and right), each with a band of +-1.96 standard errors of the
    mean (over directions and examples, `mean_curves`)."""
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(len(analyses), 2, figsize=(10, 3.6 * len(analyses)), squeeze=False, sharey=True,
                             constrained_layout=True)
    top = max(1, max(int(a.epochs.max()) for a in analyses))
    norm = colors.Normalize(vmin=0, vmax=top)
    banded = False
    for row, a in zip(axes, analyses):
        (curves, ses), alphas, best = mean_curves(a), a.landscapes.alphas, a.curves.best_epoch or 0
        for ax, side in zip(row, ("before", "after")):
            for e, y, se in zip(a.epochs, curves, ses):
                if (e <= best) == (side == "before") and np.isfinite(y).all():
                    colour = cm.viridis(norm(e))
                    ax.plot(alphas, y, color=colour, lw=1.8)
                    if np.isfinite(se).any():
                        ax.fill_between(alphas, y - BAND_Z * se, y + BAND_Z * se, where=np.isfinite(se),
                                        color=colour, alpha=0.15, lw=0)
                        banded = True
            ax.set_title(f"{a.curves.label}: epochs {'≤' if side == 'before' else '>'} best ({best})", fontsize=10)
            ax.set_xlabel("α")
            ax.grid(alpha=0.25)
        row[0].set_ylabel("adversarial loss ρ(w + αd)")
    if banded:
        axes[0][0].legend([Patch(color="0.5", alpha=0.3, lw=0)],
                          [f"mean over directions ± {BAND_Z:g} SE (directions and examples)"],
                          frameon=False, fontsize=8, loc="upper center")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes, label="epoch", shrink=0.8)
    return _save(fig, path)


def landscape_slider_fig(a: RunAnalysis):
    """Mean and single-direction landscapes of one run, one slider step per probed epoch. Each curve
    has a band of +-1.96 standard errors (a filled trace; hover on the curve gives value ± SE): the mean
    over directions and examples (`mean_curves`) for the mean, each direction's over examples for the
    directions (one faint trace per epoch for all of them)."""
    import plotly.graph_objects as go

    adv, adv_se = a.landscapes.values["adv_loss"], a.landscapes.values["adv_loss_se"]  # [C, D, A]
    alphas = a.landscapes.alphas
    curves, ses = mean_curves(a)
    z = BAND_Z
    fig = go.Figure()
    per = adv.shape[1] + 3  # per epoch: direction bands, D directions, mean band, mean

    def band(y: np.ndarray, se: np.ndarray) -> tuple[list, list]:
        """The closed outline of y +- z se (x forward along the top, back along the bottom); empty if none."""
        ok = np.isfinite(y) & np.isfinite(se)
        if not ok.any():
            return [], []
        x = alphas[ok]
        return [*x, *x[::-1], x[0]], [*(y + z * se)[ok], *(y - z * se)[ok][::-1], (y + z * se)[ok][0]]

    for c, e in enumerate(a.epochs):
        xs, ys = [], []
        for k in range(adv.shape[1]):  # every direction's band in one trace, separated by gaps
            bx, by = band(adv[c, k], adv_se[c, k])
            if bx:
                xs += [*bx, None]
                ys += [*by, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", fill="toself", fillcolor="rgba(80,80,80,0.10)",
                                 line=dict(width=0), hoverinfo="skip", visible=c == 0, legendgroup="dirband",
                                 showlegend=bool(xs), name=f"one direction ± {z:g} SE (examples)"))
        for k in range(adv.shape[1]):
            fig.add_trace(go.Scatter(x=alphas, y=adv[c, k], customdata=adv_se[c, k], mode="lines",
                                     line=dict(width=1, color="rgba(80,80,80,0.45)"),
                                     name=f"direction {k}", visible=c == 0, showlegend=False,
                                     hovertemplate="α=%{x:.2f}<br>ρ=%{y:.4f} ± %{customdata:.4f} (SE)"
                                                   "<extra>direction " + str(k) + "</extra>"))
        bx, by = band(curves[c], ses[c])
        fig.add_trace(go.Scatter(x=bx, y=by, mode="lines", fill="toself", fillcolor="rgba(214,39,40,0.18)",
                                 line=dict(width=0), hoverinfo="skip", visible=c == 0, legendgroup="meanband",
                                 showlegend=bool(bx),
                                 name=f"mean ± {z:g} SE (directions and examples)"))
        fig.add_trace(go.Scatter(x=alphas, y=curves[c], customdata=ses[c], mode="lines",
                                 line=dict(width=3, color="#d62728"), name="mean over directions", visible=c == 0,
                                 hovertemplate="α=%{x:.2f}<br>mean ρ=%{y:.4f} ± %{customdata:.4f} (SE)"
                                               "<extra>epoch " + str(e) + "</extra>"))
    steps = []
    for c, e in enumerate(a.epochs):
        vis = [False] * (per * len(a.epochs))
        vis[c * per : (c + 1) * per] = [True] * per
        mark = " (best)" if e == a.curves.best_epoch else (" (last)" if e == a.curves.last_epoch else "")
        steps.append(dict(method="update", label=f"{e}{mark}", args=[{"visible": vis},
                          {"title": f"{a.curves.label}: landscape at epoch {e}{mark}"}]))
    ends = [adv, adv - z * adv_se, adv + z * adv_se, curves - z * ses, curves + z * ses]  # the range holds the bands
    finite = np.concatenate([v[np.isfinite(v)] for v in ends])
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


def test_lines(tests) -> list[str]:
    """What a scatter says about its tests (an iterable of `CorrelationTest`): statistic, interval, p and
    units, or why there is none."""
    lines = []
    for t in tests:
        if t.estimate is None:
            lines.append(f"{t.scope}: no test ({t.reason})")
        else:
            lines.append(f"{t.scope}: Spearman {t.estimate}, p = {t.p:.2g}")
            lines.append(f"   {t.units}; {t.method}")
    return lines


def scatter_png(analyses: list[RunAnalysis], sharpness: str, tests: GapTests, path: Path) -> Path:
    """One point per (run, probed epoch): robust generalization gap against sharpness (Figure 1b
    generalized), each run's points joined in epoch order, its last epoch ringed (the run's point across
    runs); the tests in the corner."""
    fig, ax = plt.subplots(figsize=(7.4, 5.2))
    for i, a in enumerate(analyses):
        x, y = a.sharpness[sharpness], a.gap
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        ax.errorbar(x, y, xerr=BAND_Z * a.sharpness_se[sharpness], yerr=BAND_Z * a.gap_se, fmt="none", ecolor=colour,
                    elinewidth=0.7, alpha=0.5, capsize=0)
        sc = ax.scatter(x, y, c=a.epochs, cmap="viridis", edgecolors=colour, linewidths=1.6, s=46, zorder=3,
                        label=f"{a.curves.label} · {a.curves.path.stem}")
        ax.plot(x, y, color=colour, lw=0.6, alpha=0.5)
        fx, fy = a.final(sharpness)
        ax.scatter([fx], [fy], s=150, facecolors="none", edgecolors=colour, linewidths=1.2, zorder=3)
    fig.colorbar(sc, ax=ax, label="epoch")
    ax.set_xlabel(sharpness_label(sharpness))
    ax.set_ylabel("robust generalization gap (train − test robust acc.)")
    ax.legend(frameon=False, fontsize=7, loc="best", title="run (edge colour; ring: last epoch)", title_fontsize=7)
    ax.grid(alpha=0.25)
    caption = test_lines(tests) + [f"bars: ±{BAND_Z} standard errors over examples (sharpness: PGD on the fly; gap: binomial)"]
    fig.text(0.01, -0.01, "\n".join(caption), va="top", ha="left", family="monospace", fontsize=7)
    return _save(fig, path)


def scatter_fig(analyses: list[RunAnalysis], sharpness: str, tests: GapTests):
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, a in enumerate(analyses):
        fig.add_trace(go.Scatter(
            x=a.sharpness[sharpness], y=a.gap, mode="markers+lines", name=f"{a.curves.label} · {a.curves.path.stem}",
            text=[str(e) for e in a.epochs], marker=dict(size=10, color=RUN_COLOURS[i % len(RUN_COLOURS)]),
            line=dict(width=0.8), error_x=dict(type="data", array=BAND_Z * a.sharpness_se[sharpness], visible=True,
                                               thickness=0.8),
            error_y=dict(type="data", array=BAND_Z * a.gap_se,
                         visible=True, thickness=0.8),
            hovertemplate="epoch %{text}<br>sharpness %{x:.4f} ± %{error_x.array:.4f}<br>gap %{y:.3f} ± %{error_y.array:.3f}<extra>"
                          + a.curves.label + "</extra>",
        ))
    fig.update_layout(
        title=dict(text="Robust generalization gap vs sharpness<br><sup>" + "<br>".join(test_lines(tests)) + "</sup>"),
        xaxis_title=sharpness_label(sharpness), yaxis_title="robust generalization gap", height=620,
        margin=dict(t=190), title_y=0.97, title_yanchor="top",
    )
    return fig


# ---------------------------------------------------------------------------------------------
# (d) Figure 1(b) across methods: one point per run at the checkpoint it reports, one cloud per method
# ---------------------------------------------------------------------------------------------


def method_of(a: RunAnalysis) -> str:
    """The run's method label, without the gamma the legend adds: "at-awp (γ=0.01)" -> "at-awp"."""
    return a.curves.label.split(" (")[0]


def _method_points(analyses: list[RunAnalysis], sharpness: str) -> dict[str, list[tuple[float, float, float, float, str]]]:
    """method -> [(sharpness, its se, gap, its se, run name)] at each run's reported checkpoint."""
    out: dict[str, list[tuple[float, float, float, float, str]]] = {}
    for a in analyses:
        at = np.flatnonzero(a.epochs == a.curves.final_epoch)
        if not len(at):
            continue
        i = at[0]
        out.setdefault(method_of(a), []).append((float(a.sharpness[sharpness][i]), float(a.sharpness_se[sharpness][i]),
                                                float(a.gap[i]), float(a.gap_se[i]), a.curves.path.stem))
    return out


def methods_png(analyses: list[RunAnalysis], sharpness: str, tests: GapTests, path: Path, note: str = "") -> Path:
    """Figure 1(b): robust generalization gap against sharpness at the checkpoint each run reports (the
    last; AT-ES's early-stopped one), one colour per method, one point per run (seed); the test across
    runs in the caption."""
    fig, ax = plt.subplots(figsize=(7.4, 5.2))
    for i, (method, pts) in enumerate(_method_points(analyses, sharpness).items()):
        x, xe, y, ye, _ = (np.array(v) for v in zip(*pts))
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        ax.errorbar(x, y, xerr=BAND_Z * xe, yerr=BAND_Z * ye, fmt="o", color=colour, ms=7, elinewidth=0.8,
                    capsize=0, alpha=0.9, label=f"{method} ({len(pts)} run{'s' if len(pts) > 1 else ''})")
        ax.annotate(method, (float(np.mean(x)), float(np.mean(y))), textcoords="offset points", xytext=(6, 6),
                    fontsize=8, color=colour)
    ax.set_xlabel(sharpness_label(sharpness))
    ax.set_ylabel("robust generalization gap (train − test robust acc.)")
    ax.set_title("Figure 1(b): gap vs sharpness across methods (each run at the checkpoint it reports)", fontsize=9)
    ax.legend(frameon=False, fontsize=7, loc="best", title="method (one point per seed)", title_fontsize=7)
    ax.grid(alpha=0.25)
    caption = test_lines([tests.across]) + ([note] if note else []) + [f"bars: ±{BAND_Z} standard errors over examples (sharpness: PGD on the fly; gap: binomial)"]
    fig.text(0.01, -0.01, "\n".join(caption), va="top", ha="left", family="monospace", fontsize=7)
    return _save(fig, path)


def methods_fig(analyses: list[RunAnalysis], sharpness: str, tests: GapTests):
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (method, pts) in enumerate(_method_points(analyses, sharpness).items()):
        x, xe, y, ye, names = (list(v) for v in zip(*pts))
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="markers", name=method, text=names,
            marker=dict(size=11, color=RUN_COLOURS[i % len(RUN_COLOURS)]),
            error_x=dict(type="data", array=[BAND_Z * e for e in xe], visible=True, thickness=0.8),
            error_y=dict(type="data", array=[BAND_Z * e for e in ye], visible=True, thickness=0.8),
            hovertemplate="%{text}<br>sharpness %{x:.4f} ± %{error_x.array:.4f}<br>gap %{y:.3f} ± %{error_y.array:.3f}"
                          "<extra>" + method + "</extra>",
        ))
    fig.update_layout(
        title=dict(text="Gap vs sharpness across methods (Figure 1b; each run at the checkpoint it reports)<br><sup>"
                        + "<br>".join(test_lines([tests.across])) + "</sup>"),
        xaxis_title=sharpness_label(sharpness), yaxis_title="robust generalization gap", height=620,
        margin=dict(t=190), title_y=0.97, title_yanchor="top",
    )
    return fig
