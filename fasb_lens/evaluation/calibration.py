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
2. **Strength.** Each method's ``alpha`` (ITI, FASB, CAA) is swept, per task: on
   multiple choice (validation MC2, then MC1) and on generation (validation True*Info),
   since answers need far larger pushes than answer log-likelihoods tolerate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import storage
from fasb_lens.data import PromptFormat, TruthfulQAQuestion
from fasb_lens.decoding import PromptCache
from fasb_lens.evaluation.judges import JudgeInput, judge_by_name, summarize
from fasb_lens.evaluation.truthfulqa import AnswerSource, evaluate_mc
from fasb_lens.generation import QA_STOP, GenerationConfig, GenerationTrace, generate
from fasb_lens.policies import CAA, FASB, ITI, Policy, Unsteered, policy_spec
from fasb_lens.steering import CAAVector, Steering

MC_ALPHAS = (0.5, 2.0, 8.0)
"""Strengths of the head vectors swept on multiple choice."""
GENERATION_ALPHAS = (16.0, 32.0, 64.0)
"""Strengths of the head vectors swept on generation (answers need larger pushes)."""
CAA_ALPHAS = (0.25, 1.0, 4.0)
"""Strengths of the CAA vector (a residual-stream difference, much larger than a head's)."""


@dataclass
class Calibration:
    """The chosen hyperparameters and everything they were chosen from.

    ``strengths[task][method]`` is the strength chosen for ``task`` (``"mc"`` or
    ``"generation"``) and ``method`` (``"fasb"`` for FASB and its variants, ``"fixed"``,
    ``"caa"``).
    """

    threshold: float
    strengths: dict[str, dict[str, float]]
    judge: str
    youden_j: float
    threshold_sweep: list[dict[str, float]] = field(default_factory=list)
    alpha_sweep: list[dict[str, Any]] = field(default_factory=list)
    readings: dict[str, list[Any]] = field(default_factory=dict)

    def strength(self, task: str, method: str) -> float | None:
        """The strength for a policy name (a policy family shares one strength)."""
        return self.strengths.get(task, {}).get(policy_spec(method).family)

    def save(self, folder: str | Path) -> Path:
        return storage.write_json(Path(folder) / storage.CALIBRATION, asdict(self))

    @classmethod
    def load(cls, folder: str | Path) -> Calibration:
        path = Path(folder) / storage.CALIBRATION
        data = storage.read_json(path, "a calibration")
        try:
            return cls(**data)
        except TypeError as error:
            raise storage.ArtifactError(f"{path}: not a calibration ({error})") from error


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


def _generate(
    model: TransformerBridge,
    questions: Sequence[TruthfulQAQuestion],
    fmt: PromptFormat,
    steering: Steering,
    policies: dict[Any, Policy],
    config: GenerationConfig,
    batch_size: int,
    progress: bool,
) -> dict[Any, list[GenerationTrace]]:
    """Answers to ``questions`` under each policy; every batch's prompts run once."""
    traces: dict[Any, list[GenerationTrace]] = {key: [] for key in policies}
    for start in tqdm(
        range(0, len(questions), batch_size), desc="calibrate: generate", disable=not progress
    ):
        prompts = [fmt.generation_prompt(q.question) for q in questions[start : start + batch_size]]
        shared = PromptCache.build(model, prompts)
        for key, policy in policies.items():
            traces[key] += generate(
                model, prompts, policy=policy, steering=steering, config=config, prompt_cache=shared
            )
    return traces


def _inputs(
    questions: Sequence[TruthfulQAQuestion], traces: Sequence[GenerationTrace]
) -> list[JudgeInput]:
    return [
        JudgeInput(q.question, t.answer, q.correct_answers, q.incorrect_answers)
        for q, t in zip(questions, traces, strict=True)
    ]


def _policies(
    alphas: Sequence[float], threshold: float, backtrack_tokens: int, caa: CAAVector | None
) -> dict[tuple[str, float], Policy]:
    policies: dict[tuple[str, float], Policy] = {}
    for alpha in alphas:
        policies[("fixed", alpha)] = ITI(alpha)
        policies[("fasb", alpha)] = FASB(alpha, threshold, backtrack_tokens)
    for alpha in CAA_ALPHAS if caa is not None else ():
        policies[("caa", alpha)] = CAA(caa, alpha)
    return policies


