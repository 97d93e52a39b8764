"""`Registry`: the named entries of one extension point (models, distributions, datasets, ...).

Every extension point of randsparse is one `Registry`: entries are added once under a name, and a
lookup of an unknown name is an `UnknownNameError` that lists the known ones, worded alike everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from randsparse.errors import ConfigError, UnknownNameError

T = TypeVar("T")
F = TypeVar("F")


class Registry(Generic[T]):
    """Entries of one `kind` (used in error messages, e.g. ``"model"``) by name.

    `resolve(name)`, if given, is asked for a name that was never added (an import path, an entry
    point, a ``torchvision/...`` name): it returns the entry, None when the name is not one it
    knows, or raises a `RandsparseError` saying why it cannot be had. Resolved entries are kept,
    but `names()` lists only the added ones.
    """

    def __init__(self, kind: str, resolve: Callable[[str], T | None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._resolve = resolve
        self._resolved: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        """Register `entry` under `name`; a name can be taken only once."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def decorator(self, name: str) -> Callable[[F], F]:
        """A decorator registering the decorated object itself under `name`."""

        def decorate(entry: F) -> F:
            self.add(name, entry)  # type: ignore[arg-type]
            return entry

        return decorate

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            pass
        if isinstance(name, str) and self._resolve is not None:
            if name in self._resolved:
                return self._resolved[name]
            entry = self._resolve(name)
            if entry is not None:
                self._resolved[name] = entry
                return entry
        raise UnknownNameError(self.kind, str(name), list(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (e.g. to add entries in a test only)."""
        twin: Registry[T] = Registry(self.kind, self._resolve)
        twin._entries = dict(self._entries)
        return twin

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)


def check_options(what: str, given: Iterable[str], accepted: Iterable[str]) -> None:
    """Refuse options that `what` (e.g. ``"distribution 'erk'"``) does not take, naming those it does."""
    accepted = list(accepted)
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{what} does not take option(s) {', '.join(unknown)} (it takes: {', '.join(accepted) or 'no options'})"
        )
