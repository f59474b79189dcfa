"""The fluency budget: a strength's next-token KL on plain answers, and searches that
keep to it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fasb_lens.data import load_mini_truthfulqa
from fasb_lens.evaluation.fluency import FluencyProbe
from fasb_lens.evaluation.search import Search, joint_search
from fasb_lens.evaluation.summary import searched
from fasb_lens.policies import ITI


def _rising(alpha: float, threshold: float | None) -> dict[str, list[float]]:
    """A validation score that only grows with strength (a model pushed until it breaks
    scores ever better): without a budget the search climbs for ever."""
    return {"mc2": [math.log2(1 + alpha) / 4] * 6, "mc1": [0.0] * 6}


def test_a_search_stays_within_its_budget() -> None:
    unlimited = Search(_rising, ("mc2", "mc1"))
    limited = Search(_rising, ("mc2", "mc1"), cost=lambda alpha: alpha / 10, max_cost=1.0)
    free = unlimited.strengths((2.0, 8.0, 32.0))
    kept = limited.strengths((2.0, 8.0, 32.0))
    assert free > 32.0  # climbs past the grid
    assert kept <= 10.0 and limited.fluent(kept)
    assert all(alpha <= 10.0 for alpha, _ in limited.tried)  # over-budget never evaluated
    assert all(row["kl"] <= 1.0 for row in limited.rows("mc", "fixed", 4))
    limited.fill(8)
    assert all(alpha <= 10.0 for alpha, _ in limited.tried)
    assert limited.bootstrap(np.random.RandomState(0))["alpha_range"][1] <= 10.0


def test_a_grid_wholly_over_budget_goes_weaker() -> None:
    search = Search(_rising, ("mc2", "mc1"), cost=lambda alpha: alpha, max_cost=0.5)
    best = search.strengths((2.0, 8.0, 32.0))
    assert 0 < best <= 0.5
    assert search.fluent_grid((2.0, 8.0)) == [0.5]


def test_with_nothing_fluent_every_choice_falls_back_to_the_weakest() -> None:
    search = Search(_rising, ("mc2", "mc1"), cost=lambda alpha: alpha, max_cost=0.5)
    search.score_all([(2.0, None), (4.0, None)])  # both over budget, scored anyway
    assert search.best() == 2.0
    assert list(search.candidates()) == [(2.0, None)]
    assert search.bootstrap(np.random.RandomState(0))["alpha_range"] == [2.0, 2.0]


def test_a_joint_search_keeps_to_the_budget() -> None:
    def scores(alpha: float, threshold: float | None) -> dict[str, list[float]]:
        return {"mc2": [math.log2(1 + alpha) / 4 - (threshold or 0) ** 2] * 6, "mc1": [0.0] * 6}

    budget = {"cost": lambda alpha: alpha / 4, "max_cost": 1.0}
    thresholded = Search(scores, ("mc2", "mc1"), **budget)
    other = Search(_rising, ("mc2", "mc1"), **budget)
    result = joint_search(
        thresholded,
        [0.2, 0.4, 0.6, 0.8],
        {"fixed": other},
        {"fasb": (1.0, 2.0), "fixed": (1.0, 2.0)},
        rng=np.random.RandomState(0),
    )
    assert all(strength <= 4.0 for strength in result.strengths.values())


def test_the_probe_measures_a_strengths_kl(tiny_llama, tiny_anchoring) -> None:
    probe = FluencyProbe.build(tiny_llama, load_mini_truthfulqa()[:4])
    steering = tiny_anchoring.steering
    cost = probe.family_cost(ITI(1.0), steering)
    costs = [cost(alpha) for alpha in (0.0, 1.0, 8.0, 64.0)]
    assert costs[0] == 0.0
    assert 0.0 < costs[1] < costs[2] < costs[3]  # further with the strength
    assert cost(8.0) == costs[2] and len(probe.costs) == 3  # measured once
    with pytest.raises(ValueError, match="at least one question"):
        FluencyProbe.build(tiny_llama, [])


def test_the_table_says_what_each_choice_cost() -> None:
    calibrations = {
        "0": {"evaluations": {"mc": {"fasb": 30, "fixed": 20}, "generation": {"fasb": 9}}},
        "1": {"evaluations": {"mc": {"fasb": 3, "fixed": 4}}},
    }
    assert searched(calibrations, "fasb") == "33 / 9"
    assert searched(calibrations, "fixed") == "24 / -"
    assert searched(calibrations, "none") == "-"
    for shares in ("detector_only", "fasb_random/0", "fasb_question"):
        assert searched(calibrations, shares) == "fasb's"
