"""Intervals and paired tests, checked against cases whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fasb_lens.evaluation.statistics import (
    compare,
    interval,
    mcnemar,
    mean_of,
    permutation_p,
    product_of_means,
)


def test_the_interval_of_a_rate_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(0)
    values = (rng.random(800) < 0.3).astype(float)
    low, high = interval(values, seed=1)
    p, n = values.mean(), len(values)
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    assert low == pytest.approx(p - half, abs=0.01) and high == pytest.approx(p + half, abs=0.01)
    assert interval([1.0] * 10) == (1.0, 1.0)  # no spread, no width


def test_strata_keep_their_sizes() -> None:
    # two folds with very different rates: resampling within each keeps the mixture fixed,
    # so the interval is narrower than resampling all questions together
    values = [1.0] * 100 + [0.0] * 100
    folds = [0] * 100 + [1] * 100
    assert interval(values, strata=folds) == (0.5, 0.5)
    low, high = interval(values)
    assert low < 0.45 and high > 0.55


def test_mcnemar_counts_only_disagreements() -> None:
    a = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    b = [0, 0, 0, 0, 0, 0, 0, 1, 0, 0]
    # 7 questions only a gets right, none only b: p = 2 * (1/2)^7
    assert mcnemar(a, b) == pytest.approx(2 / 2**7)
    assert mcnemar(a, a) == 1.0
    assert mcnemar([1, 0], [0, 1]) == 1.0


def test_a_clear_difference_is_significant_and_none_is_not() -> None:
    rng = np.random.default_rng(3)
    base = rng.random(400)
    better = base + 0.05 + 0.01 * rng.standard_normal(400)
    clear = compare(better, base, names=("fasb", "none"), metric="mc2")
    assert clear.significant and clear.p < 0.01 and clear.test == "paired permutation"
    assert clear.difference == pytest.approx(0.05, abs=0.01)
    assert clear.verdict() == "fasb above none"
    noise = base + 0.2 * rng.standard_normal(400) * 0.01
    same = compare(noise, base + 0.0, names=("fixed", "none"), metric="mc2")
    low, high = same.ci95
    assert low < same.difference < high
    flip = rng.permutation(base)
    unrelated = compare(flip, base, names=("a", "b"), metric="mc2")
    assert not unrelated.significant and unrelated.verdict() == "no significant difference"
    assert unrelated.p > 0.05


def test_binary_rates_use_mcnemar_and_products_use_permutations() -> None:
    a = [1.0] * 30 + [0.0] * 70
    b = [0.0] * 100
    result = compare(a, b, names=("a", "b"), metric="true")
    assert result.test == "exact McNemar" and result.p == pytest.approx(mcnemar(a, b))
    pairs_a = np.column_stack([a, [1.0] * 100])
    pairs_b = np.column_stack([b, [1.0] * 100])
    product = compare(
        pairs_a, pairs_b, names=("a", "b"), metric="true_x_info", statistic=product_of_means
    )
    assert product.test == "paired permutation" and product.difference == pytest.approx(0.3)
    assert product.p == pytest.approx(permutation_p(pairs_a, pairs_b, product_of_means), abs=1e-12)
    assert mean_of(pairs_a) == pytest.approx(0.3)


def test_mismatched_or_empty_inputs() -> None:
    with pytest.raises(ValueError, match="paired values must match"):
        compare([1.0, 2.0], [1.0], names=("a", "b"), metric="m")
    empty = compare([], [], names=("a", "b"), metric="m")
    assert math.isnan(empty.difference) and empty.n == 0
    with pytest.raises(ValueError, match="3 strata for 2 questions"):
        interval([1.0, 0.0], strata=[0, 1, 2])


def test_replicates_of_a_question_resample_as_one_question() -> None:
    rng = np.random.default_rng(4)
    values = (rng.random(120) < 0.4).astype(float)
    folds = [i % 2 for i in range(120)]
    questions = [f"q{i}" for i in range(120)]
    once = interval(values, strata=folds, clusters=questions)
    # the same questions again under a second split seed: the same interval
    twice = interval(
        np.concatenate([values, values]),
        strata=[(seed, fold) for seed in (42, 7) for fold in folds],
        clusters=questions + questions,
    )
    assert twice == pytest.approx(once)
    a, b = rng.random(120), rng.random(120)
    one = compare(a, b, names=("a", "b"), metric="m", strata=folds, clusters=questions)
    two = compare(
        np.concatenate([a, a]),
        np.concatenate([b, b]),
        names=("a", "b"),
        metric="m",
        strata=[(seed, fold) for seed in (42, 7) for fold in folds],
        clusters=questions + questions,
    )
    assert two.ci95 == pytest.approx(one.ci95) and two.n == one.n == 120
    with pytest.raises(ValueError, match="question 'q0' has two rows in stratum 0"):
        interval([1.0, 0.0], strata=[0, 0], clusters=["q0", "q0"])
