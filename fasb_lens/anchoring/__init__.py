"""Heads anchoring, as one pipeline: activations -> probes -> anchored heads -> vectors.

1. **Collect** each head's output at the last token of labelled probing prompts (and of
   "tuning" prompts, whose spread sets each vector's scale; and, for the CAA baseline,
   the residual stream at one layer): :func:`collect_anchoring_activations`.
2. **Fit** a probe per head on a split's training questions, validate it on the
   validation questions, anchor the ``top_k`` best heads and build their steering
   vectors (and CAA's vector): :func:`fit_anchoring`.

:func:`anchor_heads` does both for TruthfulQA-style questions. The demo, ``fasb-lens
collect``/``fit``, the experiment runner and the multiple-choice suite all go through
these two functions.

Directions come from the probes (*Probe*: the probe's weight vector), from class means
(*Prototype*: mean over true answers minus mean over false answers) or, as a control,
at random; each is normalised, and its scale ``sigma_k`` is the standard deviation of
the tuning activations projected on it.

The parts, one job each: :mod:`.settings` (every default), :mod:`.collect` (step 1),
:mod:`.builders` (directions, scales, trackers, CAA) and :mod:`.pipeline` (step 2 and
:func:`anchor_heads`).
"""

from fasb_lens.anchoring.builders import (
    build_caa,
    build_steering,
    class_means,
    fit_trackers,
    head_spreads,
    projection_scales,
)
from fasb_lens.anchoring.collect import (
    CONTEXT,
    PROBING,
    RESIDUAL,
    TUNING,
    AnchoringActivations,
    collect_anchoring_activations,
)
from fasb_lens.anchoring.pipeline import Anchoring, anchor_heads, fit_anchoring, truthfulqa_prompts
from fasb_lens.anchoring.settings import AnchoringSettings, CollectSettings

__all__ = [
    "Anchoring",
    "AnchoringActivations",
    "AnchoringSettings",
    "CONTEXT",
    "CollectSettings",
    "PROBING",
    "RESIDUAL",
    "TUNING",
    "anchor_heads",
    "build_caa",
    "build_steering",
    "class_means",
    "collect_anchoring_activations",
    "fit_anchoring",
    "fit_trackers",
    "head_spreads",
    "projection_scales",
    "truthfulqa_prompts",
]
