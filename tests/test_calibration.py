"""Calibration: the threshold rule, the per-task strength sweeps, saving."""

from __future__ import annotations

import dataclasses
import math
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest

from fasb_lens.data import load_mini_truthfulqa, load_prompt_format
from fasb_lens.evaluation.calibration import Calibration, next_k_edge
from fasb_lens.evaluation.search import (
    Search,
    choose_threshold,
    detection_auc,
    edge_quantile,
    joint_search,
)
from fasb_lens.evaluation.truthfulqa_calibration import (
    CalibrationInputs,
    answer_check_reading,
    calibrate_fold,
    check_reading,
)
from fasb_lens.generation import QA_STOP, GenerationConfig, generate
from fasb_lens.policies import FASB, PolicySettings


def test_threshold_separates_untruthful_answers() -> None:
    readings = [0.2, 0.3, 0.35, 0.6, 0.7, 0.8]
    truthful = [False, False, True, True, True, True]
    threshold, j, sweep = choose_threshold(readings, truthful, fallback=0.6)
    assert threshold == pytest.approx(0.325)  # between the last untruthful and first truthful
    assert j == pytest.approx(1.0)
    row = next(r for r in sweep if r["threshold"] == threshold)
    assert (row["tpr"], row["fpr"], row["triggered"]) == (1.0, 0.0, pytest.approx(2 / 6))


def test_threshold_prefers_triggering_less_on_ties() -> None:
    threshold, j, _ = choose_threshold([0.5, 0.5, 0.5], [True, False, True], fallback=0.6)
    assert j == pytest.approx(0.0) and threshold == 0.0  # no separation: never trigger


def test_threshold_falls_back_with_one_class() -> None:
    threshold, j, _ = choose_threshold([0.1, 0.9], [True, True], fallback=0.6)
    assert threshold == 0.6 and math.isnan(j)


def _log2(alpha: float) -> float:
    """log2 of a strength; no steering (0) scores as a strength of 2^-10 would."""
    return math.log2(alpha) if alpha > 0 else -10.0


def _peaked(optimum: float, noise: float = 0.0):
    """A validation score peaking at ``optimum`` (log scale), for 6 fake questions."""
    rng = np.random.RandomState(0)

    def evaluate(alpha: float, threshold: float | None) -> dict[str, list[float]]:
        value = -((_log2(alpha) - math.log2(optimum)) ** 2)
        return {"mc2": list(value + noise * rng.randn(6)), "mc1": [0.0] * 6}

    return evaluate


def test_search_leaves_a_grid_whose_edge_is_best() -> None:
    search = Search(_peaked(100.0), ("mc2", "mc1"))
    best = search.strengths((2.0, 8.0, 32.0))
    tried = sorted(alpha for alpha, _ in search.tried)
    assert tried[0] < best < tried[-1]  # an interior optimum, not the grid's edge
    assert 100.0 / 2**0.5 <= best <= 100.0 * 2**0.5
    low = Search(_peaked(0.1), ("mc2", "mc1"))
    assert low.strengths((2.0, 8.0, 32.0)) < 1.0  # extends downwards too


def test_a_plateau_at_the_edge_is_not_climbed() -> None:
    # the score creeps up with strength by less than one question's worth (1/6) per
    # doubling: the grid is not extended, however long the plateau
    def creeping(alpha: float, threshold: float | None) -> dict[str, list[float]]:
        return {"mc2": [0.5 + 0.01 * _log2(alpha)] * 6, "mc1": [0.0] * 6}

    search = Search(creeping, ("mc2", "mc1"))
    search.strengths((2.0, 8.0, 32.0))
    assert search.min_gain == pytest.approx(1 / 6)
    assert max(alpha for alpha, _ in search.tried) <= 32.0 * 2**0.5 + 1e-6  # a refinement


