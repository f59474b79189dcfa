"""The paper's Prototype classifier: which class mean the state points towards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from fasb_lens._types import Head
from fasb_lens.trackers.base import register_tracker


@dataclass(frozen=True)
class PrototypeTracker:
    """The Prototype classifier as a probability.

    Per head, ``sigmoid((cos(z, true_mean) - cos(z, false_mean)) / temperature)``: above
    0.5 when ``z`` points more towards the true class mean; averaged over the heads. The
    paper specifies the cosine comparison; the sigmoid of the difference (temperature 1
    by default) is fasb_lens' choice for turning it into a probability.
    """

    heads: tuple[Head, ...]
    true_mean: Float[Tensor, "k d_head"]
    false_mean: Float[Tensor, "k d_head"]
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def head_probabilities(self, z: Float[Tensor, "*batch k d_head"]) -> Float[Tensor, "*batch k"]:
        true = self.true_mean.to(device=z.device, dtype=z.dtype)
        false = self.false_mean.to(device=z.device, dtype=z.dtype)
        gap = torch.cosine_similarity(z, true, dim=-1) - torch.cosine_similarity(z, false, dim=-1)
        return torch.sigmoid(gap / self.temperature)

    def p_true(self, z: Float[Tensor, "*batch k d_head"]) -> Float[Tensor, " *batch"]:
        return self.head_probabilities(z).mean(-1)


@register_tracker("prototype")
def prototype_tracker(steering: Any, *, temperature: float = 1.0) -> PrototypeTracker:
    return PrototypeTracker(
        steering.heads, steering.prototype_true, steering.prototype_false, temperature
    )
