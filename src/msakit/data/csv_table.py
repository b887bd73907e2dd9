"""The one strict reader of user CSV tables (``label.csv``).

A row with more fields than the header (typically an unquoted comma in a transcript) or fewer
is refused with the file and line, never shifted into the wrong columns. ``train`` and
``extract`` read ``label.csv`` through here, so they accept the same files and split names.
"""

from __future__ import annotations

import csv
from pathlib import Path

from msakit.data.dataset import DataError

#: ``mode`` values of label.csv (case-insensitive) -> split name.
SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "dev": "valid",
                 "test": "test"}


def split_of_mode(mode: str, where: str) -> str | None:
    """The split named by a ``mode`` cell (``None`` for an empty one); refuses unknown names."""
    text = mode.strip().lower()
    if not text:
        return None
    if text not in SPLIT_ALIASES:
        raise DataError(f"{where}: mode {mode!r}; expected train, valid (val, dev) or test")
    return SPLIT_ALIASES[text]


def read_table(path: str | Path, required: tuple[str, ...]
               ) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Read a CSV file with a header row, strictly.

    Args:
        path: the file (UTF-8, optional BOM).
        required: columns that must be present.

    Returns:
        The stripped column names and the rows as ``(line number, {column: stripped cell})``;
        the line number is where the row starts (the header is line 1). Blank lines are skipped.

    Raises:
        DataError: unreadable file, missing or duplicate columns, or a row whose number of fields
            differs from the header's, naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not a regular file, expected a CSV table")
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file, expected a header row "
                                f"({', '.join(required)})")
            columns = [c.strip() for c in header]
            duplicated = sorted({c for c in columns if columns.count(c) > 1})
            if duplicated:
                raise DataError(f"{path}: column(s) {duplicated} appear twice in the header")
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}; found {columns} "
                                f"(expected {', '.join(required)})")
            line = reader.line_num
            for fields in reader:
                start, line = line + 1, reader.line_num
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                if len(fields) != len(columns):
                    more = len(fields) > len(columns)
                    raise DataError(
                        f"{path}: line {start}: {len(fields)} fields for {len(columns)} columns "
                        + ("(an unquoted comma in a transcript? put the text in double quotes)"
                           if more else "(fields missing)"))
                rows.append((start, {c: f.strip() for c, f in zip(columns, fields)}))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err})") from err
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from err
    return columns, rows
