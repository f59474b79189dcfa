"""Choosing FASB's threshold and strengths for a model, on validation questions.

The paper's threshold (0.6) and strength (60) were tuned for LLaMA2-7B-chat and do not
transfer: the probes learn from short ``"Q: ... A: ..."`` prompts, while generation runs
after a long instruction and primer, which shifts ``p_true``. Calibration measures that
shift on held-out validation questions:

1. **Threshold.** Answers are generated without steering while the tracker reads
   ``p_true``; a truth judge labels each answer. Triggering at ``p_true < beta`` at the
   first check is treated as a detector of untruthful answers, and ``beta`` is chosen to
   maximise Youden's J (true-positive rate minus false-positive rate). The readings are
   kept: they are the paper's Figure 1 (question-only readings vs readings during
   generation).
2. **Strength.** ITI's ``alpha`` and FASB's ``alpha`` are swept on multiple choice (MC2,
   then MC1) over the same questions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.data import PromptFormat, TruthfulQAQuestion
from fasb_lens.evaluation.judges import JudgeInput, judge_by_name
from fasb_lens.evaluation.truthfulqa import AnswerSource, evaluate_mc
from fasb_lens.generation import (
    FASB,
    QA_STOP,
    CAASteering,
    FixedSteering,
    GenerationConfig,
    generate,
)
from fasb_lens.steering import ResidualSteering, Steering

CALIBRATION_NAME = "calibration.json"
ALPHAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass
class Calibration:
    """The chosen hyperparameters and everything they were chosen from."""

    threshold: float
    alpha: float
    fixed_alpha: float
    caa_alpha: float | None
    judge: str
    youden_j: float
    threshold_sweep: list[dict[str, float]] = field(default_factory=list)
    alpha_sweep: list[dict[str, Any]] = field(default_factory=list)
    readings: dict[str, list[Any]] = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CALIBRATION_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Calibration:
        return cls(**json.loads((Path(folder) / CALIBRATION_NAME).read_text()))


def choose_threshold(
    first_check: Sequence[float], truthful: Sequence[bool], fallback: float
) -> tuple[float, float, list[dict[str, float]]]:
    """``(threshold, J, sweep)``: the threshold best separating untruthful answers.

    Candidates lie halfway between consecutive readings; ties go to the threshold that
    triggers least. With only one class of answers, ``fallback`` is returned.
    """
    pairs = sorted(zip(first_check, truthful, strict=True))
    n_bad = sum(not ok for _, ok in pairs)
    n_good = len(pairs) - n_bad
    values = [p for p, _ in pairs]
    middles = ((a + b) / 2 for a, b in zip(values[:-1], values[1:], strict=True))
    candidates = sorted({0.0, 1.0, fallback, *middles})
    sweep = []
    for beta in candidates:
        hits = [ok for p, ok in pairs if p < beta]
        tpr = sum(not ok for ok in hits) / n_bad if n_bad else float("nan")
        fpr = sum(hits) / n_good if n_good else float("nan")
        sweep.append(
            {
                "threshold": beta,
                "tpr": tpr,
                "fpr": fpr,
                "triggered": len(hits) / len(pairs),
                "j": tpr - fpr,
            }
        )
    if not n_bad or not n_good:
        return fallback, float("nan"), sweep
    best = max(sweep, key=lambda row: (round(row["j"], 12), -row["triggered"]))
    return best["threshold"], best["j"], sweep


def calibrate(
    model: TransformerBridge,
    questions: Sequence[TruthfulQAQuestion],
    steering: Steering,
    *,
    fmt: PromptFormat,
    backtrack_tokens: int,
    fallback_threshold: float = 0.6,
    alphas: Sequence[float] = ALPHAS,
    judge: str = "embedding-acc",
    max_new_tokens: int = 50,
    mc_source: AnswerSource = "mc_task",
    batch_size: int = 8,
    caa: ResidualSteering | None = None,
    progress: bool = True,
) -> Calibration:
    """Threshold from unsteered validation generations, strengths from validation MC.

    With ``caa``, the CAA baseline's strength is swept too.
    """
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_strings=(QA_STOP,))
    traces = []
    for start in tqdm(
        range(0, len(questions), batch_size), desc="calibrate: generate", disable=not progress
    ):
        batch = questions[start : start + batch_size]
        prompts = [fmt.generation_prompt(q.question) for q in batch]
        traces += generate(model, prompts, steering=steering, config=config)
    first_check = [t.p_true[min(backtrack_tokens, len(t.p_true)) - 1] for t in traces]
    verdicts = judge_by_name(judge).judge_many(
        [
            JudgeInput(q.question, t.answer, q.correct_answers, q.incorrect_answers)
            for q, t in zip(questions, traces, strict=True)
        ]
    )
    truthful = [bool(v.truthful) for v in verdicts]
    threshold, j, threshold_sweep = choose_threshold(first_check, truthful, fallback_threshold)

    policies: dict[str, Any] = {}
    for alpha in alphas:
        policies[f"fixed@{alpha}"] = FixedSteering(alpha)
        policies[f"fasb@{alpha}"] = FASB(alpha, threshold, backtrack_tokens)
        if caa is not None:
            policies[f"caa@{alpha}"] = CAASteering(caa, alpha)
    scores: dict[str, list[dict[str, float]]] = {name: [] for name in policies}
    for question in tqdm(questions, desc="calibrate: multiple choice", disable=not progress):
        result = evaluate_mc(
            model, question, policies, fmt=fmt, steering=steering, source=mc_source
        )
        for name, values in result.items():
            scores[name].append(values)
    alpha_sweep = []
    for name, rows in scores.items():
        method, alpha = name.split("@")
        alpha_sweep.append(
            {
                "method": method,
                "alpha": float(alpha),
                **{m: sum(r[m] for r in rows) / len(rows) for m in ("mc1", "mc2", "mc3")},
            }
        )

    def best(method: str) -> float:
        rows = [row for row in alpha_sweep if row["method"] == method]
        return max(rows, key=lambda r: (round(r["mc2"], 12), round(r["mc1"], 12), -r["alpha"]))[
            "alpha"
        ]

    return Calibration(
        threshold=threshold,
        alpha=best("fasb"),
        fixed_alpha=best("fixed"),
        caa_alpha=best("caa") if caa is not None else None,
        judge=judge,
        youden_j=j,
        threshold_sweep=threshold_sweep,
        alpha_sweep=alpha_sweep,
        readings={
            "question_ids": [q.id for q in questions],
            "question": [t.p_true[0] for t in traces],
            "first_check": first_check,
            "generation": [t.p_true for t in traces],
            "truthful": truthful,
            "answers": [t.answer for t in traces],
        },
    )
