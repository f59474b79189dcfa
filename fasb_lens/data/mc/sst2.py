"""SST-2: is a movie-review sentence negative or positive?

The prompt shows the review and scores the words " negative" and " positive".
"""

from __future__ import annotations

from pathlib import Path

from fasb_lens.data._files import DataError, require_file
from fasb_lens.data.mc._common import (
    OptionPrompt,
    Record,
    csv_records,
    finish,
    first_line,
    lines,
    same_prefix,
)
from fasb_lens.data.mc.registry import MultipleChoiceDataset, register
from fasb_lens.data.schema import MultipleChoiceItem

SST2_OPTIONS = ("negative", "positive")
SST2_TEMPLATE = "Review: {sentence}\nSentiment:"

_SST2_LABELS = {"0": 0, "1": 1}
_SST2_TSV_COLUMNS = ("sentence", "label")

_SST2_WHAT = "an SST-2 file ('<label> <sentence>' lines, or a GLUE TSV with sentence, label)"


def load_sst2(path: str | Path) -> list[MultipleChoiceItem]:
    """Load an SST-2 file: ``stsa.binary.*`` lines or a GLUE SST-2 TSV.

    In ``stsa.binary.*`` each line is ``<label> <sentence>``: the label ``0`` (negative)
    or ``1`` (positive), one space, the sentence. A GLUE TSV has the header
    ``sentence<TAB>label``. Each example becomes an item with
    ``id="sst2-{file name}-{line or row}"``, ``context`` the sentence,
    ``options=("negative", "positive")`` and ``label`` 0 or 1.
    """
    path = require_file(path, _SST2_WHAT)
    if "sentence" in first_line(path, _SST2_WHAT).split("\t"):
        records = csv_records(path, _SST2_WHAT, _SST2_TSV_COLUMNS, delimiter="\t")
    else:
        records = (
            _sst2_line_record(path, number, line) for number, line in lines(path, _SST2_WHAT)
        )
    return finish(path, _SST2_WHAT, [_sst2_item(record) for record in records])


def _sst2_line_record(path: Path, number: int, line: str) -> Record:
    where = f"line {number}"
    if len(line) < 3 or line[1] != " ":
        raise DataError(
            path, f"is {line[:40]!r}; expected '<label> <sentence>' with label 0 or 1", where=where
        )
    return Record(path, where, number, {"label": line[0], "sentence": line[2:]})


def _sst2_item(record: Record) -> MultipleChoiceItem:
    return MultipleChoiceItem(
        id=f"sst2-{record.path.name}-{record.number}",
        dataset="sst2",
        context=record.value("sentence"),
        options=SST2_OPTIONS,
        label=record.label("label", _SST2_LABELS),
    )


def _option_prompts(item: MultipleChoiceItem) -> list[OptionPrompt]:
    return same_prefix(SST2_TEMPLATE.format(sentence=item.context), item.options)


register(
    MultipleChoiceDataset(
        name="sst2",
        load=load_sst2,
        option_prompts=_option_prompts,
        description='SST-2: "Review: {sentence}\\nSentiment:", scoring " negative" / " positive"',
        default_path="sst2/stsa.binary.test",
    )
)
