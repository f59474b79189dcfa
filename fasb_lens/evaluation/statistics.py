"""Intervals and paired tests: how sure a number is, and whether two policies differ.

Every number a run reports is a statistic of per-question values (a rate, a mean, or a
product of two rates such as True x Info). :func:`interval` resamples the questions with
replacement - within each stratum (fold, split seed), so each keeps its size - and gives
the 2.5th and 97.5th percentiles of the statistic: a 95% bootstrap interval. With strata
the statistic is computed in each and averaged over them, the fold mean a table reports.
:func:`compare` does the same for the *paired* difference of two policies on the same
questions (each resample draws a question for both), and adds a two-sided p-value from a
paired test: an exact McNemar test when the values are binary and the statistic is their
mean (correct or not, truthful or not), else a paired permutation test that swaps the two
policies' values within randomly chosen questions. A difference is significant at 5%
when its interval excludes zero and the test agrees (p < 0.05).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
"""Bootstrap resamples (and permutations) per interval or test."""
LEVEL = 0.95

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps values ``[..., questions, components]`` (e.g. truthful and informative) to one
number per leading index ``[...]``, so that many resamples are computed at once."""


def mean_of(values: np.ndarray) -> np.ndarray:
    """The mean of the first component (a rate, MC1, MC2, ...)."""
    return values[..., 0].mean(axis=-1)


def product_of_means(values: np.ndarray) -> np.ndarray:
    """The product of the components' means: True x Info as the paper reports it."""
    return np.prod(values.mean(axis=-2), axis=-1)


@dataclass(frozen=True)
class Comparison:
    """``a`` minus ``b`` on ``metric``: the difference, its 95% interval and a p-value."""

    a: str
    b: str
    metric: str
    difference: float
    ci95: tuple[float, float]
    p: float
    n: int
    test: str

    @property
    def significant(self) -> bool:
        """At 5%, by both measures: the interval excludes zero and the test's p < 0.05
        (the percentile interval and the test can disagree near the edge; then the
        difference is not claimed)."""
        low, high = self.ci95
        return (low > 0 or high < 0) and self.p < 1 - LEVEL

    def verdict(self) -> str:
        """The comparison in words: who is ahead where the interval says so, else "no
        significant difference"."""
        if not self.significant:
            return "no significant difference"
        return f"{self.a} {'above' if self.difference > 0 else 'below'} {self.b}"

    def to_dict(self) -> dict[str, object]:
        return {
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "difference": self.difference,
            "ci95": list(self.ci95),
            "p": self.p,
            "n": self.n,
            "test": self.test,
            "verdict": self.verdict(),
        }


def _as_values(values: Sequence[Sequence[float]] | Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[:, None] if array.ndim == 1 else array


def _strata_indices(strata: Sequence[object] | None, n: int) -> list[np.ndarray]:
    if strata is None:
        return [np.arange(n)]
    labels = list(strata)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} strata for {n} questions")
    groups: dict[object, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    return [np.asarray(members) for members in groups.values()]


def _spans(groups: list[np.ndarray]) -> list[tuple[int, int]]:
    """Where each stratum's questions lie once the questions are ordered stratum by stratum."""
    bounds = np.cumsum([0, *(len(group) for group in groups)])
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def _by_stratum(statistic: Statistic, strata: list[np.ndarray]) -> Statistic:
    """``statistic`` computed in each stratum and averaged over strata (a fold mean, as
    tables report it), for values whose questions are ordered stratum by stratum."""
    if len(strata) == 1:
        return statistic
    spans = _spans(strata)

    def per_stratum(values: np.ndarray) -> np.ndarray:
        return np.mean([statistic(values[..., a:b, :]) for a, b in spans], axis=0)

    return per_stratum


def _resamples(strata: list[np.ndarray], rng: np.random.Generator, resamples: int) -> np.ndarray:
    """``[resamples, n]`` row indices, each row a stratified draw with replacement, ordered
    stratum by stratum."""
    parts = [group[rng.integers(len(group), size=(resamples, len(group)))] for group in strata]
    return np.concatenate(parts, axis=1)


def _percentiles(draws: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def interval(
    values: Sequence[Sequence[float]] | Sequence[float],
    statistic: Statistic = mean_of,
    *,
    strata: Sequence[object] | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> tuple[float, float]:
    """The 95% bootstrap interval of ``statistic`` over questions (``values``: one row
    per question), resampled within ``strata`` and averaged over them."""
    array = _as_values(values)
    if len(array) == 0:
        return (math.nan, math.nan)
    groups = _strata_indices(strata, len(array))
    rows = _resamples(groups, np.random.default_rng(seed), resamples)
    return _percentiles(_by_stratum(statistic, groups)(array[rows]))


def _binary(array: np.ndarray) -> bool:
    return bool(np.isin(array, (0.0, 1.0)).all())


def mcnemar(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sided exact McNemar p-value of paired binary outcomes ``a`` and ``b``: a
    binomial test on the questions where they disagree."""
    x, y = np.asarray(a), np.asarray(b)
    only_a, only_b = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def permutation_p(
    a: np.ndarray,
    b: np.ndarray,
    statistic: Statistic,
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> float:
    """A two-sided paired permutation p-value: how often swapping ``a`` and ``b`` within
    random questions gives a difference of statistics as large as the observed one."""
    observed = abs(float(statistic(a) - statistic(b)))
    swap = np.random.default_rng(seed).random((resamples, len(a)))[..., None] < 0.5
    first, second = np.where(swap, b, a), np.where(swap, a, b)
    larger = int((np.abs(statistic(first) - statistic(second)) >= observed - 1e-12).sum())
    return (larger + 1) / (resamples + 1)


def compare(
    a: Sequence[Sequence[float]] | Sequence[float],
    b: Sequence[Sequence[float]] | Sequence[float],
    *,
    names: tuple[str, str],
    metric: str,
    statistic: Statistic = mean_of,
    strata: Sequence[object] | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> Comparison:
    """``a`` against ``b`` on the same questions (row ``i`` of each is question ``i``):
    the difference of ``statistic`` (averaged over ``strata``), its paired bootstrap
    interval and a paired test."""
    x, y = _as_values(a), _as_values(b)
    if x.shape != y.shape:
        raise ValueError(f"paired values must match: {x.shape} against {y.shape}")
    if len(x) == 0:
        return Comparison(*names, metric, math.nan, (math.nan, math.nan), math.nan, 0, "none")
    groups = _strata_indices(strata, len(x))
    order = np.concatenate(groups)
    x, y = x[order], y[order]
    ordered = [np.arange(a, b) for a, b in _spans(groups)]
    rows = _resamples(ordered, np.random.default_rng(seed), resamples)
    stat = _by_stratum(statistic, ordered)
    draws = stat(x[rows]) - stat(y[rows])
    if statistic is mean_of and _binary(x[:, 0]) and _binary(y[:, 0]):
        p, test = mcnemar(x[:, 0], y[:, 0]), "exact McNemar"
    else:
        p = permutation_p(x, y, stat, seed=seed, resamples=resamples)
        test = "paired permutation"
    difference = float(stat(x) - stat(y))
    return Comparison(*names, metric, difference, _percentiles(draws), p, len(x), test)
