"""State trackers: ``p_true`` from the anchored heads' activations.

``"probe"`` (the authors' tracker: the mean of the anchored heads' probe probabilities)
and ``"prototype"`` (the paper's cosine-similarity classifier). See
:mod:`fasb_lens.trackers.base` for adding one.
"""

from fasb_lens.trackers import probe, prototype  # noqa: F401  (registers the trackers)
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
