"""Raw split files as tables: strict decoding and the CSV / JSON-lines readers, before any validation.

A raw file becomes a :class:`RawTable`: its columns and its rows of values, each row with its 1-based location
(``row N``: the Nth CSV data record; ``line N``: the Nth line of a JSONL file). Every problem raises
:class:`DataError` naming the file and the row or line.
"""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsum.errors import KdsumError
from kdsum.io import check_regular_file, read_bytes
from kdsum.korean.text import normalize_text

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


#: ``data.encoding`` value that detects the encoding (UTF-8 with or without BOM, else plausible CP949 Korean).
AUTO = "auto"

_BOMS = {
    b"\xff\xfe\x00\x00": "utf-32",
    b"\x00\x00\xfe\xff": "utf-32",
    b"\xff\xfe": "utf-16",
    b"\xfe\xff": "utf-16",
}
# Hangul syllables, and the characters that are not ASCII.
_HANGUL_RE = re.compile("[\uac00-\ud7a3]")
_NON_ASCII_RE = re.compile("[^\x00-\x7f]")


def _line_of(data: bytes | str, offset: int) -> int:
    return data.count(b"\n" if isinstance(data, bytes) else "\n", 0, offset) + 1


def _mojibake_table() -> tuple[dict[str, int], str, str, str, str]:
    """What UTF-8 bytes look like once read as Windows-1252 (or Latin-1) and saved again: char -> byte, and the
    character classes of lead bytes (2-, 3-, 4-byte sequences) and continuation bytes."""
    byte_of: dict[str, int] = {}
    for b in range(0x80, 0x100):
        byte_of[chr(b)] = b  # Latin-1: bytes 0x80-0x9F become C1 controls
        try:
            byte_of[bytes([b]).decode("cp1252")] = b  # Windows-1252: they become € ‚ ƒ „ … † ‡ ˆ ‰ Š ...
        except UnicodeDecodeError:
            pass  # 0x81, 0x8D, 0x8F, 0x90, 0x9D are undefined in Windows-1252

    def chars(lo: int, hi: int) -> str:
        return "".join(re.escape(c) for c, b in byte_of.items() if lo <= b <= hi)

    return byte_of, chars(0xC2, 0xDF), chars(0xE0, 0xEF), chars(0xF0, 0xF4), chars(0x80, 0xBF)


_MOJIBAKE_BYTE, _LEAD2, _LEAD3, _LEAD4, _CONT = _mojibake_table()
_MOJIBAKE_RE = re.compile(f"[{_LEAD2}][{_CONT}]|[{_LEAD3}][{_CONT}]{{2}}|[{_LEAD4}][{_CONT}]{{3}}")


def _mojibake(text: str) -> tuple[int, int, re.Match[str] | None]:
    """(sequences, characters) of ``text`` that are UTF-8 bytes read as Windows-1252/Latin-1, and the first one."""
    hits = chars = 0
    first = None
    for match in _MOJIBAKE_RE.finditer(text):
        try:
            bytes(_MOJIBAKE_BYTE[c] for c in match.group()).decode("utf-8")
        except UnicodeDecodeError:
            continue
        hits += 1
        chars += len(match.group())
        first = first or match
    return hits, chars, first


def _check_not_mojibake(units: list[tuple[str, str]], path: Path) -> None:
    """Refuse UTF-8 text that was once decoded as Windows-1252/Latin-1 and saved again ('ì•ˆë…•' for '안녕').

    ``units``: (location, text) pairs, e.g. ("line 3", ...); the verdict is over all of them together."""
    hits = chars = non_ascii = 0
    first: tuple[str, str] | None = None
    for where, text in units:
        if text.isascii():
            continue
        n, c, match = _mojibake(text)
        hits, chars, non_ascii = hits + n, chars + c, non_ascii + len(_NON_ASCII_RE.findall(text))
        if first is None and match is not None:
            first = (where if where else f"line {_line_of(text, match.start())}", match.group())
    # Double-encoded text is (almost) all such sequences; genuine text has at most a stray one ('É…').
    if first is None or (hits < 20 and chars < 0.2 * non_ascii):
        return
    where, seq = first
    meant = bytes(_MOJIBAKE_BYTE[c] for c in seq).decode("utf-8")
    raise DataError(
        f"{path}: {where}: looks like UTF-8 text that was decoded as Windows-1252 (or Latin-1) and saved again: "
        f"{seq!r} is the UTF-8 of {meant!r} ({hits} such sequence(s)); repair the file (encode it as cp1252, "
        "decode as UTF-8), or set data.encoding: utf-8 to read it exactly as it is"
    )


@functools.lru_cache(maxsize=1)
def _ks_x_1001_hangul() -> re.Pattern[str]:
    """The 2,350 Hangul syllables of KS X 1001 (EUC-KR), the ones genuine Korean text is made of."""
    syllables = bytes(b for lead in range(0xB0, 0xC9) for trail in range(0xA1, 0xFF) for b in (lead, trail))
    return re.compile(f"[{syllables.decode('euc_kr')}]")


