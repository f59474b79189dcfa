"""CAA: a residual-stream mean-difference vector at one layer, at a fixed strength."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fasb_lens.policies.base import Policy, PolicySettings, PolicySpec, register


@dataclass(frozen=True)
class CAA(Policy):
    """Contrastive activation addition: ``alpha`` times ``vector`` (a
    :class:`~fasb_lens.steering.CAAVector`) at every position, like ITI's schedule."""

    vector: Any
    alpha: float
    name: str = "caa"
    family: str = "caa"

    def __post_init__(self) -> None:
        if self.vector is None:
            raise ValueError("the caa policy needs a CAA vector (CAAVector)")
        if self.alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {self.alpha}")

    def initial_strength(self) -> float:
        return self.alpha

    def intervention(self, steering: Any) -> Any:
        return self.vector


def _build(settings: PolicySettings) -> CAA:
    return CAA(settings.caa, settings.alpha)


register(
    PolicySpec(
        name="caa",
        build=_build,
        description="CAA: alpha times a residual-stream mean-difference vector at one layer",
        family="caa",
        needs="caa",
    )
)
