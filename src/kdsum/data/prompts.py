"""Prompt datasets for the two model families.

- seq2seq (encoder-decoder): ``{"fname", "source": dialogue, "target": first reference, "references"}``
- chat (decoder-only LLMs): TRL's conversational prompt/completion format,
  ``{"fname", "prompt": [system?, user], "completion": [assistant], "references"}``.

The topic policy is part of the named prompt format, and the same format object formats every split. A format
that puts the topic into the prompt is refused for a split without topics (the competition's test.csv has
none), instead of silently training with topics and predicting without them.

A format is a :class:`kdsum.config.spec.PromptFormat` or a mapping with the same keys (``system``, ``question``,
``topic``). :func:`write_prompt_set` writes one prompt set (the ``prompts`` stage).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kdsum.config.spec import PromptFormat, PromptSetSpec
from kdsum.data.ingest import SPLITS, collect_special_tokens, load_split
from kdsum.errors import KdsumError
from kdsum.io import atomic_dir, write_json, write_jsonl
from kdsum.korean.text import is_speaker, render_turns

Format = PromptFormat | Mapping[str, Any]
CHAT_FAMILIES = ("chat", "causal")  # the prompt family / the model family that uses it


class PromptError(KdsumError, ValueError):
    """A prompt format that cannot be applied to the data consistently."""


def _get(fmt: Format, key: str) -> Any:
    return getattr(fmt, key) if isinstance(fmt, PromptFormat) else fmt.get(key)


def format_user_message(record: dict, fmt: Format) -> str:
    """``[Conversation]`` (one ``#PersonN#: text`` line per turn) and ``[Question]`` (+ the topic if the format
    asks for it)."""
    question = _get(fmt, "question")
    if _get(fmt, "topic"):
        question = f"{question}\n주제: {record['topic']}"
    return f"[Conversation]\n{render_turns(record['turns'])}\n\n[Question]\n{question}"


def format_chat_prompt(record: dict, fmt: Format) -> list[dict]:
    """The prompt messages of one dialogue (no answer): an optional system message and the user message."""
    messages = []
    if _get(fmt, "system"):
        messages.append({"role": "system", "content": _get(fmt, "system")})
    messages.append({"role": "user", "content": format_user_message(record, fmt)})
    return messages


def format_chat_record(record: dict, fmt: Format) -> dict:
    row = {"fname": record["fname"], "prompt": format_chat_prompt(record, fmt), "references": record["summaries"]}
    if record["summaries"]:
        row["completion"] = [{"role": "assistant", "content": record["summaries"][0]}]
    return row


def format_seq2seq_record(record: dict) -> dict:
    summaries = record["summaries"]
    return {
        "fname": record["fname"],
        "source": record["dialogue"],
        "target": summaries[0] if summaries else None,
        "references": summaries,
    }


def check_topic_policy(records: Iterable[dict], fmt_name: str, fmt: Format, split: str, source: str) -> None:
    """Refuse a topic-bearing format on a split whose rows lack a topic (train/predict mismatch)."""
    if not _get(fmt, "topic"):
        return
    for i, rec in enumerate(records, start=1):
        if not rec.get("topic"):
            raise PromptError(
                f"prompt format '{fmt_name}' puts the topic into the prompt, but {source} (split '{split}') row {i} "
                f"(fname={rec['fname']}) has no topic. Training with topics and predicting without them is the "
                f"mismatch this check prevents: use a format with `topic: false`, or give every split a topic."
            )


def format_split(
    records: list[dict],
    family: str,
    fmt_name: str | None = None,
    fmt: Format | None = None,
    split: str = "?",
    source: str = "?",
) -> list[dict]:
    """Every record of one split in the family's layout (``chat``, or its model family ``causal``, needs a
    format; its name defaults to a PromptFormat's own)."""
    if family == "seq2seq":
        return [format_seq2seq_record(r) for r in records]
    if family in CHAT_FAMILIES:
        if fmt is None:
            raise PromptError(f"prompt family '{family}' needs a prompt format")
        fmt_name = fmt_name or (fmt.name if isinstance(fmt, PromptFormat) else "?")
        check_topic_policy(records, fmt_name, fmt, split, source)
        return [format_chat_record(r, fmt) for r in records]
    raise PromptError(f"unknown prompt family '{family}' (expected seq2seq or chat)")


def special_tokens_file(tokens: list[str]) -> dict:
    """special_tokens.json: every data token seen in the data, for the training stage to keep whole."""
    return {
        "tokens": tokens,
        "speakers": [t for t in tokens if is_speaker(t)],
        "masks": [t for t in tokens if not is_speaker(t)],
    }


def write_prompt_set(
    spec: PromptSetSpec, data_dir: str | Path, out_dir: str | Path
) -> tuple[dict[str, int], list[str]]:
    """Write ``out_dir/{split}.jsonl`` for every ingested split of ``data_dir``, ``special_tokens.json`` and, for a
    chat set, ``format.json``: whole or not at all. Returns the rows per split and the special tokens."""
    data_dir = Path(data_dir)
    splits = {s: load_split(data_dir / f"{s}.jsonl") for s in SPLITS if (data_dir / f"{s}.jsonl").exists()}
    if not splits:
        raise PromptError(f"{data_dir}: no ingested split ({', '.join(f'{s}.jsonl' for s in SPLITS)})")
    name = spec.format.name if spec.format else None
    formatted = {
        s: format_split(recs, spec.family, name, spec.format, split=s, source=str(data_dir / f"{s}.jsonl"))
        for s, recs in splits.items()
    }
    tokens = collect_special_tokens(r for recs in splits.values() for r in recs)
    with atomic_dir(out_dir) as tmp:
        for split, rows in formatted.items():
            write_jsonl(tmp / f"{split}.jsonl", rows)
        write_json(tmp / "special_tokens.json", special_tokens_file(tokens))
        if spec.format is not None:
            write_json(tmp / "format.json", dataclasses.asdict(spec.format))
    return {s: len(rows) for s, rows in formatted.items()}, tokens
