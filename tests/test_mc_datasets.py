"""Multiple-choice datasets: prompt formats, option scoring and the per-dataset evaluation.

Formats are checked on small hand-made items, scoring against a naive full forward per
option on the tiny Llama, and the evaluation end to end (with resuming) on synthetic
SST-2-like items. The real-data test reads ``FASB_LENS_DATA`` and skips without it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fasb_lens.data.mc import (
    DATASETS,
    NLI_OPTIONS,
    SST2_OPTIONS,
    format_description,
    labelled_option_prompts,
    load_copa,
    load_mmlu,
    load_nli,
    load_sst2,
    load_winogrande,
    option_prompts,
)
from fasb_lens.data.schema import MultipleChoiceItem
from fasb_lens.evaluation.mc_dataset import evaluate_dataset
from fasb_lens.evaluation.mc_items import predict, score_item
from fasb_lens.evaluation.mc_suite import write_tables
from fasb_lens.evaluation.uncertainty import accuracy_uncertainty
from fasb_lens.models import forward, tokenize
from fasb_lens.policies import PolicySettings, Unsteered
from fasb_lens.scoring import AnswerScore, PrefixScorer
from fasb_lens.splits import holdout_split

COPA = MultipleChoiceItem(
    id="copa-1",
    dataset="copa",
    context="The man broke his toe.",
    options=("He dropped a hammer on his foot.", "I got a hole in my sock."),
    label=0,
    question="cause",
)
NLI = MultipleChoiceItem(
    id="nli-1",
    dataset="nli",
    context="A dog runs in the park.",
    options=NLI_OPTIONS,
    label=0,
    question="An animal is outside.",
)
MMLU = MultipleChoiceItem(
    id="mmlu-1",
    dataset="mmlu",
    context="What is 2 + 2?",
    options=("3", "4", "5", "22"),
    label=1,
    extra={"subject": "elementary_mathematics"},
)
SST2 = MultipleChoiceItem(
    id="sst2-1", dataset="sst2", context="a gorgeous , witty film .", options=SST2_OPTIONS, label=1
)
WINOGRANDE = MultipleChoiceItem(
    id="wg-1",
    dataset="winogrande",
    context="Sarah was a better surgeon than Maria so _ got the easier cases.",
    options=("Sarah", "Maria"),
    label=1,
)
STORY_CLOZE = MultipleChoiceItem(
    id="sc-1",
    dataset="story_cloze",
    context="Tom was hungry. He opened the fridge. It was empty. He sighed.",
    options=("He ordered a pizza.", "He was full."),
    label=0,
)
ITEMS = (COPA, NLI, MMLU, SST2, WINOGRANDE, STORY_CLOZE)


# --- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            COPA,
            [
                ("The man broke his toe because", " he dropped a hammer on his foot."),
                ("The man broke his toe because", " I got a hole in my sock."),
            ],
        ),
        (
            NLI,
            [
                (
                    "A dog runs in the park.\nQuestion: An animal is outside. "
                    "True, False or Neither?\nAnswer:",
                    answer,
                )
                for answer in (" True", " Neither", " False")
            ],
        ),
        (
            MMLU,
            [
                (
                    "The following is a question about elementary mathematics.\n\n"
                    "Question: What is 2 + 2?\nAnswer:",
                    answer,
                )
                for answer in (" 3", " 4", " 5", " 22")
            ],
        ),
        (
            SST2,
            [
                ("Review: a gorgeous , witty film .\nSentiment:", " negative"),
                ("Review: a gorgeous , witty film .\nSentiment:", " positive"),
            ],
        ),
        (
            WINOGRANDE,
            [
                ("Sarah was a better surgeon than Maria so Sarah", " got the easier cases."),
                ("Sarah was a better surgeon than Maria so Maria", " got the easier cases."),
            ],
        ),
        (
            STORY_CLOZE,
            [
                (STORY_CLOZE.context, " He ordered a pizza."),
                (STORY_CLOZE.context, " He was full."),
            ],
        ),
    ],
    ids=lambda value: value.dataset if isinstance(value, MultipleChoiceItem) else "",
)
def test_option_prompts(item: MultipleChoiceItem, expected: list[tuple[str, str]]) -> None:
    assert option_prompts(item) == expected
    assert item.dataset in DATASETS and format_description(item.dataset)


def test_copa_effect_and_nli_option_order() -> None:
    effect = MultipleChoiceItem(
        id="copa-2",
        dataset="copa",
        context="The sun rose.",
        options=("Birds sang.", "I'm awake."),
        label=0,
        question="effect",
    )
    assert option_prompts(effect) == [
        ("The sun rose so", " birds sang."),
        ("The sun rose so", " I'm awake."),
    ]
    reordered = MultipleChoiceItem(
        id="nli-2", dataset="nli", context="p", options=NLI_OPTIONS[::-1], label=0, question="h"
    )
    assert [cont for _, cont in option_prompts(reordered)] == [" False", " Neither", " True"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (MultipleChoiceItem("x", "squad", "c", ("a", "b"), 0), "unknown dataset 'squad'"),
        (MultipleChoiceItem("x", "copa", "c.", ("a", "b"), 0, question="why"), "asks for 'why'"),
        (MultipleChoiceItem("x", "nli", "c", ("yes", "no"), 0, question="h"), "has options"),
        (MultipleChoiceItem("x", "mmlu", "q", ("a", "b"), 0), "no extra\\['subject'\\]"),
        (MultipleChoiceItem("x", "winogrande", "no blank", ("a", "b"), 0), "one '_' blank"),
        (MultipleChoiceItem("x", "winogrande", "It was _ ", ("a", "b"), 0), "nothing after"),
    ],
)
def test_option_prompts_refuses_bad_items(item: MultipleChoiceItem, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        option_prompts(item)


def test_labelled_option_prompts() -> None:
    prompts = labelled_option_prompts([COPA, MMLU])
    assert [p.label for p in prompts] == [1, 0, 0, 1, 0, 0]
    assert [p.group for p in prompts] == ["copa-1"] * 2 + ["mmlu-1"] * 4
    assert prompts[0].text == "The man broke his toe because he dropped a hammer on his foot."
    assert prompts[0].answer == COPA.options[0]
    assert [p.answer for p in prompts[2:]] == list(MMLU.options)


def test_predict_sums_and_breaks_ties_first() -> None:
    scores = [AnswerScore("a", -2.0, 1), AnswerScore("b", -1.0, 5), AnswerScore("c", -1.0, 1)]
    assert predict(scores) == 1
    with pytest.raises(ValueError, match="no scores"):
        predict([])


# --- scoring ------------------------------------------------------------------------------


def naive_log_prob(model, prefix: str, continuation: str) -> float:
    """Full forward of prefix + continuation: the summed log-prob of the continuation."""
    prefix_ids = tokenize(model, [prefix])[0]
    cont_ids = tokenize(model, [continuation], prepend_bos=False)[0]
    with torch.inference_mode():
        logits = forward(model, torch.tensor([prefix_ids + cont_ids]))
    log_probs = torch.log_softmax(logits[0].float(), dim=-1)
    start = len(prefix_ids) - 1
    return sum(float(log_probs[start + t, token]) for t, token in enumerate(cont_ids))


@pytest.mark.parametrize("item", [COPA, NLI, WINOGRANDE], ids=lambda item: item.dataset)
def test_score_item_equals_naive_forward(tiny_llama, monkeypatch, item) -> None:
    built: list[str] = []
    original_init = PrefixScorer.__init__

    def counting_init(self, model, prefix, **kwargs) -> None:
        built.append(prefix)
        original_init(self, model, prefix, **kwargs)

    monkeypatch.setattr(PrefixScorer, "__init__", counting_init)
    scores = score_item(tiny_llama, item, Unsteered())
    pairs = option_prompts(item)
    assert len(built) == len({prefix for prefix, _ in pairs})  # one scorer per distinct prefix
    for (prefix, continuation), score in zip(pairs, scores, strict=True):
        assert score.answer == continuation
        assert score.log_prob == pytest.approx(
            naive_log_prob(tiny_llama, prefix, continuation), abs=1e-4
        )


# --- evaluation ---------------------------------------------------------------------------

WORDS = {
    0: ("dull", "boring", "bad", "awful", "weak"),
    1: ("great", "witty", "good", "lovely", "fine"),
}


def sst2_items(n: int) -> list[MultipleChoiceItem]:
    """Synthetic reviews: odd items use positive words, even items negative ones."""
    return [
        MultipleChoiceItem(
            id=f"sst2-{index}",
            dataset="sst2",
            context=f"a {WORDS[index % 2][index % 5]} film , {WORDS[index % 2][index // 5 % 5]}",
            options=SST2_OPTIONS,
            label=index % 2,
        )
        for index in range(n)
    ]


RECORD_KEYS = ("dataset", "item_id", "policy", "prediction", "label", "correct")
RECORD_KEYS += ("log_probs", "triggered")
POLICIES = ("none", "fixed", "fasb")
SETTINGS = PolicySettings(alpha=2.0, threshold=0.6, backtrack_tokens=1)


def count_score_calls(monkeypatch) -> list[int]:
    """Every scoring of a prefix's options (alone or with others), as it starts."""
    calls: list[int] = []
    original = PrefixScorer.steps

    def counting(self, cont_ids, policies, texts):
        calls.append(len(cont_ids))
        return original(self, cont_ids, policies, texts)

    monkeypatch.setattr(PrefixScorer, "steps", counting)
    return calls


