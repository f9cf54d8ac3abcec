"""Descriptive statistics of an ingested split (``stats.json``) and the special tokens of the data."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kdsum.korean.text import data_tokens, is_speaker, sort_data_tokens


def record_texts(record: Mapping[str, Any]) -> Iterable[str]:
    """A record's dialogue, then its summaries."""
    yield record.get("dialogue") or ""
    yield from record.get("summaries") or []


def collect_special_tokens(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every distinct data token (``kdsum.korean.text.DATA_TOKEN_PATTERN``) in the records' dialogues and summaries.

    Derived from the data (never hand-listed) so a new mask such as ``#CardNumber#`` or ``#Address2#`` reaches
    the tokenizer automatically, and the tokenizer keeps whole exactly what scoring keeps whole. Sorted: speakers
    by number, then masks alphabetically.
    """
    found: set[str] = set()
    for record in records:
        for text in record_texts(record):
            found.update(data_tokens(text))
    return sort_data_tokens(found)


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _topics(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    topics = Counter(r["topic"] for r in records if r["topic"] is not None)
    if not topics:
        return None
    # Ties broken by name so stats.json is byte-stable across runs.
    top = sorted(topics.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return {"distinct": len(topics), "most_common": [{"topic": t, "count": c} for t, c in top]}


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
        tok for r in records for text in record_texts(r) for tok in data_tokens(text) if not is_speaker(tok)
    )
    dialogue_counts = Counter(r["dialogue"] for r in records)
    return {
        "rows": len(records),
        "turns": {"mean": _mean(n_turns), "min": min(n_turns, default=0), "max": max(n_turns, default=0)},
        "dialogue_chars": {"mean": _mean(dlg_chars), "max": max(dlg_chars, default=0)},
        "summary_chars": {"mean": _mean(sum_chars)},
        "references_per_dialogue": {"max": max((len(r["summaries"]) for r in records), default=0)},
        "speakers": {str(k): n_speakers[k] for k in sorted(n_speakers)},
        "speaker_tags": sort_data_tokens(speaker_tags),
        "masks": {m: masks[m] for m in sorted(masks)},
        "topics": _topics(records),
        # Not a refusal (only duplicate fnames are), but worth seeing: rows whose
        # normalised dialogue repeats an earlier row of the same split.
        "duplicate_dialogues": sum(c - 1 for c in dialogue_counts.values()),
    }
