"""What a state tracker is, and the registry that names the trackers.

A tracker reads the anchored heads' activations at one position and says how truthful
the model's current state is, as a probability ``p_true``. Policies name the tracker
they read (``"probe"``, ``"prototype"``, ...); a steering artifact builds it from the
parameters it stores. A new tracker is one module with a class and one
:func:`register_tracker` call, imported in ``fasb_lens/trackers/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from jaxtyping import Float
from torch import Tensor

from fasb_lens._types import Head


class Tracker(Protocol):
    """Anything that maps the anchored heads' activations to a truthfulness probability.

    ``z`` holds the heads' activations in the order of ``heads``, with any leading batch
    and position dimensions: ``[..., k, d_head]``.
    """

    heads: tuple[Head, ...]

    def head_probabilities(
        self, z: Float[Tensor, "*batch k d_head"]
    ) -> Float[Tensor, "*batch k"]: ...

    def p_true(self, z: Float[Tensor, "*batch k d_head"]) -> Float[Tensor, " *batch"]: ...


TrackerBuilder = Callable[..., Tracker]
"""``builder(steering, **options) -> Tracker``: a tracker from a steering artifact."""

TRACKERS: dict[str, TrackerBuilder] = {}


def register_tracker(name: str) -> Callable[[TrackerBuilder], TrackerBuilder]:
    """Register ``builder`` under ``name`` (a decorator)."""

    def decorate(builder: TrackerBuilder) -> TrackerBuilder:
        if name in TRACKERS:
            raise ValueError(f"a tracker named {name!r} is already registered")
        TRACKERS[name] = builder
        return builder

    return decorate


def tracker_names() -> tuple[str, ...]:
    return tuple(TRACKERS)


def build_tracker(name: str, steering: Any, **options: Any) -> Tracker:
    """The tracker ``name`` over ``steering``'s anchored heads."""
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {name!r}; known: {', '.join(TRACKERS)}")
    return TRACKERS[name](steering, **options)
