"""State trackers: ``p_true`` from the anchored heads' activations.

``"probe"`` (the authors' tracker: the mean of the anchored heads' probe probabilities),
``"prototype"`` (the paper's cosine-similarity classifier) and ``"context"`` (probes
trained inside the evaluation prompt). See
:mod:`fasb_lens.trackers.base` for adding one.
"""

# isort: off
from fasb_lens.trackers import probe, prototype, context  # noqa: F401  (registers them)

# isort: on
from fasb_lens.trackers.base import (
    TRACKERS,
    Tracker,
    build_tracker,
    register_tracker,
    tracker_names,
)
from fasb_lens.trackers.probe import ProbeTracker
from fasb_lens.trackers.prototype import PrototypeTracker

__all__ = [
    "TRACKERS",
    "ProbeTracker",
    "PrototypeTracker",
    "Tracker",
    "build_tracker",
    "register_tracker",
    "tracker_names",
]
