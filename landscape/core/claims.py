"""The paper's qualitative findings as verdicts on intervals: pure functions of per-example and
per-direction numbers, so that each verdict can be tested on inputs whose answer is known.

A claim is a conjunction of parts. Each part is decided from an interval (or, for a correlation, a
permutation p-value): 'holds' when it excludes 0 on the claimed side, 'fails' when on the other side,
'not significant' when it contains 0, 'not measurable' when there is nothing to decide from. A claim
holds only when every part holds; otherwise it takes the status of its weakest part, and the part
that decided it is named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from landscape.core.stats import (
    FAILS, HOLDS, NOT_MEASURABLE, NOT_SIGNIFICANT, CorrelationTest, Estimate, gap_change, gap_change_unpaired_train, paired_bootstrap_diff,
    seeds_interval, t_interval, verdict, welch_interval,
)

ORDER = (FAILS, NOT_MEASURABLE, NOT_SIGNIFICANT, HOLDS)  # weakest first


@dataclass(frozen=True)
class Part:
    """One measured part of a claim: what, its estimate and interval, how the interval was made, the verdict."""

    what: str
    estimate: Estimate | None
    method: str
    status: str
    sign: int = +1  # the side of 0 the claim expects
    note: str = ""  # why there is no estimate, or what else decided the verdict

    def __str__(self) -> str:
        if self.estimate is None:
            return f"{self.what}: {self.note} -> {self.status}"
        e = self.estimate
        interval = f"95% CI [{e.lo:+.3f}, {e.hi:+.3f}]" if math.isfinite(e.lo) else "no interval"
        extra = f"; {self.note}" if self.note else ""
        return f"{self.what} {e.value:+.3f}, {interval} ({self.method}{extra}) -> {self.status}"


def combine(statuses: Sequence[str]) -> str:
    """A conjunction: it fails if a part fails, else it is only as strong as its weakest part."""
    return min(statuses, key=ORDER.index) if statuses else NOT_MEASURABLE


@dataclass
class Claim:
    key: str  # "1", "2a", ...
    text: str
    parts: list[Part] = field(default_factory=list)

    @property
    def status(self) -> str:
        return combine([p.status for p in self.parts])

    @property
    def deciding(self) -> Part | None:
        """The part whose status is the claim's (the first such), or None when every part holds."""
        if self.status == HOLDS:
            return None
        return next(p for p in self.parts if p.status == self.status)

    @property
    def evidence(self) -> str:
        return "; ".join(str(p) for p in self.parts)


def difference(what: str, est: Estimate | None, method: str, sign: int = +1, note: str = "") -> Part:
    """A part claiming `est` lies on the `sign` side of 0."""
    status = verdict(est, sign) if est is not None else NOT_MEASURABLE
    return Part(what, est, method, status, sign, note)


def unmeasurable(what: str, why: str) -> Part:
    return Part(what, None, "", NOT_MEASURABLE, note=why)


def correlation(what: str, test: CorrelationTest) -> Part:
    """A part claiming a positive rank correlation, decided by the test's permutation p-value."""
    if test.estimate is None:
        return unmeasurable(what, test.reason or "no test")
    return Part(what, test.estimate, f"{test.units}; {test.method}", test.status, +1, f"p = {test.p:.3g}")


# ---------------------------------------------------------------------------------------------
# The claims, from plain arrays
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """Per-example robust correctness (1/0) of one checkpoint on the measuring examples, and the
    per-direction sharpness of its landscape (empty when it was not probed)."""

    epoch: int
    train: np.ndarray  # [N_train] the fixed training subset
    test: np.ndarray  # [N_test] test examples not used to choose any epoch
    sharpness: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [D]
    sharpness_se: float = 0.0  # of the mean over directions, over examples (`metrics.mean_rise_se`)


def overfitting(best: Checkpoint, last: Checkpoint, before: np.ndarray, after: np.ndarray, *, selection: str,
                sharpness: str = "rise", sharpness_se: float = 0.0, seed: int = 0) -> Claim:
    """(1) AT: test robustness peaks then falls, the gap grows, the landscape sharpens after the best epoch.
    `before` / `after`: [D] per direction, the mean sharpness of probed checkpoints at or before the
    best epoch and after it (the same directions, so paired), `sharpness_se` the example noise of their
    difference; `selection` says how the best was chosen."""
    claim = Claim("1", "AT: test robustness peaks then falls while the gap grows; the landscape sharpens after the best epoch")
    measured = f"paired bootstrap over {len(best.test)} test examples not used to choose it"
    where = f"best epoch {best.epoch} ({selection}), last {last.epoch}"
    drop = difference("test robust acc best - last", paired_bootstrap_diff(best.test, last.test, seed=seed), measured,
                      note=where)
    if best.epoch >= last.epoch:  # no epoch after the best: nothing fell
        drop = Part(drop.what, drop.estimate, drop.method, FAILS, note=f"{where}: the best epoch is the last, no fall")
    claim.parts.append(drop)
    claim.parts.append(difference("gap last - best", gap_change(last.train, best.train, last.test, best.test, seed=seed),
                                  "bootstrap over training and test examples, each paired"))
    if len(before) == 0 or len(after) == 0:
        claim.parts.append(unmeasurable(f"{sharpness} after - before the best epoch",
                                        "no probed checkpoint " + ("before" if len(before) == 0 else "after") + " it"))
    else:
        claim.parts.append(difference(f"{sharpness} after - before the best epoch", t_interval(np.asarray(after) - np.asarray(before), sharpness_se),
                                      f"t interval over {len(after)} random directions, example noise added"))
    return claim