def test_search_leaves_a_grid_on_which_every_strength_scores_alike() -> None:
    # every strength of the grid breaks the model (scores 0, below no steering's 0.45;
    # the tie-breaker still varies): the search goes weaker until it finds the peak at 2
    def broken_above(alpha: float, threshold: float | None) -> dict[str, list[float]]:
        value = 0.45 if alpha == 0 else 0.0 if alpha > 6 else 0.6 - 0.1 * abs(alpha - 2)
        return {"true_x_info": [value] * 4, "true": [1 / (1 + abs(alpha - 16))] * 4}

    search = Search(broken_above, ("true_x_info", "true"))
    assert search.strengths((8.0, 16.0, 32.0)) == pytest.approx(2.0)
    assert 0.0 not in {alpha for alpha, _ in search.tried}  # a reference, not a candidate

    # the pattern of a real run (ITI's generation search, fold 0): the grid's middle
    # strength is its best but still breaks the model (0.04 against no steering's 0.45);
    # the search goes weaker, past the grid, to the peak at 4
    def interior_but_broken(alpha: float, threshold: float | None) -> dict[str, list[float]]:
        value = 0.45 if alpha == 0 else 0.55 - 0.1 * abs(alpha - 4) if alpha < 6 else 0.0
        if alpha in (16.0, 11.3137085, 22.627417):
            value = 0.04
        return {"true_x_info": [value] * 4, "true": [0.5] * 4}

    stuck = Search(interior_but_broken, ("true_x_info", "true"))
    assert stuck.strengths((8.0, 16.0, 32.0)) == pytest.approx(4.0)
    assert min(alpha for alpha, _ in stuck.tried) < 4.0  # the peak is interior to the tried

    # nothing changes below 8 (the unsteered score): the search goes stronger
    def inert_below(alpha: float, threshold: float | None) -> dict[str, list[float]]:
        value = 0.5 if alpha < 8 else 0.5 + 0.01 * min(alpha, 64) - 0.01 * max(alpha - 64, 0)
        return {"mc2": [value] * 4, "mc1": [0.0] * 4}

    up = Search(inert_below, ("mc2", "mc1"))
    assert up.strengths((0.25, 1.0, 4.0)) > 8.0


def test_search_budget_and_bootstrap() -> None:
    search = Search(_peaked(8.0), ("mc2", "mc1"))
    search.strengths((2.0, 8.0, 32.0))
    search.fill(9)
    assert len(search.tried) == 9
    assert search.best() == pytest.approx(8.0)
    clear = search.bootstrap(np.random.RandomState(0))
    assert clear["chosen_wins"] == 1.0 and clear["alpha_range"] == [8.0, 8.0]
    noisy = Search(_peaked(8.0, noise=5.0), ("mc2", "mc1"))
    noisy.strengths((2.0, 8.0, 32.0))
    assert noisy.bootstrap(np.random.RandomState(0))["chosen_wins"] < 1.0


def test_filling_a_budget_never_ends_on_an_edge() -> None:
    # the pattern of a real run (CAA's multiple-choice search, fold 1): a dip at 4 makes
    # 1 the start grid's best, the refinements climb towards the peak at 5.66, and the
    # last point the budget allows (4.76) is the best and the largest tried
    def dipped(alpha: float, threshold: float | None) -> dict[str, list[float]]:
        value = -((_log2(alpha) - math.log2(5.66)) ** 2)
        if abs(alpha - 4.0) < 0.01:
            value = -7.0
        return {"mc2": [value] * 3, "mc1": [0.0] * 3}

    search = Search(dipped, ("mc2", "mc1"))
    search.strengths((0.25, 1.0, 4.0))
    search.fill(11)  # the search before this rule stopped here on 4.76, the largest tried
    tried = sorted(alpha for alpha, _ in search.tried)
    assert len(tried) >= 11
    assert tried[0] < search.best() < tried[-1]
    assert 4.0 < search.best() < 8.0
    # a refinement point that meets a tried strength through float error (4 reached as
    # 2.378 x 2^(3/4)) is the same setting, not a second evaluation
    assert all(high / low > 1 + 1e-6 for low, high in pairwise(tried))


def test_bootstrap_breaks_ties_as_the_choice_does() -> None:
    # MC2 ties everywhere; MC1 decides: the bootstrap must rank by it too, not by the
    # order the settings were tried in
    def evaluate(alpha: float, threshold: float | None) -> dict[str, list[float]]:
        return {"mc2": [0.5] * 6, "mc1": [1.0 if alpha == 4.0 else 0.0] * 6}

    search = Search(evaluate, ("mc2", "mc1"))
    for alpha in (1.0, 2.0, 4.0):
        search.score(alpha)
    assert search.best() == 4.0
    assert search.bootstrap(np.random.RandomState(0))["chosen_wins"] == 1.0


def test_detection_auc() -> None:
    assert detection_auc([0.9, 0.8, 0.2], [True, True, False]) == 1.0
    assert detection_auc([0.5, 0.5], [True, False]) == 0.5
    assert math.isnan(detection_auc([0.5], [True]))


@pytest.fixture()
def small_grids(small_searches):
    grids = {"fixed": (1.0, 4.0), "fasb": (1.0, 4.0), "caa": (0.5, 2.0)}
    with small_searches(grids):
        yield


def test_check_readings_are_the_policys_first_checks() -> None:
    policy = FASB(backtrack_tokens=2)
    # generation: the second token's reading is the first check; a shorter answer's last
    trace = SimpleNamespace(p_true=[0.9, 0.8, 0.7, 0.6])
    assert check_reading(policy, trace) == 0.8
    assert check_reading(policy, SimpleNamespace(p_true=[0.5])) == 0.5
    # scoring counts answer token t as t - offset: with offset 1 the check is at token 3
    readings = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # the prompt's end, then five answer tokens
    assert answer_check_reading(policy, readings, 1) == 0.5
    assert answer_check_reading(policy, readings, 0) == 0.4
    assert answer_check_reading(policy, [0.1, 0.2], 1) == 0.2  # no check: the last reading


