"""One registry mechanism for every named choice (methods, models, datasets, norms, schedules, ...).

A `Registry` is a read-only mapping from names to entries, filled by `register` (a second entry under
one name is a programming error). `lookup` is the one place an unknown name becomes a one-line
`UserError` listing what is accepted, and `names()` gives the CLI its choices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from typing import Generic, TypeVar, overload

from awp.errors import UserError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind; `what` names the kind in errors ("method", "lr schedule", "--bn mode")."""

    def __init__(self, what: str, entries: Mapping[str, T] | None = None) -> None:
        self.what = what
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    @overload
    def register(self, name: str, entry: T) -> T: ...

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    def register(self, name, entry=None):
        """File `entry` under `name` (or, without `entry`, a decorator that does); a name taken twice
        raises ValueError."""

        def add(e: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._entries[name] = e
            return e

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        """Remove `name` (for tests that register a temporary entry)."""
        self._entries.pop(name, None)

    def lookup(self, name: str) -> T:
        """The entry `name`; an unknown name is a one-line `UserError` listing the accepted ones."""
        if not isinstance(name, str) or name not in self._entries:
            raise UserError(f"unknown {self.what} {name!r}; accepted: {', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def choices(self, enum_name: str) -> type[Enum]:
        """A str Enum of the names, for typer options whose `--help` lists the choices."""
        return Enum(enum_name, {n: n for n in self._entries}, type=str)  # type: ignore[return-value]

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"
