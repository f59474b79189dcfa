"""The context tracker: the anchored heads' probes, trained where the tracker is used.

The authors' probes learn from short ``"Q: ... A: ..."`` prompts, while FASB reads them
during generation, after an instruction and a few-shot primer, where the activations are
shifted. These probes are trained on the same answers placed inside the evaluation prompt
(instruction, primer, question, answer), so the tracker reads states like the ones it
learnt from.
"""

from __future__ import annotations

from typing import Any

from fasb_lens.trackers.base import register_tracker
from fasb_lens.trackers.probe import ProbeTracker


@register_tracker("context")
def context_tracker(steering: Any) -> ProbeTracker:
    if steering.context_weight is None:
        raise ValueError(
            "this steering has no context probes: anchor with the evaluation prompt's context "
            "(fasb-lens reproduce does; see fasb_lens.anchoring.context_prompts)"
        )
    return ProbeTracker(steering.heads, steering.context_weight, steering.context_bias)
