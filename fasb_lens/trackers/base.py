"""What a state tracker is, and the one registration that describes each tracker.

A tracker reads the anchored heads' activations at one position and says how truthful
the model's current state is, as a probability ``p_true`` (the :class:`Tracker`
protocol of :mod:`fasb_lens.decisions`). Its :class:`TrackerSpec` says everything else:
which per-head tensors it reads, how anchoring learns them (:meth:`TrackerSpec.fit`,
from the anchored heads' labelled activations and the probes fitted on them), on which
activations (the short probing prompts, or the same answers inside the evaluation
prompt), and how the tracker is built from them. A steering artifact stores every
registered tracker's tensors by name, so a new tracker is one module with a class and
one ``register`` call, imported in ``fasb_lens/trackers/__init__.py``: anchoring learns
its tensors, the artifact saves them, and calibration can choose it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jaxtyping import Float, Int
from torch import Tensor

from fasb_lens._types import Head
from fasb_lens.decisions import Tracker
from fasb_lens.registry import Registry

Source = Literal["probing", "context"]
"""The activations a tracker learns from: the probing prompts (``"Q: ... A: ..."``), or
the same answers inside the evaluation prompt (instruction, primer, question)."""


@dataclass(frozen=True)
class FitData:
    """What a tracker learns from: the anchored ``heads``' activations ``z`` on the
    labelled rows anchoring learns from (training and validation questions), their
    ``labels`` (1 true, 0 false), and ``probes``, the per-head probes fitted on the same
    activations (:class:`~fasb_lens.probes.HeadProbes`)."""

    heads: tuple[Head, ...]
    z: Float[Tensor, "n k d_head"]
    labels: Int[Tensor, " n"]
    probes: Any


@dataclass(frozen=True)
class TrackerSpec:
    """A registered tracker.

    Attributes:
        name, description: how it is named and what it reads.
        tensors: the per-head tensors it reads (each ``[k, ...]``, in the order of the
            anchored heads), stored in a steering artifact as ``{name}.{tensor}``.
        fit: ``fit(data) -> {tensor: value}``, learning them (:class:`FitData`).
        build: ``build(heads, tensors, **options) -> Tracker``.
        source: the activations ``fit`` learns from.
    """

    name: str
    description: str
    tensors: tuple[str, ...]
    fit: Callable[[FitData], dict[str, Tensor]]
    build: Callable[..., Tracker]
    source: Source = "probing"


TRACKERS: Registry[TrackerSpec] = Registry("tracker")
"""Every registered tracker, in registration order."""

register = TRACKERS.register


def tracker_names() -> tuple[str, ...]:
    return TRACKERS.names()


def build_tracker(
    name: str, heads: tuple[Head, ...], tensors: Mapping[str, Tensor], **options: Any
) -> Tracker:
    """The tracker ``name`` over ``heads`` from its ``tensors``."""
    return TRACKERS.get(name).build(heads, tensors, **options)


def probe_parameters(data: FitData) -> dict[str, Tensor]:
    """The anchored heads' own probes (weight and bias), as fitted."""
    weight, bias = data.probes.params(data.heads)
    return {"weight": weight.clone(), "bias": bias.clone()}
