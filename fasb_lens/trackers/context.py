"""The context tracker: the anchored heads' probes, trained where the tracker is used.

The authors' probes learn from short ``"Q: ... A: ..."`` prompts, while FASB reads them
during generation, after an instruction and a few-shot primer, where the activations are
shifted. These probes are trained on the same answers placed inside the evaluation prompt
(instruction, primer, question, answer), so the tracker reads states like the ones it
learnt from.
"""

from __future__ import annotations

from fasb_lens.trackers.base import TrackerSpec, probe_parameters, register
from fasb_lens.trackers.probe import probe_tracker

register(
    TrackerSpec(
        name="context",
        description="probes trained on the answers inside the evaluation prompt",
        tensors=("weight", "bias"),
        fit=probe_parameters,
        build=probe_tracker,
        source="context",
    )
)