def test_calibrate_on_a_tiny_model(tiny_llama, tiny_anchoring, tmp_path, small_grids) -> None:
    questions = load_mini_truthfulqa()[:4]
    inputs = CalibrationInputs(
        tiny_llama,
        questions,
        tiny_anchoring.steering,
        fmt=load_prompt_format(),
        settings=PolicySettings(backtrack_tokens=2),
        max_new_tokens=5,
        mc_source="csv",
        batch_size=3,
        progress=False,
    )
    result, steering = calibrate_fold(inputs, top_ks=(1, 2))
    assert steering.heads == tiny_anchoring.steering.heads[: result.top_k]
    tried = sorted({r["top_k"] for r in result.sweep if r["task"] == "mc"})
    extended = [k for k in tried if k not in (1, 2)]
    assert result.top_k in tried and len(extended) <= 1  # MAX_EXTENSIONS is 1 here
    # a K on an edge that could move means the one extension was spent
    assert next_k_edge(tried, result.top_k, tiny_anchoring.steering.top_k) is None or extended
    assert set(result.strengths) == {"mc", "generation"}
    assert set(result.thresholds) == {"mc", "generation"}
    checks = result.readings["mc_first_check"]
    assert min(checks) <= result.thresholds["mc"] <= max(checks)  # chosen on MC readings
    assert result.tracker == "probe" and set(result.trackers) == {"probe"}
    # FASB reads the chosen K heads: the generation threshold is the Youden threshold of
    # the unsteered answers' first checks read over them
    prompts = [inputs.fmt.generation_prompt(q.question) for q in questions]
    config = GenerationConfig(max_new_tokens=5, stop_strings=(QA_STOP,))
    again = generate(tiny_llama, prompts, steering=steering, config=config)
    expected, _, _ = choose_threshold(
        [check_reading(FASB(backtrack_tokens=2), t) for t in again],
        result.readings["truthful"],
        0.6,
    )
    assert result.thresholds["generation"] == pytest.approx(expected, abs=1e-4)
    assert result.trackers["probe"]["threshold_at_k"] == result.thresholds["generation"]
    assert len(result.readings["probe"]["first_check"]) == 4
    variants = ("fasb_fixed_strength", "fasb_no_backtrack", "after_question")
    for task in ("mc", "generation"):
        rows = [r for r in result.sweep if r["task"] == task and r["top_k"] == result.top_k]
        counts = {m: sum(r["policy"] == m for r in rows) for m in ("fixed", "fasb", *variants)}
        assert len(set(counts.values())) == 1 and counts["fasb"] > 0  # the same budget each
        assert set(result.uncertainty[task]) == {"fixed", "fasb", *variants}
        for variant in variants:  # each searched on its own, at FASB's threshold
            assert result.strength(task, variant) == result.strengths[task][variant]
            at = [r["threshold"] for r in rows if r["policy"] == variant]
            assert at and all(t == pytest.approx(result.thresholds[task]) for t in at)
        assert result.threshold(task) == result.thresholds[task]
    for task in ("mc", "generation"):
        rows = [r for r in result.sweep if r["task"] == task]
        for name in ("fixed", "fasb", *variants):  # the sweep's rows, and no steering's
            count = sum(r["policy"] == name for r in rows)
            assert count <= result.evaluations[task][name] <= count + 1
        fluency = result.fluency[task]
        assert set(fluency) == {"fixed", "fasb", *variants}
        assert all(0 <= kept["kl"] <= kept["max_kl"] == 0.5 for kept in fluency.values())
        assert all(0 <= r["kl"] for r in rows)
    assert 0 <= result.fluency["generation"]["fasb"]["info"] <= 1
    result.save(tmp_path)
    assert Calibration.load(tmp_path) == result
    none, _ = calibrate_fold(dataclasses.replace(inputs, questions=questions[:2]), tasks=())
    assert none.strengths == {} and none.strength("generation", "fasb") is None
    with pytest.raises(ValueError, match="tracker 'context' is not available"):
        calibrate_fold(inputs, tasks=(), tracker="context")


def test_k_candidates_extend_from_an_edge() -> None:
    assert next_k_edge([12, 24, 48], 48, 270) == 96  # the largest won: try twice as many
    assert next_k_edge([12, 24, 48, 96, 192], 192, 270) == 270  # at most every head
    assert next_k_edge([12, 24, 48, 270], 270, 270) is None  # nothing wider to try
    assert next_k_edge([12, 24, 48], 12, 270) == 6  # the smallest won: try half
    assert next_k_edge([1, 2], 1, 270) is None
    assert next_k_edge([12, 24, 48], 24, 270) is None  # interior: found


