"""Run evaluation attacks over a dataset batch by batch, keeping per-example results as they are computed,
so an interrupted evaluation resumes where it stopped and gives the numbers an uninterrupted one gives.

Per-example results are int8 arrays [N]: 1 robust, 0 not, -1 not yet computed. Batch b of attack a
draws its random starts from a generator seeded with (seed, a's name, b) alone: which batches were
done before an interruption changes nothing.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from awp.attacks import model_mode
from awp.data import batches
from awp.kernels import Kernels
from awp.robustness.attacks import EvalAttack, Threat, correct
from awp.stopping import stop_requested

PENDING = -1


@dataclass
class Tally:
    """One attack's per-example results (`robust` int8 [N], PENDING where not computed) and the seconds
    spent on it, summed over resumed sessions."""

    robust: np.ndarray
    seconds: float = 0.0

    @classmethod
    def empty(cls, n: int) -> "Tally":
        return cls(np.full(n, PENDING, dtype=np.int8))

    @property
    def complete(self) -> bool:
        return bool((self.robust != PENDING).all())

    @property
    def done(self) -> int:
        return int((self.robust != PENDING).sum())

    def accuracy(self) -> float:
        """Robust accuracy over the examples computed so far (NaN when none is)."""
        done = self.robust[self.robust != PENDING]
        return float(done.mean()) if done.size else float("nan")


class Bar(Protocol):
    def advance(self, n: int = 1) -> None: ...


BarFactory = Callable[[str, int, int], AbstractContextManager]  # (description, total, already done) -> Bar


@dataclass
class Evaluation:
    """The attacks of one evaluation and their tallies (keyed by attack name)."""

    attacks: list[EvalAttack]
    threat: Threat
    tallies: dict[str, Tally] = field(default_factory=dict)

    def overall(self) -> np.ndarray:
        """The per-example worst case over every attack run (AutoAttack's convention): int8 [N]."""
        stack = np.stack([self.tallies[a.name].robust for a in self.attacks])
        pending = (stack == PENDING).any(0)
        return np.where(pending, PENDING, stack.min(0)).astype(np.int8)


def batch_seed(seed: int, attack: str, batch: int) -> int:
    """The seed of one batch's random starts: a hash of (seed, attack name, batch index)."""
    digest = hashlib.sha256(f"{seed}|{attack}|{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def run_evaluation(
    model: nn.Module,
    ds: Dataset,
    evaluation: Evaluation,
    *,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    save: Callable[[], None] = lambda: None,
    save_every_s: float = 2.0,
    bar: BarFactory | None = None,
    kernels: Kernels = Kernels(),
) -> bool:
    """Fill the pending entries of every tally, attack after attack, in eval mode; `save()` is called at
    most every `save_every_s` seconds and after each attack. Returns False when Ctrl-C asked to stop
    (after the current batch, saved), True when every attack is complete. Each batch's clean forward and
    attack run under `kernels.autocast` with its inputs in the kernels' memory format; the model is
    expected to be `kernels.prepare`d already; attacks get its logits as float32 (`Kernels.float_logits`)."""
    n = len(ds)
    last_save = time.perf_counter()
    target = kernels.float_logits(model)  # attacks see float32 logits (AutoAttack needs them)
    with model_mode(model, train=False):
        for attack in evaluation.attacks:
            tally = evaluation.tallies.setdefault(attack.name, Tally.empty(n))
            if tally.complete:
                continue
            with (bar(attack.name, n, tally.done) if bar else nullcontext()) as b:
                for index, (x, y) in enumerate(batches(ds, batch_size, device=device)):
                    lo, hi = index * batch_size, index * batch_size + len(y)
                    if (tally.robust[lo:hi] != PENDING).all():
                        continue
                    if stop_requested():
                        save()
                        return False
                    t0 = time.perf_counter()
                    gen = torch.Generator().manual_seed(batch_seed(seed, attack.name, index))
                    x = kernels.inputs(x)
                    with kernels.autocast(x.device):
                        with torch.no_grad():
                            clean = correct(model(x), y)
                        robust = attack.run(target, x, y, clean, evaluation.threat, gen)
                    tally.robust[lo:hi] = robust.to(torch.int8).cpu().numpy()  # the copy syncs the device
                    tally.seconds += time.perf_counter() - t0
                    if b is not None:
                        b.advance(hi - lo)
                    if time.perf_counter() - last_save >= save_every_s:
                        save()
                        last_save = time.perf_counter()
            save()
            last_save = time.perf_counter()
    return True


def evaluate_model(model: nn.Module, ds: Dataset, attacks: str = "natural,fgsm,pgd20", *, eps: float = 8 / 255,
                   norm: str = "linf", step_size: float | None = None, restarts: int = 1, aa_version: str = "standard",
                   batch_size: int = 256, seed: int = 0, device: torch.device | str = "cpu",
                   kernels: Kernels = Kernels()) -> Evaluation:
    """The library form of `landscape eval` for your own model (pixels in [0, 1]) and Dataset of (x, y):
    `ev.tallies["pgd20"].accuracy()`, `ev.overall()` (per example, worst case over `attacks`). `kernels`
    (`awp.kernels.Kernels`): precision and kernels; the model is prepared in place (channels_last, compile)."""
    from awp.robustness.attacks import parse_attacks

    threat = Threat(norm=norm, eps=eps, step_size=eps / 4 if step_size is None else step_size, restarts=restarts,
                    aa_version=aa_version)
    evaluation = Evaluation(parse_attacks(attacks), threat)
    kernels.check(device)
    run_evaluation(kernels.prepare(model), ds, evaluation, batch_size=batch_size, seed=seed, device=device,
                   kernels=kernels)
    return evaluation
