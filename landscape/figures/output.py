"""Writing figures and pages atomically and signed: a temporary file moved into place (so an interrupted
run never leaves a half-written PNG or HTML), carrying the provenance of `awp.safeio.signed`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from awp.safeio import atomic_write, png_metadata, sign_html


def save_png(fig, path: Path, **savefig_kw: Any) -> Path:
    """A matplotlib figure as PNG (closed afterwards)."""
    import matplotlib.pyplot as plt

    try:
        meta = png_metadata()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", metadata=meta, **savefig_kw))
    finally:
        plt.close(fig)


def save_plotly_html(fig, path: Path) -> Path:
    """A plotly figure as one self-contained HTML file (plotly.js inlined: opens offline)."""
    return save_text(fig.to_html(include_plotlyjs=True, full_html=True), path)


def save_text(text: str, path: Path) -> Path:
    """Text (a full HTML page gets our signature in its head)."""
    text = sign_html(text) if text.lstrip()[:15].lower().startswith(("<!doctype", "<html")) else text
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
