"""ITI: the anchored heads' vectors at one fixed strength on every position."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fasb_lens.decisions import Policy, require_steering
from fasb_lens.policies.base import PolicySpec, StrengthSearch, register


@dataclass(frozen=True)
class ITI(Policy):
    """Inference-time intervention: ``alpha * sigma_k * d_k`` on each anchored head, from
    the prompt's last token on (generation) or on every answer position (scoring)."""

    alpha: float
    name: str = "fixed"

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {self.alpha}")

    def initial_strength(self) -> float:
        return self.alpha

    def intervention(self, steering: Any) -> Any:
        return require_steering(self, steering)

    def steady(self, strength: float) -> Policy:
        return ITI(strength)


register(
    PolicySpec(
        name="fixed",
        build=lambda settings: ITI(settings.alpha),
        description="ITI: alpha * sigma_k * d_k on the anchored heads at every position",
        aliases=("iti",),
        search=StrengthSearch({"mc": (2.0, 8.0, 32.0), "generation": (8.0, 16.0, 32.0)}),
        tables=("truthfulqa", "datasets"),
        label="ITI",
        color="#e07b00",
    )
)
