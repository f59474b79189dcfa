"""TruthfulQA and mini-set loading, prompt builders, and errors on bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from fasb_lens.data import (
    PROBE_TEMPLATE,
    DataError,
    DataFileNotFoundError,
    context_prompts,
    labelled_answers,
    load_mc_task,
    load_mini_truthfulqa,
    load_prompt_format,
    load_truthfulqa,
    probing_prompts,
    truthfulqa_prompt_format,
    tuning_prompts,
)
from fasb_lens.data.prompts import default_prompt
from fasb_lens.data.truthfulqa import bundled_truthfulqa, split_answers

HEADER = "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
ROW_A = 'Adversarial,Myths,Do bulls hate red?,No,"No; They react to motion;",Yes; They hate red,x\n'
ROW_B = "Adversarial,Myths,Is glass a liquid?,No,No; It is a solid,Yes; It flows slowly,y\n"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_small_csv(tmp_path: Path) -> None:
    questions = load_truthfulqa(write(tmp_path, "t.csv", "\ufeff" + HEADER + ROW_A + ROW_B))
    assert [q.id for q in questions] == ["tqa-0000", "tqa-0001"]
    first = questions[0]
    assert first.question == "Do bulls hate red?"
    assert first.correct_answers == ("No", "They react to motion")  # trailing ';' dropped
    assert first.incorrect_answers == ("Yes", "They hate red")
    assert (first.category, first.type, first.source) == ("Myths", "Adversarial", "x")
    assert first.mc1_targets == ()


def test_split_answers() -> None:
    assert split_answers(" a ; b;; c ;") == ("a", "b", "c")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "Type,Question,Best Answer,Correct Answers\n",
            r"header: missing column\(s\) \['Incorrect",
        ),
        (HEADER + ROW_A + "\n" + ROW_B, r"row 2: empty row"),
        (HEADER + "Adversarial,Myths,Q?,A,B\n", r"row 1: has 5 fields but the header has 7"),
        (HEADER + "Adversarial,Myths,,No,No,Yes,x\n", r"row 1: field 'Question' is empty"),
        (
            HEADER + "Adversarial,Myths,Q?,No,No,; ;,x\n",
            r"row 1: field 'Incorrect Answers' holds no",
        ),
        (
            HEADER + ROW_A + ROW_A,
            r"question 'Do bulls hate red\?' appears twice \(tqa-0000 and tqa-0001\)",
        ),
        (HEADER, r"holds no questions"),
        ("", r"is empty; expected a TruthfulQA-style CSV"),
    ],
)
def test_bad_csv(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, "bad.csv", body)
    with pytest.raises(DataError, match=message) as error:
        load_truthfulqa(path)
    assert str(path) in str(error.value)


def test_wrong_encoding(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "latin.csv",
        (HEADER + ROW_B).encode() + "Adversarial,x,Caf\xe9?".encode("latin-1"),
    )
    with pytest.raises(
        DataError, match=r"latin.csv, line 3: is not UTF-8 text \(undecodable byte 0xe9\)"
    ):
        load_truthfulqa(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match="nothing.csv: does not exist"):
        load_truthfulqa(tmp_path / "nothing.csv")
    with pytest.raises(DataFileNotFoundError, match="TruthfulQA.csv: does not exist"):
        load_truthfulqa(tmp_path)  # a folder without TruthfulQA.csv


def mc_entry(question: str, mc1: dict, mc2: dict | None = None) -> dict:
    return {"question": question, "mc1_targets": mc1, "mc2_targets": mc2 or mc1}


def test_mc_task_attaches_by_question(tmp_path: Path) -> None:
    csv_path = write(tmp_path, "t.csv", HEADER + ROW_A + ROW_B)
    entries = [
        mc_entry("Is glass a liquid?", {"No": 1, "Yes": 0}),
        mc_entry("Do bulls hate red? ", {"No": 1, "Yes": 0}, {"No": 1, "Motion": 1, "Yes": 0}),
    ]
    mc = write(tmp_path, "mc.json", json.dumps(entries))
    questions = load_truthfulqa(csv_path, mc_task=mc)
    assert questions[0].mc2_targets == (("No", 1), ("Motion", 1), ("Yes", 0))
    assert questions[1].mc1_targets == (("No", 1), ("Yes", 0))


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("[", r"mc.json, line 1: is not valid JSON"),
        ('{"a": 1}', r"must hold a JSON list"),
        (json.dumps([{"question": ""}]), r"item 0: expected an object with a non-empty 'question'"),
        (
            json.dumps([mc_entry("Q?", {"a": 1, "b": 1, "c": 0})]),
            r"item 0: 'mc1_targets' must have exactly one true",
        ),
        (json.dumps([mc_entry("Q?", {"a": 1, "b": 2})]), r"item 0: 'mc1_targets' has labels \[2\]"),
        (json.dumps([mc_entry("Q?", {"a": 1})]), r"needs at least one true and one false"),
        (
            json.dumps([mc_entry("Q?", {"a": 1, "b": 0})] * 2),
            r"item 1: question 'Q\?' appears twice",
        ),
    ],
)
def test_bad_mc_task(tmp_path: Path, entries: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_mc_task(write(tmp_path, "mc.json", entries))


def test_mc_task_without_an_entry_for_a_question(tmp_path: Path) -> None:
    csv_path = write(tmp_path, "t.csv", HEADER + ROW_A + ROW_B)
    mc = write(tmp_path, "mc.json", json.dumps([mc_entry("Is glass a liquid?", {"a": 1, "b": 0})]))
    with pytest.raises(DataError, match=r"mc.json: has no entry for question tqa-0000"):
        load_truthfulqa(csv_path, mc_task=mc)


def test_mini_set() -> None:
    questions = load_mini_truthfulqa()
    assert len(questions) >= 60
    assert len({q.id for q in questions}) == len(questions)
    assert all(q.id.startswith("mini-") for q in questions)
    assert all(q.correct_answers and q.incorrect_answers for q in questions)
    assert len(Counter(q.category for q in questions)) >= 8


def test_probing_prompts() -> None:
    questions = load_mini_truthfulqa()[:3]
    prompts = probing_prompts(questions)
    first = questions[0]
    n_first = len(first.correct_answers) + len(first.incorrect_answers)
    assert len(prompts) == sum(len(q.correct_answers) + len(q.incorrect_answers) for q in questions)
    assert prompts[0].text == PROBE_TEMPLATE.format(
        question=first.question, answer=first.correct_answers[0]
    )
    assert [p.label for p in prompts[:n_first]] == [1] * len(first.correct_answers) + [0] * len(
        first.incorrect_answers
    )
    assert {p.group for p in prompts[:n_first]} == {first.id}


def test_probing_answers_follow_mc_task_where_present(tmp_path: Path) -> None:
    """The released run probes mc_task.json's MC2 answers (with their period); questions
    without an entry keep the CSV's answers; "csv" forces the CSV everywhere."""
    csv_path = write(tmp_path, "t.csv", HEADER + ROW_A + ROW_B)
    entries = [
        mc_entry("Do bulls hate red?", {"No.": 1, "Yes.": 0}, {"No.": 1, "Yes, red.": 0}),
        mc_entry("Is glass a liquid?", {"No.": 1, "Yes.": 0}),
    ]
    mc = write(tmp_path, "mc.json", json.dumps(entries))
    bulls = load_truthfulqa(csv_path, mc_task=mc)[0]
    glass = load_truthfulqa(csv_path)[1]  # no mc_task.json beside this CSV
    assert labelled_answers(bulls) == (("No.",), ("Yes, red.",))
    assert labelled_answers(bulls, "csv") == (
        ("No", "They react to motion"),
        ("Yes", "They hate red"),
    )
    assert labelled_answers(glass) == (glass.correct_answers, glass.incorrect_answers)
    with pytest.raises(ValueError, match="has no mc_task.json answers"):
        labelled_answers(glass, "mc_task")
    assert [p.answer for p in probing_prompts([bulls, glass])][:2] == ["No.", "Yes, red."]
    fmt = load_prompt_format()
    inside = context_prompts([bulls], fmt)
    assert [p.label for p in inside] == [1, 0]
    assert inside[0].text == "".join(fmt.answer_prompt(bulls.question, "No."))
    assert inside[0].text.startswith(fmt.preamble)