def test_evaluate_dataset_and_resume(tiny_llama, monkeypatch, tmp_path, small_searches) -> None:
    items = sst2_items(40)
    records: list[dict] = []

    def run(**kwargs) -> dict:
        with small_searches({"fixed": (1.0, 4.0), "fasb": (1.0, 4.0)}):
            return evaluate_dataset(
                tiny_llama,
                items,
                policies=POLICIES,
                settings=SETTINGS,
                top_k=4,
                progress=False,
                calibration_dir=tmp_path,
                **kwargs,
            )

    result = run(on_item=records.append)
    chosen = result["calibration"]
    assert set(chosen["strengths"]["mc"]) == {"fasb", "fixed"} and chosen["items"] == 4
    assert 0.0 <= chosen["thresholds"]["mc"] <= 1.0 and (tmp_path / "sst2.json").is_file()
    split = holdout_split([item.id for item in items], seed=0)
    val = [item for item in items if item.id in split.val]
    plain = [predict(score_item(tiny_llama, item)) == item.label for item in val]
    assert chosen["unsteered"]["accuracy"] == pytest.approx(sum(plain) / len(plain))
    for name, kept in chosen["fluency"]["mc"].items():  # each choice within the budget
        assert 0.0 <= kept["kl"] <= kept["max_kl"] == 0.5
        assert chosen["evaluations"]["mc"][name] > 0
    calls = count_score_calls(monkeypatch)
    assert (result["n_train"], result["n_val"], result["n_test"]) == (16, 4, 20)
    assert result["dataset"] == "sst2" and len(result["anchored_heads"]) == 4
    assert 0.0 <= result["best_val_accuracy"] <= 1.0 and 0.5 <= result["val_majority"] <= 1.0
    assert set(result["accuracy"]) == set(POLICIES)
    assert all(0.0 <= accuracy <= 1.0 for accuracy in result["accuracy"].values())
    assert len(records) == result["n_test"] * len(POLICIES)
    for name in POLICIES:
        mine = [r for r in records if r["policy"] == name]
        assert result["accuracy"][name] == sum(r["correct"] for r in mine) / len(mine)
    for name in POLICIES:  # the accuracy's interval and the per-item hits it rests on
        low, high = result["ci95"][name]
        assert low <= result["accuracy"][name] <= high
        hits = {r["item_id"]: r["correct"] for r in records if r["policy"] == name}
        assert result["correct"][name] == [int(hits[i]) for i in result["test_ids"]]
    stated = {(c["a"], c["b"]): c for c in result["comparisons"]}
    assert {("fixed", "none"), ("fasb", "none"), ("fasb", "fixed")} <= set(stated)
    fasb = stated[("fasb", "none")]
    assert fasb["difference"] == pytest.approx(
        result["accuracy"]["fasb"] - result["accuracy"]["none"]
    )
    assert fasb["test"] == "exact McNemar" and 0 < fasb["p"] <= 1
    first = records[0]
    assert set(first) == set(RECORD_KEYS)
    assert len(first["log_probs"]) == len(first["triggered"]) == 2

    calls.clear()
    again: list[dict] = []
    done = {(r["item_id"], r["policy"]): r for r in records}
    resumed = run(on_item=again.append, done=done)
    assert calls == [] and again == []  # the calibration is read back, nothing is scored
    assert resumed["accuracy"] == result["accuracy"]


