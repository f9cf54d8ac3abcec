"""Data ingestion: raw competition CSV / DialogSum JSONL -> normalised JSONL + stats.

The stage reads one raw file per split (train is required; dev and test are optional),
validates every split completely, checks for train/dev/test leakage and only then writes
``{split}.jsonl`` and ``stats.json`` through the atomic writers in :mod:`kdsum.io`, so a
refused run leaves nothing behind. Reading the raw files is :mod:`kdsum.readers`; the
statistics are :mod:`kdsum.datastats`.

Normalised record (one JSON object per line)::

    {"fname": str, "dialogue": str, "turns": [{"speaker": "#Person1#", "text": str}],
     "summaries": [str, ...], "topic": str | None}

Every problem in the input raises :class:`DataError` whose message names the file and,
where it applies, the 1-based data row (``row N`` for CSV, ``line N`` for JSONL), the
fname and the column.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsum.datastats import collect_special_tokens, split_stats
from kdsum.io import read_jsonl, write_json, write_jsonl
from kdsum.readers import DataError, RawTable, read_raw
from kdsum.text import collapse_whitespace, render_turns

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

# A turn starts with the tag immediately followed by ':' (``#Person1# :`` is not a tag).
_SPEAKER_TAG_RE = re.compile(r"#Person(\d+)#:")
_SUMMARY_K_RE = re.compile(r"summary(\d+)")
_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")

_RECORD_KEYS = ("fname", "dialogue", "turns", "summaries", "topic")


# --------------------------------------------------------------------------- turns


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
            turns.append({"speaker": f"#Person{match.group(1)}#", "text": collapse_whitespace(line[match.end() :])})
        elif turns:
            turns[-1]["text"] = collapse_whitespace(f"{turns[-1]['text']} {line}")
        elif _SPEAKER_TAG_RE.search(dialogue) is None:
            raise DataError("dialogue has no speaker tag (#PersonN#:)")
        else:
            raise DataError(f"text before the first speaker tag: {line[:40]!r}")
    if not turns:
        raise DataError("dialogue has no speaker tag (#PersonN#:)")
    return turns


def normalize_dialogue(dialogue: str) -> str:
    """Canonical dialogue text: one ``"{speaker}: {text}"`` line per turn, joined by ``\\n``."""
    return render_turns(parse_turns(dialogue))


# --------------------------------------------------------------------------- validation


@dataclass
class _Split:
    name: str
    table: RawTable
    records: list[dict[str, Any]]


def _reference_columns(columns: Sequence[str]) -> list[str]:
    """``summary`` first (if present), then ``summary1..N`` in numeric order."""
    numbered = sorted((c for c in columns if _SUMMARY_K_RE.fullmatch(c)), key=lambda c: int(c[len("summary") :]))
    return (["summary"] if "summary" in columns else []) + numbered


def _check_columns(split: str, table: RawTable) -> None:
    cols = set(table.columns)
    missing = [c for c in ("fname", "dialogue") if c not in cols]
    if split == "train" and "summary" not in cols:
        missing.append("summary")
    if split == "dev" and "summary" not in cols and "summary1" not in cols:
        missing.append("summary (or summary1)")
    if missing:
        found = ", ".join(c if c else "''" for c in table.columns) or "none"
        raise DataError(
            f"{table.path}: missing required column(s) {', '.join(missing)} for split {split!r}; columns found: {found}"
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


@dataclass
class _Layout:
    """Where a table keeps its references and topic."""

    ref_cols: list[str]
    topic_col: str | None


def _normalise_row(loc: str, fname: str, values: Mapping[str, Any], layout: _Layout) -> dict[str, Any]:
    dialogue = _cell(loc, values, "dialogue")
    if not dialogue.strip():
        raise DataError(f"{loc}, column 'dialogue': {_empty('dialogue', values)}")
    try:
        turns = parse_turns(dialogue)
    except DataError as exc:
        raise DataError(f"{loc}, column 'dialogue': {exc}") from None
    summaries = []
    for col in layout.ref_cols:
        summary = collapse_whitespace(_cell(loc, values, col))
        if not summary:
            raise DataError(f"{loc}, column {col!r}: {_empty('summary', values, col)}")
        summaries.append(summary)
    topic = collapse_whitespace(_cell(loc, values, layout.topic_col)) if layout.topic_col else ""
    return {
        "fname": fname,
        "dialogue": render_turns(turns),
        "turns": turns,
        "summaries": summaries,
        "topic": topic or None,
    }


def _normalise_split(split: str, table: RawTable) -> list[dict[str, Any]]:
    _check_columns(split, table)
    topic_col = "topic" if "topic" in table.columns else ("topic1" if "topic1" in table.columns else None)
    layout = _Layout(_reference_columns(table.columns), topic_col)
    if not table.rows:
        raise DataError(f"{table.path}: no data rows")
    seen: dict[str, int] = {}
    records: list[dict[str, Any]] = []
    for row_no, values in table.rows:
        where = f"{table.path}: {table.unit} {row_no}"
        fname = _cell(where, values, "fname").strip()
        if not fname:
            raise DataError(f"{where}, column 'fname': empty fname")
        if fname in seen:
            raise DataError(f"{table.path}: duplicate fname {fname!r} at {table.unit}s {seen[fname]} and {row_no}")
        seen[fname] = row_no
        records.append(_normalise_row(f"{where} (fname {fname!r})", fname, values, layout))
    return records


def _read_validated(split: str, path: str | Path) -> _Split:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    table = read_raw(path)
    return _Split(split, table, _normalise_split(split, table))


def read_split(path: str | Path, split: str) -> list[dict[str, Any]]:
    """Read, validate and normalise one raw file as ``split`` (no cross-split checks)."""
    return _read_validated(split, path).records


# --------------------------------------------------------------------------- leakage


def _leakage(splits: Sequence[_Split]) -> list[dict[str, Any]]:
    """Per pair of splits (train-dev, train-test, dev-test), the [fname_a, fname_b] pairs
    whose normalised dialogues are identical, in file order of the earlier split."""
    found: list[dict[str, Any]] = []
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            fnames_b: dict[str, list[str]] = defaultdict(list)
            for r in b.records:
                fnames_b[r["dialogue"]].append(r["fname"])
            pairs = [[r["fname"], fb] for r in a.records for fb in fnames_b.get(r["dialogue"], ())]
            if pairs:
                found.append(
                    {"splits": [a.name, b.name], "files": [str(a.table.path), str(b.table.path)], "pairs": pairs}
                )
    return found


def _leakage_error(leakage: list[dict[str, Any]]) -> DataError:
    first = leakage[0]
    (name_a, name_b), (file_a, file_b), pairs = first["splits"], first["files"], first["pairs"]
    return DataError(
        f"leakage: dialogue of {pairs[0][1]!r} in {name_b} ({file_b}) is identical after "
        f"normalisation to {pairs[0][0]!r} in {name_a} ({file_a}); {len(pairs)} such pair(s) "
        f"between {name_a} and {name_b}"
        + (f"; {len(leakage) - 1} other split pair(s) also overlap" if len(leakage) > 1 else "")
    )


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
        raise _leakage_error(leakage)
    stats: dict[str, Any] = {
        "splits": {
            s.name: {**split_stats(s.records), "format": s.table.fmt, "encoding": s.table.encoding} for s in splits
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
