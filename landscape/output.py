"""Writing figures and pages atomically: a temporary file moved into place, so an interrupted run
never leaves a half-written PNG or HTML where a finished one is expected."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def _atomic(path: Path, suffix: str, write: Callable[[Path], Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + suffix)
    write(tmp)
    os.replace(tmp, path)
    return path


def save_png(fig, path: Path, **savefig_kw: Any) -> Path:
    """A matplotlib figure as PNG (closed afterwards)."""
    import matplotlib.pyplot as plt

    try:
        return _atomic(path, ".tmp.png", lambda tmp: fig.savefig(tmp, **savefig_kw))
    finally:
        plt.close(fig)


def save_plotly_html(fig, path: Path) -> Path:
    """A plotly figure as one self-contained HTML file (plotly.js inlined: opens offline)."""
    return _atomic(path, ".tmp", lambda tmp: fig.write_html(tmp, include_plotlyjs=True, full_html=True))


def save_text(text: str, path: Path) -> Path:
    return _atomic(path, ".tmp", lambda tmp: tmp.write_text(text, encoding="utf-8"))
