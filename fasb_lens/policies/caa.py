"""CAA: a residual-stream mean-difference vector at one layer, at a fixed strength."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fasb_lens.decisions import Policy
from fasb_lens.policies.base import PolicySpec, StrengthSearch, register


@dataclass(frozen=True)
class CAA(Policy):
    """Contrastive activation addition: ``alpha`` times ``vector`` (a
    :class:`~fasb_lens.steering.CAAVector`) at every position, like ITI's schedule."""

    vector: Any
    alpha: float
    name: str = "caa"

    def __post_init__(self) -> None:
        if self.vector is None:
            raise ValueError("the caa policy needs a CAA vector (CAAVector)")
        if self.alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {self.alpha}")

    def initial_strength(self) -> float:
        return self.alpha

    def intervention(self, steering: Any) -> Any:
        return self.vector


register(
    PolicySpec(
        name="caa",
        build=lambda settings: CAA(settings.caa, settings.alpha),
        description="CAA: alpha times a residual-stream mean-difference vector at one layer",
        needs=("caa",),
        search=StrengthSearch({"mc": (0.25, 1.0, 4.0), "generation": (1.0, 2.0, 4.0)}),
        default_strength=5.0,
        label="CAA",
        color="#7b3294",
    )
)
