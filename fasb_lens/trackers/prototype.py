"""The paper's Prototype classifier: which class mean the state points towards."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from fasb_lens._types import Head
from fasb_lens.trackers.base import FitData, TrackerSpec, register


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


def _class_means(data: FitData) -> dict[str, Tensor]:
    """Each anchored head's mean activation over true and over false answers."""
    if data.labels.min() == data.labels.max():
        raise ValueError("class means need both true and false prompts")
    return {
        "true_mean": data.z[data.labels == 1].mean(0),
        "false_mean": data.z[data.labels == 0].mean(0),
    }


def _build(
    heads: tuple[Head, ...], tensors: Mapping[str, Tensor], *, temperature: float = 1.0
) -> PrototypeTracker:
    return PrototypeTracker(heads, tensors["true_mean"], tensors["false_mean"], temperature)


register(
    TrackerSpec(
        name="prototype",
        description="the paper's Prototype classifier: which class mean the state points to",
        tensors=("true_mean", "false_mean"),
        fit=_class_means,
        build=_build,
    )
)
