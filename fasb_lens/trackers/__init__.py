"""State trackers: ``p_true`` from the anchored heads' activations, each registered once.

``"probe"`` (the authors' tracker: the mean of the anchored heads' probe probabilities),
``"prototype"`` (the paper's cosine-similarity classifier) and ``"context"`` (probes
trained inside the evaluation prompt). See :mod:`fasb_lens.trackers.base` for adding one.
"""

# isort: off
from fasb_lens.trackers import probe, prototype, context  # noqa: F401  (registers them)

# isort: on
from fasb_lens.decisions import Tracker
from fasb_lens.trackers.base import (
    TRACKERS,
    FitData,
    Source,
    TrackerSpec,
    build_tracker,
    register,
    tracker_names,
)
from fasb_lens.trackers.probe import ProbeTracker
from fasb_lens.trackers.prototype import PrototypeTracker

__all__ = [
    "TRACKERS",
    "FitData",
    "ProbeTracker",
    "PrototypeTracker",
    "Source",
    "Tracker",
    "TrackerSpec",
    "build_tracker",
    "register",
    "tracker_names",
]
