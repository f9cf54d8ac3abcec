"""Data ingestion: raw competition CSV / DialogSum JSONL -> normalised JSONL + stats.

The stage reads one raw file per split (train is required; dev and test are optional),
normalises every text (Unicode NFC, no zero-width/format or control characters:
:func:`kdsum.korean.text.normalize_text`; speaker tags wherever they stand, in any spelling:
:func:`parse_turns`) and counts what that changed, validates every split completely, checks
for train/dev/test leakage (shared fnames, identical and near-duplicate dialogues) and only
then writes ``{split}.jsonl`` and ``stats.json`` together, in one swap of the output
directory (:func:`kdsum.io.atomic_dir`), so a refused or killed run leaves nothing behind.
Reading (and decoding) the raw files is :mod:`kdsum.data.readers`; the statistics are
:mod:`kdsum.data.stats`.

Normalised record (one JSON object per line)::

    {"fname": str, "dialogue": str, "turns": [{"speaker": "#Person1#", "text": str}],
     "summaries": [str, ...], "topic": str | None}

Every problem in the input raises :class:`DataError` whose message names the file and,
where it applies, the 1-based data row (``row N`` for CSV, ``line N`` for JSONL), the
fname and the column.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsum.data.leakage import LEAKAGE_POLICIES, NEAR_DUPLICATE_THRESHOLD, apply_policy, find_leakage, train_pairs
from kdsum.data.readers import AUTO, DataError, RawTable, read_raw
from kdsum.data.stats import collect_special_tokens, split_stats
from kdsum.io import atomic_dir, read_jsonl, write_json, write_jsonl
from kdsum.korean.text import collapse_whitespace, normalize_text, render_turns

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

# A speaker tag opens a turn wherever it stands (also mid-line, e.g. two turns on one line): '#', "Person" in any
# case, the number, '#', then ':' right after it. Blanks inside the hashes are tolerated (``# Person2 #:``); the
# canonical form is ``#Person2#:``. ``#Person1# :`` (a blank before the colon) is not a tag.
_SPEAKER_TAG_RE = re.compile(r"#\s*(?i:person)\s*([0-9]+)\s*#:")
_SUMMARY_K_RE = re.compile(r"summary(\d+)")
_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")

_RECORD_KEYS = ("fname", "dialogue", "turns", "summaries", "topic")

#: What ingest normalises, counted per split in ``stats.json`` (``normalisation``): texts whose Unicode NFC form
#: differed, format characters (zero-width space, BOM, ...) and control characters (NUL, ...) removed, speaker
#: tags rewritten to ``#PersonN#:`` and turns split off where a tag stood mid-line.
NORMALISATIONS = ("nfc", "format_chars", "control_chars", "speaker_tags", "turns_split")


# --------------------------------------------------------------------------- turns


def parse_turns(dialogue: str, counts: Counter | None = None) -> list[dict[str, str]]:
    """Split a raw dialogue into ``[{"speaker": "#PersonN#", "text": ...}]``.

    Every speaker tag (:data:`_SPEAKER_TAG_RE`: ``#Person1#:``, also ``#person1#:`` or ``# Person1 #:``) opens a
    turn, at the start of a line or within one; other text continues the turn before it. Raises
    :class:`DataError` (without location; the caller adds it) when the dialogue has no speaker tag at all, or
    when text precedes the first tag (it could not be attributed to a speaker). ``counts`` (optional) is
    incremented by ``speaker_tags`` (tags not written ``#PersonN#:``) and ``turns_split`` (turns opened mid-line).
    """
    turns: list[dict[str, str]] = []
    n_tags = n_split = 0
    for raw_line in _LINE_BREAK_RE.split(dialogue):
        # Leading blanks are layout, not content: " #Person1#: hi" still opens a turn.
        line = raw_line.strip()
        if not line:
            continue
        tags = list(_SPEAKER_TAG_RE.finditer(line))
        head = line[: tags[0].start()].strip() if tags else line
        if head:
            if turns:
                turns[-1]["text"] = collapse_whitespace(f"{turns[-1]['text']} {head}")
            elif _SPEAKER_TAG_RE.search(dialogue) is None:
                raise DataError("dialogue has no speaker tag (#PersonN#:)")
            else:
                raise DataError(f"text before the first speaker tag: {head[:40]!r}")
        for k, tag in enumerate(tags):
            end = tags[k + 1].start() if k + 1 < len(tags) else len(line)
            speaker = f"#Person{int(tag.group(1))}#"
            turns.append({"speaker": speaker, "text": collapse_whitespace(line[tag.end() : end])})
            n_tags += tag.group() != f"{speaker}:"
            n_split += tag.start() > 0
    if not turns:
        raise DataError("dialogue has no speaker tag (#PersonN#:)")
    if counts is not None and (n_tags or n_split):
        counts["speaker_tags"] += n_tags
        counts["turns_split"] += n_split
    return turns


def normalize_dialogue(dialogue: str) -> str:
    """Canonical dialogue text: one ``"{speaker}: {text}"`` line per turn, joined by ``\\n``."""
    return render_turns(parse_turns(normalize_text(dialogue)))


# --------------------------------------------------------------------------- validation


@dataclass
class _Split:
    name: str
    table: RawTable
    records: list[dict[str, Any]]
    normalisation: dict[str, Any]


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


def _cell(loc: str, values: Mapping[str, Any], column: str, counts: Counter) -> str:
    """A cell as normalised str (:func:`kdsum.korean.text.normalize_text`; '' when absent/null); JSONL values of other
    types are refused."""
    value = values.get(column)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{loc}, column {column!r}: expected a string, got {type(value).__name__}")
    return normalize_text(value, counts)


def _fname(loc: str, values: Mapping[str, Any], counts: Counter) -> str:
    """The fname as the file has it, normalised as every text (invisible characters removed and counted): it is the
    submission's id, which must match the organisers'. Blanks around it are refused, not stripped silently."""
    fname = _cell(loc, values, "fname", counts)
    if not fname.strip():
        raise DataError(f"{loc}, column 'fname': empty fname")
    if fname != fname.strip():
        raise DataError(
            f"{loc}, column 'fname': {fname!r} has blanks around it; the submission's id must match the "
            f"organisers' exactly, so they are not stripped: fix the file (e.g. to {fname.strip()!r})"
        )
    return fname


def _empty(what: str, values: Mapping[str, Any], column: str | None = None) -> str:
    # A JSONL object may simply lack a key that other lines have; say so precisely.
    return f"empty {what}" if (column or what) in values else f"missing {what} (key absent)"


@dataclass
class _Layout:
    """Where a table keeps its references and topic."""

    ref_cols: list[str]
    topic_col: str | None
    summaries_optional: bool = False  # the test split: its summaries are never used, an empty one is no error


def _normalise_row(loc: str, fname: str, values: Mapping[str, Any], layout: _Layout, counts: Counter) -> dict[str, Any]:
    dialogue = _cell(loc, values, "dialogue", counts)
    if not dialogue.strip():
        raise DataError(f"{loc}, column 'dialogue': {_empty('dialogue', values)}")
    try:
        turns = parse_turns(dialogue, counts)
    except DataError as exc:
        raise DataError(f"{loc}, column 'dialogue': {exc}") from None
    summaries = []
    for col in layout.ref_cols:
        summary = collapse_whitespace(_cell(loc, values, col, counts))
        if not summary and not layout.summaries_optional:
            raise DataError(f"{loc}, column {col!r}: {_empty('summary', values, col)}")
        summaries += [summary] if summary else []
    topic = collapse_whitespace(_cell(loc, values, layout.topic_col, counts)) if layout.topic_col else ""
    return {
        "fname": fname,
        "dialogue": render_turns(turns),
        "turns": turns,
        "summaries": summaries,
        "topic": topic or None,
    }


def _normalisation_stats(per_row: Sequence[Counter]) -> dict[str, Any]:
    """``{"rows_changed": n, kind: {"rows": r, "count": c}}`` for each kind of :data:`NORMALISATIONS`."""
    out: dict[str, Any] = {"rows_changed": sum(1 for c in per_row if any(c.values()))}
    for kind in NORMALISATIONS:
        out[kind] = {"rows": sum(1 for c in per_row if c[kind]), "count": sum(c[kind] for c in per_row)}
    return out


def _normalise_split(split: str, table: RawTable) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    _check_columns(split, table)
    topic_col = "topic" if "topic" in table.columns else ("topic1" if "topic1" in table.columns else None)
    layout = _Layout(_reference_columns(table.columns), topic_col, summaries_optional=split == "test")
    if not table.rows:
        raise DataError(f"{table.path}: no data rows")
    seen: dict[str, int] = {}
    records: list[dict[str, Any]] = []
    per_row: list[Counter] = []
    for row_no, values in table.rows:
        where = f"{table.path}: {table.unit} {row_no}"
        counts: Counter = Counter()
        fname = _fname(where, values, counts)
        if fname in seen:
            raise DataError(f"{table.path}: duplicate fname {fname!r} at {table.unit}s {seen[fname]} and {row_no}")
        seen[fname] = row_no
        records.append(_normalise_row(f"{where} (fname {fname!r})", fname, values, layout, counts))
        per_row.append(counts)
    return records, _normalisation_stats(per_row)


def _read_validated(split: str, path: str | Path, encoding: str = AUTO) -> _Split:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    table = read_raw(path, encoding)
    records, normalisation = _normalise_split(split, table)
    return _Split(split, table, records, normalisation)


def read_split(path: str | Path, split: str, encoding: str = AUTO) -> list[dict[str, Any]]:
    """Read, validate and normalise one raw file as ``split`` (no cross-split checks)."""
    return _read_validated(split, path, encoding).records


# --------------------------------------------------------------------------- stage entry points

#: The files ingest writes into its output directory (and owns there).
OUTPUT_FILES = (*(f"{s}.jsonl" for s in SPLITS), "stats.json")


def split_encoding(encoding: str | Mapping[str, str], split: str) -> str:
    """``data.encoding`` for one split: the value itself, or the mapping's entry for the split (auto if none)."""
    return encoding.get(split, AUTO) if isinstance(encoding, Mapping) else encoding


def _flag_near_duplicates(splits: Sequence[_Split], found: list[dict[str, Any]]) -> dict[str, int]:
    """Set ``near_dup_train`` on every dev/test record (a train row pairs with it in ``found``); the counts per split."""
    flagged = {p["fnames"][1] for p in train_pairs(found)}
    counts = {}
    for s in splits[1:] if splits[0].name == "train" else ():
        for r in s.records:
            r["near_dup_train"] = r["fname"] in flagged
        counts[s.name] = sum(r["near_dup_train"] for r in s.records)
    return counts


def ingest_splits(
    paths: Mapping[str, str | Path | None],
    out_dir: str | Path,
    *,
    leakage: str = LEAKAGE_POLICIES[0],
    encoding: str | Mapping[str, str] = AUTO,
    near_duplicate_threshold: float = NEAR_DUPLICATE_THRESHOLD,
) -> dict[str, Any]:
    """Validate all raw splits, then write ``out_dir/{split}.jsonl`` and ``stats.json``.

    ``paths`` maps "train" (required), "dev", "test" to raw files (None/absent = skip); ``encoding`` is
    ``data.encoding`` (:func:`kdsum.data.readers.decode`): one value for every split, or a mapping per split
    (a split it does not name: auto). Every split is read, normalised (:func:`kdsum.korean.text.
    normalize_text`, :func:`parse_turns`) and validated, and leakage is checked, before anything is written:
    an fname in two splits, or a dialogue identical after normalisation or a near-duplicate (similarity >=
    ``near_duplicate_threshold``, :func:`similarity_text`) to one in another split. On any problem
    :class:`DataError` is raised and ``out_dir`` is left untouched. ``leakage`` is ``data.leakage``
    (:func:`kdsum.data.leakage.apply_policy`): overlaps are listed under ``stats["leakage"]``; under ``report`` each
    dev/test record carries ``near_dup_train`` (a train row near-duplicates it), under ``drop_train`` those train
    rows are removed (``stats["dropped_train"]``). The output files appear together, in one swap of the directory
    (:func:`kdsum.io.atomic_dir`): split files of a previous run that this run does not produce are gone with it,
    so ``out_dir`` never mixes runs, and what a killed run left is removed by the next. Returns the stats dict.
    """
    unknown = sorted(set(paths) - set(SPLITS))
    if unknown:
        raise DataError(f"unknown split(s) {', '.join(unknown)}; expected {', '.join(SPLITS)}")
    if not paths.get("train"):
        raise DataError("a train file is required")
    if not 0 < near_duplicate_threshold <= 1:
        raise DataError(f"data.near_duplicate_threshold: must be in (0, 1], got {near_duplicate_threshold}")
    splits = [_read_validated(name, p, split_encoding(encoding, name)) for name in SPLITS if (p := paths.get(name))]
    leakage_found = find_leakage(splits, near_duplicate_threshold)
    dropped = apply_policy(splits, leakage_found, leakage, near_duplicate_threshold)
    flagged = _flag_near_duplicates(splits, leakage_found if leakage == "report" else [])
    stats: dict[str, Any] = {
        "splits": {
            s.name: {
                **split_stats(s.records),
                "format": s.table.fmt,
                "encoding": s.table.encoding,
                "normalisation": s.normalisation,
            }
            for s in splits
        },
        "special_tokens": collect_special_tokens(r for s in splits for r in s.records),
        "source_files": {s.name: str(s.table.path) for s in splits},
        "source_sha256": {s.name: s.table.sha256 for s in splits},
        "near_duplicate_threshold": near_duplicate_threshold,
        "leakage_policy": leakage,
        "leakage": leakage_found,
        "near_dup_train": flagged,
        "dropped_train": dropped,
    }
    with atomic_dir(out_dir, replace_only=OUTPUT_FILES) as tmp:
        for s in splits:
            write_jsonl(tmp / f"{s.name}.jsonl", s.records)
        write_json(tmp / "stats.json", stats)
    return stats


def load_split(path: str | Path) -> list[dict[str, Any]]:
    """Read a normalised ``{split}.jsonl`` written by :func:`ingest_splits`."""
    records = read_jsonl(path)
    for i, record in enumerate(records, start=1):
        missing = [k for k in _RECORD_KEYS if k not in record]
        if missing:
            raise DataError(f"{path}: line {i}: not a normalised record, missing {', '.join(missing)}")
    return records
