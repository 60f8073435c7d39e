"""Presets: the paper's training settings as readable TOML files in this package (`landscape presets`).

Each `NAME.toml` beside this module holds flat options with the names a `--config` file takes (the keys
of `awp.trainconfig.KINDS`, nothing else, so `landscape presets NAME > my.toml` is a `--config` file),
each number with a comment citing the paper section or the reference file (csdongxian/AWP) it comes
from. Its first line, a comment, is the one-line summary that `landscape presets` lists.
`resolve_config(..., preset=NAME)` layers a preset between the dataset defaults and the `--config` file:
dataset defaults < preset < --config file < flags. A preset does not choose the training method:
`method`, `method_params` and `awp` are refused in a preset file, so `--method` and `--awp` stay
independent and the preset's gamma applies when AWP is on.
"""

from __future__ import annotations

import functools
import tomllib
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from awp.errors import UserError
from awp.registry import Registry

SUFFIX = ".toml"
NOT_IN_PRESETS = ("method", "method_params", "awp")  # presets fix the setting, not the method


@functools.cache
def _presets() -> Registry[Traversable]:
    """The preset files of this package by name (file name without .toml), sorted; found with
    importlib.resources, so they are there in an installed (non-editable, even zipped) package too."""
    files = sorted((f for f in resources.files(__name__).iterdir() if f.name.endswith(SUFFIX) and f.is_file()),
                   key=lambda f: f.name)
    return Registry("preset", {f.name.removesuffix(SUFFIX): f for f in files})


def names() -> tuple[str, ...]:
    """Every preset's name, sorted."""
    return _presets().names()


def resolve(name: str) -> Traversable:
    """The file of preset `name`; an unknown name is the one line `unknown preset 'x'; accepted: ...`."""
    return _presets().lookup(name)


def read(name: str) -> str:
    """The TOML text of preset `name`, comments and all (what `landscape presets NAME` prints)."""
    return resolve(name).read_text(encoding="utf-8")


def _table(name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(read(name))
    except tomllib.TOMLDecodeError as e:  # a damaged installation, not a user mistake one can fix by retyping
        raise UserError(f"preset {name!r} ({resolve(name).name}) is not valid TOML: {e}") from None


def description(name: str) -> str:
    """The one-line summary of preset `name`: its first line, a TOML comment, without the '#'."""
    first = read(name).partition("\n")[0].strip()
    return first.lstrip("#").strip() if first.startswith("#") else ""


def options(name: str) -> dict[str, Any]:
    """Preset `name` as flat options (keys with '_', values unparsed, as `load_toml` gives a file's). A
    key that is not an option is refused as in a `--config` file, and so is one of `NOT_IN_PRESETS`."""
    from awp.trainconfig import KINDS, OPTIONS  # lazily: listing presets needs neither torch nor the configs

    out: dict[str, Any] = {}
    for key, value in _table(name).items():
        option = key.replace("-", "_")
        if option not in KINDS:
            raise UserError(f"unknown option {key!r} in preset {name!r}; accepted: {', '.join(OPTIONS)}")
        if option in NOT_IN_PRESETS:
            raise UserError(f"preset {name!r} sets {key!r}, but a preset does not choose the method; give --method / --awp")
        out[option] = value
    return out