def _best(rows: list[dict[str, Any]], task: str, key: tuple[str, ...]) -> dict[str, float]:
    """The strength with the best ``key`` metrics per method (ties: the smaller strength)."""
    chosen = {}
    for method in dict.fromkeys(row["method"] for row in rows if row["task"] == task):
        candidates = [row for row in rows if (row["task"], row["method"]) == (task, method)]
        best = max(candidates, key=lambda r: (*(round(r[k], 12) for k in key), -r["alpha"]))
        chosen[method] = best["alpha"]
    return chosen


def calibrate(
    model: TransformerBridge,
    questions: Sequence[TruthfulQAQuestion],
    steering: Steering,
    *,
    fmt: PromptFormat,
    backtrack_tokens: int,
    fallback_threshold: float = 0.6,
    tasks: Sequence[str] = ("mc", "generation"),
    sweep_questions: int = 32,
    judge: str = "embedding-acc",
    max_new_tokens: int = 50,
    mc_source: AnswerSource = "mc_task",
    batch_size: int = 8,
    caa: CAAVector | None = None,
    progress: bool = True,
) -> Calibration:
    """Choose the threshold, then each method's strength per task, on validation questions.

    The threshold comes from unsteered generations (Youden's J, see the module
    docstring). Strengths for multiple choice maximise validation MC2 (then MC1);
    strengths for generation maximise True*Info (``judge`` for truth, ``info-check`` for
    informativeness). Both sweeps use the first ``sweep_questions`` questions; ``tasks`` limits
    which strengths are chosen; with ``caa`` the CAA baseline's strength is chosen too.
    """
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_strings=(QA_STOP,))
    truth_judge, info_judge = judge_by_name(judge), judge_by_name("info-check")
    traces = _generate(
        model, questions, fmt, steering, {"none": Unsteered()}, config, batch_size, progress
    )["none"]
    first_check = [t.p_true[min(backtrack_tokens, len(t.p_true)) - 1] for t in traces]
    verdicts = truth_judge.judge_many(_inputs(questions, traces))
    truthful = [bool(v.truthful) for v in verdicts]
    threshold, j, threshold_sweep = choose_threshold(first_check, truthful, fallback_threshold)

    rows: list[dict[str, Any]] = []
    subset = list(questions[:sweep_questions])
    if "mc" in tasks:
        policies = _policies(MC_ALPHAS, threshold, backtrack_tokens, caa)
        scores: dict[tuple[str, float], list[dict[str, Any]]] = {key: [] for key in policies}
        named = {f"{method}@{alpha}": policy for (method, alpha), policy in policies.items()}
        for question in tqdm(subset, desc="calibrate: MC", disable=not progress):
            result = evaluate_mc(
                model, question, named, fmt=fmt, steering=steering, source=mc_source
            )
            for method, alpha in policies:
                scores[(method, alpha)].append(result[f"{method}@{alpha}"])
        for (method, alpha), values in scores.items():
            means = {m: sum(v[m] for v in values) / len(values) for m in ("mc1", "mc2", "mc3")}
            rows.append({"task": "mc", "method": method, "alpha": alpha, **means})
    if "generation" in tasks:
        policies = _policies(GENERATION_ALPHAS, threshold, backtrack_tokens, caa)
        generated = _generate(model, subset, fmt, steering, policies, config, batch_size, progress)
        for (method, alpha), answers in generated.items():
            summary = summarize(
                truth_judge.judge_many(_inputs(subset, answers)),
                info_judge.judge_many(_inputs(subset, answers)),
            )
            rows.append(
                {
                    "task": "generation",
                    "method": method,
                    "alpha": alpha,
                    **{k: summary[k] for k in ("true", "info", "true_x_info")},
                }
            )
    strengths = {
        "mc": _best(rows, "mc", ("mc2", "mc1")),
        "generation": _best(rows, "generation", ("true_x_info", "true")),
    }
    return Calibration(
        threshold=threshold,
        strengths={task: values for task, values in strengths.items() if values},
        judge=judge,
        youden_j=j,
        threshold_sweep=threshold_sweep,
        alpha_sweep=rows,
        readings={
            "question_ids": [q.id for q in questions],
            "question": [t.p_true[0] for t in traces],
            "first_check": first_check,
            "generation": [t.p_true for t in traces],
            "truthful": truthful,
            "answers": [t.answer for t in traces],
        },
    )
