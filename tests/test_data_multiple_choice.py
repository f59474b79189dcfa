"""Multiple-choice loaders and their registry: small files written here, then the real data.

The real-data tests read the folder named by ``FASB_LENS_DATA`` (see its README.md) and
are skipped when it is not set.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import pytest

from fasb_lens.data._files import DataError, DataFileNotFoundError
from fasb_lens.data.mc import (
    DATASETS,
    MultipleChoiceDataset,
    dataset,
    format_description,
    labelled_option_prompts,
    load_copa,
    load_mmlu,
    load_multiple_choice,
    load_nli,
    load_sst2,
    load_story_cloze,
    load_winogrande,
    option_prompts,
    register,
)
from fasb_lens.data.schema import MultipleChoiceItem


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(folder: Path, name: str, records: list[dict[str, object]]) -> Path:
    return write(folder, name, "".join(json.dumps(record) + "\n" for record in records))


def raises_at(path: Path, where: str | None, detail: str) -> AbstractContextManager[object]:
    """Expect a DataError that names ``path``, the place ``where`` and matches ``detail``."""
    location = f"{path}, {where}: " if where else f"{path}: "
    return pytest.raises(DataError, match=re.escape(location) + ".*" + detail)


# --- COPA ---------------------------------------------------------------------------------

COPA_ITEM = (
    '<item id="{id}" asks-for="{asks}" most-plausible-alternative="{answer}">'
    "<p>{premise}</p><a1>{a1}</a1><a2>{a2}</a2></item>"
)


def copa_xml(*items: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE copa-corpus SYSTEM "copa.dtd">\n'
        '<copa-corpus version="1.0">\n' + "\n".join(items) + "\n</copa-corpus>\n"
    )


def copa_item(item_id: str = "1", asks: str = "cause", answer: str = "1", **texts: str) -> str:
    fields = {"premise": "The man fell.", "a1": "He slipped.", "a2": "He sang."} | texts
    return COPA_ITEM.format(id=item_id, asks=asks, answer=answer, **fields)


def test_copa_reads_items(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "copa.xml",
        copa_xml(
            copa_item("7"),
            copa_item("8", "effect", "2", premise="It rained.", a1="Dust.", a2="Wet <b>grass</b>."),
        ),
    )
    items = load_copa(path)
    assert items == [
        MultipleChoiceItem(
            id="copa-7",
            dataset="copa",
            context="The man fell.",
            options=("He slipped.", "He sang."),
            label=0,
            question="cause",
        ),
        MultipleChoiceItem(
            id="copa-8",
            dataset="copa",
            context="It rained.",
            options=("Dust.", "Wet grass."),
            label=1,
            question="effect",
        ),
    ]
    assert items[1].answer == "Wet grass."


@pytest.mark.parametrize(
    ("item", "where", "detail"),
    [
        (copa_item("3", answer="3"), "item id=3", "'most-plausible-alternative' is '3'"),
        (copa_item("3", answer="one"), "item id=3", "'most-plausible-alternative' is 'one'"),
        (copa_item("3", asks="reason"), "item id=3", "asks-for is 'reason'"),
        (copa_item("3", premise=" "), "item id=3", "field 'p' is empty"),
        (
            copa_item("3").replace("<a2>He sang.</a2>", ""),
            "item id=3",
            "has no field 'a2'",
        ),
        (
            '<item asks-for="cause" most-plausible-alternative="1"><p>P</p><a1>A</a1><a2>B</a2>'
            "</item>",
            "item 1",
            "has no field 'id'",
        ),
    ],
)
def test_copa_rejects_bad_items(tmp_path: Path, item: str, where: str, detail: str) -> None:
    path = write(tmp_path, "copa.xml", copa_xml(item))
    with raises_at(path, where, detail):
        load_copa(path)


def test_copa_rejects_malformed_xml(tmp_path: Path) -> None:
    path = write(tmp_path, "copa.xml", copa_xml(copa_item("1")).replace("</p>", "</q>"))
    with raises_at(path, "line 4", "not well-formed XML"):
        load_copa(path)


def test_copa_rejects_wrong_root_empty_corpus_and_duplicates(tmp_path: Path) -> None:
    wrong_root = write(tmp_path, "wrong.xml", "<corpus></corpus>")
    with raises_at(wrong_root, None, "root element is <corpus>"):
        load_copa(wrong_root)
    empty = write(tmp_path, "empty.xml", copa_xml())
    with raises_at(empty, None, "contains no items"):
        load_copa(empty)
    twice = write(tmp_path, "twice.xml", copa_xml(copa_item("4"), copa_item("4")))
    with raises_at(twice, None, "duplicate id 'copa-4'"):
        load_copa(twice)


def test_copa_rejects_missing_file_and_wrong_encoding(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match="copa.xml.*does not exist"):
        load_copa(tmp_path / "copa.xml")
    latin = tmp_path / "latin.xml"
    latin.write_bytes(copa_xml(copa_item("1", premise="Caf\u00e9.")).encode("latin-1"))
    with raises_at(latin, "line 4", "is not UTF-8"):
        load_copa(latin)


# --- NLI ----------------------------------------------------------------------------------

SNLI_TSV = (
    "premise\thypothesis\tlabel\n"
    'A man says "hi".\tA man speaks.\t0\n'
    '"A ""quoted"" dog."\tA cat.\t2\n'
    "Kids play.\tKids are outside.\t1\n"
)


def test_nli_reads_snli_tsv_with_csv_quoting(tmp_path: Path) -> None:
    items = load_nli(write(tmp_path, "test.tsv", SNLI_TSV))
    assert [item.id for item in items] == ["nli-test-1", "nli-test-2", "nli-test-3"]
    assert [item.context for item in items] == [
        'A man says "hi".',
        'A "quoted" dog.',
        "Kids play.",
    ]
    assert [item.question for item in items] == ["A man speaks.", "A cat.", "Kids are outside."]
    assert [item.label for item in items] == [0, 2, 1]
    assert items[0].options == ("entailment", "neutral", "contradiction")
    assert {item.dataset for item in items} == {"nli"}


def test_nli_drops_no_consensus_rows_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path,
        "mnli.txt",
        "gold_label\tsentence1\tsentence2\tpromptID\tpairID\n"
        "neutral\tP1\tH1\t10\t10n\n"
        "-\tP2\tH2\t11\t11e\n"
        "contradiction\tP3\tH3\t12\t12c\n"
        "-\tP4\tH4\t13\t13n\n",
    )
    with caplog.at_level(logging.WARNING):
        items = load_nli(path)
    assert [(item.id, item.label) for item in items] == [("10n", 1), ("12c", 2)]
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dropped 2 pair(s)" in warnings[0].getMessage()
    assert str(path) in warnings[0].getMessage()


XNLI_TSV = (
    "language\tgold_label\tsentence1\tsentence2\tpairID\n"
    "en\tentailment\tA dog runs.\tAn animal moves.\t1\n"
    "de\tentailment\tEin Hund rennt.\tEin Tier bewegt sich.\t1\n"
    "de\tneutral\tEin Kind lacht.\tEs ist froh.\t2\n"
)


def test_nli_filters_xnli_by_language(tmp_path: Path) -> None:
    path = write(tmp_path, "xnli.dev.tsv", XNLI_TSV)
    german = load_nli(path, language="de")
    assert [(item.id, item.context, item.label) for item in german] == [
        ("1-de", "Ein Hund rennt.", 0),
        ("2-de", "Ein Kind lacht.", 1),
    ]
    assert [item.id for item in load_nli(path)] == ["1-en", "1-de", "2-de"]
    with raises_at(path, None, re.escape("no pairs in language 'fr'; it has ['de', 'en']")):
        load_nli(path, language="fr")


def test_nli_language_filter_needs_a_language_column(tmp_path: Path) -> None:
    path = write(tmp_path, "test.tsv", SNLI_TSV)
    with raises_at(path, "header", r"missing column\(s\) \['language'\]"):
        load_nli(path, language="en")


def test_nli_reads_jsonl_in_both_key_sets(tmp_path: Path) -> None:
    mnli = write_jsonl(
        tmp_path,
        "dev.jsonl",
        [
            {"sentence1": "P1", "sentence2": "H1", "gold_label": "contradiction", "pairID": "9c"},
            {"sentence1": "P2", "sentence2": "H2", "gold_label": "-", "pairID": "9n"},
        ],
    )
    assert [(item.id, item.context, item.question, item.label) for item in load_nli(mnli)] == [
        ("9c", "P1", "H1", 2)
    ]
    exported = write_jsonl(
        tmp_path,
        "snli.jsonl",
        [
            {"premise": "P1", "hypothesis": "H1", "label": 1},
            {"premise": "P2", "hypothesis": "H2", "label": -1},
            {"premise": "P3", "hypothesis": "H3", "label": 0},
        ],
    )
    assert [(item.id, item.label) for item in load_nli(exported)] == [
        ("nli-snli-1", 1),
        ("nli-snli-3", 0),
    ]


@pytest.mark.parametrize(
    ("text", "where", "detail"),
    [
        ("premise\thypothesis\tlabel\nP\tH\t0\nP\tH\tmaybe\n", "row 2", "'label' is 'maybe'"),
        ("premise\thypothesis\tlabel\nP\tH\t3\n", "row 1", "'label' is '3'"),
        ("premise\thypothesis\tlabel\nP\tH\n", "row 1", "has 2 fields but the header has 3"),
        ("premise\thypothesis\tlabel\nP\t \t0\n", "row 1", "field 'hypothesis' is empty"),
        ("premise\thypothesis\tlabel\nP\tH\t0\n\t\t\n", "row 2", "empty row"),
        ("text\thypothesis\tlabel\nP\tH\t0\n", "header", "neither set of NLI columns"),
    ],
)
def test_nli_rejects_bad_tsv(tmp_path: Path, text: str, where: str, detail: str) -> None:
    path = write(tmp_path, "bad.tsv", text)
    with raises_at(path, where, detail):
        load_nli(path)


@pytest.mark.parametrize(
    ("text", "where", "detail"),
    [
        (
            '{"premise": "P", "hypothesis": "H", "label": 0}\n{"premise": "P",\n',
            "line 2",
            "not valid JSON",
        ),
        ('["P", "H", 0]\n', "line 1", "is a JSON list, not an object"),
        (
            '{"premise": "P", "hypothesis": "H", "label": 0}\n\n{"premise": "P"}\n',
            "line 2",
            "blank line",
        ),
        ('{"premise": "P", "hypo": "H", "label": 0}\n', "line 1", "neither set of NLI columns"),
        ('{"premise": "P", "hypothesis": "H", "label": 5}\n', "line 1", "'label' is '5'"),
        ('{"premise": null, "hypothesis": "H", "label": 0}\n', "line 1", "'premise' is empty"),
    ],
)
def test_nli_rejects_bad_jsonl(tmp_path: Path, text: str, where: str, detail: str) -> None:
    path = write(tmp_path, "bad.jsonl", text)
    with raises_at(path, where, detail):
        load_nli(path)


def test_nli_rejects_empty_all_dropped_and_duplicate_files(tmp_path: Path) -> None:
    header_only = write(tmp_path, "empty.tsv", "premise\thypothesis\tlabel\n")
    with raises_at(header_only, None, "contains no items"):
        load_nli(header_only)
    all_dropped = write(tmp_path, "dropped.tsv", "sentence1\tsentence2\tgold_label\nP\tH\t-\n")
    with raises_at(all_dropped, None, "contains no items"):
        load_nli(all_dropped)
    twice = write(
        tmp_path,
        "twice.tsv",
        "sentence1\tsentence2\tgold_label\tpairID\n" + ("P\tH\tneutral\t5n\n" * 2),
    )
    with raises_at(twice, None, "duplicate id '5n'"):
        load_nli(twice)
    with pytest.raises(DataFileNotFoundError, match="missing.tsv.*does not exist"):
        load_nli(tmp_path / "missing.tsv")


def test_nli_rejects_wrong_encoding(tmp_path: Path) -> None:
    path = tmp_path / "latin.tsv"
    path.write_bytes("premise\thypothesis\tlabel\nP\tH\t0\nCaf\u00e9\tH\t1\n".encode("latin-1"))
    with raises_at(path, "line 3", "is not UTF-8"):
        load_nli(path)


# --- MMLU ---------------------------------------------------------------------------------

MMLU_HEADER = "question,choice0,choice1,choice2,choice3,answer\n"


def make_mmlu_root(root: Path) -> Path:
    write(
        root,
        "test/astronomy_test.csv",
        MMLU_HEADER + 'What is "Sol"?,A star,A moon,"A planet, big",Gas,0\n',
    )
    write(root, "test/anatomy_test.csv", MMLU_HEADER + "Q1,a,b,c,d,3\nQ2,a,b,c,d,1\n")
    write(root, "dev/anatomy_dev.csv", "Dev question,w,x,y,z,C\n")
    return root


def test_mmlu_reads_root_folder_in_name_order(tmp_path: Path) -> None:
    items = load_mmlu(make_mmlu_root(tmp_path))
    assert [item.id for item in items] == [
        "mmlu-anatomy-1",
        "mmlu-anatomy-2",
        "mmlu-astronomy-1",
    ]
    assert [item.label for item in items] == [3, 1, 0]
    assert items[2] == MultipleChoiceItem(
        id="mmlu-astronomy-1",
        dataset="mmlu",
        context='What is "Sol"?',
        options=("A star", "A moon", "A planet, big", "Gas"),
        label=0,
        extra={"subject": "astronomy"},
    )


def test_mmlu_reads_headerless_letter_format_and_split(tmp_path: Path) -> None:
    items = load_mmlu(make_mmlu_root(tmp_path), split="dev")
    assert [(item.id, item.context, item.options, item.label) for item in items] == [
        ("mmlu-anatomy-1", "Dev question", ("w", "x", "y", "z"), 2)
    ]


def test_mmlu_reads_a_folder_of_csv_files(tmp_path: Path) -> None:
    root = make_mmlu_root(tmp_path)
    assert len(load_mmlu(root / "test")) == 3
    plain = write(tmp_path, "plain/virology.csv", "Q,a,b,c,d,D\n").parent
    assert [item.id for item in load_mmlu(plain)] == ["mmlu-virology-1"]
    assert load_mmlu(plain)[0].extra == {"subject": "virology"}


def test_mmlu_filters_subjects(tmp_path: Path) -> None:
    root = make_mmlu_root(tmp_path)
    assert [item.id for item in load_mmlu(root, subjects=["astronomy"])] == ["mmlu-astronomy-1"]
    assert len(load_mmlu(root, subjects="anatomy")) == 2
    with raises_at(
        root / "test", None, re.escape("unknown MMLU subject(s) ['anatomyy']; available: ")
    ):
        load_mmlu(root, subjects=["anatomyy"])


@pytest.mark.parametrize(
    ("text", "where", "detail"),
    [
        (MMLU_HEADER + "Q,a,b,c,d,4\n", "row 1", "'answer' is '4'"),
        (MMLU_HEADER + "Q,a,b,c,d,0\nQ,a,b,c,d,B\n", "row 2", "'answer' is 'B'"),
        ("Q,a,b,c,d,2\n", "row 1", "'answer' is '2'"),
        (MMLU_HEADER + "Q,a,b,c,0\n", "row 1", "has 5 fields; expected 6"),
        (MMLU_HEADER + "Q,a,,c,d,0\n", "row 1", "field 'choice1' is empty"),
        (MMLU_HEADER + "Q,a,b,c,d,0\n\n", "row 2", "empty row"),
        (MMLU_HEADER, None, "has no rows"),
        ("", None, "has no rows"),
    ],
)
def test_mmlu_rejects_bad_files(tmp_path: Path, text: str, where: str | None, detail: str) -> None:
    path = write(tmp_path, "test/anatomy_test.csv", text)
    with raises_at(path, where, detail):
        load_mmlu(tmp_path)


def test_mmlu_rejects_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match="nothing.*does not exist"):
        load_mmlu(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with raises_at(tmp_path / "empty", None, "no test/ subfolder and no CSV files"):
        load_mmlu(tmp_path / "empty")


def test_mmlu_rejects_wrong_encoding(tmp_path: Path) -> None:
    path = tmp_path / "test" / "anatomy_test.csv"
    path.parent.mkdir()
    path.write_bytes((MMLU_HEADER + "Caf\u00e9?,a,b,c,d,0\n").encode("latin-1"))
    with raises_at(path, "line 2", "is not UTF-8"):
        load_mmlu(tmp_path)


# --- SST-2 --------------------------------------------------------------------------------


def test_sst2_reads_stsa_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "stsa.binary.test", "0 a dull film .\n1 crème brûlée of a movie .\n\n")
    items = load_sst2(path)
    assert items == [
        MultipleChoiceItem(
            id="sst2-stsa.binary.test-1",
            dataset="sst2",
            context="a dull film .",
            options=("negative", "positive"),
            label=0,
        ),
        MultipleChoiceItem(
            id="sst2-stsa.binary.test-2",
            dataset="sst2",
            context="crème brûlée of a movie .",
            options=("negative", "positive"),
            label=1,
        ),
    ]


def test_sst2_reads_glue_tsv(tmp_path: Path) -> None:
    path = write(tmp_path, "dev.tsv", "sentence\tlabel\nit 's great \t1\nnot good \t0\n")
    assert [(item.id, item.context, item.label) for item in load_sst2(path)] == [
        ("sst2-dev.tsv-1", "it 's great", 1),
        ("sst2-dev.tsv-2", "not good", 0),
    ]


@pytest.mark.parametrize(
    ("text", "where", "detail"),
    [
        ("0 fine\n\n1 good\n", "line 2", "blank line"),
        ("0 fine\n2 good\n", "line 2", "'label' is '2'"),
        ("0 fine\n1good\n", "line 2", "expected '<label> <sentence>'"),
        ("0 fine\nx good\n", "line 2", "'label' is 'x'"),
        ("0 fine\n1    \n", "line 2", "field 'sentence' is empty"),
        ("sentence\tlabel\nfine\t0\ngood\tyes\n", "row 2", "'label' is 'yes'"),
        ("index\tsentence\n0\tfine\n", "header", r"missing column\(s\) \['label'\]"),
    ],
)
def test_sst2_rejects_bad_lines(tmp_path: Path, text: str, where: str, detail: str) -> None:
    path = write(tmp_path, "stsa.binary.dev", text)
    with raises_at(path, where, detail):
        load_sst2(path)


def test_sst2_rejects_empty_missing_and_undecodable_files(tmp_path: Path) -> None:
    empty = write(tmp_path, "empty", "\n")
    with raises_at(empty, None, "contains no items"):
        load_sst2(empty)
    with pytest.raises(DataFileNotFoundError, match="stsa.binary.test.*does not exist"):
        load_sst2(tmp_path / "stsa.binary.test")
    latin = tmp_path / "latin"
    latin.write_bytes("0 fine\n1 caf\u00e9\n".encode("latin-1"))
    with raises_at(latin, "line 2", "is not UTF-8"):
        load_sst2(latin)


# --- Winogrande ---------------------------------------------------------------------------


def winogrande_record(qid: str = "q-1", **fields: str) -> dict[str, object]:
    record = {
        "qID": qid,
        "sentence": "Ann gave Bea a gift because _ was kind.",
        "option1": "Ann",
        "option2": "Bea",
        "answer": "1",
    }
    return record | fields


def test_winogrande_reads_items(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path, "dev.jsonl", [winogrande_record(), winogrande_record("q-2", answer="2")]
    )
    items = load_winogrande(path)
    assert items[0] == MultipleChoiceItem(
        id="q-1",
        dataset="winogrande",
        context="Ann gave Bea a gift because _ was kind.",
        options=("Ann", "Bea"),
        label=0,
    )
    assert [(item.id, item.label) for item in items] == [("q-1", 0), ("q-2", 1)]


@pytest.mark.parametrize(
    ("record", "detail"),
    [
        (winogrande_record(sentence="Ann gave Bea a gift."), "sentence has 0 '_' blanks"),
        (winogrande_record(sentence="_ gave _ a gift."), "sentence has 2 '_' blanks"),
        (winogrande_record(answer="3"), "'answer' is '3'"),
        (winogrande_record(option2=""), "field 'option2' is empty"),
        (
            {"qID": "q-2", "sentence": "A _ b.", "option1": "x", "answer": "1"},
            "has no field 'option2'",
        ),
    ],
)
def test_winogrande_rejects_bad_records(
    tmp_path: Path, record: dict[str, object], detail: str
) -> None:
    path = write_jsonl(tmp_path, "dev.jsonl", [winogrande_record(), record])
    with raises_at(path, "line 2", detail):
        load_winogrande(path)


def test_winogrande_rejects_malformed_duplicate_and_empty_files(tmp_path: Path) -> None:
    malformed = write(tmp_path, "bad.jsonl", json.dumps(winogrande_record()) + "\n{qID: 1}\n")
    with raises_at(malformed, "line 2", "not valid JSON"):
        load_winogrande(malformed)
    twice = write_jsonl(tmp_path, "twice.jsonl", [winogrande_record(), winogrande_record()])
    with raises_at(twice, None, "duplicate id 'q-1'"):
        load_winogrande(twice)
    empty = write(tmp_path, "empty.jsonl", "")
    with raises_at(empty, None, "contains no items"):
        load_winogrande(empty)


# --- Story Cloze --------------------------------------------------------------------------

STORY_CLOZE_HEADER = (
    "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
    "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n"
)


def test_story_cloze_reads_items(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "cloze_test.csv",
        STORY_CLOZE_HEADER
        + 'id-1,Tom woke.,He ate.,"He ran, fast.",He slept.,He was tired.,He flew.,1\n'
        + "id-2,A.,B.,C.,D.,E1.,E2.,2\n",
    )
    items = load_story_cloze(path)
    assert items[0] == MultipleChoiceItem(
        id="id-1",
        dataset="story_cloze",
        context="Tom woke. He ate. He ran, fast. He slept.",
        options=("He was tired.", "He flew."),
        label=0,
    )
    assert (items[1].id, items[1].label, items[1].answer) == ("id-2", 1, "E2.")


@pytest.mark.parametrize(
    ("row", "detail"),
    [
        ("id-2,A.,B.,C.,D.,E1.,E2.,3\n", "'AnswerRightEnding' is '3'"),
        ("id-2,A.,B.,,D.,E1.,E2.,1\n", "field 'InputSentence3' is empty"),
        ("id-2,A.,B.,C.,D.,E1.,1\n", "has 7 fields but the header has 8"),
        (",,,,,,,\n", "empty row"),
        ("id-1,A.,B.,C.,D.,E1.,E2.,1\n", None),
    ],
)
def test_story_cloze_rejects_bad_rows(tmp_path: Path, row: str, detail: str | None) -> None:
    path = write(tmp_path, "cloze.csv", STORY_CLOZE_HEADER + "id-1,A.,B.,C.,D.,E1.,E2.,1\n" + row)
    if detail is None:
        with raises_at(path, None, "duplicate id 'id-1'"):
            load_story_cloze(path)
    else:
        with raises_at(path, "row 2", detail):
            load_story_cloze(path)


def test_story_cloze_rejects_missing_columns_and_empty_files(tmp_path: Path) -> None:
    missing = write(tmp_path, "missing.csv", STORY_CLOZE_HEADER.replace(",AnswerRightEnding", ""))
    with raises_at(missing, "header", r"missing column\(s\) \['AnswerRightEnding'\]"):
        load_story_cloze(missing)
    empty = write(tmp_path, "empty.csv", STORY_CLOZE_HEADER)
    with raises_at(empty, None, "contains no items"):
        load_story_cloze(empty)


# --- by name ------------------------------------------------------------------------------


def test_load_multiple_choice_dispatches_by_name(tmp_path: Path) -> None:
    assert DATASETS.names() == ("copa", "nli", "mmlu", "sst2", "winogrande", "story_cloze")
    root = make_mmlu_root(tmp_path)
    items = load_multiple_choice("mmlu", root, split="dev")
    assert [item.id for item in items] == ["mmlu-anatomy-1"]
    sst2 = write(tmp_path, "stsa.binary.dev", "1 fine .\n")
    assert load_multiple_choice("sst2", sst2)[0].label == 1


def test_load_multiple_choice_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"unknown multiple-choice dataset 'boolq'; known: copa, nli"
    ):
        load_multiple_choice("boolq", tmp_path)


def test_registry_lists_the_six_datasets() -> None:
    assert DATASETS.names() == ("copa", "nli", "mmlu", "sst2", "winogrande", "story_cloze")
    for entry in DATASETS:
        assert dataset(entry.name) is entry
        assert format_description(entry.name) == entry.description and entry.description
    assert {entry.name: entry.default_path for entry in DATASETS} == {
        "copa": "copa/copa-test.xml",
        "nli": "snli/test.tsv",
        "mmlu": "mmlu",
        "sst2": "sst2/stsa.binary.test",
        "winogrande": "winogrande/dev.jsonl",
        "story_cloze": None,
    }
    assert dataset("storycloze") is DATASETS["story_cloze"]


def test_registry_rejects_unknown_and_taken_names() -> None:
    known = r"known: copa, nli, mmlu, sst2, winogrande, story_cloze, storycloze \(= story_cloze\)"
    for lookup in (dataset, format_description):
        with pytest.raises(ValueError, match=r"unknown multiple-choice dataset 'boolq'; " + known):
            lookup("boolq")
    copa = DATASETS["copa"]
    with pytest.raises(ValueError, match="a multiple-choice dataset named 'copa' is already"):
        register(copa)
    clash = replace(copa, name="other", aliases=("storycloze",))
    with pytest.raises(ValueError, match="named 'storycloze' is already registered"):
        register(clash)
    assert DATASETS.names() == ("copa", "nli", "mmlu", "sst2", "winogrande", "story_cloze")


def load_toy(path: str | Path, *, upper: bool = False) -> list[MultipleChoiceItem]:
    """A toy format: one ``question|option|option|answer index`` per line."""
    items = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        question, *options, answer = line.split("|")
        options = [option.upper() if upper else option for option in options]
        items.append(
            MultipleChoiceItem(f"toy-{number}", "toy", question, tuple(options), int(answer))
        )
    return items


def toy_prompts(item: MultipleChoiceItem) -> list[tuple[str, str]]:
    return [(f"Q: {item.context}\nA:", " " + option) for option in item.options]


def test_a_new_dataset_registers_from_a_test(tmp_path: Path) -> None:
    path = write(tmp_path, "toy.txt", "Sky colour?|blue|green|0\nGrass colour?|blue|green|1\n")
    toy = MultipleChoiceDataset(
        name="toy",
        load=load_toy,
        option_prompts=toy_prompts,
        description='Toy: "Q: {question}\\nA:", scoring " {option}"',
        aliases=("toy-set",),
    )
    assert register(toy) is toy
    try:
        assert DATASETS.names()[-1] == "toy" and dataset("toy-set") is toy
        items = load_multiple_choice("toy-set", path, upper=True)
        assert [(item.id, item.options, item.label) for item in items] == [
            ("toy-1", ("BLUE", "GREEN"), 0),
            ("toy-2", ("BLUE", "GREEN"), 1),
        ]
        assert option_prompts(items[1]) == [
            ("Q: Grass colour?\nA:", " BLUE"),
            ("Q: Grass colour?\nA:", " GREEN"),
        ]
        prompts = labelled_option_prompts(items)
        assert [(p.text, p.label, p.group) for p in prompts[2:]] == [
            ("Q: Grass colour?\nA: BLUE", 0, "toy-2"),
            ("Q: Grass colour?\nA: GREEN", 1, "toy-2"),
        ]
        assert format_description("toy").startswith("Toy:")
    finally:
        DATASETS.unregister("toy")
    assert "toy" not in DATASETS
    with pytest.raises(ValueError, match="unknown dataset 'toy'"):
        option_prompts(items[0])


# --- real data (FASB_LENS_DATA) -----------------------------------------------------------


def label_counts(items: list[MultipleChoiceItem]) -> list[int]:
    counts = Counter(item.label for item in items)
    return [counts[label] for label in range(max(counts) + 1)]


@pytest.mark.parametrize("file", ["copa-test.xml", "copa-dev.xml"])
def test_real_copa(data_dir: Path, file: str) -> None:
    items = load_copa(data_dir / "copa" / file)
    assert len(items) == 500
    assert label_counts(items) == [250, 250]
    assert Counter(item.question for item in items) == {"cause": 250, "effect": 250}


def test_real_copa_test_ids(data_dir: Path) -> None:
    items = load_copa(data_dir / "copa" / "copa-test.xml")
    assert (items[0].id, items[-1].id) == ("copa-501", "copa-1000")
    assert items[0].context == "The item was packaged in bubble wrap."


@pytest.mark.parametrize(
    ("file", "counts"),
    [("test.tsv", [3368, 3219, 3237]), ("validation.tsv", [3329, 3235, 3278])],
)
def test_real_snli(data_dir: Path, file: str, counts: list[int]) -> None:
    items = load_nli(data_dir / "snli" / file)
    assert len(items) == sum(counts)
    assert label_counts(items) == counts
    assert sum('"' in item.context + item.question for item in items) > 0


def test_real_mmlu_test(data_dir: Path) -> None:
    items = load_mmlu(data_dir / "mmlu")
    assert len(items) == 14042
    subjects = Counter(item.extra["subject"] for item in items)
    assert len(subjects) == 57
    assert subjects["professional_law"] == 1534
    assert label_counts(items) == [3222, 3462, 3582, 3776]


def test_real_mmlu_dev(data_dir: Path) -> None:
    items = load_mmlu(data_dir / "mmlu", split="dev")
    assert len(items) == 285
    assert set(Counter(item.extra["subject"] for item in items).values()) == {5}


def test_real_sst2(data_dir: Path) -> None:
    assert label_counts(load_sst2(data_dir / "sst2" / "stsa.binary.test")) == [912, 909]
    assert label_counts(load_sst2(data_dir / "sst2" / "stsa.binary.dev")) == [428, 444]


def test_real_winogrande(data_dir: Path) -> None:
    items = load_winogrande(data_dir / "winogrande" / "dev.jsonl")
    assert len(items) == 1267
    assert label_counts(items) == [628, 639]