def test_threshold_quantiles_extend_from_an_edge() -> None:
    rising = lambda q: (q,)  # noqa: E731 - a score growing with the threshold
    assert edge_quantile([0.25, 0.5, 0.75], rising) == 0.875  # halfway to 1
    assert edge_quantile([0.25, 0.5, 0.75], lambda q: (-q,)) == 0.125  # halfway to 0
    assert edge_quantile([0.25, 0.5, 0.75], lambda q: (-abs(q - 0.5),)) is None  # interior
    assert edge_quantile([0.25, 0.5, 0.75], lambda q: (0.0,)) is None  # flat: no edge wins


def test_joint_search_finds_an_interior_threshold() -> None:
    readings = list(np.linspace(0.0, 1.0, 101))  # quantile q is the threshold q

    def evaluate(alpha: float, threshold: float | None) -> dict[str, list[float]]:
        # best at alpha 8 and threshold 0.9, beyond the start quantiles' 0.75
        value = -((_log2(alpha) - 3) ** 2) - 10 * ((threshold or 0.5) - 0.9) ** 2
        return {"mc2": [value] * 4, "mc1": [0.0] * 4}

    others = {"fixed": Search(_peaked(8.0), ("mc2", "mc1"))}
    grids = {"fasb": (2.0, 8.0, 32.0), "fixed": (2.0, 8.0, 32.0)}
    thresholded = Search(evaluate, ("mc2", "mc1"))
    chosen = joint_search(thresholded, readings, others, grids, rng=np.random.RandomState(0))
    thresholds = sorted({t for _, t in thresholded.tried if t is not None})
    assert thresholds[0] < chosen.threshold < thresholds[-1]  # interior, not an edge
    assert abs(chosen.threshold - 0.9) < 0.05 and chosen.strengths["fasb"] == pytest.approx(8.0)
    assert len(others["fixed"].tried) == len(thresholded.tried)  # the same budget


def test_settings_evaluated_together_search_as_one_at_a_time() -> None:
    """With ``evaluate_many`` a search hands over a grid, a refinement pair and the start
    thresholds at once; it tries the same settings, in the same order, and chooses the
    same as a search evaluating one setting at a time."""
    readings = list(np.linspace(0.0, 1.0, 101))

    def evaluate(alpha: float, threshold: float | None) -> dict[str, list[float]]:
        value = -((_log2(alpha) - 3) ** 2) - 10 * ((threshold or 0.5) - 0.9) ** 2
        return {"mc2": [value] * 4, "mc1": [0.0] * 4}

    calls: list[int] = []

    def together(one):
        def evaluate_many(settings):
            calls.append(len(settings))
            return [one(*setting) for setting in settings]

        return evaluate_many

    grids = {"fasb": (2.0, 8.0, 32.0), "fixed": (2.0, 8.0, 32.0)}
    chosen = {}
    for batched in (False, True):
        fixed = _peaked(100.0)
        thresholded = Search(evaluate, ("mc2", "mc1"))
        others = {"fixed": Search(fixed, ("mc2", "mc1"))}
        if batched:
            thresholded.evaluate_many = together(evaluate)
            others["fixed"].evaluate_many = together(fixed)
        result = joint_search(thresholded, readings, others, grids, rng=np.random.RandomState(0))
        chosen[batched] = (result, list(thresholded.tried), list(others["fixed"].tried))
    (one, tried_one, fixed_one), (many, tried_many, fixed_many) = chosen[False], chosen[True]
    assert (tried_many, fixed_many) == (tried_one, fixed_one)
    assert (many.threshold, many.strengths) == (one.threshold, one.strengths)
    assert max(calls) == 3 and 2 in calls  # grids and quantiles, refinement pairs
    assert sum(calls) < len(tried_many) + len(fixed_many)  # fewer calls than settings


def test_a_run_searches_only_what_its_policies_use(tiny_anchoring) -> None:
    def searched(policies):
        inputs = CalibrationInputs(
            None,  # type: ignore[arg-type]
            [],
            tiny_anchoring.steering,
            load_prompt_format(),
            PolicySettings(),
            policies=policies,
        )
        return [spec.name for spec in inputs.searched()]

    every = searched(None)
    assert every[0] == "fasb" and {"fixed", "fasb_no_backtrack", "after_question"} <= set(every)
    assert "detector_only" not in every  # it steers nothing: FASB's threshold, no strength
    assert searched(("none", "fixed_random")) == ["fasb", "fixed"]  # FASB's search chooses K
    assert searched(("fasb_random", "detector_only")) == ["fasb"]
    assert searched(("after_question",)) == ["fasb", "after_question"]
