"""The TruthfulQA protocol's calibration of one fold, on its validation questions only.

* **Tracker**: unsteered answers are generated and judged; each candidate tracker (the
  authors' short-prompt probes, the probes trained inside the evaluation prompt, ...) is
  scored by how well its reading at the thresholded policy's first check separates
  untruthful answers (AUC and Youden's J). With ``tracker="auto"`` the better one is used.
* **K** (multiple choice): the thresholded policy's start grid is run for each candidate
  number of anchored heads, at the median reading as threshold; the candidates extend (x2,
  or /2) while the best K is the largest (smallest) tried, up to every anchored head. The
  best K is kept for every policy of the fold.
* **Strengths and thresholds**: :func:`fasb_lens.evaluation.calibration.search_policies`
  for each task: multiple choice on validation MC2 (then MC1), the threshold searched with
  the strength on the readings at the answers' checks; generation on True x Info (then
  True), at the Youden threshold of the unsteered answers' first checks read over the
  chosen K heads.

Each chosen value comes with a bootstrap over validation questions: how often it wins when
the questions are resampled, and the range of the winners.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import distributed
from fasb_lens.data import PromptFormat, TruthfulQAQuestion
from fasb_lens.decisions import Tracking, first_check
from fasb_lens.evaluation import search as search_module
from fasb_lens.evaluation.calibration import (
    Calibration,
    Evaluator,
    build_searched,
    next_k_edge,
    record_search,
    search_policies,
    searched_specs,
)
from fasb_lens.evaluation.fluency import DEFAULT_MAX_KL, Cost, FluencyProbe
from fasb_lens.evaluation.judges import JudgeInput, judge_by_name
from fasb_lens.evaluation.search import Scores, Search, choose_threshold, detection_auc, rank_key
from fasb_lens.generation import QA_STOP, GenerationConfig, GenerationTrace, generate
from fasb_lens.multiple_choice import AnswerSource, MultipleChoice, evaluate_together
from fasb_lens.policies import Policy, PolicySettings, PolicySpec, Unsteered, policy_spec
from fasb_lens.prefix import SharedPrefix
from fasb_lens.profiling import section
from fasb_lens.steering import Steering

MC_KEYS = ("mc2", "mc1")
GENERATION_KEYS = ("true_x_info", "true")


@dataclass
class CalibrationInputs:
    """What a fold's calibration runs on: its validation questions and artifacts.

    ``settings`` are the policies' settings before calibration (their
    ``backtrack_tokens``, the fallback threshold; CAA's vector when the run has one);
    ``judge`` and ``info_judge`` judge the validation answers.
    """

    model: TransformerBridge
    questions: Sequence[TruthfulQAQuestion]
    steering: Steering
    fmt: PromptFormat
    settings: PolicySettings
    shared: SharedPrefix | None = None
    mc_source: AnswerSource = "mc_task"
    answer_offset: int = 1
    max_new_tokens: int = 50
    batch_size: int = 64
    judge: str = "embedding-acc"
    info_judge: str = "info-check"
    progress: bool = True
    max_kl: float = DEFAULT_MAX_KL
    """The fluency budget of every strength search (:mod:`fasb_lens.evaluation.fluency`)."""
    fluency: FluencyProbe | None = None
    """The probe measuring it, built on the validation questions when first needed."""
    policies: Collection[str] | None = None
    """The policies the run compares: only the searches they take their settings from
    are run (the thresholded one always, as it chooses K); ``None``: every search."""

    def costs(self, specs: Sequence[Any], steering: Steering) -> dict[str, Cost]:
        """Each searched family's fluency cost on ``steering`` (its K heads)."""
        if self.fluency is None:
            self.fluency = FluencyProbe.build(self.model, self.questions)
        return self.fluency.family_costs(specs, self.settings, steering)

    def thresholded(self, tracker: str) -> Policy:
        """The thresholded policy at the starting settings, reading ``tracker``."""
        return self.searched()[0].build(replace(self.settings, tracker=tracker))

    def searched(self) -> list[PolicySpec]:
        """The searched policies this calibration runs (the thresholded one first)."""
        specs = searched_specs(self.artifacts)
        if self.policies is None:
            return specs
        wanted = {policy_spec(name).calibrated_as for name in self.policies}
        return [spec for i, spec in enumerate(specs) if i == 0 or spec.name in wanted]

    @property
    def artifacts(self) -> tuple[str, ...]:
        return ("steering",) + (("caa",) if self.settings.caa is not None else ())


