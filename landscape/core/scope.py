"""Which parameters a measure or a direction may move: all of them, those matching globs on their
names (`--params 'layer4.*'`), or each block in turn (`--per-layer`). Parameters outside the scope
are never written to, so they stay at w bit for bit."""

from __future__ import annotations

import fnmatch
from typing import Iterable, Mapping, Sequence

from torch import Tensor

from awp.errors import UserError

ALL = "all"  # the label of the unrestricted scope


def parse_globs(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """'layer4.*,fc.weight' -> ('layer4.*', 'fc.weight'); None or '' -> () (every parameter)."""
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    globs = tuple(p.strip() for p in parts if p.strip())
    if isinstance(text, str) and text.strip() and not globs:
        raise UserError(f"--params {text!r} names no glob; give e.g. 'layer4.*' or 'fc.weight'")
    return globs


def matching(names: Iterable[str], globs: Sequence[str], flag: str = "--params") -> list[str]:
    """The names (in their order) matching any glob; a glob that matches nothing is a one-line error
    listing some of the names it could have matched."""
    names = list(names)
    if not globs:
        return names
    for g in globs:
        if not any(fnmatch.fnmatchcase(n, g) for n in names):
            some = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
            raise UserError(f"{flag} {g!r} matches no parameter; the model has: {some}")
    return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]


def block_of(name: str) -> str:
    """The block a parameter belongs to: the module that owns it ('net.3.weight' -> 'net.3')."""
    return name.rsplit(".", 1)[0] if "." in name else name


def blocks(names: Iterable[str]) -> dict[str, list[str]]:
    """{block: its parameter names}, blocks in the order their first parameter appears."""
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(block_of(n), []).append(n)
    return out


def restrict(d: Mapping[str, Tensor], names: Iterable[str]) -> dict[str, Tensor]:
    """The entries of d for `names` only: an offset built from it leaves every other parameter alone."""
    keep = set(names)
    return {n: t for n, t in d.items() if n in keep}


def scopes(names: Sequence[str], globs: Sequence[str] = (), per_layer: bool = False,
           eligible: Iterable[str] | None = None) -> dict[str, list[str]]:
    """{label: parameter names} to measure over: one scope of the glob-matched names (label 'all' when
    no glob is given, else the globs joined by ','), or with `per_layer` one per block of them. Blocks
    with no `eligible` parameter (e.g. only BN or biases where a measure moves weights with dim > 1)
    are left out."""
    chosen = matching(names, globs)
    ok = set(chosen if eligible is None else eligible)
    if not per_layer:
        label = ",".join(globs) if globs else ALL
        return {label: chosen}
    out = {b: ns for b, ns in blocks(chosen).items() if any(n in ok for n in ns)}
    if not out:
        raise UserError(f"--per-layer found no block with a parameter to move among {len(chosen)} parameter(s)")
    return out


def by_block(specs: Sequence[Mapping]) -> list[tuple[str | None, list[int]]]:
    """[(block, indices of the direction specs in it)] in the order blocks first appear: a single group
    (block None) when no spec names a "block" (only `--per-layer` names them)."""
    out: dict[str | None, list[int]] = {}
    for k, spec in enumerate(specs):
        out.setdefault(spec.get("block"), []).append(k)
    return list(out.items()) if any(b is not None for b in out) else [(None, list(range(len(specs))))]
