"""The figures of a landscape by the kind of its grid: 1-D curves or the 2-D plane, as PNG and as
interactive offline HTML (what `Landscape.plot` / `.html` and the commands call)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from awp.errors import UserError
from awp.registry import Registry
from landscape.figures.output import save_plotly_html
from landscape.storage.results import Landscape


def _plane_title(results: Landscape) -> str:
    att = results.config.get("attack", {})
    ck = results.checkpoints[0]
    loss = f"PGD-{att.get('steps')} {att.get('norm')} eps={att.get('eps', float('nan')):.3g}" if att.get("steps") else "natural loss"
    return (f"{results.config.get('arch', 'model')} {ck.label}: |g(α,β) − g(0,0)|, {loss}, "
            f"g(0,0)={results.origin['adv_loss'][0]:.3f}")


def plane_axes(results: Landscape) -> dict:
    """The names of a plane's two directions (`direction_label`) and, for principal directions, the
    training trajectory's (epoch, alpha, beta) projections relative to the checkpoint at the centre."""
    from landscape.core.directions import direction_label, found_at

    d, e = results.directions[:2]
    out: dict = {"xlabel": direction_label(d), "ylabel": direction_label(e)}
    a, b = found_at(d).get("trajectory"), found_at(e).get("trajectory")
    if a and b:
        along_e = {int(ep): x for ep, x in b}
        out["trajectory"] = [(int(ep), float(x), float(along_e[int(ep)])) for ep, x in a if int(ep) in along_e]
    return out


def _curves_png(results: Landscape, path: Path) -> list[Path]:
    from landscape.figures.curves import save_probe_png

    save_probe_png(results, path)
    return [path]


def _plane_png(results: Landscape, path: Path) -> list[Path]:
    from landscape.figures.plane import save_contour_png, save_surface_png

    a, b, rel = results.grid.axis("alpha"), results.grid.axis("beta"), results.relative()[0]
    paths = [path.with_name(path.stem + "-contour.png"), path.with_name(path.stem + "-surface.png")]
    save_contour_png(a, b, rel, paths[0], _plane_title(results), **plane_axes(results))
    save_surface_png(a, b, rel, paths[1], _plane_title(results))
    return paths


def _curves_html(results: Landscape):
    from landscape.figures.curves import html_figure

    return html_figure(results)


def _plane_html(results: Landscape):
    from landscape.figures.plane import html_figure

    grids = {k: results.values[k][0] for k in ("adv_loss", "nat_loss", "adv_acc", "nat_acc")}
    return html_figure(results.grid.axis("alpha"), results.grid.axis("beta"), grids, results.relative()[0],
                       _plane_title(results), **plane_axes(results))


@dataclass(frozen=True)
class Figures:
    """How a kind of grid is drawn: PNG file(s) at a path, and a plotly figure for the HTML page."""

    png: Callable[[Landscape, Path], list[Path]]
    html: Callable[[Landscape], Any]


FIGURES: Registry[Figures] = Registry("figure kind", {
    "curves": Figures(_curves_png, _curves_html),  # 1-D: the curves at PATH
    "plane": Figures(_plane_png, _plane_html),  # 2-D: contour and surface at PATH-contour.png, PATH-surface.png
})


def _figures(results: Landscape) -> Figures:
    if results.grid.kind not in FIGURES:
        raise UserError(f"no figure is drawn for a landscape with dims {list(results.grid.dims)}; read its arrays")
    return FIGURES[results.grid.kind]


def png(results: Landscape, path: Path) -> list[Path]:
    """The PNG figure(s) of the landscape's kind of grid."""
    return _figures(results).png(results, path)


def html(results: Landscape, path: Path) -> Path:
    """One self-contained plotly page (plotly.js inlined: opens offline)."""
    return save_plotly_html(_figures(results).html(results), path)