def within_epochs(test: CorrelationTest) -> Claim:
    """(2a) the gap and sharpness change together over epochs, within runs (Figure 1a)."""
    return Claim("2a", "robust generalization gap and sharpness change together over epochs (within runs)",
                 [correlation("Spearman of changes", test)])


def across_runs(test: CorrelationTest) -> Claim:
    """(2b) runs with a larger final gap have a sharper final landscape (Figure 1b)."""
    return Claim("2b", "runs with a larger final gap have a sharper final landscape (across runs)",
                 [correlation("Spearman over runs", test)])


def awp_helps(at: Checkpoint, awp: Checkpoint, *, sharpness: str = "rise", seed: int = 0) -> Claim:
    """(3) AT-AWP ends with a smaller gap, a flatter landscape and higher last-epoch test robustness
    than AT; both last checkpoints measured on the same examples (paired), their directions independent."""
    claim = Claim("3", "AT-AWP ends with a smaller gap, a flatter landscape and higher last-epoch test robustness than AT")
    claim.parts.append(difference("final gap AT-AWP - AT", gap_change(awp.train, at.train, awp.test, at.test, seed=seed),
                                  "bootstrap over training and test examples, each paired", sign=-1))
    claim.parts.append(difference(f"final {sharpness} AT-AWP - AT", welch_interval(awp.sharpness, at.sharpness, float(np.hypot(awp.sharpness_se, at.sharpness_se))),
                                  f"Welch t interval over {len(awp.sharpness)} + {len(at.sharpness)} random directions, "
                                  f"example noise added", sign=-1))
    claim.parts.append(difference("last test robust acc AT-AWP - AT", paired_bootstrap_diff(awp.test, at.test, seed=seed),
                                  f"paired bootstrap over {len(at.test)} test examples"))
    return claim


def methods_flatter(at: Checkpoint, others: dict[str, Checkpoint], *, sharpness: str = "rise", seed: int = 0) -> Claim:
    """(5) Figure 1(b): every other method (TRADES, MART, RST, AT-ES) ends with a smaller gap and a flatter
    landscape than AT, each at the checkpoint it reports (AT-ES's early-stopped one); per method the gap
    difference is paired over the same examples and the sharpness difference is over independent directions."""
    claim = Claim("5", f"{', '.join(others) or 'the other methods'} each end with a smaller gap and a flatter landscape than AT")
    for name, m in others.items():
        if len(m.train) == len(at.train):
            gap = gap_change(m.train, at.train, m.test, at.test, seed=seed)
            how = "bootstrap over training and test examples, each paired"
        else:  # AT-ES trained on what its validation split left: other training examples
            gap = gap_change_unpaired_train(m.train, at.train, m.test, at.test, seed=seed)
            how = "bootstrap over test examples, paired, and the two training sets, independently"
        claim.parts.append(difference(f"gap {name} - AT", gap, f"{how}; epochs {m.epoch} vs {at.epoch}", sign=-1))
        claim.parts.append(difference(f"{sharpness} {name} - AT",
                                      welch_interval(m.sharpness, at.sharpness, float(np.hypot(m.sharpness_se, at.sharpness_se))),
                                      f"Welch t interval over {len(m.sharpness)} + {len(at.sharpness)} random directions, "
                                      f"example noise added", sign=-1))
    if not others:
        claim.parts.append(unmeasurable("gap and sharpness against AT", "no other method was trained"))
    return claim


def on_the_fly_above_fixed(fly: np.ndarray, fixed: np.ndarray, alphas: np.ndarray) -> Claim:
    """(4) the on-the-fly landscape lies above the fixed-adversarial-example one (Section 3, Figure 2):
    fly, fixed: [D, A] adversarial loss of the same checkpoint along the same directions."""
    off = np.asarray(alphas) != 0
    per_dir = np.nanmean(np.asarray(fly)[:, off] - np.asarray(fixed)[:, off], axis=1)  # [D]
    return Claim("4", "the on-the-fly landscape lies above the fixed-adversarial-example landscape", [
        difference("on-the-fly - fixed adversarial loss, mean over alpha != 0", t_interval(per_dir),
                   f"t interval over {len(per_dir)} random directions"),
    ])


def across_seeds(per_seed: Sequence[Claim]) -> Claim:
    """A claim over independent seeds: each part's per-seed estimates, with a t interval over seeds
    (the seeds are the independent units). A part not measured in some seed uses the others."""
    first = per_seed[0]
    claim = Claim(first.key, first.text)
    for i, part in enumerate(first.parts):
        parts = [c.parts[i] for c in per_seed if i < len(c.parts)]
        values = np.array([p.estimate.value for p in parts if p.estimate is not None])
        ses = np.array([p.estimate.se for p in parts if p.estimate is not None])  # each seed's own (NaN: unknown)
        if len(values) < 2:
            why = "; ".join(sorted({p.note for p in parts if p.estimate is None})) or "not measured"
            claim.parts.append(Part(part.what, None, "", combine([p.status for p in parts]), part.sign,
                                    f"measured in {len(values)} of {len(parts)} seeds ({why})"))
            continue
        claim.parts.append(difference(part.what, seeds_interval(values, ses),
                                      f"mean of {len(values)} seeds, t interval over seeds (its se at least the "
                                      f"seeds' own)", part.sign,
                                      note="per seed: " + ", ".join(f"{v:+.3f}" for v in values)))
    return claim
