"""The 1-D landscape PNG in the style of Figure 1 / Figure 5: rho(w + alpha d) against alpha, one thin
line per direction and their mean in bold, each with a band of +-1.96 standard errors; several
checkpoints coloured along a scale with a colorbar. Directions that are not random (Hessian
eigenvectors, principal directions, AWP's, a line) are each named in the legend instead of averaged;
with `--per-layer` every block gets a panel of its own."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, Normalize, to_rgb  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402

from landscape.core import sharpness as metrics  # noqa: E402
from landscape.core.directions import direction_label  # noqa: E402
from landscape.core.scope import by_block  # noqa: E402
from landscape.figures.output import save_png  # noqa: E402
from landscape.storage.results import Grid, Landscape  # noqa: E402

SINGLE_COLOUR = "#1f5fa8"
COLOUR_SCALE = "viridis"  # early epochs dark, late epochs yellow
NAMED_COLOURS = ["#1f5fa8", "#d1495b", "#2e933c", "#edae49", "#6a4c93", "#00798c", "#8d6a9f", "#5c5c5c"]
PANEL_COLUMNS = 3  # --per-layer: blocks per row of panels


def subset(results: Landscape, rows: Sequence[int]) -> Landscape:
    """The probe's directions `rows` only, as a landscape of its own (one block's, with --per-layer)."""
    idx = np.asarray(list(rows), dtype=np.int64)
    return Landscape(Grid.curves(results.alphas, len(idx)), [results.directions[k] for k in idx], results.checkpoints,
                     results.config, results.runtime, values={n: v[:, idx] for n, v in results.values.items()},
                     done=results.done[:, idx], origin=results.origin, origin_done=results.origin_done,
                     created=results.created, format_version=results.format_version)


def named(results: Landscape) -> bool:
    """Whether each direction is drawn under its own name rather than averaged with the others: one
    checkpoint, and directions that are not random draws (eigenvectors, PCs, AWP's, a line)."""
    return len(results.checkpoints) == 1 and any(d.get("kind") != "random" for d in results.directions)


_SCALES = {"filter": "filter-normalized", "layer": "layer-normalized", "global": "unit eigenvector x ||w||"}


def _directions_phrase(results: Landscape) -> str:
    specs, n = results.directions, results.dirs
    kind = specs[0].get("kind") if specs else "random"
    blocks = [b for b, _ in by_block(specs) if b is not None]
    n = n // len(blocks) if blocks else n
    where = f" per block, {len(blocks)} blocks in turn" if blocks else (
        f", only {','.join(specs[0]['params'])}" if specs and specs[0].get("params") else "")
    if kind == "hessian":
        text = f"top Hessian eigenvector(s), {_SCALES.get(specs[0].get('scale'), specs[0].get('scale'))}"
    elif kind == "awp":
        text = f"AWP direction (γ = {specs[0].get('gamma'):g}), layer-normalized"
    elif kind == "pca":
        text = "principal direction(s) of the training trajectory (it spans alpha ±1)"
    elif kind == "interpolate":
        text = f"the line to {specs[0].get('to', {}).get('label', '?')} (alpha = 1)"
    else:
        return f"{n} {results.config.get('normalize')}-normalized direction(s){where}"
    return text + where


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
    if all(d.get("kind") == "random" for d in results.directions):
        return f"{head}\n{loss}{fixed}, {_directions_phrase(results)}, BN {cfg.get('bn')}"
    return f"{head}\n{loss}{fixed}, BN {cfg.get('bn')}\n{_directions_phrase(results)}"


def save_probe_png(results: Landscape, path: str | Path) -> None:
    """Draw rho against alpha for every checkpoint and direction; NaN (not yet computed) is left blank.
    Bands are +-1.96 standard errors (`metrics.BAND_Z`): around the mean, of the mean over directions
    and examples (`metrics.mean_curve`); around each direction, over examples alone (only for a single
    checkpoint, where they stay legible). Files without standard errors get no bands.
    Written to a temporary file and moved into place."""
    path = Path(path)
    groups = by_block(results.directions)
    if len(groups) == 1:
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        draw_probe(results, ax, fig)
    else:  # --per-layer: a panel per block
        cols = min(PANEL_COLUMNS, len(groups))
        rows = math.ceil(len(groups) / cols)
        fig, axs = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.5 * rows + 0.6), squeeze=False)
        for i, (ax, (block, idx)) in enumerate(zip(axs.flat, groups)):
            draw_probe(subset(results, idx), ax, fig, title=f"block {block}", legend=i == 0)
        for ax in list(axs.flat)[len(groups):]:
            ax.set_visible(False)
        fig.suptitle(_title(results), fontsize=9)
    fig.tight_layout()
    save_png(fig, path, dpi=140)


