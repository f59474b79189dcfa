"""Calibration on a multiple-choice dataset: the policies' strengths (and FASB's
threshold) chosen on the dataset's validation items, by accuracy, then the margin of the
right option.

:func:`calibrate_dataset` runs the shared search of :mod:`fasb_lens.evaluation.calibration`
over the searched policies; an ``mc-datasets`` run keeps its choice in the run folder,
so a resumed run reads it back instead of searching again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.data.mc import option_prompts
from fasb_lens.data.schema import MultipleChoiceItem
from fasb_lens.evaluation.calibration import (
    Calibration,
    Evaluator,
    build_searched,
    record_search,
    search_policies,
    searched_specs,
)
from fasb_lens.evaluation.fluency import DEFAULT_MAX_KL, PROBE_QUESTIONS, FluencyProbe
from fasb_lens.evaluation.mc_items import ItemScorer, predict, score_items
from fasb_lens.evaluation.search import Scores
from fasb_lens.policies import Policy, PolicySettings, Unsteered, policy_spec
from fasb_lens.steering import Steering

KEYS = ("accuracy", "margin")
"""The validation objectives: accuracy, then the margin of the right option (tie-breaker)."""


def _scores(
    scorers: Sequence[ItemScorer], items: Sequence[MultipleChoiceItem], policy: Policy
) -> Scores:
    """Per item: 1 if the policy picks the right option, and the margin of the right
    option's log-probability over the best wrong one (the tie-breaker)."""
    correct, margins = [], []
    for (scores,), item in zip(score_items(scorers, [policy]), items, strict=True):
        wrong = max(s.log_prob for index, s in enumerate(scores) if index != item.label)
        correct.append(float(predict(scores) == item.label))
        margins.append(scores[item.label].log_prob - wrong)
    return {"accuracy": correct, "margin": margins}


def calibrate_dataset(
    model: TransformerBridge,
    items: Sequence[MultipleChoiceItem],
    steering: Steering,
    policies: Sequence[str],
    base: PolicySettings,
    *,
    seed: int = 0,
    max_kl: float = DEFAULT_MAX_KL,
    progress: bool = True,
) -> Calibration:
    """The calibrated settings of the searched policies that ``policies`` use, chosen on
    ``items`` (a dataset's validation items) by accuracy, then margin: the thresholded
    policy's strength and threshold jointly (thresholds from the tracker's readings on
    the options), every other one's strength with as many evaluations, each within the
    fluency budget ``max_kl`` (measured on the items' prompts and right options). The
    unsteered model's means on the same items are the sweeps' reference line."""
    scorers = [ItemScorer(model, item, steering) for item in items]
    bar = tqdm(desc=f"calibrate {items[0].dataset}", unit="setting", disable=not progress)
    used = {policy_spec(name).calibrated_as for name in policies}
    specs = [spec for spec in searched_specs(("steering",)) if spec.name in used]

    def evaluator(spec: Any) -> Evaluator:
        make = build_searched(spec, base)

        def evaluate(settings: list[tuple[float, float | None]]) -> list[Scores]:
            bar.update(len(settings))
            return [_scores(scorers, items, make(alpha, t)) for alpha, t in settings]

        return evaluate

    unsteered = _scores(scorers, items, Unsteered())
    calibration = Calibration(
        tracker=base.tracker,
        top_k=steering.top_k,
        thresholds={},
        strengths={"mc": {}},
        judge=None,
        questions=len(items),
        uncertainty={"mc": {}},
        unsteered={"mc": {key: float(np.mean(values)) for key, values in unsteered.items()}},
    )
    if specs:
        probe = FluencyProbe.on_texts(
            model, [option_prompts(item)[item.label] for item in items[:PROBE_QUESTIONS]]
        )
        chosen = search_policies(
            "mc",
            {spec.name: evaluator(spec) for spec in specs},
            KEYS,
            rng=np.random.RandomState(seed),
            readings=[value for scorer in scorers for value in scorer.readings()],
            costs=probe.family_costs(specs, base, steering),
            max_cost=max_kl,
        )
        record_search(calibration, "mc", chosen)
        calibration.sweep = [
            row for name, s in chosen.searches.items() for row in s.rows("mc", name, steering.top_k)
        ]
    bar.close()
    return calibration


def calibration_summary(calibration: Calibration) -> dict[str, Any]:
    """What ``mc_datasets.json`` keeps of a dataset's calibration (not its sweep)."""
    return {
        **calibration.summary(),
        "items": calibration.questions,
        "unsteered": calibration.unsteered.get("mc", {}),
    }
