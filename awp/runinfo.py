"""Text views of a run file: the best/last summary and the per-epoch metric table (`landscape info`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from awp.store import RunReader, epoch_ranges
from awp.trainconfig import format_toml

# What the column prefixes mean, printed above the table.
LEGEND: tuple[str, ...] = (
    "fit_*    running means over the epoch's minibatches in train mode; fit_adv is the paper's training",
    "         robustness: accuracy on the training attack's examples (at w + v under AWP)",
    "train_*  eval mode at the epoch's weights on a fixed unaugmented training subset under the evaluation",
    "         attack, as test_* on the test set; gap = train_adv - test_adv",
)

# Columns of the metric table: (metric, header, format). Two training-robustness measures sit side by
# side: fit_adv, the paper's (running minibatch accuracy under the training attack, train mode, while
# the weights move), and train_adv, ours for the gap (eval mode at the epoch's w, a fixed unaugmented
# training subset, the evaluation attack, like test_adv).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("lr", "lr", "{:.4g}"),
    ("fit_loss", "loss", "{:.3f}"),
    ("fit_nat_acc", "fit_nat", "{:.3f}"),
    ("fit_adv_acc", "fit_adv", "{:.3f}"),
    ("train_nat_acc", "train_nat", "{:.3f}"),
    ("train_adv_acc", "train_adv", "{:.3f}"),
    ("test_nat_acc", "test_nat", "{:.3f}"),
    ("test_adv_acc", "test_adv", "{:.3f}"),
    ("val_adv_acc", "val_adv", "{:.3f}"),
    ("gap", "gap", "{:+.3f}"),
    ("awp_on", "awp", "{:.0f}"),
    ("time_train", "t_train", "{:.1f}"),
    ("time_eval", "t_eval", "{:.1f}"),
)


def _row_of(metrics: Mapping[str, np.ndarray], epoch: int) -> int | None:
    hits = np.flatnonzero(metrics["epoch"] == epoch)
    return int(hits[0]) if len(hits) else None


def summary_lines(
    metrics: Mapping[str, np.ndarray], best: int | None, last: int | None, best_val: int | None = None,
    reported: int | None = None,
) -> list[str]:
    """Best (by test robust accuracy), best by validation when there is one, and last: never best alone;
    the epoch the run reports (AT-ES: its early-stopped best_val) is marked. Train robust is shown both
    ways: eval mode on the fixed training subset (the gap's), and fit (the paper's running minibatch
    accuracy under the training attack)."""
    lines = []
    for label, epoch in (("best", best), ("best_val", best_val), ("last", last)):
        if epoch is None:
            continue
        i = _row_of(metrics, epoch)
        if i is None:
            continue
        get = lambda k: float(metrics[k][i]) if k in metrics else float("nan")  # noqa: E731
        lines.append(
            f"{label:<8} epoch {epoch:>4}: test robust {get('test_adv_acc'):.3f}  natural {get('test_nat_acc'):.3f}  "
            f"train robust {get('train_adv_acc'):.3f} (eval)  {get('fit_adv_acc'):.3f} (fit)  gap {get('gap'):+.3f}"
            + ("  <- reported (early stopping)" if reported is not None and epoch == reported and reported != last else "")
        )
    if "time_train" in metrics and len(metrics["time_train"]):
        total = float(np.nansum(metrics["time_train"]) + np.nansum(metrics.get("time_eval", 0.0)))
        lines.append(f"time     {total:.1f}s over {len(metrics['epoch'])} epochs "
                     f"(training {float(np.nansum(metrics['time_train'])):.1f}s)")
    return lines


def metric_table(reader: RunReader, every: int = 1) -> list[str]:
    """One line per epoch (every `every`-th, plus best and last), best and last marked."""
    m = reader.metrics()
    if "epoch" not in m or not len(m["epoch"]):
        return ["(no finished epochs)"]
    cols = [c for c in COLUMNS if c[0] in m]
    header = f"{'epoch':>6} " + " ".join(f"{h:>9}" for _, h, _ in cols) + "  mark"
    out = [header]
    marks = {reader.best_epoch: "best", reader.last_epoch: "last"}
    if reader.best_val_epoch is not None:
        marks[reader.best_val_epoch] = (marks.get(reader.best_val_epoch, "") + " best_val").strip()
    if reader.best_epoch == reader.last_epoch and reader.best_epoch is not None:
        marks[reader.best_epoch] = "best last"
    for i, e in enumerate(m["epoch"].astype(int)):
        if every > 1 and e % every and e not in marks:
            continue
        cells = " ".join(f"{fmt.format(float(m[k][i])):>9}" for k, _, fmt in cols)
        out.append(f"{e:>6} {cells}  {marks.get(e, '')}".rstrip())
    return out


def info_text(reader: RunReader, every: int = 1) -> str:
    """Everything `landscape info` prints: status, method label, versions, saved epochs, config, table, summary."""
    cfg = reader.train_config()
    lines = [f"run        {reader.path}", f"status     {reader.status}", f"method     {cfg.label}"]
    v = reader.versions
    lines.append("versions   " + ", ".join(f"{k} {v[k]}" for k in ("awp", "torch", "cuda", "h5py") if k in v))
    lines.append(f"saved      epochs {epoch_ranges(reader.epochs_saved())}")
    lines.append("")
    lines.append("# config")
    lines.append(format_toml(cfg))
    lines.append("")
    lines.append("# metrics")
    lines.extend(LEGEND)
    lines.extend(metric_table(reader, every))
    lines.append("")
    lines.extend(summary_lines(reader.metrics(), reader.best_epoch, reader.last_epoch, reader.best_val_epoch,
                               reader.reported_epoch))
    evaluations = reader.evaluations()
    if evaluations:
        from awp.robustness.record import summary_line

        lines += ["", "# robustness evaluations (landscape eval; robust acc % [95% CI over test examples])"]
        lines += [summary_line(r) for r in evaluations]
    return "\n".join(lines)