def test_suite_tables_give_intervals_and_comparisons(tmp_path) -> None:
    """The table shows each accuracy with its interval, the average's from items
    resampled within their dataset; the comparisons name the dataset; a summary written
    before per-item hits still gives its table, without intervals."""
    hits = {
        "a": {"none": [1, 0] * 50, "fasb": [1] * 100},
        "b": {"none": [0] * 60, "fasb": [0] * 60},
    }
    results = {}
    for name, correct in hits.items():
        floats = {p: [float(h) for h in v] for p, v in correct.items()}
        results[name] = {
            "n_test": len(correct["none"]),
            "accuracy": {p: sum(v) / len(v) for p, v in correct.items()},
            "test_ids": [f"{name}{i}" for i in range(len(correct["none"]))],
            "correct": correct,
            **accuracy_uncertainty(floats),
        }
    write_tables(tmp_path, results, ("none", "fasb"))
    table = (tmp_path / "mc_datasets.md").read_text()
    assert "| a | 100 | 50.0 [" in table and "| 100.0 [100.0, 100.0] |" in table
    assert "| average |  | 25.0 [" in table and "| 50.0 [" in table  # (100 + 0) / 2
    assert (tmp_path / "mc_datasets.csv").read_text().splitlines()[1] == "a,100,0.5,1.0"
    rows = (tmp_path / "mc_datasets_comparisons.csv").read_text().splitlines()
    assert rows[0].startswith("dataset,a,b,metric,difference (pp)")
    assert any(r.startswith("a,fasb,none,accuracy,+50.0,") and "fasb above none" in r for r in rows)
    assert any(r.startswith("b,fasb,none,accuracy,+0.0,") for r in rows)
    assert any(r.startswith("average,fasb,none,accuracy,+25.0,") for r in rows)
    for result in results.values():
        del result["correct"], result["ci95"], result["comparisons"]
    write_tables(tmp_path, results, ("none", "fasb"))
    assert "| a | 100 | 50.0 | 100.0 |" in (tmp_path / "mc_datasets.md").read_text()