def check_reading(policy: Policy, trace: GenerationTrace) -> float:
    """The reading ``policy`` checks first in an unsteered answer (its last if none)."""
    readings = trace.p_true
    index = first_check(policy, readings)
    return float(readings[-1 if index is None else index])  # type: ignore[arg-type]


def answer_check_reading(policy: Policy, readings: Sequence[float], offset: int) -> float:
    """The reading ``policy`` checks first while an answer is scored (``readings``: at the
    prompt's last token, then at each answer token; the reading at answer token ``t``
    counts ``t - offset`` tokens, as the scorer counts it), or the answer's last reading
    when it checks none (a one-token answer with the authors' offset)."""
    tracking = Tracking(policy)
    tracking.observe(-1, readings[0], at_prompt_end=True)
    answer = readings[1:]
    walked = tracking.walk(answer[offset:], first_count=0, from_prompt_end=False)
    index = next((i for i, decision in walked if decision.checked), None)
    return float(answer[-1] if index is None else answer[offset + index])


def detection(
    policy: Policy, traces: Sequence[GenerationTrace], truthful: Sequence[bool], fallback: float
) -> tuple[list[float], dict[str, float]]:
    """The first-check readings of unsteered answers, and how well they separate the
    untruthful ones: ``{"auc", "j", "threshold"}`` (Youden's threshold)."""
    checks = [check_reading(policy, t) for t in traces]
    threshold, j, _ = choose_threshold(checks, truthful, fallback)
    return checks, {"auc": detection_auc(checks, truthful), "j": j, "threshold": threshold}


def _generate(
    inputs: CalibrationInputs,
    policies: Policy | Sequence[Policy],
    steering: Steering,
    unsteered: Sequence[GenerationTrace] | None = None,
) -> list[list[GenerationTrace]]:
    """Every validation question's answer under each of ``policies`` (one list per
    policy); with ``unsteered`` (their unsteered answers) those a policy never acts on are
    read off them. The rows (policy x question) are generated ``batch_size`` at a time, so
    several strengths of one policy share their forwards."""
    config = GenerationConfig(max_new_tokens=inputs.max_new_tokens, stop_strings=(QA_STOP,))
    chosen = [policies] if isinstance(policies, Policy) else list(policies)
    prompts = [inputs.fmt.generation_prompt(q.question) for q in inputs.questions]
    rows = [(policy, index) for policy in chosen for index in range(len(prompts))]

    def batch_traces(start: int) -> list[GenerationTrace]:
        batch = rows[start : start + inputs.batch_size]
        texts = [prompts[index] for _, index in batch]
        return generate(
            inputs.model,
            texts,
            policy=[policy for policy, _ in batch],
            steering=steering,
            config=config,
            shared=inputs.shared,
            unsteered=None if unsteered is None else [unsteered[index] for _, index in batch],
        )

    # the batches are shared among the processes calibrating this fold (one: all here)
    batches = distributed.share_map(
        range(0, len(rows), inputs.batch_size),
        batch_traces,
        encode=lambda traces: [trace.to_dict() for trace in traces],
        decode=lambda data: [GenerationTrace.from_dict(trace) for trace in data],
    )
    traces = [trace for batch in batches for trace in batch]
    n = len(prompts)
    return [traces[start : start + n] for start in range(0, len(traces), n)]


def _judged(inputs: CalibrationInputs, traces: Sequence[GenerationTrace], judge: Any) -> list:
    return judge.judge_many(
        [
            JudgeInput(q.question, t.answer, q.correct_answers, q.incorrect_answers)
            for q, t in zip(inputs.questions, traces, strict=True)
        ]
    )


def _choose_tracker(
    inputs: CalibrationInputs, candidates: Sequence[str], tracker: str, bar: Any
) -> tuple[Calibration, list[GenerationTrace]]:
    """The trackers on unsteered answers (the paper's Figure 1 view), the chosen one, and
    its unsteered answers."""
    steering = inputs.steering
    available = [name for name in candidates if name in steering.available_trackers]
    if tracker != "auto" and tracker not in steering.available_trackers:
        raise ValueError(
            f"tracker {tracker!r} is not available (have {list(steering.available_trackers)})"
        )
    compared = available if tracker == "auto" else list(dict.fromkeys([*available, tracker]))
    plain: dict[str, list[GenerationTrace]] = {}
    for name in compared:
        plain[name] = _generate(inputs, Unsteered(tracker=name), steering)[0]
        bar.update(1)
    first = next(iter(plain.values()))
    truthful = [bool(v.truthful) for v in _judged(inputs, first, judge_by_name(inputs.judge))]
    readings: dict[str, Any] = {
        "question_ids": [q.id for q in inputs.questions],
        "truthful": truthful,
        "answers": [t.answer for t in first],
    }
    comparison: dict[str, dict[str, float]] = {}
    for name, traces in plain.items():
        policy = inputs.thresholded(name)
        checks, comparison[name] = detection(policy, traces, truthful, inputs.settings.threshold)
        readings[name] = {
            "question": [t.p_true[0] for t in traces],
            "first_check": checks,
            "generation": [t.p_true for t in traces],
        }
    if tracker == "auto":
        tracker = max(compared, key=lambda n: (np.nan_to_num(comparison[n]["auc"]), n == "probe"))
    calibration = Calibration(
        tracker=tracker,
        top_k=steering.top_k,
        thresholds={"generation": float(comparison[tracker]["threshold"])},
        strengths={},
        judge=inputs.judge,
        questions=len(inputs.questions),
        trackers=comparison,
        readings=readings,
    )
    return calibration, plain[tracker]