def draw_probe(results: Landscape, ax, fig, title: str | None = None, legend: bool = True) -> dict[str, list]:
    """The probe's curves and bands on `ax` (titled `title`, else the probe's title); returns the
    artists by kind ("direction", "mean", "direction_band", "mean_band") so that callers and tests can
    see what was drawn. Named directions (`named`) get a line each, labelled, and no mean."""
    if named(results):
        return _draw_named(results, ax, title, legend)
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
    if legend:
        ax.legend(handles, labels, frameon=False, fontsize=8, loc="upper center")
    _axes(results, ax, title)
    return drawn


def _axes(results: Landscape, ax, title: str | None) -> None:
    alphas = results.alphas
    ax.axvline(0.0, color="0.6", lw=0.6, ls=":", zorder=0)
    ax.set_xlabel(r"$\alpha$")
    natural = not results.config.get("attack", {}).get("steps")
    ax.set_ylabel(r"natural loss $L(w + \alpha d)$" if natural else r"adversarial loss $\rho(w + \alpha d)$")
    ax.set_xlim(alphas[0], alphas[-1])
    ax.set_title(_title(results) if title is None else title, fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)


def _draw_named(results: Landscape, ax, title: str | None, legend: bool) -> dict[str, list]:
    """One checkpoint's directions, each in its own colour under its own name, with its band of
    +-1.96 standard errors over examples."""
    alphas, z = results.alphas, metrics.BAND_Z
    adv, adv_se = results.values["adv_loss"][0], results.values["adv_loss_se"][0]
    drawn: dict[str, list] = {"direction": [], "mean": [], "direction_band": [], "mean_band": []}
    for k, (spec, row, se) in enumerate(zip(results.directions, adv, adv_se)):
        if not np.isfinite(row).any():
            continue
        colour = NAMED_COLOURS[k % len(NAMED_COLOURS)]
        drawn["direction"] += ax.plot(alphas, row, color=colour, lw=1.8, label=direction_label(spec, 0))
        ok = np.isfinite(row) & np.isfinite(se)
        if ok.any():
            drawn["direction_band"].append(ax.fill_between(alphas, row - z * se, row + z * se, where=ok,
                                                           color=colour, alpha=0.18, lw=0, zorder=1))
    if legend and drawn["direction"]:
        ax.plot([], [], color="none", label=f"bands: ± {z:g} SE (over examples)")
        ax.legend(frameon=False, fontsize=8, loc="upper center")
    _axes(results, ax, title)
    return drawn


def html_figure(results: Landscape):
    """Plotly figure of the same curves: per checkpoint (and block, with --per-layer) its mean with a
    +-1.96 SE band and each direction thin, or each named direction in its own colour; hover shows
    alpha, rho and the accuracy; click the legend to hide a checkpoint."""
    import plotly.graph_objects as go

    alphas = results.alphas
    adv, adv_se, acc = results.values["adv_loss"], results.values["adv_loss_se"], results.values["adv_acc"]
    z = metrics.BAND_Z
    fig = go.Figure()
    palette = NAMED_COLOURS
    each = named(results)
    groups = by_block(results.directions)
    for i, ((c, ckpt), (block, idx)) in enumerate((p, g) for p in enumerate(results.checkpoints) for g in groups):
        colour = palette[i % len(palette)]
        group = f"g{i}"
        where = "" if block is None else f" [{block}]"
        for k in idx:
            row, name = adv[c, k], direction_label(results.directions[k], c)
            if not np.isfinite(row).any():
                continue
            style = dict(line=dict(color=palette[k % len(palette)], width=2.4), name=name) if each else dict(
                line=dict(color=colour, width=0.8), opacity=0.35, legendgroup=group, showlegend=False)
            fig.add_trace(go.Scatter(x=alphas, y=row, mode="lines", customdata=acc[c, k], **style,
                                     hovertemplate=f"{ckpt.label}, {name}<br>alpha=%{{x:.3f}}<br>rho=%{{y:.4f}}"
                                                   "<br>adv acc=%{customdata:.3f}<extra></extra>"))
        mean, mean_se = metrics.mean_curve(adv[c][idx], adv_se[c][idx])
        if each or not np.isfinite(mean).any():
            continue
        if np.isfinite(mean_se).any():
            fig.add_trace(go.Scatter(x=np.concatenate([alphas, alphas[::-1]]),
                                     y=np.concatenate([mean + z * mean_se, (mean - z * mean_se)[::-1]]),
                                     fill="toself", fillcolor=colour, opacity=0.18, line=dict(width=0),
                                     legendgroup=group, showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=alphas, y=mean, mode="lines", line=dict(color=colour, width=3),
                                 name=f"{ckpt.label}{where}: mean ± {z:g} SE", legendgroup=group,
                                 hovertemplate=f"{ckpt.label}{where} mean<br>alpha=%{{x:.3f}}<br>rho=%{{y:.4f}}<extra></extra>"))
    natural = not results.config.get("attack", {}).get("steps")
    fig.update_layout(title=_title(results).replace("\n", "<br>"), xaxis_title="alpha", height=560, width=900,
                      yaxis_title="natural loss" if natural else "adversarial loss rho(w + alpha d)", template="plotly_white")
    return fig
