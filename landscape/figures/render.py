"""The figures of a landscape by the kind of its grid: 1-D curves or the 2-D plane, as PNG and as
interactive offline HTML (what `Landscape.plot` / `.html` and the commands call)."""

from __future__ import annotations

from pathlib import Path

from awp.errors import UserError
from landscape.figures.output import save_plotly_html
from landscape.storage.results import Landscape


def _plane_title(results: Landscape) -> str:
    att = results.config.get("attack", {})
    ck = results.checkpoints[0]
    loss = f"PGD-{att.get('steps')} {att.get('norm')} eps={att.get('eps', float('nan')):.3g}" if att.get("steps") else "natural loss"
    return (f"{results.config.get('arch', 'model')} {ck.label}: |g(α,β) − g(0,0)|, {loss}, "
            f"g(0,0)={results.origin['adv_loss'][0]:.3f}")


def png(results: Landscape, path: Path) -> list[Path]:
    """1-D: the curves at `path`. 2-D: contour and surface at PATH-contour.png and PATH-surface.png."""
    kind = results.grid.kind
    if kind == "curves":
        from landscape.figures.curves import save_probe_png

        save_probe_png(results, path)
        return [path]
    if kind == "plane":
        from landscape.figures.plane import save_contour_png, save_surface_png

        a, b, rel = results.grid.axis("alpha"), results.grid.axis("beta"), results.relative()[0]
        paths = [path.with_name(path.stem + "-contour.png"), path.with_name(path.stem + "-surface.png")]
        save_contour_png(a, b, rel, paths[0], _plane_title(results))
        save_surface_png(a, b, rel, paths[1], _plane_title(results))
        return paths
    raise UserError(f"no figure is drawn for a landscape with dims {list(results.grid.dims)}; read its arrays")


def html(results: Landscape, path: Path) -> Path:
    """One self-contained plotly page (plotly.js inlined: opens offline)."""
    kind = results.grid.kind
    if kind == "curves":
        from landscape.figures.curves import html_figure

        return save_plotly_html(html_figure(results), path)
    if kind == "plane":
        from landscape.figures.plane import html_figure as plane_figure

        grids = {k: results.values[k][0] for k in ("adv_loss", "nat_loss", "adv_acc", "nat_acc")}
        return save_plotly_html(plane_figure(results.grid.axis("alpha"), results.grid.axis("beta"), grids,
                                             results.relative()[0], _plane_title(results)), path)
    raise UserError(f"no figure is drawn for a landscape with dims {list(results.grid.dims)}; read its arrays")
