"""Per-head attention outputs (``hook_z``) and residual streams at one position of many
prompts: the containers and their format (:mod:`.store`) and the fast, resumable
collection (:mod:`.collect`).
"""

from fasb_lens.activations.collect import (
    collect_head_activations,
    collect_residual_activations,
    gather_last_position,
)
from fasb_lens.activations.store import (
    ActivationInfo,
    Activations,
    HeadActivations,
    ResidualActivations,
)

__all__ = [
    "ActivationInfo",
    "Activations",
    "HeadActivations",
    "ResidualActivations",
    "collect_head_activations",
    "collect_residual_activations",
    "gather_last_position",
]
