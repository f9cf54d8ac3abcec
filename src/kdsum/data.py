"""Data ingestion: raw competition CSV / DialogSum JSONL -> normalised JSONL + stats.

The stage reads one raw file per split (train is required; dev and test are optional),
validates every split completely, checks for train/dev/test leakage and only then writes
``{split}.jsonl`` and ``stats.json`` through the atomic writers in :mod:`kdsum.io`, so a
refused run leaves nothing behind.

Normalised record (one JSON object per line)::

    {"fname": str, "dialogue": str, "turns": [{"speaker": "#Person1#", "text": str}],
     "summaries": [str, ...], "topic": str | None}

Every problem in the input raises :class:`DataError` whose message names the file and,
where it applies, the 1-based data row (``row N`` for CSV, ``line N`` for JSONL), the
fname and the column.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from kdsum.io import read_jsonl, write_json, write_jsonl

__all__ = [
    "SPLITS",
    "DataError",
    "collect_special_tokens",
    "ingest_splits",
    "load_split",
    "normalize_dialogue",
    "parse_turns",
    "read_split",
    "split_stats",
]

#: Split names in the order they are validated, written and compared for leakage.
SPLITS: tuple[str, ...] = ("train", "dev", "test")

CSV_EXTENSIONS = frozenset({".csv"})
JSONL_EXTENSIONS = frozenset({".jsonl", ".json", ".ndjson"})

# A turn starts with the tag immediately followed by ':' (``#Person1# :`` is not a tag).
_SPEAKER_TAG_RE = re.compile(r"#Person(\d+)#:")
# Special tokens: speaker tags and PII masks (``#PhoneNumber#`` ...). Anything of the
# form ``#Letters#`` that is not ``#Person<digits>#`` counts as a mask.
_TOKEN_RE = re.compile(r"#(?:Person\d+|[A-Za-z]+)#")
_PERSON_RE = re.compile(r"#Person(\d+)#")
_SUMMARY_K_RE = re.compile(r"summary(\d+)")
_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")

_RECORD_KEYS = ("fname", "dialogue", "turns", "summaries", "topic")


class DataError(ValueError):
    """Raw data refused; the message names the file and, where relevant, row/fname/column."""


# --------------------------------------------------------------------------- text helpers


def _collapse(text: str) -> str:
    """Collapse every whitespace run (incl. newlines, NBSP, U+3000) to one space; strip."""
    return " ".join(text.split())


def parse_turns(dialogue: str) -> list[dict[str, str]]:
    """Split a raw dialogue into ``[{"speaker": "#PersonN#", "text": ...}]``.

    A line (after stripping) starting with ``#PersonN#:`` opens a turn; any other non-blank
    line continues the previous turn. Raises :class:`DataError` (without location; the
    caller adds it) when the dialogue has no speaker tag at all, or when text precedes the
    first tag (it could not be attributed to a speaker).
    """
    turns: list[dict[str, str]] = []
    for raw_line in _LINE_BREAK_RE.split(dialogue):
        # Leading blanks are layout, not content: " #Person1#: hi" still opens a turn.
        line = raw_line.strip()
        if not line:
            continue
        match = _SPEAKER_TAG_RE.match(line)
        if match:
            turns.append({"speaker": f"#Person{match.group(1)}#", "text": _collapse(line[match.end():])})
        elif turns:
            turns[-1]["text"] = _collapse(f"{turns[-1]['text']} {line}")
        elif _SPEAKER_TAG_RE.search(dialogue) is None:
            raise DataError("dialogue has no speaker tag (#PersonN#:)")
        else:
            raise DataError(f"text before the first speaker tag: {line[:40]!r}")
    if not turns:
        raise DataError("dialogue has no speaker tag (#PersonN#:)")
    return turns


def _format_turns(turns: Sequence[Mapping[str, str]]) -> str:
    # rstrip: an empty turn (real in DialogSum train) becomes "#Person1#:", not "#Person1#: ".
    return "\n".join(f"{t['speaker']}: {t['text']}".rstrip() for t in turns)


def normalize_dialogue(dialogue: str) -> str:
    """Canonical dialogue text: one ``"{speaker}: {text}"`` line per turn, joined by ``\\n``."""
    return _format_turns(parse_turns(dialogue))


def _person_number(token: str) -> int:
    return int(_PERSON_RE.fullmatch(token).group(1))  # type: ignore[union-attr]


def _is_person(token: str) -> bool:
    return _PERSON_RE.fullmatch(token) is not None


def _sort_tokens(tokens: Iterable[str]) -> list[str]:
    """Persons by number first, then masks alphabetically."""
    tokens = set(tokens)
    persons = sorted((t for t in tokens if _is_person(t)), key=_person_number)
    masks = sorted(t for t in tokens if not _is_person(t))
    return persons + masks


def _record_texts(record: Mapping[str, Any]) -> Iterable[str]:
    yield record.get("dialogue") or ""
    yield from record.get("summaries") or []


def collect_special_tokens(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every distinct ``#PersonN#`` and mask token in the records' dialogues and summaries.

    Derived from the data (never hand-listed) so a new mask such as ``#CardNumber#`` reaches
    the tokenizer automatically. Sorted: persons by number, then masks alphabetically.
    """
    found: set[str] = set()
    for record in records:
        for text in _record_texts(record):
            found.update(_TOKEN_RE.findall(text))
    return _sort_tokens(found)


