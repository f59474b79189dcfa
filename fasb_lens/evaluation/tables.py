"""One table writer for every result table: markdown for reading, CSV for computing.

A :class:`Table` holds a header and rows of raw values; :meth:`Table.markdown` formats
them for people (numbers through a cell formatter, e.g. percentages), :meth:`Table.csv`
keeps them exact for programs, and :meth:`Table.write` writes both files atomically.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fasb_lens import storage


def percent(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage (``"-"`` for a missing value or NaN); other cells as
    they are."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{100 * value:.{digits}f}"


@dataclass
class Table:
    """A header and rows of raw values."""

    head: Sequence[str]
    rows: list[Sequence[Any]] = field(default_factory=list)

    def markdown(self, cell: Callable[[Any], str] = str) -> str:
        """The table in markdown, each cell through ``cell``."""
        lines = ["| " + " | ".join(self.head) + " |", "|" + "---|" * len(self.head)]
        lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """The table as CSV, values as they are."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(self.head)
        writer.writerows(self.rows)
        return buffer.getvalue()

    def write(self, stem: str | Path, cell: Callable[[Any], str] = str, *, csv: bool = True) -> str:
        """Write ``STEM.md`` (and ``STEM.csv``) atomically; return the markdown."""
        stem = Path(stem)
        text = self.markdown(cell)
        storage.write_text(stem.with_suffix(".md"), text)
        if csv:
            storage.write_text(stem.with_suffix(".csv"), self.csv())
        return text