def calibrate_fold(
    inputs: CalibrationInputs,
    *,
    tasks: Sequence[str] = ("mc", "generation"),
    tracker: str = "auto",
    candidates: Sequence[str] = ("probe", "context"),
    top_ks: Sequence[int] = (12, 24, 48),
    seed: int = 0,
) -> tuple[Calibration, Steering]:
    """Choose the tracker (among ``candidates`` with ``"auto"``), K, the thresholds and
    every searched policy's strengths (module docstring).

    Returns the calibration and the fold's steering with the chosen K.
    """
    bar = tqdm(desc="calibrate", unit="setting", disable=not inputs.progress)
    with section("tracker choice"):
        calibration, unsteered = _choose_tracker(inputs, candidates, tracker, bar)
    rng = np.random.RandomState(seed)
    steering = inputs.steering
    if "mc" in tasks:
        with section("mc"):
            steering = _calibrate_mc(inputs, calibration, top_ks, bar, rng)
    if "generation" in tasks:
        with section("generation"):
            _threshold_and_strengths(inputs, calibration, steering, unsteered, bar, rng)
    bar.close()
    return calibration, steering


def _threshold_and_strengths(inputs, calibration, steering, unsteered, bar, rng) -> None:
    """Generation: the threshold read over the chosen K heads, then the strengths."""
    if steering is not inputs.steering:
        # the tracker averages the anchored heads, so once K is chosen its readings are
        # those of the K heads: read the same unsteered answers with them, and take
        # the generation threshold (and its detection scores) there
        with section("unsteered answers at K"):
            unsteered = _generate(inputs, Unsteered(tracker=calibration.tracker), steering)[0]
        bar.update(1)
        truthful = calibration.readings["truthful"]
        policy = inputs.thresholded(calibration.tracker)
        checks, at_k = detection(policy, unsteered, truthful, inputs.settings.threshold)
        calibration.thresholds["generation"] = float(at_k["threshold"])
        calibration.trackers[calibration.tracker] |= {
            f"{key}_at_k": value for key, value in at_k.items()
        }
        calibration.readings["generation_first_check"] = checks
    _calibrate_generation(inputs, calibration, steering, unsteered, bar, rng)


def with_k(steering: Steering, k: int) -> Steering:
    """The fold's steering on its best ``k`` heads (heads are stored best first)."""
    return steering.subset(steering.heads[: min(k, steering.top_k)])


def _mc_evaluator(items: list[MultipleChoice], make: Any, bar: Any) -> Evaluator:
    """Scores of several settings of one policy on ``items``, in shared forwards."""

    def evaluate(settings: list[tuple[float, float | None]]) -> list[Scores]:
        policies = {str(i): make(alpha, threshold) for i, (alpha, threshold) in enumerate(settings)}
        results = evaluate_together(items, [policies] * len(items))
        bar.update(len(settings))
        return [
            {m: [r[name][m] for r in results] for m in ("mc2", "mc1", "mc3")} for name in policies
        ]

    return evaluate


def _mc_items(inputs: CalibrationInputs, steering: Steering) -> list[MultipleChoice]:
    """The validation questions as multiple-choice items steered by ``steering``."""
    return [
        MultipleChoice(
            inputs.model,
            question,
            fmt=inputs.fmt,
            steering=steering,
            source=inputs.mc_source,
            answer_offset=inputs.answer_offset,
            shared=inputs.shared,
        )
        for question in inputs.questions
    ]


