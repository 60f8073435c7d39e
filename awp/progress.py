"""Progress of a training run: a rich bar (rate, ETA) per epoch on a terminal, one summary line per
epoch always, nothing with `quiet`."""

from __future__ import annotations

import math

import sys
from collections.abc import Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def epoch_line(epoch: int, epochs: int, row: Mapping[str, float], best_epoch: int | None) -> str:
    """One summary line: lr, training loss/accuracies, train-subset and test accuracies, gap, time."""
    width = len(str(epochs))
    parts = [
        f"epoch {epoch:>{width}}/{epochs}",
        f"lr {row['lr']:.4g}",
        f"loss {row['fit_loss']:.3f}",
        f"fit nat/adv {row['fit_nat_acc']:.3f}/{row['fit_adv_acc']:.3f}",
    ]
    if math.isfinite(row["test_adv_acc"]):
        parts += [f"train {row['train_nat_acc']:.3f}/{row['train_adv_acc']:.3f}",
                  f"test {row['test_nat_acc']:.3f}/{row['test_adv_acc']:.3f}"]
    else:  # --eval-every: not measured this epoch
        parts.append("train/test not evaluated")
    if "val_adv_acc" in row:
        parts.append(f"val {row['val_nat_acc']:.3f}/{row['val_adv_acc']:.3f}")
    if math.isfinite(row["gap"]):
        parts.append(f"gap {row['gap']:+.3f}")
    if row.get("awp_on"):
        parts.append("awp")
    parts.append(f"{row['time_train'] + row['time_eval']:.1f}s")
    if best_epoch is not None:
        parts.append(f"best {best_epoch}" + (" *" if best_epoch == epoch else ""))
    return "  ".join(parts)


class ConsoleReporter:
    """Messages and per-epoch lines to stdout; above them a transient progress bar when stdout is a
    terminal (one console for both, so lines print above the bar instead of through it)."""

    def __init__(self, quiet: bool = False, bar: bool | None = None) -> None:
        self.quiet = quiet
        self.console = Console(file=sys.stdout, highlight=False, soft_wrap=True)
        self.bar = (self.console.is_terminal if bar is None else bar) and not quiet
        self.progress: Progress | None = None
        self.task = None
        if self.bar:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                TextColumn("loss {task.fields[loss]}"), console=self.console, transient=True,
            )
            self.progress.start()

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, loss="-", rate="")

    def step(self, step: int, steps: int, loss: float) -> None:
        if self.progress is not None and self.task is not None:
            t = self.progress.tasks[-1]
            rate = f"{t.speed:.1f} it/s" if t.speed else ""
            self.progress.update(self.task, completed=step, loss=f"{loss:.3f}", rate=rate)

    def epoch_end(self, epoch: int, epochs: int, row: Mapping[str, float], best_epoch: int | None) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description=f"epoch {epoch}/{epochs} done")
        self.message(epoch_line(epoch, epochs, row, best_epoch))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
