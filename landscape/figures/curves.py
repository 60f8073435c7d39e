"""The 1-D landscape PNG in the style of Figure 1 / Figure 5: rho(w + alpha d) against alpha, one thin
line per direction and their mean in bold, each with a band of +-1.96 standard errors; several
checkpoints coloured along a scale with a colorbar."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, Normalize, to_rgb  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402

from landscape.core import sharpness as metrics  # noqa: E402
from landscape.figures.output import save_png  # noqa: E402
from landscape.storage.results import Landscape  # noqa: E402

SINGLE_COLOUR = "#1f5fa8"
COLOUR_SCALE = "viridis"  # early epochs dark, late epochs yellow


def _colours(results: Landscape) -> tuple[list, ScalarMappable | None, str]:
    """One colour per checkpoint: along the colour scale by epoch (or by order) when there are several."""
    n = len(results.checkpoints)
    if n == 1:
        return [SINGLE_COLOUR], None, ""
    epochs = [c.epoch for c in results.checkpoints]
    if all(e is not None for e in epochs):
        keys, label = np.asarray(epochs, dtype=float), "epoch"
    else:
        keys, label = np.arange(n, dtype=float), "checkpoint"
    norm = Normalize(keys.min(), keys.max() if keys.max() > keys.min() else keys.min() + 1)
    base = plt.get_cmap(COLOUR_SCALE)
    cmap = ListedColormap(base(np.linspace(0.0, 0.88, 256)))  # stop before viridis' palest yellow
    sm = ScalarMappable(norm=norm, cmap=cmap)
    return [sm.to_rgba(k) for k in keys], sm, label


def _title(results: Landscape) -> str:
    cfg = results.config
    att = cfg.get("attack", {})
    loss = f"PGD-{att.get('steps')} {att.get('norm')} eps={att.get('eps', float('nan')):.3g}" if att.get("steps") else "natural loss"
    fixed = ", fixed examples from w (ablation)" if cfg.get("fixed_adv") else ", examples on the fly"
    fixed = fixed if att.get("steps") else ""
    head = f"{cfg.get('arch')} on {cfg.get('dataset')} ({cfg.get('split')})"
    return f"{head}\n{loss}{fixed}, {results.dirs} {cfg.get('normalize')}-normalized direction(s), BN {cfg.get('bn')}"


def save_probe_png(results: Landscape, path: str | Path) -> None:
    """Draw rho against alpha for every checkpoint and direction; NaN (not yet computed) is left blank.
    Bands are +-1.96 standard errors (`metrics.BAND_Z`): around the mean, of the mean over directions
    and examples (`metrics.mean_curve`); around each direction, over examples alone (only for a single
    checkpoint, where they stay legible). Files without standard errors get no bands.
    Written to a temporary file and moved into place."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    draw_probe(results, ax, fig)
    fig.tight_layout()
    save_png(fig, path, dpi=140)


