"""Choosing each method's settings for a model, on validation questions only.

The paper's threshold (0.6), strength (60) and K (24 heads) were tuned for LLaMA2-7B-chat
and do not transfer as they are. Calibration chooses them on a fold's validation
questions, per task, and gives every method the same search:

* **Tracker** (FASB): unsteered answers are generated and judged; each available tracker
  (the authors' short-prompt probes, and the probes trained inside the evaluation prompt)
  is scored by how well its reading at the first check separates untruthful answers (AUC
  and Youden's J). With ``tracker="auto"`` the better one is used.
* **Strengths**: a log-spaced grid that extends itself (x2) while the best value sits on
  its edge, then is refined (x2^(+-1/2)) around the best; every method family (ITI, CAA,
  FASB and its variants) gets the same number of evaluations, and more only where filling
  that budget left the best on an edge (:meth:`~fasb_lens.evaluation.search.Search.fill`).
* **Threshold**: for generation, the Youden threshold of the chosen tracker's first-check
  readings over the chosen K heads (the trackers are compared over every anchored head,
  before K is known; with K chosen, the same unsteered answers are read again); for
  multiple choice, searched jointly with FASB's strength on multiple-choice
  readings (quantiles of the readings at the answers' checks).
* **K**: FASB's start grid is run for each candidate number of anchored heads, the
  candidates extending (x2, or /2) while the best K is the largest (smallest) tried, up to
  every anchored head; the best K is kept for every method of the fold.

Objectives: validation MC2 (then MC1) for multiple choice, True x Info (then True) for
generation. Each chosen value comes with a bootstrap over validation questions: how often
it wins when the questions are resampled, and the range of the winners.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import storage
from fasb_lens.data import PromptFormat, TruthfulQAQuestion
from fasb_lens.decoding import PromptCache
from fasb_lens.evaluation import search as search_module
from fasb_lens.evaluation.judges import JudgeInput, judge_by_name
from fasb_lens.evaluation.search import (
    START_GRIDS,
    Scores,
    Search,
    Setting,
    choose_threshold,
    detection_auc,
    joint_search,
    rank_key,
    threshold_key,
)
from fasb_lens.evaluation.truthfulqa import AnswerSource, MultipleChoice, evaluate_together
from fasb_lens.generation import QA_STOP, GenerationConfig, GenerationTrace, generate
from fasb_lens.policies import CAA, FASB, ITI, Policy, Unsteered, policy_spec
from fasb_lens.prefix import SharedPrefix
from fasb_lens.steering import CAAVector, Steering

TOP_K_CANDIDATES = (12, 24, 48)


@dataclass
class Calibration:
    """The chosen settings of a fold and everything they were chosen from.

    ``strengths[task][family]`` is the strength for ``task`` (``"mc"``, ``"generation"``)
    and method family (``"fixed"``, ``"caa"``, ``"fasb"``); ``thresholds[task]`` FASB's
    threshold; ``sweep`` every evaluated setting with its validation means;
    ``uncertainty[task][family]`` the bootstrap of the choice.
    """

    tracker: str
    top_k: int
    thresholds: dict[str, float]
    strengths: dict[str, dict[str, float]]
    judge: str
    questions: int
    trackers: dict[str, dict[str, float]] = field(default_factory=dict)
    uncertainty: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    readings: dict[str, Any] = field(default_factory=dict)

    def strength(self, task: str, method: str) -> float | None:
        """The strength for a policy name (a policy family shares one strength)."""
        return self.strengths.get(task, {}).get(policy_spec(method).family)

    def threshold(self, task: str) -> float | None:
        return self.thresholds.get(task)

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


def first_check(trace: GenerationTrace, backtrack_tokens: int) -> float:
    """The reading FASB checks first in an unsteered answer."""
    readings = trace.p_true
    return float(readings[min(backtrack_tokens, len(readings)) - 1])  # type: ignore[arg-type]


def detection(
    traces: Sequence[GenerationTrace],
    truthful: Sequence[bool],
    backtrack_tokens: int,
    fallback: float,
) -> tuple[list[float], dict[str, float]]:
    """The first-check readings of unsteered answers, and how well they separate the
    untruthful ones: ``{"auc", "j", "threshold"}`` (Youden's threshold)."""
    checks = [first_check(t, backtrack_tokens) for t in traces]
    threshold, j, _ = choose_threshold(checks, truthful, fallback)
    return checks, {"auc": detection_auc(checks, truthful), "j": j, "threshold": threshold}


# --------------------------------------------------------------------------- the run


@dataclass
class CalibrationInputs:
    """What calibration runs on: the fold's validation questions and artifacts."""

    model: TransformerBridge
    questions: Sequence[TruthfulQAQuestion]
    steering: Steering
    fmt: PromptFormat
    backtrack_tokens: int
    caa: CAAVector | None = None
    shared: SharedPrefix | None = None
    mc_source: AnswerSource = "mc_task"
    answer_offset: int = 1
    max_new_tokens: int = 50
    batch_size: int = 64
    judge: str = "embedding-acc"
    progress: bool = True


def _generate(
    inputs: CalibrationInputs,
    policy: Policy,
    steering: Steering,
    unsteered: Sequence[GenerationTrace] | None = None,
) -> list[GenerationTrace]:
    """Every validation question's answer under ``policy``; with ``unsteered`` (their
    unsteered answers) those the policy never acts on are read off them."""
    config = GenerationConfig(max_new_tokens=inputs.max_new_tokens, stop_strings=(QA_STOP,))
    traces: list[GenerationTrace] = []
    questions = list(inputs.questions)
    for start in range(0, len(questions), inputs.batch_size):
        stop = start + inputs.batch_size
        batch = [inputs.fmt.generation_prompt(q.question) for q in questions[start:stop]]
        cache = PromptCache.build(inputs.model, batch, shared=inputs.shared)
        traces += generate(
            inputs.model,
            batch,
            policy=policy,
            steering=steering,
            config=config,
            prompt_cache=cache,
            unsteered=None if unsteered is None else unsteered[start:stop],
        )
    return traces


def _judged(inputs: CalibrationInputs, traces: Sequence[GenerationTrace], judge: Any) -> list:
    return judge.judge_many(
        [
            JudgeInput(q.question, t.answer, q.correct_answers, q.incorrect_answers)
            for q, t in zip(inputs.questions, traces, strict=True)
        ]
    )


def calibrate(
    inputs: CalibrationInputs,
    *,
    tasks: Sequence[str] = ("mc", "generation"),
    tracker: str = "auto",
    fallback_threshold: float = 0.6,
    top_ks: Sequence[int] = TOP_K_CANDIDATES,
    seed: int = 0,
) -> tuple[Calibration, Steering]:
    """Choose the tracker, K, thresholds and every family's strengths (module docstring).

    Returns the calibration and the fold's steering with the chosen K.
    """
    steering = inputs.steering
    truth_judge, info_judge = judge_by_name(inputs.judge), judge_by_name("info-check")
    available = ["probe"] + (["context"] if steering.context_weight is not None else [])
    if tracker != "auto" and tracker not in available:
        raise ValueError(f"tracker {tracker!r} is not available (have {available})")
    bar = tqdm(desc="calibrate", unit="setting", disable=not inputs.progress)

    # the trackers on unsteered answers (the paper's Figure 1 view)
    plain: dict[str, list[GenerationTrace]] = {}
    for name in available:
        plain[name] = _generate(inputs, Unsteered(tracker=name), steering)
        bar.update(1)
    first = next(iter(plain.values()))
    truthful = [bool(v.truthful) for v in _judged(inputs, first, truth_judge)]
    readings: dict[str, Any] = {
        "question_ids": [q.id for q in inputs.questions],
        "truthful": truthful,
        "answers": [t.answer for t in first],
    }
    comparison: dict[str, dict[str, float]] = {}
    for name, traces in plain.items():
        checks, comparison[name] = detection(
            traces, truthful, inputs.backtrack_tokens, fallback_threshold
        )
        readings[name] = {
            "question": [t.p_true[0] for t in traces],
            "first_check": checks,
            "generation": [t.p_true for t in traces],
        }
    if tracker == "auto":
        tracker = max(available, key=lambda n: (np.nan_to_num(comparison[n]["auc"]), n == "probe"))
    rng = np.random.RandomState(seed)
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
    if "mc" in tasks:
        steering = _calibrate_mc(inputs, calibration, steering, top_ks, bar, rng)
    if "generation" in tasks:
        unsteered = plain[tracker]
        if steering is not inputs.steering:
            # the tracker averages the anchored heads, so once K is chosen its readings are
            # those of the K heads: read the same unsteered answers with them, and take
            # the generation threshold (and its detection scores) there
            unsteered = _generate(inputs, Unsteered(tracker=tracker), steering)
            bar.update(1)
            checks, at_k = detection(
                unsteered, truthful, inputs.backtrack_tokens, fallback_threshold
            )
            calibration.thresholds["generation"] = float(at_k["threshold"])
            calibration.trackers[tracker] |= {f"{key}_at_k": value for key, value in at_k.items()}
            calibration.readings["generation_first_check"] = checks
        judges = (truth_judge, info_judge)
        _calibrate_generation(inputs, calibration, steering, unsteered, judges, bar, rng)
    bar.close()
    return calibration, steering


def _with_k(steering: Steering, k: int) -> Steering:
    """The fold's steering on its best ``k`` heads (heads are stored best first)."""
    return steering.subset(steering.heads[: min(k, steering.top_k)])


def next_k_edge(tried: Collection[int], best: int, most: int) -> int | None:
    """The next K to try when the best one sits on an edge of those tried: twice the
    largest (at most ``most``, every anchored head) or half the smallest (at least 1);
    ``None`` when the best is interior or the edge cannot move."""
    if best == max(tried) and best < most:
        return min(2 * best, most)
    if best == min(tried) and best > 1:
        return max(1, best // 2)
    return None


def _calibrate_mc(inputs, calibration, steering, top_ks, bar, rng) -> Steering:
    """K, FASB's strength and threshold (jointly), ITI's and CAA's strengths, on MC2."""
    questions = list(inputs.questions)
    tracker, s = calibration.tracker, inputs.backtrack_tokens
    keys = ("mc2", "mc1")

    def choices(current: Steering) -> list[MultipleChoice]:  # prompts run once, for every K
        return [
            MultipleChoice(
                inputs.model,
                q,
                fmt=inputs.fmt,
                steering=current,
                source=inputs.mc_source,
                answer_offset=inputs.answer_offset,
                shared=inputs.shared,
            )
            for q in questions
        ]

    def family_search(
        items: list[MultipleChoice], make: Callable[[float, float | None], Policy]
    ) -> Search:
        """A family's search on ``items``; settings evaluated together share forwards."""

        def evaluate_many(settings: list[Setting]) -> list[Scores]:
            policies = {
                str(i): make(alpha, threshold) for i, (alpha, threshold) in enumerate(settings)
            }
            results = evaluate_together(items, [policies] * len(items))
            bar.update(len(settings))
            return [
                {m: [r[name][m] for r in results] for m in ("mc2", "mc1", "mc3")}
                for name in policies
            ]

        return Search(
            lambda alpha, threshold: evaluate_many([(alpha, threshold)])[0],
            keys,
            evaluate_many=evaluate_many,
        )

    def fasb(alpha: float, threshold: float | None) -> Policy:
        return FASB(alpha, 0.6 if threshold is None else threshold, s, tracker=tracker)

    def check_readings(items: list[MultipleChoice]) -> list[float]:
        """The tracker at each answer's first check (the unsteered pass, shared)."""
        checks = []
        for item in items:
            for values in item.scorer.readings(item.ids, tracker):
                answer = values[1:]
                checks.append(answer[min(inputs.answer_offset + s, len(answer) - 1)])
        return checks

    # K: FASB on the start grid at the median reading as threshold, for each candidate
    widest = choices(steering)
    searches: dict[int, tuple[Search, list[MultipleChoice], list[float]]] = {}

    def try_k(k: int) -> None:
        subset = _with_k(steering, k)  # one object: the questions' forwards share its hooks
        items = [item.with_steering(subset) for item in widest]
        checks = check_readings(items)
        found = family_search(items, fasb)
        beta = float(np.quantile(checks, 0.5))
        found.score_all([(alpha, beta) for alpha in START_GRIDS["mc"]["fasb"]])
        searches[k] = (found, items, checks)

    def best_value(k: int) -> tuple[float, ...]:
        found, _, checks = searches[k]
        beta = float(np.quantile(checks, 0.5))
        return (*rank_key(found.tried[(found.best(beta), threshold_key(beta))], keys), -k)

    for k in sorted({min(k, steering.top_k) for k in top_ks}):
        try_k(k)
    for _ in range(search_module.MAX_EXTENSIONS):
        edge = next_k_edge(searches, max(searches, key=best_value), steering.top_k)
        if edge is None:
            break
        try_k(edge)
    best_k = max(searches, key=best_value)
    thresholded, items, checks = searches[best_k]
    steering = _with_k(steering, best_k)
    calibration.top_k = best_k
    calibration.readings["mc_first_check"] = checks
    # then the chosen K's strength and threshold, and the other families' strengths
    others = {"fixed": family_search(items, lambda a, t: ITI(a))}
    if inputs.caa is not None:
        others["caa"] = family_search(items, lambda a, t: CAA(inputs.caa, a))
    chosen = joint_search(thresholded, checks, others, START_GRIDS["mc"], rng=rng)
    calibration.thresholds["mc"] = chosen.threshold
    strengths, uncertainty = chosen.strengths, chosen.uncertainty
    rows = [
        row for k, (sr, _, _) in searches.items() if k != best_k for row in sr.rows("mc", "fasb", k)
    ]
    for family, done in chosen.searches.items():
        rows += done.rows("mc", family, best_k)
    calibration.strengths["mc"] = strengths
    calibration.uncertainty["mc"] = uncertainty
    calibration.sweep += rows
    return steering


def _calibrate_generation(inputs, calibration, steering, unsteered, judges, bar, rng) -> None:
    """Each family's strength on validation True x Info, at the Youden threshold
    (``unsteered``: the validation questions' unsteered answers, read by the tracker)."""
    tracker = calibration.tracker
    threshold = calibration.thresholds["generation"]
    s = inputs.backtrack_tokens
    truth_judge, info_judge = judges

    def scorer(make: Callable[[float], Policy]):
        def evaluate(alpha: float, _: float | None) -> Scores:
            traces = _generate(inputs, make(alpha), steering, unsteered)
            truth = _judged(inputs, traces, truth_judge)
            info = _judged(inputs, traces, info_judge)
            bar.update(1)
            true = [float(bool(v.truthful)) for v in truth]
            informative = [float(bool(v.informative)) for v in info]
            return {
                "true_x_info": [t * i for t, i in zip(true, informative, strict=True)],
                "true": true,
                "info": informative,
            }

        return evaluate

    families: dict[str, Callable[[float], Policy]] = {
        "fasb": lambda a: FASB(a, threshold, s, tracker=tracker),
        "fixed": lambda a: ITI(a),
    }
    if inputs.caa is not None:
        families["caa"] = lambda a: CAA(inputs.caa, a)
    searches = {}
    for family, make in families.items():
        searches[family] = Search(scorer(make), ("true_x_info", "true"))
        searches[family].strengths(START_GRIDS["generation"][family])
    budget = max(len(search.tried) for search in searches.values())
    strengths, uncertainty = {}, {}
    for family, search in searches.items():
        search.fill(budget)
        strengths[family] = float(search.best())
        uncertainty[family] = search.bootstrap(rng)
        calibration.sweep += search.rows("generation", family, calibration.top_k)
    calibration.strengths["generation"] = strengths
    calibration.uncertainty["generation"] = uncertainty