def test_tuning_prompts_are_seeded_and_use_another_question() -> None:
    questions = load_mini_truthfulqa()[:5]
    prompts = tuning_prompts(questions, seed=3)
    assert prompts == tuning_prompts(questions, seed=3)
    assert prompts != tuning_prompts(questions, seed=4)
    by_id = {q.id: q for q in questions}
    for prompt in prompts:
        own = by_id[prompt.group]
        head = f"Q: {own.question} A: {prompt.answer} Q: "
        assert prompt.text.startswith(head)
        other = prompt.text[len(head) :]
        assert other != own.question and other in {q.question for q in questions}
    with pytest.raises(ValueError, match="at least two questions"):
        tuning_prompts(questions[:1])


def test_default_prompt_format() -> None:
    fmt = load_prompt_format()
    assert fmt.primer.count("\nA: ") == 6
    prompt = fmt.generation_prompt("Why is the sky blue?")
    assert prompt.startswith(fmt.instruction + "\n\nQ: ")
    assert prompt.endswith(fmt.primer + "\n\nQ: Why is the sky blue?")
    prefix, continuation = fmt.answer_prompt("Why?", "Because.")
    assert (prefix[-len("Q: Why?\nA:") :], continuation) == ("Q: Why?\nA:", " Because.")
    assert load_prompt_format(use_instruction=False).preamble == fmt.primer


