"""Reading data files with errors that say where and what.

Every loader reports bad input as a :class:`DataError` naming the file, the place in it
(``row 12``: the 12th data row after the header; ``line 7``: a line of a line-based
file; ``item id=41``) and what was expected. Nothing is skipped silently.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path


class DataError(ValueError):
    """A data file is missing, unreadable or not in the expected format."""

    def __init__(self, path: str | Path, message: str, *, where: str | None = None) -> None:
        self.path = Path(path)
        self.where = where
        location = f"{self.path}" + (f", {where}" if where else "")
        super().__init__(f"{location}: {message}")


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file or folder that was named does not exist."""


def require_file(path: str | Path, what: str) -> Path:
    """``path`` as a ``Path``, or a :class:`DataFileNotFoundError` saying what was wanted."""
    path = Path(path)
    if not path.is_file():
        kind = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataFileNotFoundError(path, f"{kind}; expected {what}")
    return path


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        kind = "is a file, not a folder" if path.is_file() else "does not exist"
        raise DataFileNotFoundError(path, f"{kind}; expected {what}")
    return path


def read_text(path: str | Path, what: str) -> str:
    """The whole file as text, decoded as UTF-8 (a leading byte-order mark is dropped)."""
    path = require_file(path, what)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            path,
            f"is not UTF-8 text (undecodable byte 0x{raw[error.start]:02x}); "
            "re-save the file as UTF-8",
            where=f"line {line}",
        ) from None


def read_lines(path: str | Path, what: str) -> list[str]:
    """The file's non-blank lines, stripped; a file without any raises :class:`DataError`."""
    lines = [line.strip() for line in read_text(path, what).splitlines() if line.strip()]
    if not lines:
        raise DataError(path, f"holds no lines; expected {what}")
    return lines


def read_csv_rows(
    path: str | Path,
    what: str,
    *,
    required: Sequence[str],
    delimiter: str = ",",
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(row_number, row)`` for each data row of a CSV/TSV file with a header.

    Checks that every column in ``required`` is in the header and that no row has more
    or fewer fields than the header; row numbers start at 1 after the header.
    """
    text = read_text(path, what)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise DataError(path, f"is empty; expected {what} with a header row")
    header = [name.strip() for name in header]
    missing = [name for name in required if name not in header]
    if missing:
        raise DataError(
            path,
            f"missing column(s) {missing}; expected {list(required)} (found {header})",
            where="header",
        )
    for number, fields in enumerate(reader, start=1):
        if not fields or all(not field.strip() for field in fields):
            raise DataError(path, "empty row; remove it", where=f"row {number}")
        if len(fields) != len(header):
            raise DataError(
                path,
                f"has {len(fields)} fields but the header has {len(header)}",
                where=f"row {number}",
            )
        yield number, dict(zip(header, fields, strict=True))


def require_value(path: Path, where: str, row: dict[str, str], column: str) -> str:
    """The stripped value of ``column``, or a :class:`DataError` if it is empty."""
    value = row.get(column, "").strip()
    if not value:
        raise DataError(path, f"field {column!r} is empty", where=where)
    return value


def check_unique_ids(path: str | Path, ids: Iterable[str]) -> None:
    """Raise a :class:`DataError` naming the first id that occurs twice."""
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise DataError(path, f"duplicate id {item_id!r}; ids must be unique")
        seen.add(item_id)