def _calibrate_mc(inputs, calibration, top_ks, bar, rng) -> Steering:
    """K, the thresholded policy's strength and threshold (jointly), and every other
    searched policy's strength, on validation MC2."""
    steering = inputs.steering
    base = replace(inputs.settings, tracker=calibration.tracker)
    specs = inputs.searched()
    first = specs[0]
    widest = _mc_items(inputs, steering)  # prompts run once, for every K
    policy = first.build(base)
    searches: dict[int, tuple[Search, list[MultipleChoice], list[float]]] = {}

    def try_k(k: int) -> None:
        subset = with_k(steering, k)  # one object: the questions' forwards share its hooks
        items = [item.with_steering(subset) for item in widest]
        checks = [
            answer_check_reading(policy, values, inputs.answer_offset)
            for item in items
            for values in item.scorer.readings(item.ids, calibration.tracker)
        ]
        evaluate = _mc_evaluator(items, build_searched(first, base), bar)
        found = Search(
            lambda a, t: evaluate([(a, t)])[0],
            MC_KEYS,
            evaluate_many=evaluate,
            cost=inputs.costs([first], subset)[first.name],
            max_cost=inputs.max_kl,
        )
        beta = float(np.quantile(checks, 0.5))
        found.score_all([(alpha, beta) for alpha in found.fluent_grid(first.search.grids["mc"])])
        searches[k] = (found, items, checks)

    def best_value(k: int) -> tuple[float, ...]:
        found, _, checks = searches[k]
        beta = float(np.quantile(checks, 0.5))
        best = found.tried[(found.best(beta), search_module.threshold_key(beta))]
        return (*rank_key(best, MC_KEYS), -k)

    with section("K selection"):
        for k in sorted({min(k, steering.top_k) for k in top_ks}):
            try_k(k)
        for _ in range(search_module.MAX_EXTENSIONS):
            edge = next_k_edge(searches, max(searches, key=best_value), steering.top_k)
            if edge is None:
                break
            try_k(edge)
    best_k = max(searches, key=best_value)
    thresholded, items, checks = searches[best_k]
    calibration.top_k = best_k
    calibration.readings["mc_first_check"] = checks
    evaluators = {
        spec.name: _mc_evaluator(items, build_searched(spec, base), bar) for spec in specs
    }
    chosen = search_policies(
        "mc",
        evaluators,
        MC_KEYS,
        rng=rng,
        readings=checks,
        started=thresholded,
        costs=inputs.costs(specs, with_k(steering, best_k)),
        max_cost=inputs.max_kl,
    )
    others = sum(found.evaluations for k, (found, _, _) in searches.items() if k != best_k)
    record_search(calibration, "mc", chosen, earlier=others)
    calibration.sweep += [
        row
        for k, (tried, _, _) in searches.items()
        if k != best_k
        for row in tried.rows("mc", first.name, k)
    ]
    for name, done in chosen.searches.items():
        calibration.sweep += done.rows("mc", name, best_k)
    return with_k(steering, best_k)


def _calibrate_generation(inputs, calibration, steering, unsteered, bar, rng) -> None:
    """Every searched policy's strength on validation True x Info, the thresholded one at
    the Youden threshold (``unsteered``: the validation questions' unsteered answers,
    read by the tracker)."""
    truth, info = judge_by_name(inputs.judge), judge_by_name(inputs.info_judge)
    base = replace(inputs.settings, tracker=calibration.tracker)

    def scores(traces: list[GenerationTrace]) -> Scores:
        true = [float(bool(v.truthful)) for v in _judged(inputs, traces, truth)]
        informative = [float(bool(v.informative)) for v in _judged(inputs, traces, info)]
        return {
            "true_x_info": [t * i for t, i in zip(true, informative, strict=True)],
            "true": true,
            "info": informative,
        }

    def evaluator(make: Any) -> Evaluator:
        def evaluate(settings: list[tuple[float, float | None]]) -> list[Scores]:
            policies = [make(alpha, threshold) for alpha, threshold in settings]
            generated = _generate(inputs, policies, steering, unsteered)
            bar.update(len(settings))
            return [scores(traces) for traces in generated]

        return evaluate

    if unsteered is not None:  # the reference every strength is compared with
        plain = scores(unsteered)
        calibration.unsteered["generation"] = {k: float(np.mean(v)) for k, v in plain.items()}
    specs = inputs.searched()
    evaluators = {spec.name: evaluator(build_searched(spec, base)) for spec in specs}
    threshold = calibration.thresholds["generation"]
    chosen = search_policies(
        "generation",
        evaluators,
        GENERATION_KEYS,
        rng=rng,
        threshold=threshold,
        costs=inputs.costs(specs, steering),
        max_cost=inputs.max_kl,
    )
    record_search(calibration, "generation", chosen, extra=("info",))
    for name, done in chosen.searches.items():
        calibration.sweep += done.rows("generation", name, calibration.top_k)
