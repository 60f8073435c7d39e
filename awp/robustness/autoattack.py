"""AutoAttack (Croce & Hein, ICML 2020) through `pyautoattack`, the PyPI packaging of fra31/auto-attack
(optional: pip install 'awp-landscape[autoattack]').

The reference implementation runs unchanged; we call it on one chunk of examples at a time and keep
its per-example results ourselves, which is what makes an interrupted evaluation resume. (pyautoattack
0.2.0's own resumable state does not reload: it compares a set with the list it saved, and a restored
state leaves `y_adv` undefined.)
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import Tensor, nn

from awp.errors import UserError
from awp.registry import Registry

INSTALL_HINT = "pip install 'awp-landscape[autoattack]'"
# The versions of the reference implementation: standard (APGD-CE, APGD-T, FAB-T, Square; RobustBench's),
# plus (all six attacks, more restarts), rand (APGD-CE and -DLR with EOT, for randomized defenses).
AA_VERSIONS: Registry[str] = Registry("--aa-version", {
    "standard": "APGD-CE, APGD-T, FAB-T, Square (RobustBench's leaderboard)",
    "plus": "APGD-CE, APGD-DLR, FAB, Square, APGD-T, FAB-T with restarts",
    "rand": "APGD-CE and APGD-DLR with 20 EOT iterations, for randomized defenses",
})
AA_NORMS = {"linf": "Linf", "l2": "L2"}


def available() -> bool:
    return importlib.util.find_spec("pyautoattack") is not None


def require() -> None:
    """One line saying how to install AutoAttack when it is missing."""
    if not available():
        raise UserError(f"attack 'autoattack' needs the optional package pyautoattack: {INSTALL_HINT}")


def version() -> str | None:
    if not available():
        return None
    import pyautoattack

    return str(getattr(pyautoattack, "__version__", "unknown"))


def autoattack_robust(model: nn.Module, x: Tensor, y: Tensor, threat, seed: int) -> Tensor:
    """Per-example robustness [B] (bool) of `model` under AutoAttack `threat.aa_version` at `threat.eps`,
    from the reference `run_standard_evaluation` on this chunk: True where its final prediction is y."""
    require()
    AA_VERSIONS.lookup(threat.aa_version)
    if threat.norm not in AA_NORMS:
        raise UserError(f"AutoAttack has no {threat.norm!r} threat model here; accepted: {', '.join(AA_NORMS)}")
    if threat.eps == 0:
        with torch.no_grad():
            return model(x).argmax(1) == y
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.ERROR)  # its per-attack chatter; errors still show
    aa = AutoAttack(model, norm=AA_NORMS[threat.norm], eps=threat.eps, version=threat.aa_version,
                    device=x.device, seed=seed)
    aa.verbose = False
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=len(x))
    return (y_adv.to(y.device) == y)
