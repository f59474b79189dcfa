"""No steering: plain decoding (the tracker still reports ``p_true`` when it can).

The policy itself, :class:`~fasb_lens.decisions.Unsteered`, belongs to the decision
engine (the drivers fall back on it); this module registers it.
"""

from __future__ import annotations

from fasb_lens.decisions import Unsteered
from fasb_lens.policies.base import PolicySpec, register

register(
    PolicySpec(
        name="none",
        build=lambda settings: Unsteered(tracker=settings.tracker),
        description="plain greedy (or sampled) decoding, no steering",
        aliases=("baseline",),
        needs=(),
        tables=("truthfulqa", "datasets"),
        label="no steering",
        color="#5f5f5f",
    )
)
