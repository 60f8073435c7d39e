"""The evaluation attacks of the paper's robustness tables (Tables 1-3): natural, FGSM, PGD-K, CW-inf, and
AutoAttack (optional extra), as functions from a batch to per-example robustness.

Every attack returns a bool tensor [B]: True where the example stays correctly classified. An example
counts as robust to an attack only if it is classified correctly both clean and at every adversarial
input the attack produced (AutoAttack's convention): each attack's robust accuracy is at most the
natural accuracy, and eps = 0 gives exactly the natural accuracy.

Attack names are FAMILY[K]: `pgd100` is PGD with 100 steps; a family with steps has a default
(`pgd` = pgd20, `cw` = cw100: the paper's "CW-inf, the L-inf CW loss optimized by PGD-100").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from awp.attacks import AttackConfig, LossFn, cross_entropy, fgsm, margin, pgd, random_start
from awp.errors import UserError
from awp.evaluate import correct_per_example
from awp.registry import Registry


@dataclass(frozen=True)
class Threat:
    """What every attack of one evaluation shares: the threat model (`eps`, `norm`, the PGD step
    `step_size` (the paper's eta1, 2/255 at 8/255), `restarts` of the random-start attacks, the L2
    random start) and AutoAttack's `aa_version`."""

    norm: str = "linf"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    restarts: int = 1
    l2_start: str = "reference"
    aa_version: str = "standard"


DEFAULT_ATTACKS = "natural,fgsm,pgd20,pgd100,cw"  # the paper's white-box columns (Table 2); add autoattack


def correct(logits: Tensor, y: Tensor) -> Tensor:
    """`awp.evaluate.correct_per_example` as bool: True where argmax(logits) == y and every logit is
    finite (NaN logits predict nothing)."""
    return correct_per_example(logits, y) == 1


# An attack run: (model in eval mode, x [B, ...], y [B], clean-correct [B], threat, steps, generator) ->
# robust [B] (a subset of clean-correct).
AttackRun = Callable[[nn.Module, Tensor, Tensor, Tensor, Threat, int, torch.Generator], Tensor]


def _natural(model: nn.Module, x: Tensor, y: Tensor, clean: Tensor, threat: Threat, steps: int,
             gen: torch.Generator) -> Tensor:
    return clean


def _fgsm(model: nn.Module, x: Tensor, y: Tensor, clean: Tensor, threat: Threat, steps: int,
          gen: torch.Generator) -> Tensor:
    """FGSM (Eq. 13): one step of size eps from the clean input; deterministic, so no restarts."""
    x_adv = fgsm(model, x, y, eps=threat.eps, norm=threat.norm)
    with torch.no_grad():
        return clean & correct(model(x_adv), y)


def pgd_robust(model: nn.Module, x: Tensor, y: Tensor, clean: Tensor, threat: Threat, steps: int,
               gen: torch.Generator, loss_fn: LossFn = cross_entropy) -> Tensor:
    """PGD-K (Eq. 14) on `loss_fn` with a random start, `threat.restarts` times: an example is robust
    only if no restart fools the model (the per-example worst case). Every restart draws the starts of
    the whole batch, so restart r uses the same starts whatever the earlier ones found: more restarts
    can only remove robust examples. Restarts attack only the examples still robust."""
    attack = AttackConfig(norm=threat.norm, eps=threat.eps, step_size=threat.step_size, steps=steps,
                          l2_start=threat.l2_start)
    robust = clean.clone()
    for _ in range(threat.restarts):
        delta0 = random_start(x, threat.eps, threat.norm, gen, threat.l2_start)
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            continue  # the draw above keeps the generator's sequence independent of the outcome
        x_adv = pgd(model, x[idx], y[idx], attack, loss_fn=loss_fn, delta0=delta0[idx])
        with torch.no_grad():
            robust[idx] = correct(model(x_adv), y[idx])
    return robust


def _cw(model: nn.Module, x: Tensor, y: Tensor, clean: Tensor, threat: Threat, steps: int,
        gen: torch.Generator) -> Tensor:
    """CW-inf: PGD on the Carlini-Wagner margin max_{k != y} z_k - z_y (the paper's Table 2 attack)."""
    return pgd_robust(model, x, y, clean, threat, steps, gen, loss_fn=margin)


def _autoattack(model: nn.Module, x: Tensor, y: Tensor, clean: Tensor, threat: Threat, steps: int,
                gen: torch.Generator) -> Tensor:
    from awp.robustness.autoattack import autoattack_robust

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return clean & autoattack_robust(model, x, y, threat, seed)


@dataclass(frozen=True)
class Family:
    """An attack family: what it is, its default steps (None: it takes no step count), and whether
    `--restarts` applies."""

    summary: str
    run: AttackRun
    default_steps: int | None = None
    restarts: bool = False


FAMILIES: Registry[Family] = Registry("attack", {
    "natural": Family("clean inputs, no attack", _natural),
    "fgsm": Family("FGSM, one step of size eps (Eq. 13)", _fgsm),
    "pgd": Family("PGD-K on cross-entropy with a random start (Eq. 14)", pgd_robust, default_steps=20, restarts=True),
    "cw": Family("CW-inf: PGD-K on the CW margin loss", _cw, default_steps=100, restarts=True),
    "autoattack": Family("AutoAttack (Croce & Hein 2020) via pyautoattack", _autoattack),
})


@dataclass(frozen=True)
class EvalAttack:
    """One attack of an evaluation: its name as given (`pgd100`), its family and steps."""

    name: str
    family: str
    steps: int

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    def settings(self, threat: Threat) -> dict:
        """What decides this attack's numbers, for the JSON and for resuming."""
        out: dict = {"family": self.family}
        if self.family == "natural":
            return out
        out.update(norm=threat.norm, eps=threat.eps)
        if self.spec.default_steps is not None:
            out.update(steps=self.steps, step_size=threat.step_size, restarts=threat.restarts, random_start=True)
            if threat.norm == "l2":
                out["l2_start"] = threat.l2_start
        if self.family == "autoattack":
            out["version"] = threat.aa_version
        return out

    def run(self, model: nn.Module, x: Tensor, y: Tensor, clean: Tensor, threat: Threat,
            gen: torch.Generator) -> Tensor:
        return self.spec.run(model, x, y, clean, threat, self.steps, gen)


def accepted_attacks() -> str:
    """The accepted names, for errors and --help: natural, fgsm, pgdK (pgd = pgd20), ..."""
    return ", ".join(f"{n}K ({n} = {n}{f.default_steps})" if f.default_steps is not None else n
                     for n, f in FAMILIES.items())


_NAME = re.compile(r"^([a-z]+)(\d*)$")


def parse_attack(name: str) -> EvalAttack:
    """`pgd100` -> EvalAttack("pgd100", "pgd", 100); an unknown name is one line listing the accepted ones."""
    m = _NAME.match(name.strip().lower())
    family = FAMILIES.get(m.group(1)) if m else None
    if family is None or (m.group(2) and family.default_steps is None):
        raise UserError(f"unknown attack {name!r}; accepted: {accepted_attacks()}")
    steps = int(m.group(2)) if m.group(2) else (family.default_steps or 0)
    if family.default_steps is not None and steps < 1:
        raise UserError(f"attack {name!r} has {steps} steps; give at least 1 (e.g. {m.group(1)}{family.default_steps})")
    return EvalAttack(name.strip().lower(), m.group(1), steps)


def parse_attacks(text: str) -> list[EvalAttack]:
    """A comma-separated list of attack names, each once, in the order given."""
    names = [n for n in (s.strip() for s in text.split(",")) if n]
    if not names:
        raise UserError(f"--attacks {text!r} names no attack; accepted: {accepted_attacks()}")
    attacks = [parse_attack(n) for n in names]
    seen: set[tuple[str, int]] = set()
    for a in attacks:
        if (a.family, a.steps) in seen:
            raise UserError(f"--attacks {text!r} names {a.name!r} twice")
        seen.add((a.family, a.steps))
    return attacks