def draw_probe(results: Landscape, ax, fig) -> dict[str, list]:
    """The probe's curves and bands on `ax`; returns the artists by kind ("direction", "mean",
    "direction_band", "mean_band") so that callers and tests can see what was drawn."""
    alphas = results.alphas
    adv = results.values["adv_loss"]  # [C, D, A]
    adv_se = results.values["adv_loss_se"]  # [C, D, A], NaN in files from before standard errors
    colours, sm, label = _colours(results)
    drawn: dict[str, list] = {"direction": [], "mean": [], "direction_band": [], "mean_band": []}
    z = metrics.BAND_Z
    single = len(results.checkpoints) == 1
    faint = 0.25 / max(3, results.dirs)  # direction bands: D of them overlap, their union stays light
    for c, ckpt in enumerate(results.checkpoints):
        curves = adv[c]
        for row, se in zip(curves, adv_se[c]):
            if not np.isfinite(row).any():
                continue
            drawn["direction"] += ax.plot(alphas, row, color=colours[c], lw=0.7, alpha=0.4)  # one direction
            ok = np.isfinite(row) & np.isfinite(se)
            if single and ok.any():  # its example noise, faint
                drawn["direction_band"].append(ax.fill_between(alphas, row - z * se, row + z * se, where=ok,
                                                               color=colours[c], alpha=faint, lw=0, zorder=1))
        mean, mean_se = metrics.mean_curve(curves, adv_se[c])
        n = int(np.isfinite(curves).all(axis=1).sum())
        if n:
            name = f"{ckpt.label}: mean of {n}" if sm is None else None
            drawn["mean"] += ax.plot(alphas, mean, color=colours[c], lw=2.4, label=name)  # bold mean
            if np.isfinite(mean_se).any():
                drawn["mean_band"].append(ax.fill_between(  # over the direction bands, edged to stand out
                    alphas, mean - z * mean_se, mean + z * mean_se, where=np.isfinite(mean_se),
                    facecolor=(*to_rgb(colours[c]), 0.22 if single else 0.15),
                    edgecolor=(*to_rgb(colours[c]), 0.7), lw=0.6, ls="--", zorder=2.5))
    proxy = SINGLE_COLOUR if sm is None else "0.35"
    if sm is not None:
        ax.plot([], [], color=proxy, lw=2.4, label="mean over directions")
        bar = fig.colorbar(sm, ax=ax, label=label, pad=0.02)
        if label == "epoch" or len(results.checkpoints) < 10:
            bar.locator = MaxNLocator(integer=True)
            bar.update_ticks()
    ax.plot([], [], color=proxy, lw=0.7, alpha=0.6, label="single directions")
    handles, labels = ax.get_legend_handles_labels()
    if drawn["mean_band"]:
        handles.append(Patch(facecolor=(*to_rgb(proxy), 0.22), edgecolor=(*to_rgb(proxy), 0.7), lw=0.6, ls="--"))
        labels.append(f"mean ± {z:g} SE (over directions and examples)")
    if drawn["direction_band"]:
        handles.append(Patch(facecolor=(*to_rgb(proxy), 0.1), lw=0))
        labels.append(f"one direction ± {z:g} SE (over examples)")
    ax.legend(handles, labels, frameon=False, fontsize=8, loc="upper center")
    ax.axvline(0.0, color="0.6", lw=0.6, ls=":", zorder=0)
    ax.set_xlabel(r"$\alpha$")
    natural = not results.config.get("attack", {}).get("steps")
    ax.set_ylabel(r"natural loss $L(w + \alpha d)$" if natural else r"adversarial loss $\rho(w + \alpha d)$")
    ax.set_xlim(alphas[0], alphas[-1])
    ax.set_title(_title(results), fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return drawn


def html_figure(results: Landscape):
    """Plotly figure of the same curves: per checkpoint its mean with a +-1.96 SE band and each direction
    thin; hover shows alpha, rho and the accuracy; click the legend to hide a checkpoint."""
    import plotly.graph_objects as go

    alphas = results.alphas
    adv, adv_se, acc = results.values["adv_loss"], results.values["adv_loss_se"], results.values["adv_acc"]
    z = metrics.BAND_Z
    fig = go.Figure()
    palette = ["#1f5fa8", "#d1495b", "#2e933c", "#edae49", "#6a4c93", "#00798c", "#8d6a9f", "#5c5c5c"]
    for c, ckpt in enumerate(results.checkpoints):
        colour = palette[c % len(palette)]
        group = f"c{c}"
        mean, mean_se = metrics.mean_curve(adv[c], adv_se[c])
        for k, row in enumerate(adv[c]):
            if np.isfinite(row).any():
                fig.add_trace(go.Scatter(x=alphas, y=row, mode="lines", line=dict(color=colour, width=0.8), opacity=0.35,
                                         legendgroup=group, showlegend=False, customdata=acc[c, k],
                                         hovertemplate=f"{ckpt.label}, direction {k}<br>alpha=%{{x:.3f}}<br>rho=%{{y:.4f}}"
                                                       "<br>adv acc=%{customdata:.3f}<extra></extra>"))
        if np.isfinite(mean).any():
            if np.isfinite(mean_se).any():
                fig.add_trace(go.Scatter(x=np.concatenate([alphas, alphas[::-1]]),
                                         y=np.concatenate([mean + z * mean_se, (mean - z * mean_se)[::-1]]),
                                         fill="toself", fillcolor=colour, opacity=0.18, line=dict(width=0),
                                         legendgroup=group, showlegend=False, hoverinfo="skip"))
            fig.add_trace(go.Scatter(x=alphas, y=mean, mode="lines", line=dict(color=colour, width=3),
                                     name=f"{ckpt.label}: mean ± {z:g} SE", legendgroup=group,
                                     hovertemplate=f"{ckpt.label} mean<br>alpha=%{{x:.3f}}<br>rho=%{{y:.4f}}<extra></extra>"))
    natural = not results.config.get("attack", {}).get("steps")
    fig.update_layout(title=_title(results).replace("\n", "<br>"), xaxis_title="alpha", height=560, width=900,
                      yaxis_title="natural loss" if natural else "adversarial loss rho(w + alpha d)", template="plotly_white")
    return fig
