"""Loading a state dict into a model strictly (a registry model, an import spec's or a zoo model): a
mismatch is one line naming the keys, not torch's multi-line `load_state_dict` traceback. Shared by run
files (`awp.store`) and `.pt` checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from awp.errors import UserError


def strip_prefix(sd: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Drop the `module.` that DataParallel/DDP put in front of every key."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def _listing(what: str, items: list[str]) -> str:
    """'missing a, b, c (+4 more)': at most three names, so the message stays one line."""
    more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
    return f"{what} {', '.join(items[:3])}{more}"


def mismatches(model: nn.Module, sd: Mapping[str, Tensor]) -> list[str]:
    """Missing, unexpected and mis-shaped keys of `sd` against `model`, one phrase per kind (empty: it fits)."""
    own = model.state_dict()
    missing = sorted(own.keys() - sd.keys())
    unexpected = sorted(sd.keys() - own.keys())
    shapes = [f"{k} {list(sd[k].shape)} in the file, {list(own[k].shape)} in the model"
              for k in sorted(own.keys() & sd.keys()) if tuple(sd[k].shape) != tuple(own[k].shape)]
    return [_listing(what, items) for what, items in (("missing", missing), ("unexpected", unexpected),
                                                       ("shape of", shapes)) if items]


def load_weights(model: nn.Module, sd: Mapping[str, Tensor], path: str | Path, arch: str) -> None:
    """Load `sd` strictly; a mismatch is one line naming missing, unexpected and mis-shaped keys.
    A state dict of the bare network (no `normalize.*`) goes into `model.net` behind our Normalize.
    A model on the meta device (a shapes-only skeleton, e.g. a preflight check) is only checked."""
    own = model.state_dict()
    sd = strip_prefix(sd)
    if hasattr(model, "net") and not any(k in own for k in sd) and all(f"net.{k}" in own for k in sd):
        sd = {**{k: v for k, v in own.items() if k.startswith("normalize.")}, **{f"net.{k}": v for k, v in sd.items()}}
    parts = mismatches(model, sd)
    if parts:
        raise UserError(f"{str(path)!r} does not match architecture {arch!r}: {'; '.join(parts)}")
    if any(t.is_meta for t in own.values()):
        return  # copying into meta tensors is a no-op that torch warns about
    model.load_state_dict(sd)