# --------------------------------------------------------------------------- raw readers


@dataclass
class _RawTable:
    """A raw file as columns + rows of optional strings, before any validation."""

    path: Path
    fmt: str  # "csv" | "jsonl"
    encoding: str
    sha256: str
    columns: list[str]
    rows: list[tuple[int, dict[str, Any]]]  # (1-based data row / line, values)
    unit: str  # "row" (CSV data row) or "line" (JSONL line)


def _decode(data: bytes, path: Path) -> tuple[str, str]:
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


def _read_csv_text(text: str, path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    # newline="" lets csv see the raw line ends, so CRLF inside quoted fields is kept
    # (and normalised later) instead of being mangled.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
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

    rows: list[tuple[int, dict[str, Any]]] = []
    row_no = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(
                f"{path}: malformed CSV at data row {row_no + 1} (line {reader.line_num}): {exc}"
            ) from None
        if not fields:  # blank line between records
            continue
        row_no += 1
        if len(fields) != len(columns):
            raise DataError(
                f"{path}: malformed CSV: data row {row_no} (ending at line {reader.line_num}) has "
                f"{len(fields)} fields but the header has {len(columns)}"
            )
        rows.append((row_no, dict(zip(columns, fields))))
    return columns, rows


def _read_jsonl_text(text: str, path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
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


def _read_raw(path: str | Path) -> _RawTable:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in CSV_EXTENSIONS:
        fmt, unit = "csv", "row"
    elif suffix in JSONL_EXTENSIONS:
        fmt, unit = "jsonl", "line"
    else:
        raise DataError(
            f"{path}: unknown file extension {path.suffix or '(none)'!r}; expected .csv or "
            ".jsonl/.json (JSON lines)"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    text, encoding = _decode(data, path)
    reader = _read_csv_text if fmt == "csv" else _read_jsonl_text
    columns, rows = reader(text, path)
    return _RawTable(path, fmt, encoding, hashlib.sha256(data).hexdigest(), columns, rows, unit)


# --------------------------------------------------------------------------- validation


@dataclass
class _Split:
    name: str
    table: _RawTable
    records: list[dict[str, Any]]


def _reference_columns(columns: Sequence[str]) -> list[str]:
    """``summary`` first (if present), then ``summary1..N`` in numeric order."""
    numbered = sorted(
        (c for c in columns if _SUMMARY_K_RE.fullmatch(c)), key=lambda c: int(c[len("summary"):])
    )
    return (["summary"] if "summary" in columns else []) + numbered


def _check_columns(split: str, table: _RawTable) -> None:
    cols = set(table.columns)
    missing = [c for c in ("fname", "dialogue") if c not in cols]
    if split == "train" and "summary" not in cols:
        missing.append("summary")
    if split == "dev" and "summary" not in cols and "summary1" not in cols:
        missing.append("summary (or summary1)")
    if missing:
        found = ", ".join(c if c else "''" for c in table.columns) or "none"
        raise DataError(
            f"{table.path}: missing required column(s) {', '.join(missing)} for split "
            f"{split!r}; columns found: {found}"
        )


def _cell(loc: str, values: Mapping[str, Any], column: str) -> str:
    """A cell as str ('' when absent/null); JSONL values of other types are refused."""
    value = values.get(column)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{loc}, column {column!r}: expected a string, got {type(value).__name__}")
    return value


def _empty(what: str, values: Mapping[str, Any], column: str | None = None) -> str:
    # A JSONL object may simply lack a key that other lines have; say so precisely.
    return f"empty {what}" if (column or what) in values else f"missing {what} (key absent)"


def _normalise_split(split: str, table: _RawTable) -> list[dict[str, Any]]:
    _check_columns(split, table)
    ref_cols = _reference_columns(table.columns)
    topic_col = "topic" if "topic" in table.columns else ("topic1" if "topic1" in table.columns else None)
    if not table.rows:
        raise DataError(f"{table.path}: no data rows")

    seen: dict[str, int] = {}
    records: list[dict[str, Any]] = []
    for row_no, values in table.rows:
        where = f"{table.path}: {table.unit} {row_no}"
        fname = _cell(where, values, "fname").strip()
        if not fname:
            raise DataError(f"{where}, column 'fname': empty fname")
        loc = f"{where} (fname {fname!r})"
        if fname in seen:
            raise DataError(
                f"{table.path}: duplicate fname {fname!r} at {table.unit}s {seen[fname]} and {row_no}"
            )
        seen[fname] = row_no

        dialogue = _cell(loc, values, "dialogue")
        if not dialogue.strip():
            raise DataError(f"{loc}, column 'dialogue': {_empty('dialogue', values)}")
        try:
            turns = parse_turns(dialogue)
        except DataError as exc:
            raise DataError(f"{loc}, column 'dialogue': {exc}") from None

        summaries = []
        for col in ref_cols:
            summary = _collapse(_cell(loc, values, col))
            if not summary:
                raise DataError(f"{loc}, column {col!r}: {_empty('summary', values, col)}")
            summaries.append(summary)

        topic = _collapse(_cell(loc, values, topic_col)) if topic_col else ""
        records.append(
            {
                "fname": fname,
                "dialogue": _format_turns(turns),
                "turns": turns,
                "summaries": summaries,
                "topic": topic or None,
            }
        )
    return records


def _read_validated(split: str, path: str | Path) -> _Split:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    table = _read_raw(path)
    return _Split(split, table, _normalise_split(split, table))


def read_split(path: str | Path, split: str) -> list[dict[str, Any]]:
    """Read, validate and normalise one raw file as ``split`` (no cross-split checks)."""
    return _read_validated(split, path).records


def _leakage(splits: Sequence[_Split]) -> list[dict[str, Any]]:
    """Per pair of splits (train-dev, train-test, dev-test), the [fname_a, fname_b] pairs
    whose normalised dialogues are identical, in file order of the earlier split."""
    found: list[dict[str, Any]] = []
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            fnames_b: dict[str, list[str]] = defaultdict(list)
            for r in b.records:
                fnames_b[r["dialogue"]].append(r["fname"])
            pairs = [[r["fname"], fb] for r in a.records for fb in fnames_b.get(r["dialogue"], ())]
            if pairs:
                found.append(
                    {
                        "splits": [a.name, b.name],
                        "files": [str(a.table.path), str(b.table.path)],
                        "pairs": pairs,
                    }
                )
    return found


# --------------------------------------------------------------------------- stats


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def split_stats(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Descriptive statistics of one split's normalised records.

    Keys: rows; turns {mean, min, max}; dialogue_chars {mean, max} (normalised text);
    summary_chars {mean} over all references (None without references);
    references_per_dialogue {max}; speakers {"<n distinct speakers>": dialogues};
    speaker_tags; masks {mask: occurrences in dialogues + summaries};
    topics {distinct, most_common: top 10 [{topic, count}]} or None; duplicate_dialogues.
    Means are rounded to 3 decimals.
    """
    n_turns = [len(r["turns"]) for r in records]
    dlg_chars = [len(r["dialogue"]) for r in records]
    sum_chars = [len(s) for r in records for s in r["summaries"]]
    n_speakers = Counter(len({t["speaker"] for t in r["turns"]}) for r in records)
    speaker_tags = {t["speaker"] for r in records for t in r["turns"]}
    masks = Counter(
        tok
        for r in records
        for text in _record_texts(r)
        for tok in _TOKEN_RE.findall(text)
        if not _is_person(tok)
    )
    topics = Counter(r["topic"] for r in records if r["topic"] is not None)
    # Ties broken by name so stats.json is byte-stable across runs.
    top_topics = sorted(topics.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    dialogue_counts = Counter(r["dialogue"] for r in records)
    return {
        "rows": len(records),
        "turns": {"mean": _mean(n_turns), "min": min(n_turns, default=0), "max": max(n_turns, default=0)},
        "dialogue_chars": {"mean": _mean(dlg_chars), "max": max(dlg_chars, default=0)},
        "summary_chars": {"mean": _mean(sum_chars)},
        "references_per_dialogue": {"max": max((len(r["summaries"]) for r in records), default=0)},
        "speakers": {str(k): n_speakers[k] for k in sorted(n_speakers)},
        "speaker_tags": _sort_tokens(speaker_tags),
        "masks": {m: masks[m] for m in sorted(masks)},
        "topics": (
            {"distinct": len(topics), "most_common": [{"topic": t, "count": c} for t, c in top_topics]}
            if topics
            else None
        ),
        # Not a refusal (only duplicate fnames are), but worth seeing: rows whose
        # normalised dialogue repeats an earlier row of the same split.
        "duplicate_dialogues": sum(c - 1 for c in dialogue_counts.values()),
    }


# --------------------------------------------------------------------------- stage entry points


def ingest_splits(
    paths: Mapping[str, str | Path | None],
    out_dir: str | Path,
    *,
    allow_leakage: bool = False,
) -> dict[str, Any]:
    """Validate all raw splits, then write ``out_dir/{split}.jsonl`` and ``stats.json``.

    ``paths`` maps "train" (required), "dev", "test" to raw files (None/absent = skip).
    Every split is read and validated, and leakage (same normalised dialogue in two splits)
    is checked, before anything is written; on any problem :class:`DataError` is raised and
    ``out_dir`` is left untouched. ``allow_leakage=True`` is an explicit opt-in for corpora
    known to overlap (e.g. the public DialogSum release): overlaps are then listed under
    ``stats["leakage"]`` instead of refused. Split files of a previous run that this run
    does not produce are removed, so ``out_dir`` never mixes runs. Returns the stats dict.
    """
    unknown = sorted(set(paths) - set(SPLITS))
    if unknown:
        raise DataError(f"unknown split(s) {', '.join(unknown)}; expected {', '.join(SPLITS)}")
    if not paths.get("train"):
        raise DataError("a train file is required")

    splits = [_read_validated(name, p) for name in SPLITS if (p := paths.get(name))]

    leakage = _leakage(splits)
    if leakage and not allow_leakage:
        first = leakage[0]
        (name_a, name_b), (file_a, file_b), pairs = first["splits"], first["files"], first["pairs"]
        raise DataError(
            f"leakage: dialogue of {pairs[0][1]!r} in {name_b} ({file_b}) is identical after "
            f"normalisation to {pairs[0][0]!r} in {name_a} ({file_a}); {len(pairs)} such pair(s) "
            f"between {name_a} and {name_b}"
            + (f"; {len(leakage) - 1} other split pair(s) also overlap" if len(leakage) > 1 else "")
        )

    stats: dict[str, Any] = {
        "splits": {
            s.name: {**split_stats(s.records), "format": s.table.fmt, "encoding": s.table.encoding}
            for s in splits
        },
        "special_tokens": collect_special_tokens(r for s in splits for r in s.records),
        "source_files": {s.name: str(s.table.path) for s in splits},
        "source_sha256": {s.name: s.table.sha256 for s in splits},
        "leakage": leakage,
    }

    out = Path(out_dir)
    for s in splits:
        write_jsonl(out / f"{s.name}.jsonl", s.records)
    # stats.json last: its presence marks a complete run.
    write_json(out / "stats.json", stats)
    for name in SPLITS:
        if not paths.get(name):
            (out / f"{name}.jsonl").unlink(missing_ok=True)
    return stats


def load_split(path: str | Path) -> list[dict[str, Any]]:
    """Read a normalised ``{split}.jsonl`` written by :func:`ingest_splits`."""
    records = read_jsonl(path)
    for i, record in enumerate(records, start=1):
        missing = [k for k in _RECORD_KEYS if k not in record]
        if missing:
            raise DataError(f"{path}: line {i}: not a normalised record, missing {', '.join(missing)}")
    return records
