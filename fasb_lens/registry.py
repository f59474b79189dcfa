"""One registry for everything fasb_lens knows by name.

Policies, trackers, judges, multiple-choice datasets and benchmarks are each described by
one registration: an entry object with a ``name`` (and optional ``aliases``) that says all
the rest of the library needs to know about it. A :class:`Registry` holds the entries of
one kind in registration order (the order tables list them in), resolves aliases, and
refuses an unknown name with one line that lists the known ones. Adding a policy, a
tracker, a judge, a dataset or a benchmark is one module that calls ``register``.

This module imports nothing heavy, so command-line parsers can list the names quickly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar


class Entry(Protocol):
    """What a registration has: its name (aliases are optional, read with ``getattr``)."""

    @property
    def name(self) -> str: ...


E = TypeVar("E", bound=Entry)


class Registry(Generic[E]):
    """The entries of one kind (``"policy"``, ``"tracker"``, ...), by name and alias."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, E] = {}
        self._aliases: dict[str, str] = {}

    def register(self, entry: E) -> E:
        """Add ``entry`` under its name and aliases; a name already taken is refused."""
        for name in (entry.name, *_aliases(entry)):
            if name in self._entries or name in self._aliases:
                raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._entries[entry.name] = entry
        self._aliases.update({alias: entry.name for alias in _aliases(entry)})
        return entry

    def unregister(self, name: str) -> E:
        """Remove the entry called ``name`` (or one of its aliases) and return it."""
        entry = self._entries.pop(self.resolve(name))
        for alias in _aliases(entry):
            self._aliases.pop(alias, None)
        return entry

    @contextmanager
    def registered(self, entry: E) -> Iterator[E]:
        """``entry`` registered inside the ``with`` block only (for tests and notebooks)."""
        self.register(entry)
        try:
            yield entry
        finally:
            self.unregister(entry.name)

    @contextmanager
    def replaced(self, entry: E) -> Iterator[E]:
        """``entry`` in place of the registered entry of the same name inside the ``with``
        block (the order and aliases stay); for tests and experiments."""
        old = self._entries[entry.name]
        if _aliases(entry) != _aliases(old):
            raise ValueError(f"a replacement {self.kind} must keep the aliases {_aliases(old)}")
        self._entries[entry.name] = entry
        try:
            yield entry
        finally:
            self._entries[entry.name] = old

    def resolve(self, name: str) -> str:
        """The registered name of ``name`` (an alias resolved); an unknown name raises a
        ``ValueError`` listing the known names."""
        canonical = self._aliases.get(name, name)
        if canonical not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {self.describe()}")
        return canonical

    def get(self, name: str) -> E:
        """The entry called ``name`` or with ``name`` among its aliases."""
        return self._entries[self.resolve(name)]

    __getitem__ = get

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        return tuple(self._entries)

    def choices(self) -> list[str]:
        """Every name and alias (for a command-line option's choices)."""
        return [*self._entries, *self._aliases]

    @property
    def aliases(self) -> dict[str, str]:
        """Each alias and the name it stands for."""
        return dict(self._aliases)

    def describe(self) -> str:
        """The known names, aliases shown as ``alias (= name)``."""
        return ", ".join([*self._entries, *(f"{a} (= {n})" for a, n in self._aliases.items())])

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[E]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)


def _aliases(entry: Entry) -> tuple[str, ...]:
    return tuple(getattr(entry, "aliases", ()))
