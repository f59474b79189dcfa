"""What the dataset modules share: file readers that yield records, and prompt helpers.

A reader turns one file format (CSV/TSV, JSON lines, plain lines) into :class:`Record`
objects, so that each dataset only maps fields to a :class:`MultipleChoiceItem`, and
every error names the file and the row, line or item it comes from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fasb_lens.data._files import (
    DataError,
    check_unique_ids,
    read_csv_rows,
    read_text,
    require_value,
)
from fasb_lens.data.schema import MultipleChoiceItem

OptionPrompt = tuple[str, str]
"""``(prefix, continuation)``: the model reads the prefix; only the continuation is scored."""

FIRST_OR_SECOND = {"1": 0, "2": 1}
"""Answer ``"1"``/``"2"`` to option index, for two-option datasets."""


@dataclass(frozen=True)
class Record:
    """One row, line or item of a data file, as field name to text."""

    path: Path
    where: str
    number: int
    fields: dict[str, str]

    def error(self, message: str) -> DataError:
        return DataError(self.path, message, where=self.where)

    def value(self, key: str) -> str:
        """The stripped, non-empty value of ``key``."""
        if key not in self.fields:
            raise self.error(f"has no field {key!r} (found {sorted(self.fields)})")
        return require_value(self.path, self.where, self.fields, key)

    def label(self, key: str, accepted: Mapping[str, int]) -> int:
        """The option index that the value of ``key`` stands for."""
        value = self.value(key)
        if value not in accepted:
            raise self.error(f"field {key!r} is {value!r}; expected one of {list(accepted)}")
        return accepted[value]


# --- readers: each yields the records of one file format ----------------------------------


def csv_records(
    path: Path, what: str, required: Sequence[str], delimiter: str = ","
) -> Iterator[Record]:
    for number, row in read_csv_rows(path, what, required=required, delimiter=delimiter):
        yield Record(path, f"row {number}", number, row)


def first_line(path: Path, what: str) -> str:
    return read_text(path, what).split("\n", 1)[0].rstrip("\r")


def lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)``; blank lines are allowed only at the end of the file."""
    all_lines = [line.rstrip("\r") for line in read_text(path, what).split("\n")]
    while all_lines and not all_lines[-1].strip():
        all_lines.pop()
    for number, line in enumerate(all_lines, start=1):
        if not line.strip():
            raise DataError(path, "blank line; remove it", where=f"line {number}")
        yield number, line


def _json_text(value: object) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value)


def jsonl_records(path: Path, what: str) -> Iterator[Record]:
    for number, line in lines(path, what):
        where = f"line {number}"
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError as error:
            message = f"is not valid JSON ({error.msg}); expected {what}"
            raise DataError(path, message, where=where) from None
        if not isinstance(parsed, dict):
            raise DataError(path, f"is a JSON {type(parsed).__name__}, not an object", where=where)
        fields = {key: _json_text(value) for key, value in parsed.items()}
        yield Record(path, where, number, fields)


def finish(path: Path, what: str, items: list[MultipleChoiceItem]) -> list[MultipleChoiceItem]:
    """``items``, after checking that there is at least one and that ids are unique."""
    if not items:
        raise DataError(path, f"contains no items; expected {what}")
    check_unique_ids(path, (item.id for item in items))
    return items


# --- prompt helpers -----------------------------------------------------------------------


def same_prefix(prefix: str, answers: Sequence[str]) -> list[OptionPrompt]:
    """One shared prefix, each answer scored as ``" " + answer``."""
    return [(prefix, " " + answer) for answer in answers]
