"""No steering: plain decoding (the tracker still reports ``p_true`` when it can)."""

from __future__ import annotations

from dataclasses import dataclass

from fasb_lens.policies.base import Policy, PolicySettings, PolicySpec, register


@dataclass(frozen=True)
class Unsteered(Policy):
    """The baseline: nothing is added, nothing is decided; ``tracker`` is only read."""

    tracker: str = "probe"
    name: str = "none"
    family: str = "none"


def _build(settings: PolicySettings) -> Unsteered:
    return Unsteered(tracker=settings.options.get("tracker", "probe"))


register(
    PolicySpec(
        name="none",
        build=_build,
        description="plain greedy (or sampled) decoding, no steering",
        family="none",
        needs="nothing",
        aliases=("baseline",),
    )
)
