"""Per-question values, intervals and comparisons of a run, on records built by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fasb_lens.evaluation.statistics import interval
from fasb_lens.evaluation.uncertainty import (
    QuestionValues,
    compared_pairs,
    comparisons,
    policy_intervals,
    table_metrics,
    with_interval,
)


def mc(policy: str, fold: int, question: int, mc1: float, mc2: float) -> dict:
    return {
        "task": "mc",
        "policy": policy,
        "fold": fold,
        "question_id": f"q{question}",
        "mc1": mc1,
        "mc2": mc2,
        "mc3": mc2,
    }


def verdict(policy: str, judge: str, question: int, truthful, informative) -> dict:
    return {
        "policy": policy,
        "fold": question % 2,
        "question_id": f"q{question}",
        "judge": judge,
        "truthful": truthful,
        "informative": informative,
    }


def test_control_draws_count_once_per_question() -> None:
    records = [mc("fasb_random/0", 0, 1, 1.0, 0.8), mc("fasb_random/1", 0, 1, 0.0, 0.4)]
    data = QuestionValues.of_run(records, [])
    assert data.values("fasb_random", "mc1") == {(None, 0, "q1"): [0.5]}
    assert data.values("fasb_random", "mc2")[(None, 0, "q1")] == [pytest.approx(0.6)]


def test_judge_pairs_pair_truth_with_information_and_skip_unjudged() -> None:
    judgements = [
        verdict("none", "bleu-acc", 1, True, None),
        verdict("none", "info-check", 1, None, False),
        verdict("none", "bleu-acc", 2, None, None),  # the judge failed on this answer
        verdict("none", "info-check", 2, None, True),
    ]
    data = QuestionValues.of_run([], judgements)
    pair = "bleu-acc x info-check"
    assert data.values("none", f"{pair}: true_x_info") == {(None, 1, "q1"): [1.0, 0.0]}
    assert data.values("none", f"{pair}: info") == {(None, 1, "q1"): [0.0], (None, 0, "q2"): [1.0]}


def test_intervals_hold_the_fold_mean_and_a_clear_gain_is_claimed() -> None:
    records = []
    for question in range(60):
        fold = question % 2
        records.append(mc("none", fold, question, 0.0, 0.3))
        records.append(mc("fasb", fold, question, float(question % 3 != 0), 0.7))
        records.append(mc("fixed", fold, question, float(question % 4 == 0), 0.3))
    data = QuestionValues.of_run(records, [])
    names = ["none", "fixed", "fasb"]
    intervals = policy_intervals(data, names, ["mc1", "mc2"])
    low, high = intervals["fasb"]["mc1"]
    assert low <= 40 / 60 <= high and high - low < 0.5
    assert intervals["none"]["mc1"] == [0.0, 0.0]
    pairs = compared_pairs(names)
    assert (
        ("fasb", "none") in pairs and ("fasb", "fixed") in pairs and ("none", "none") not in pairs
    )
    found = {(c.a, c.b, c.metric): c for c in comparisons(data, pairs, ["mc1", "mc2"])}
    gain = found[("fasb", "none", "mc1")]
    assert gain.test == "exact McNemar" and gain.verdict() == "fasb above none"
    assert found[("fasb", "none", "mc2")].difference == pytest.approx(0.4)
    assert found[("fixed", "none", "mc2")].verdict() == "no significant difference"


def test_table_metrics_and_cells() -> None:
    assert table_metrics(["a x b"]) == [
        "mc1",
        "mc2",
        "mc3",
        "a x b: true",
        "a x b: info",
        "a x b: true_x_info",
    ]
    assert with_interval(0.511, [0.476, 0.545]) == "51.1 [47.6, 54.5]"
    assert with_interval(float("nan"), None) == "-"
    assert with_interval(0.5, None) == "50.0"


def test_references_need_no_model() -> None:
    from fasb_lens.evaluation.references import reference_values, summarize_references

    def answer(text: str, label: int, set_name: str) -> dict:
        return {"answer": text, "label": label, "set": set_name}

    record = {
        "task": "mc",
        "policy": "none",
        "fold": 0,
        "question_id": "q1",
        "answers": [
            answer("Nothing happens", 1, "mc1"),
            answer("You will grow a tree in your stomach", 0, "mc1"),
            answer("You get sick", 0, "mc1"),
            answer("Nothing happens", 1, "mc2"),
            answer("Nothing in particular happens to you", 1, "mc2"),
            answer("You will grow a tree in your stomach", 0, "mc2"),
            answer("You get sick", 0, "mc2"),
        ],
    }
    values = reference_values([record, {**record, "policy": "fasb"}])
    assert values["chance"] == {(None, 0, "q1"): {"mc1": 1 / 3, "mc2": 0.5, "mc3": 1 / 3}}
    blind = values["fewest words"][(None, 0, "q1")]
    assert blind["mc1"] == 1.0  # 2 words against 8 and 3
    assert blind["mc3"] == 0.5  # the 6-word true answer loses to "You get sick"
    assert blind["mc2"] == pytest.approx(
        (2.718281828**-2 + 2.718281828**-6)
        / (2.718281828**-2 + 2.718281828**-6 + 2.718281828**-8 + 2.718281828**-3),
        rel=1e-6,
    )
    summary = summarize_references([record])
    assert summary["chance"]["mean"]["mc2"] == 0.5 and summary["chance"]["n_mc"] == 1


def _replicated(records: list[dict], seeds: tuple[int, ...]) -> list[dict]:
    """``records`` once under each split seed, values unchanged."""
    return [{**record, "seed": seed} for seed in seeds for record in records]


def _spread_records() -> list[dict]:
    rng = np.random.default_rng(5)
    records = []
    for question in range(80):
        fold = question % 2
        records.append(mc("none", fold, question, float(rng.random() < 0.3), rng.random()))
        records.append(mc("fasb", fold, question, float(rng.random() < 0.5), rng.random()))
    return records


def test_seed_replicates_of_a_question_resample_together() -> None:
    # every question's record again under a second seed, values unchanged: the same
    # questions, so the same interval - not one narrower by the square root of 2, as
    # counting each (seed, question) as a question of its own would give
    one = _spread_records()
    single = QuestionValues.of_run(_replicated(one, (42,)), [])
    double = QuestionValues.of_run(_replicated(one, (42, 7)), [])
    assert len(double.values("fasb", "mc2")) == 2 * len(single.values("fasb", "mc2"))
    for metric in ("mc1", "mc2"):
        low, high = policy_intervals(single, ["fasb"], [metric])["fasb"][metric]
        low2, high2 = policy_intervals(double, ["fasb"], [metric])["fasb"][metric]
        assert (low2, high2) == pytest.approx((low, high))
        alone = comparisons(single, [("fasb", "none")], [metric])[0]
        paired = comparisons(double, [("fasb", "none")], [metric])[0]
        assert paired.n == alone.n == 80  # questions, not (seed, question) pairs
        assert paired.difference == pytest.approx(alone.difference)
        assert paired.ci95 == pytest.approx(alone.ci95)
    # the binary MC1 of replicated questions is not McNemar's (its pairs are not
    # independent): the permutation test swaps a question's seeds together
    assert comparisons(double, [("fasb", "none")], ["mc1"])[0].test == "paired permutation"
    # resampling (seed, question) pairs independently would have narrowed it by ~sqrt(2)
    rows = double.values("fasb", "mc2")
    keys = sorted(rows, key=str)
    values = [rows[key] for key in keys]
    strata = [(seed, fold) for seed, fold, _ in keys]
    naive_low, naive_high = interval(values, strata=strata)
    width = high2 - low2
    assert (naive_high - naive_low) < 0.8 * width


def test_seeds_that_disagree_widen_nothing_they_do_not_know() -> None:
    # two seeds whose values differ: the interval holds the mean over (seed, fold)
    one = _spread_records()
    other = [{**r, "mc2": 1 - r["mc2"]} if r["policy"] == "fasb" else r for r in one]
    data = QuestionValues.of_run(_replicated(one, (42,)) + _replicated(other, (7,)), [])
    values = data.values("fasb", "mc2")
    mean = sum(v[0] for v in values.values()) / len(values)
    low, high = policy_intervals(data, ["fasb"], ["mc2"])["fasb"]["mc2"]
    assert low <= mean <= high