def _check_plausible_korean(data: bytes, text: str, path: Path) -> None:
    """Refuse bytes that decode as CP949 only into implausible Korean: most non-ASCII characters of genuine Korean
    text are Hangul syllables of KS X 1001 (EUC-KR); Windows-1252 accented letters read as CP949 become the rare
    syllables of CP949's extension ('Äpfel—or' reads '훡fel뾬r') or hanja and symbols."""
    non_ascii = len(_NON_ASCII_RE.findall(text))
    common = _ks_x_1001_hangul()
    hangul = len(common.findall(text))
    extension = len(_HANGUL_RE.findall(text)) - hangul  # CP949's 8,822 extension syllables
    if extension <= 0.05 * non_ascii and hangul >= 0.5 * non_ascii:
        return
    lines = text.split("\n")
    line_no = next(  # the first line with a rare or foreign character
        (n for n, line in enumerate(lines, start=1) if len(common.findall(line)) < len(_NON_ASCII_RE.findall(line))),
        1,
    )
    sample = lines[line_no - 1].strip()[:60]
    hint = ""
    try:
        alt = data.decode("cp1252").split("\n")[line_no - 1].strip()[:60]
        hint = f" (as Windows-1252 it reads {alt!r})"
    except UnicodeDecodeError:
        pass
    raise DataError(
        f"{path}: not UTF-8, and as CP949 it reads as implausible Korean (line {line_no}: {sample!r}){hint}; "
        "set data.encoding to the file's codec (e.g. data.encoding: cp1252 for Windows-1252, data.encoding: cp949 "
        "to read it as Korean anyway)"
    )


def _decode_as(data: bytes, path: Path, encoding: str) -> tuple[str, str]:
    """Decode strictly with the codec ``data.encoding`` names, used as given (no plausibility checks)."""
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(
            f"data.encoding: unknown codec {encoding!r} (reading {path}); use auto or a Python codec name "
            "such as utf-8, cp949, cp1252"
        ) from None
    if codec == "utf-8":
        codec = "utf-8-sig"  # a byte-order mark is not text
    try:
        return data.decode(codec), codec
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: cannot decode file as {encoding} (data.encoding): bad byte 0x{data[exc.start]:02x} at byte "
            f"offset {exc.start}, line {_line_of(data, exc.start)}"
        ) from None


def _utf16_without_bom(data: bytes) -> str | None:
    """``utf-16-le`` / ``utf-16-be`` when ``data`` reads as such text: ASCII characters (the speaker tags, digits,
    punctuation and line ends of any dialogue file) put a zero byte after (LE) or before (BE) their code, so one
    parity holds many zeros and the other (almost) none; UTF-8 and CP949 text holds no zero bytes at all."""
    if len(data) < 4 or len(data) % 2:
        return None
    even, odd = data[0::2].count(0), data[1::2].count(0)
    for codec, zeros, other in (("utf-16-le", odd, even), ("utf-16-be", even, odd)):
        if zeros >= 0.1 * (len(data) // 2) and other <= 0.01 * zeros:
            try:
                data.decode(codec)
            except UnicodeDecodeError:
                continue
            return codec
    return None


def decode(data: bytes, path: Path, encoding: str = AUTO) -> tuple[str, str]:
    """The file's text and the codec used.

    ``encoding="auto"``: UTF-8 (BOM optional) unless it is mojibake (UTF-8 read as Windows-1252 and saved again),
    else CP949 (a superset of EUC-KR) if that reads as plausible Korean; anything else is refused, naming the file
    and ``data.encoding``, instead of guessed. Any other value is a Python codec, used as given.
    """
    if encoding != AUTO:
        return _decode_as(data, path, encoding)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    else:
        _check_not_mojibake([("", text)], path)
        return text, ("utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8")
    for bom, codec in _BOMS.items():
        if data.startswith(bom):
            raise DataError(f"{path}: starts with a {codec.upper()} byte-order mark; set data.encoding: {codec}")
    if codec := _utf16_without_bom(data):
        raise DataError(
            f"{path}: looks like {codec.upper()} without a byte-order mark (every other byte is zero); "
            f"set data.encoding: {codec} (a mapping sets one split's only, e.g. data.encoding: {{train: {codec}}})"
        )
    try:
        text = data.decode("cp949")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: cannot decode file as UTF-8 or CP949 (bad byte 0x{data[exc.start]:02x} "
            f"at byte offset {exc.start}, line {_line_of(data, exc.start)}); set data.encoding to the file's codec "
            "(e.g. data.encoding: cp1252)"
        ) from None
    _check_plausible_korean(data, text, path)
    return text, "cp949"


def _csv_header(reader: Any, path: Path) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file (no CSV header)") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV header (line {reader.line_num}): {exc}") from None
    # A byte-order mark or zero-width space is not part of a column's name.
    columns = [normalize_text(c).strip() for c in header]
    dupes = sorted({c for c in columns if c and columns.count(c) > 1})
    if dupes:
        raise DataError(f"{path}: malformed CSV header: duplicate column(s) {', '.join(dupes)}")
    return columns


def read_csv_text(text: str, path: Path) -> tuple[list[str], Rows]:
    # newline="" lets csv see the raw line ends, so CRLF inside quoted fields is kept
    # (and normalised later) instead of being mangled.
    # csv's default field limit (131,072 characters) is below a long dialogue; no field is longer than its file
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
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


def read_raw(path: str | Path, encoding: str = AUTO) -> RawTable:
    """One raw file (format by extension) as a :class:`RawTable`; ``encoding``: ``data.encoding`` (:func:`decode`)."""
    path = Path(path)
    fmt, unit = _format_of(path)
    try:
        check_regular_file(path, "data file")  # a FIFO would block the read forever
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    data = read_bytes(path)
    text, codec = decode(data, path, encoding)
    reader = read_csv_text if fmt == "csv" else read_jsonl_text
    columns, rows = reader(text, path)
    if fmt == "jsonl" and encoding == AUTO and text.isascii():
        # JSON may spell every character as a \\u escape: check the strings themselves
        _check_not_mojibake(
            [(f"line {n}", "\n".join(v for v in row.values() if isinstance(v, str))) for n, row in rows], path
        )
    return RawTable(path, fmt, codec, hashlib.sha256(data).hexdigest(), columns, rows, unit)
