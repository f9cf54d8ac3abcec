"""Prompt datasets for the two model families.

- seq2seq (encoder-decoder): ``{"fname", "source": dialogue, "target": first reference, "references"}``
- chat (decoder-only LLMs): TRL's conversational prompt/completion format,
  ``{"fname", "prompt": [system?, user], "completion": [assistant], "references"}``.

The topic policy is part of the named prompt format, and the same format object formats every split. A format
that puts the topic into the prompt is refused for a split without topics (the competition's test.csv has
none), instead of silently training with topics and predicting without them.
"""

from __future__ import annotations

from typing import Iterable


class PromptError(ValueError):
    """A prompt format that cannot be applied to the data consistently."""


def conversation_block(turns: list[dict]) -> str:
    """One line per turn, speaker tag kept: ``#Person1#: text``."""
    return "\n".join(f"{t['speaker']}: {t['text']}" for t in turns)


def format_user_message(record: dict, fmt: dict) -> str:
    question = fmt["question"]
    if fmt.get("topic"):
        question = f"{question}\n주제: {record['topic']}"
    return f"[Conversation]\n{conversation_block(record['turns'])}\n\n[Question]\n{question}"


def format_chat_prompt(record: dict, fmt: dict) -> list[dict]:
    """The prompt messages of one dialogue (no answer): an optional system message and the user message."""
    messages = []
    if fmt.get("system"):
        messages.append({"role": "system", "content": fmt["system"]})
    messages.append({"role": "user", "content": format_user_message(record, fmt)})
    return messages


def format_chat_record(record: dict, fmt: dict) -> dict:
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


def check_topic_policy(records: Iterable[dict], fmt_name: str, fmt: dict, split: str, source: str) -> None:
    """Refuse a topic-bearing format on a split whose rows lack a topic (train/predict mismatch)."""
    if not fmt.get("topic"):
        return
    for i, rec in enumerate(records, start=1):
        if not rec.get("topic"):
            raise PromptError(
                f"prompt format '{fmt_name}' puts the topic into the prompt, but {source} (split '{split}') row {i} "
                f"(fname={rec['fname']}) has no topic. Training with topics and predicting without them is the "
                f"mismatch this check prevents: use a format with `topic: false`, or give every split a topic."
            )


def format_split(records: list[dict], family: str, fmt_name: str | None = None, fmt: dict | None = None,
                 split: str = "?", source: str = "?") -> list[dict]:
    if family == "seq2seq":
        return [format_seq2seq_record(r) for r in records]
    if family == "chat":
        assert fmt is not None and fmt_name is not None
        check_topic_policy(records, fmt_name, fmt, split, source)
        return [format_chat_record(r, fmt) for r in records]
    raise PromptError(f"unknown prompt family '{family}' (expected seq2seq or chat)")
