"""Figures of a 2-D landscape: contour and 3-D surface PNGs, and an interactive offline plotly HTML.

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


def save_contour_png(alphas: np.ndarray, betas: np.ndarray, rel: np.ndarray, path: Path, title: str) -> None:
    """Filled contour of the relative landscape over (alpha, beta), centre marked."""
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    z = np.ma.masked_invalid(_z(rel))
    if len(alphas) > 1 and len(betas) > 1 and z.count() > 3:
        cs = ax.contourf(alphas, betas, z, levels=20, cmap="viridis")
        ax.contour(alphas, betas, z, levels=10, colors="white", linewidths=0.4, alpha=0.6)
    else:
        cs = ax.pcolormesh(alphas, betas, z, cmap="viridis", shading="nearest")
    fig.colorbar(cs, ax=ax, label=r"$|g(\alpha,\beta) - g(0,0)|$")
    ax.plot([0], [0], marker="+", color="red", markersize=10)
    ax.set_xlabel(r"$\alpha$ (direction d)")
    ax.set_ylabel(r"$\beta$ (direction e)")
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


def html_figure(alphas: np.ndarray, betas: np.ndarray, grids: dict[str, np.ndarray], rel: np.ndarray, title: str):
    """Plotly figure: surface and contour side by side; hover shows alpha, beta, losses and accuracies."""
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
    fig.update_layout(title=title, height=560, width=1150,
                      scene=dict(xaxis_title="alpha", yaxis_title="beta", zaxis_title="relative",
                                 aspectmode="manual", aspectratio=dict(x=1, y=1, z=0.7),
                                 camera=dict(eye=dict(x=1.5, y=-1.5, z=1.0))))
    fig.update_xaxes(title_text="alpha", row=1, col=2)
    fig.update_yaxes(title_text="beta", row=1, col=2)
    return fig
