"""An evaluation as a JSON record: RobustBench's field names where they apply (dataset, threat_model,
eps as "8/255", clean_acc, autoattack_acc as percentages with two decimals), and ours beside them
(every attack's robust accuracy with its 95% interval and seconds, the settings, seed, versions and the
checkpoint's sha256). Accuracies are over a fixed set of test examples; the interval is Wilson's score
interval for a binomial proportion, valid for examples drawn independently from the test distribution.
"""

from __future__ import annotations

import math
import platform
import time
from typing import Any, Mapping

import numpy as np
import scipy.stats

from awp import __version__
from awp.robustness import autoattack
from awp.robustness.run import PENDING, Evaluation

FORMAT = "awp-landscape-eval"
FORMAT_VERSION = 1
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}  # RobustBench's names
CONFIDENCE = 0.95


def eps_text(eps: float, norm: str) -> str:
    """RobustBench's eps: '8/255' where eps is k/255 for a whole k (L-inf), else the number ('0.5')."""
    k = eps * 255
    if norm == "linf" and eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:g}"


def interval(robust: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of the fraction of ones in a 0/1 array (NaN, NaN when it is empty)."""
    n = int(robust.size)
    if n == 0:
        return (float("nan"), float("nan"))
    ci = scipy.stats.binomtest(int(robust.sum()), n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def percent(fraction: float) -> str:
    """RobustBench's accuracies: percent as a string with two decimals ('56.17')."""
    return f"{100 * fraction:.2f}" if math.isfinite(fraction) else "nan"


def accuracy_entry(robust: np.ndarray) -> dict[str, Any]:
    done = robust[robust != PENDING].astype(np.float64)
    low, high = interval(done)
    return {"accuracy": float(done.mean()) if done.size else float("nan"), "ci95": [low, high], "n": int(done.size)}


def versions() -> dict[str, str | None]:
    import torch

    return {"awp": __version__, "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "pyautoattack": autoattack.version(), "python": platform.python_version()}


def evaluation_record(evaluation: Evaluation, *, dataset: str, architecture: str, checkpoint: Mapping[str, Any],
                      options: Mapping[str, Any], clean: np.ndarray) -> dict[str, Any]:
    """The JSON record of one checkpoint's evaluation. `clean` is the per-example clean correctness
    (the `natural` tally, or the clean part every attack checks); `options` what else decides the numbers
    (split, samples, seed, batch size)."""
    threat = evaluation.threat
    overall, clean_entry = evaluation.overall(), accuracy_entry(clean)
    attacks = {a.name: {**accuracy_entry(evaluation.tallies[a.name].robust),
                        "seconds": round(evaluation.tallies[a.name].seconds, 3),
                        "settings": a.settings(threat)} for a in evaluation.attacks}
    record: dict[str, Any] = {
        "dataset": dataset,
        "threat_model": THREAT_MODELS.get(threat.norm, threat.norm),
        "eps": eps_text(threat.eps, threat.norm),
        "architecture": architecture,
        "clean_acc": percent(clean_entry["accuracy"]),
        "robust_acc": percent(accuracy_entry(overall)["accuracy"]),
    }
    if any(a.family == "autoattack" for a in evaluation.attacks):
        record["autoattack_acc"] = percent(attacks[next(a.name for a in evaluation.attacks if a.family == "autoattack")]["accuracy"])
    record.update({
        "n_examples": int(overall.size),
        "eps_value": threat.eps,
        "clean": clean_entry,
        "robust": {**accuracy_entry(overall), "worst_case_over": [a.name for a in evaluation.attacks]},
        "attacks": attacks,
        "settings": {**options, "norm": threat.norm, "eps": threat.eps, "step_size": threat.step_size,
                     "restarts": threat.restarts},
        "checkpoint": dict(checkpoint),
        "versions": versions(),
        "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return record


def pct(entry: Mapping[str, Any]) -> tuple[str, str]:
    """An accuracy entry as ('52.30', '[49.1, 55.4]'): percent and its 95% interval."""
    lo, hi = entry["ci95"]
    return f"{100 * entry['accuracy']:.2f}", f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def summary_rows(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(attack, 'acc% [lo, hi]') rows of a record and its worst case, for `landscape info` and the report."""
    order = record.get("robust", {}).get("worst_case_over") or list(record["attacks"])  # the order they ran in
    rows = [(n, "{} {}".format(*pct(record["attacks"][n]))) for n in order if n in record["attacks"]]
    return rows + [("worst case", "{} {}".format(*pct(record["robust"])))]


def summary_line(record: Mapping[str, Any]) -> str:
    """One line per evaluation: which weights, threat model, examples, every attack and the worst case."""
    c = record.get("checkpoint") or {}
    rows = "; ".join(f"{n} {v}" for n, v in summary_rows(record))
    return f"{c.get('label', '?')}, {record['threat_model']} eps {record['eps']}, {record['n_examples']} examples: {rows}"
