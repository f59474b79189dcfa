"""No steering: plain decoding (the tracker still reports ``p_true`` when it can)."""

from __future__ import annotations

from dataclasses import dataclass

from fasb_lens.policies.base import Policy, PolicySpec, register


@dataclass(frozen=True)
class Unsteered(Policy):
    """The baseline: nothing is added, nothing is decided."""

    name: str = "none"
    family: str = "none"


register(
    PolicySpec(
        name="none",
        build=lambda settings: Unsteered(),
        description="plain greedy (or sampled) decoding, no steering",
        family="none",
        needs="nothing",
        aliases=("baseline",),
    )
)
