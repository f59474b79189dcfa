"""ITI: the anchored heads' vectors at one fixed strength on every position."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fasb_lens.policies.base import Policy, PolicySpec, register, require_steering


@dataclass(frozen=True)
class ITI(Policy):
    """Inference-time intervention: ``alpha * sigma_k * d_k`` on each anchored head, from
    the prompt's last token on (generation) or on every answer position (scoring)."""

    alpha: float
    name: str = "fixed"
    family: str = "fixed"

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {self.alpha}")

    def initial_strength(self) -> float:
        return self.alpha

    def intervention(self, steering: Any) -> Any:
        return require_steering(self, steering)


register(
    PolicySpec(
        name="fixed",
        build=lambda settings: ITI(settings.alpha),
        description="ITI: alpha * sigma_k * d_k on the anchored heads at every position",
        family="fixed",
        aliases=("iti",),
    )
)
