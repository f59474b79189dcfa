"""Where a run's time goes: named sections with their wall time, forwards and positions.

Code marks what it is doing with :func:`section` (``with section("calibration"): ...``);
sections nest, and their names join into a path (``"anchoring and calibration/fold 0/
calibration/mc search fasb"``). While a :class:`Profile` is active (:func:`profiling`), each
section adds its wall time, its calls, and the model forwards and token positions run
inside it (every forward of the library goes through :func:`count_forward`); with none
active, a section costs nothing. A run's ``timings.json`` holds its profile, so anyone can
see which phase, fold and search the time went to.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any

_COUNTS = {"forwards": 0, "positions": 0}
"""Forwards run and token positions fed since the process started."""


def count_forward(positions: int) -> None:
    """Count one model forward over ``positions`` token positions (batch x length)."""
    _COUNTS["forwards"] += 1
    _COUNTS["positions"] += positions


@dataclass
class Section:
    """What one section cost, summed over its calls."""

    seconds: float = 0.0
    calls: int = 0
    forwards: int = 0
    positions: int = 0


@dataclass
class Profile:
    """Sections by path, in the order they first ran."""

    sections: dict[str, Section] = field(default_factory=dict)
    _stack: list[str] = field(default_factory=list)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` under the sections open around it (a ``/`` in the
        name itself, as in a control's ``fasb_random/0``, is written ``:``: the path
        separates sections only)."""
        name = name.replace("/", ":")
        path = "/".join([*self._stack, name])
        entry = self.sections.setdefault(path, Section())
        start, counts = time.perf_counter(), dict(_COUNTS)
        self._stack.append(name)
        try:
            yield
        finally:
            self._stack.pop()
            entry.seconds += time.perf_counter() - start
            entry.calls += 1
            entry.forwards += _COUNTS["forwards"] - counts["forwards"]
            entry.positions += _COUNTS["positions"] - counts["positions"]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            path: {**asdict(entry), "seconds": round(entry.seconds, 2)}
            for path, entry in self.sections.items()
        }

    def report(self, min_seconds: float = 0.5) -> str:
        """The profile as an indented table (sections under ``min_seconds`` left out)."""
        lines = [f"{'section':<64} {'seconds':>9} {'forwards':>9} {'positions':>11}"]
        for path, entry in self.sections.items():
            if entry.seconds < min_seconds:
                continue
            depth = path.count("/")
            name = "  " * depth + path.rsplit("/", 1)[-1]
            calls = f" x{entry.calls}" if entry.calls > 1 else ""
            lines.append(
                f"{(name + calls)[:64]:<64} {entry.seconds:>9.1f} {entry.forwards:>9} "
                f"{entry.positions:>11}"
            )
        return "\n".join(lines)


_ACTIVE: ContextVar[Profile | None] = ContextVar("fasb_lens_profile", default=None)


@contextmanager
def profiling(profile: Profile) -> Iterator[Profile]:
    """Record the sections run inside the block into ``profile``."""
    token = _ACTIVE.set(profile)
    try:
        yield profile
    finally:
        _ACTIVE.reset(token)


@contextmanager
def section(name: str) -> Iterator[None]:
    """A named section of the active profile (nothing when no profile is active)."""
    profile = _ACTIVE.get()
    if profile is None:
        yield
        return
    with profile.section(name):
        yield
