"""The authors' state tracker: the anchored heads' probes, averaged."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from fasb_lens._types import Head
from fasb_lens.trackers.base import TrackerSpec, probe_parameters, register


@dataclass(frozen=True)
class ProbeTracker:
    """``p_true(z)`` = mean over the heads of ``sigmoid(w_k . z_k + b_k)``."""

    heads: tuple[Head, ...]
    weight: Float[Tensor, "k d_head"]
    bias: Float[Tensor, " k"]

    def head_probabilities(self, z: Float[Tensor, "*batch k d_head"]) -> Float[Tensor, "*batch k"]:
        weight = self.weight.to(device=z.device, dtype=z.dtype)
        bias = self.bias.to(device=z.device, dtype=z.dtype)
        return torch.sigmoid((z * weight).sum(-1) + bias)

    def p_true(self, z: Float[Tensor, "*batch k d_head"]) -> Float[Tensor, " *batch"]:
        return self.head_probabilities(z).mean(-1)


def probe_tracker(heads: tuple[Head, ...], tensors: Mapping[str, Tensor]) -> ProbeTracker:
    return ProbeTracker(heads, tensors["weight"], tensors["bias"])


register(
    TrackerSpec(
        name="probe",
        description="the mean of the anchored heads' probe probabilities (the authors')",
        tensors=("weight", "bias"),
        fit=probe_parameters,
        build=probe_tracker,
    )
)