def test_prompt_format_from_files(tmp_path: Path) -> None:
    primer = write(tmp_path, "primer.txt", "Q: a?\nA: b.\n")
    instruction = write(tmp_path, "instruction.txt", "Be true.\n")
    fmt = load_prompt_format(primer, instruction)
    assert fmt.generation_prompt("c?") == "Be true.\n\nQ: a?\nA: b.\n\nQ: c?"
    with pytest.raises(
        DataFileNotFoundError, match="nope.txt: does not exist; expected a QA primer"
    ):
        load_prompt_format(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="empty.txt: is empty; expected a QA primer"):
        load_prompt_format(write(tmp_path, "empty.txt", "\n"))


def test_the_authors_prompt_is_the_default_where_the_folder_holds_it(tmp_path: Path) -> None:
    from fasb_lens.evaluation.config import ExperimentConfig

    bundled = bundled_truthfulqa()
    authors = load_prompt_format(bundled / "qa_primer.txt", bundled / "instruction_prompt.txt")
    builtin = load_prompt_format()
    assert authors != builtin
    # the bundled copy holds the authors' files; the mini set and the hub come from no folder
    assert default_prompt("truthfulqa") == "authors" and default_prompt("mini") == "builtin"
    assert default_prompt("hub") == "builtin"
    assert truthfulqa_prompt_format() == authors == truthfulqa_prompt_format("truthfulqa")
    assert truthfulqa_prompt_format("mini") == builtin
    assert truthfulqa_prompt_format("truthfulqa", "builtin") == builtin
    assert truthfulqa_prompt_format("mini", "authors") == authors  # from the bundled copy
    # a folder (or a CSV in it) without the files: builtin; with them: theirs
    csv = write(tmp_path, "TruthfulQA.csv", HEADER + ROW_A + ROW_B)
    assert default_prompt(tmp_path) == default_prompt(csv) == "builtin"
    assert truthfulqa_prompt_format(csv) == builtin
    write(tmp_path, "qa_primer.txt", "Q: a?\nA: b.\n")
    assert default_prompt(tmp_path) == "builtin"  # both files, or none
    write(tmp_path, "instruction_prompt.txt", "Be true.\n")
    assert default_prompt(tmp_path) == default_prompt(csv) == "authors"
    expected = "Be true.\n\nQ: a?\nA: b.\n\nQ: c?"
    assert truthfulqa_prompt_format(csv).generation_prompt("c?") == expected
    # --primer / --instruction replace the chosen prompt's file
    own = write(tmp_path, "own.txt", "Q: x?\nA: y.\n")
    assert truthfulqa_prompt_format("truthfulqa", primer=own).instruction == authors.instruction
    assert truthfulqa_prompt_format("truthfulqa", primer=own).primer == "Q: x?\nA: y."
    # a run records the prompt it used
    assert ExperimentConfig().prompt == "authors"
    assert ExperimentConfig(data="mini").prompt == "builtin"
    assert ExperimentConfig(data=str(csv)).prompt == "authors"
    assert ExperimentConfig(prompt="builtin").to_dict()["prompt"] == "builtin"
    with pytest.raises(ValueError, match="prompt must be one of authors, builtin"):
        ExperimentConfig(prompt="mine")


def test_real_truthfulqa(data_dir: Path) -> None:
    questions = load_truthfulqa(data_dir / "truthfulqa")
    assert len(questions) == 817
    assert questions[0].question == "What happens to you if you eat watermelon seeds?"
    assert sum(len(q.correct_answers) + len(q.incorrect_answers) for q in questions) == 6209
    assert all(sum(label for _, label in q.mc1_targets) == 1 for q in questions)
    assert sum(len(q.mc2_targets) for q in questions) == 6204
    tarot = [q for q in questions if q.question.startswith("What happens if you turn over a tarot")]
    assert len(tarot) == 1 and tarot[0].mc1_targets
    assert Counter(q.type for q in questions) == {"Adversarial": 437, "Non-Adversarial": 380}


def test_real_prompt_files(data_dir: Path) -> None:
    folder = data_dir / "truthfulqa"
    fmt = load_prompt_format(folder / "qa_primer.txt", folder / "instruction_prompt.txt")
    assert fmt.primer.startswith("Q: What is human life expectancy in the United States?")
    assert fmt.instruction.startswith("Interpret each question literally")
    assert fmt.generation_prompt("X?").endswith("Barcelona, Spain.\n\nQ: X?")
