"""Per-head studies: knock out (or steer) one head at a time, and see what changes.

An ablation replaces a head's output before ``W_O`` (``hook_z``) at every position: by
zeros (*zero*), by its mean over reference prompts (*mean*: keeps the head's average
contribution and removes only what varies), by its value on other prompts (*resample*),
or adds its steering vector (*steer*). The change in a metric, head by head, is a
``[layer, head]`` grid that shows which heads the behaviour depends on. Three ways to get
it, all on one metric definition (:mod:`.metrics`):

* **exact** (:mod:`.exact`): every head, exactly, without wasted work - the clean run
  once, each head's forward from its own layer, the heads of a layer batched together,
  shared prompts cached;
* **attribution** (:mod:`.attribution`): the first-order estimate for every head from
  one backward pass;
* **activation patching** between paired prompts (:mod:`.patching`), on TransformerLens'
  patching module.

:func:`ablation_study` runs a grid (resumable, saved as an artifact);
:func:`fasb_heads_study` asks which heads matter for FASB.
"""

from fasb_lens.ablation.attribution import attribution_effects
from fasb_lens.ablation.edits import KINDS, AblationKind, Edit, make_edits
from fasb_lens.ablation.exact import exact_effects, exact_flops, loop_effects
from fasb_lens.ablation.metrics import (
    METRICS,
    LogProbMetric,
    Metric,
    ReadoutMetric,
    ScoredGroup,
    logprob_margin,
    mc2_metric,
    mean_over_groups,
    p_true_metric,
    probe_accuracy_metric,
)
from fasb_lens.ablation.patching import PatchingResult, patching_effects, truthfulqa_pairs
from fasb_lens.ablation.study import (
    ESTIMATORS,
    AblationGrid,
    AblationSettings,
    Estimator,
    ablated,
    ablation_study,
    fasb_heads_study,
    rank_correlation,
)

__all__ = [
    "ESTIMATORS",
    "KINDS",
    "METRICS",
    "AblationGrid",
    "AblationKind",
    "AblationSettings",
    "Edit",
    "Estimator",
    "LogProbMetric",
    "Metric",
    "PatchingResult",
    "ReadoutMetric",
    "ScoredGroup",
    "ablated",
    "ablation_study",
    "attribution_effects",
    "exact_effects",
    "exact_flops",
    "fasb_heads_study",
    "logprob_margin",
    "loop_effects",
    "make_edits",
    "mc2_metric",
    "mean_over_groups",
    "p_true_metric",
    "patching_effects",
    "probe_accuracy_metric",
    "rank_correlation",
    "truthfulqa_pairs",
]