def test_a_tight_fluency_budget_keeps_the_strengths_weak(tiny_llama, small_searches) -> None:
    with small_searches({"fixed": (1.0, 4.0), "fasb": (1.0, 4.0)}):
        result = evaluate_dataset(
            tiny_llama,
            sst2_items(40),
            policies=POLICIES,
            settings=SETTINGS,
            top_k=4,
            progress=False,
            max_kl=1e-4,
        )
    chosen = result["calibration"]
    for name, kept in chosen["fluency"]["mc"].items():
        assert kept["kl"] <= 1e-4 and kept["max_kl"] == 1e-4
        assert chosen["strengths"]["mc"][name] < 1.0  # below the whole start grid


def test_evaluate_dataset_limit_and_partial_resume(tiny_llama, monkeypatch) -> None:
    items = sst2_items(40)
    records: list[dict] = []
    options = {"policies": ["none"], "top_k": 2, "limit": 30, "seed": 1, "progress": False}
    options["calibrate"] = False
    result = evaluate_dataset(tiny_llama, items, on_item=records.append, **options)
    assert result["n_train"] + result["n_val"] + result["n_test"] == 30
    calls = count_score_calls(monkeypatch)
    done = {(r["item_id"], r["policy"]): r for r in records[:5]}
    rest: list[dict] = []
    evaluate_dataset(tiny_llama, items, on_item=rest.append, done=done, **options)
    assert len(calls) == len(rest) == len(records) - 5
    assert rest == records[5:]


def test_evaluate_dataset_refuses_bad_input(tiny_llama) -> None:
    with pytest.raises(ValueError, match="no items"):
        evaluate_dataset(tiny_llama, [], policies=POLICIES)
    with pytest.raises(ValueError, match="mix several datasets"):
        evaluate_dataset(tiny_llama, [SST2, COPA], policies=POLICIES)
    with pytest.raises(ValueError, match="no policies"):
        evaluate_dataset(tiny_llama, sst2_items(10), policies=[])


def test_holdout_split() -> None:
    ids = [item.id for item in sst2_items(20)]
    split = holdout_split(ids, seed=3)
    assert (len(split.train), len(split.val), len(split.test)) == (8, 2, 10)
    for side in (split.train, split.val, split.test):
        assert list(side) == sorted(side, key=ids.index)
    assert holdout_split(ids, seed=3) == split and holdout_split(ids, seed=4) != split
    with pytest.raises(ValueError, match="cannot be split"):
        holdout_split(ids[:2], seed=0)
    with pytest.raises(ValueError, match="test_fraction"):
        holdout_split(ids, seed=0, test_fraction=1.0)
    with pytest.raises(ValueError, match="unique"):
        holdout_split([SST2.id, SST2.id], seed=0)


# --- real data ----------------------------------------------------------------------------

REAL_LOADERS: dict[str, Callable[[Path], list[MultipleChoiceItem]]] = {
    "copa": lambda root: load_copa(root / "copa" / "copa-test.xml"),
    "snli": lambda root: load_nli(root / "snli" / "test.tsv"),
    "mmlu": lambda root: load_mmlu(root / "mmlu"),
    "sst2": lambda root: load_sst2(root / "sst2" / "stsa.binary.test"),
    "winogrande": lambda root: load_winogrande(root / "winogrande" / "dev.jsonl"),
}


@pytest.mark.parametrize("name", list(REAL_LOADERS))
def test_option_prompts_on_real_data(data_dir: Path, name: str) -> None:
    for item in REAL_LOADERS[name](data_dir):
        pairs = option_prompts(item)
        assert len(pairs) == len(item.options)
        assert all(prefix and cont.startswith(" ") and cont.strip() for prefix, cont in pairs)
    assert format_description(item.dataset)
