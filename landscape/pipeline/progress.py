"""A rich progress bar over landscape points, with rate and ETA, on stderr."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class PointBar:
    """Points (or other `unit`s) done of `total`, elapsed time and ETA; disabled (silent) when not `enabled`."""

    def __init__(self, total: int, enabled: bool, description: str = "landscape", unit: str = "points",
                 completed: int = 0) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not enabled, transient=False,
        )
        self.task = self.progress.add_task(description, total=total, completed=completed)

    def __enter__(self) -> "PointBar":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def describe(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)
