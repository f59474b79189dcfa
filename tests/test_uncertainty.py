"""Per-question values, intervals and comparisons of a run, on records built by hand."""

from __future__ import annotations

import pytest

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
    assert data.values("fasb_random", "mc1") == {(0, "q1"): [0.5]}
    assert data.values("fasb_random", "mc2")[(0, "q1")] == [pytest.approx(0.6)]


def test_judge_pairs_pair_truth_with_information_and_skip_unjudged() -> None:
    judgements = [
        verdict("none", "bleu-acc", 1, True, None),
        verdict("none", "info-check", 1, None, False),
        verdict("none", "bleu-acc", 2, None, None),  # the judge failed on this answer
        verdict("none", "info-check", 2, None, True),
    ]
    data = QuestionValues.of_run([], judgements)
    assert data.values("none", "bleu-acc x info-check: true_x_info") == {(1, "q1"): [1.0, 0.0]}
    assert data.values("none", "bleu-acc x info-check: info") == {
        (1, "q1"): [0.0],
        (0, "q2"): [1.0],
    }


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
    assert values["chance"] == {(0, "q1"): {"mc1": 1 / 3, "mc2": 0.5, "mc3": 1 / 3}}
    blind = values["fewest words"][(0, "q1")]
    assert blind["mc1"] == 1.0  # 2 words against 8 and 3
    assert blind["mc3"] == 0.5  # the 6-word true answer loses to "You get sick"
    assert blind["mc2"] == pytest.approx(
        (2.718281828**-2 + 2.718281828**-6)
        / (2.718281828**-2 + 2.718281828**-6 + 2.718281828**-8 + 2.718281828**-3),
        rel=1e-6,
    )
    summary = summarize_references([record])
    assert summary["chance"]["mean"]["mc2"] == 0.5 and summary["chance"]["n_mc"] == 1
