"""Raw split files as tables: strict decoding and the CSV / JSON-lines readers, before any validation.

A raw file becomes a :class:`RawTable`: its columns and its rows of values, each row with its 1-based location
(``row N``: the Nth CSV data record; ``line N``: the Nth line of a JSONL file). Every problem raises
:class:`DataError` naming the file and the row or line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsum.errors import KdsumError

CSV_EXTENSIONS = frozenset({".csv"})
JSONL_EXTENSIONS = frozenset({".jsonl", ".json", ".ndjson"})

Rows = list[tuple[int, dict[str, Any]]]  # (1-based data row / line, values)


class DataError(KdsumError, ValueError):
    """Raw data refused; the message names the file and, where relevant, row/fname/column."""


@dataclass
class RawTable:
    """A raw file as columns + rows of optional strings, before any validation."""

    path: Path
    fmt: str  # "csv" | "jsonl"
    encoding: str
    sha256: str
    columns: list[str]
    rows: Rows
    unit: str  # "row" (CSV data row) or "line" (JSONL line)


def decode(data: bytes, path: Path) -> tuple[str, str]:
    """Decode strictly: UTF-8 (BOM optional), else CP949 (a superset of EUC-KR), else refuse."""
    try:
        return data.decode("utf-8-sig"), ("utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp949"), "cp949"
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}: cannot decode file as UTF-8 or CP949 (bad byte 0x{data[exc.start]:02x} "
            f"at byte offset {exc.start}, line {line})"
        ) from None


def _csv_header(reader: Any, path: Path) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file (no CSV header)") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV header (line {reader.line_num}): {exc}") from None
    columns = [c.strip() for c in header]
    dupes = sorted({c for c in columns if c and columns.count(c) > 1})
    if dupes:
        raise DataError(f"{path}: malformed CSV header: duplicate column(s) {', '.join(dupes)}")
    return columns


def read_csv_text(text: str, path: Path) -> tuple[list[str], Rows]:
    # newline="" lets csv see the raw line ends, so CRLF inside quoted fields is kept
    # (and normalised later) instead of being mangled.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    columns = _csv_header(reader, path)
    rows: Rows = []
    row_no = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{path}: malformed CSV at data row {row_no + 1} (line {reader.line_num}): {exc}") from None
        if not fields:  # blank line between records
            continue
        row_no += 1
        if len(fields) != len(columns):
            raise DataError(
                f"{path}: malformed CSV: data row {row_no} (ending at line {reader.line_num}) has "
                f"{len(fields)} fields but the header has {len(columns)}"
            )
        rows.append((row_no, dict(zip(columns, fields, strict=True))))
    return columns, rows


def read_jsonl_text(text: str, path: Path) -> tuple[list[str], Rows]:
    rows: Rows = []
    columns: dict[str, None] = {}  # ordered union of keys, for "columns found" messages
    # Split on "\n" only: str.splitlines() would also break on U+2028 etc., which JSON
    # strings may legally contain raw; a trailing "\r" is JSON whitespace.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: line {line_no}: malformed JSON ({exc.msg} at column {exc.colno}); "
                "expected one JSON object per line"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {line_no}: expected a JSON object, got {type(obj).__name__}")
        columns.update(dict.fromkeys(obj))
        rows.append((line_no, obj))
    return list(columns), rows


def _format_of(path: Path) -> tuple[str, str]:
    suffix = path.suffix.lower()
    if suffix in CSV_EXTENSIONS:
        return "csv", "row"
    if suffix in JSONL_EXTENSIONS:
        return "jsonl", "line"
    raise DataError(
        f"{path}: unknown file extension {path.suffix or '(none)'!r}; expected .csv or .jsonl/.json (JSON lines)"
    )


def read_raw(path: str | Path) -> RawTable:
    """One raw file (format by extension) as a :class:`RawTable`."""
    path = Path(path)
    fmt, unit = _format_of(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    text, encoding = decode(data, path)
    reader = read_csv_text if fmt == "csv" else read_jsonl_text
    columns, rows = reader(text, path)
    return RawTable(path, fmt, encoding, hashlib.sha256(data).hexdigest(), columns, rows, unit)
