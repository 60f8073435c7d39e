"""Figures of a 2-D landscape: contour and 3-D surface PNGs, and an interactive offline plotly HTML; the
axes are named after their directions, and a PCA plane shows the training trajectory on the contour.

Grids come in as [n_alpha, n_beta] (axis 0 = alpha); both matplotlib and plotly want z as
[n_y, n_x] with x = alpha and y = beta, hence the single transpose in `_z` used everywhere.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from landscape.figures.output import save_png  # noqa: E402


def _z(grid: np.ndarray) -> np.ndarray:
    """[n_alpha, n_beta] -> [n_beta, n_alpha] so x = alpha, y = beta."""
    return np.asarray(grid).T


def _atomic_savefig(fig, path: Path) -> None:
    save_png(fig, path, dpi=130, bbox_inches="tight")


Path2D = list[tuple[int, float, float]]  # (epoch, alpha, beta) of each saved checkpoint: the training trajectory

MAX_EPOCH_LABELS = 12  # a longer trajectory labels every k-th point (and its ends)


def _labelled(n: int) -> set[int]:
    step = max(1, -(-n // MAX_EPOCH_LABELS))
    return set(range(0, n, step)) | {n - 1}


def save_contour_png(alphas: np.ndarray, betas: np.ndarray, rel: np.ndarray, path: Path, title: str,
                     xlabel: str = "direction d", ylabel: str = "direction e", trajectory: Path2D | None = None) -> None:
    """Filled contour of the relative landscape over (alpha, beta), centre marked; with `trajectory`,
    the projections of the saved checkpoints as a path labelled by epoch (clipped to the grid)."""
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    z = np.ma.masked_invalid(_z(rel))
    if len(alphas) > 1 and len(betas) > 1 and z.count() > 3:
        cs = ax.contourf(alphas, betas, z, levels=20, cmap="viridis")
        ax.contour(alphas, betas, z, levels=10, colors="white", linewidths=0.4, alpha=0.6)
    else:
        cs = ax.pcolormesh(alphas, betas, z, cmap="viridis", shading="nearest")
    fig.colorbar(cs, ax=ax, label=r"$|g(\alpha,\beta) - g(0,0)|$")
    if trajectory:
        xs, ys = [a for _, a, _ in trajectory], [b for _, _, b in trajectory]
        ax.plot(xs, ys, color="white", lw=1.2, marker="o", markersize=3.5, markerfacecolor="#d1495b",
                markeredgecolor="white", markeredgewidth=0.5, zorder=3, clip_on=False, label="training trajectory")
        for i in sorted(_labelled(len(trajectory))):
            e, a, b = trajectory[i]
            ax.annotate(str(e), (a, b), textcoords="offset points", xytext=(3, 3), fontsize=7, color="white", zorder=4)
        ax.set_xlim(alphas[0], alphas[-1])
        ax.set_ylim(betas[0], betas[-1])
        ax.legend(frameon=False, fontsize=7, loc="lower right", labelcolor="white")
    ax.plot([0], [0], marker="+", color="red", markersize=10, zorder=5)
    ax.set_xlabel(rf"$\alpha$: {xlabel}")
    ax.set_ylabel(rf"$\beta$: {ylabel}")
    ax.set_aspect("equal" if np.isclose(np.ptp(alphas), np.ptp(betas)) else "auto")
    ax.set_title(title, fontsize=10)
    _atomic_savefig(fig, path)


def surface_z(rel: np.ndarray) -> np.ma.MaskedArray:
    """Heights of the 3-D surface, [n_alpha, n_beta] -> [n_beta, n_alpha], with NaN cells (points not
    computed yet) masked: matplotlib leaves them out, a gap as in the contour, not a flat plane."""
    return np.ma.masked_invalid(_z(np.asarray(rel, dtype=float)))


def save_surface_png(alphas: np.ndarray, betas: np.ndarray, rel: np.ndarray, path: Path, title: str) -> None:
    """3-D surface of the relative landscape, as in Figure 6; uncomputed points are gaps."""
    fig = plt.figure(figsize=(6.0, 4.8))
    ax = fig.add_subplot(projection="3d")
    A, B = np.meshgrid(alphas, betas)  # both [n_beta, n_alpha], matching _z
    z = surface_z(rel)
    if z.count():  # nothing computed yet: empty axes rather than a surface of NaN
        ax.plot_surface(A, B, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel(r"$\alpha$")
    ax.set_ylabel(r"$\beta$")
    ax.set_zlabel("relative loss")
    ax.set_title(title, fontsize=10)
    _atomic_savefig(fig, path)


def html_figure(alphas: np.ndarray, betas: np.ndarray, grids: dict[str, np.ndarray], rel: np.ndarray, title: str,
                xlabel: str = "direction d", ylabel: str = "direction e", trajectory: Path2D | None = None):
    """Plotly figure: surface and contour side by side; hover shows alpha, beta, losses and accuracies;
    with `trajectory`, the saved checkpoints' path on the contour, labelled by epoch."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = [k for k in ("adv_loss", "nat_loss", "adv_acc", "nat_acc") if k in grids]
    custom = np.stack([_z(grids[k]) for k in names], axis=-1)  # [n_beta, n_alpha, len(names)]
    hover = "alpha=%{x:.3f}<br>beta=%{y:.3f}<br>relative=%{z:.4f}" + "".join(
        f"<br>{k}=%{{customdata[{i}]:.4f}}" for i, k in enumerate(names)
    ) + "<extra></extra>"
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "surface"}, {"type": "xy"}]],
                        subplot_titles=("relative adversarial loss", "contour"))
    z = _z(rel)
    fig.add_trace(go.Surface(x=alphas, y=betas, z=z, customdata=custom, hovertemplate=hover,
                             colorscale="Viridis", showscale=False), row=1, col=1)
    fig.add_trace(go.Contour(x=alphas, y=betas, z=z, customdata=custom, hovertemplate=hover,
                             colorscale="Viridis", colorbar=dict(title="|g-g(0,0)|")), row=1, col=2)
    if trajectory:
        labels = _labelled(len(trajectory))
        fig.add_trace(go.Scatter(x=[a for _, a, _ in trajectory], y=[b for _, _, b in trajectory], mode="lines+markers+text",
                                 text=[str(e) if i in labels else "" for i, (e, _, _) in enumerate(trajectory)],
                                 textposition="top right", textfont=dict(color="white", size=10),
                                 line=dict(color="white", width=1.5), marker=dict(color="#d1495b", size=6),
                                 customdata=[e for e, _, _ in trajectory], name="training trajectory",
                                 hovertemplate="epoch %{customdata}<br>alpha=%{x:.3f}<br>beta=%{y:.3f}<extra></extra>"),
                      row=1, col=2)
        fig.update_xaxes(range=[alphas[0], alphas[-1]], row=1, col=2)
        fig.update_yaxes(range=[betas[0], betas[-1]], row=1, col=2)
    fig.update_layout(title=title, height=560, width=1150,
                      scene=dict(xaxis_title=f"alpha: {xlabel}", yaxis_title=f"beta: {ylabel}", zaxis_title="relative",
                                 aspectmode="manual", aspectratio=dict(x=1, y=1, z=0.7),
                                 camera=dict(eye=dict(x=1.5, y=-1.5, z=1.0))))
    fig.update_xaxes(title_text=f"alpha: {xlabel}", row=1, col=2)
    fig.update_yaxes(title_text=f"beta: {ylabel}", row=1, col=2)
    return fig
