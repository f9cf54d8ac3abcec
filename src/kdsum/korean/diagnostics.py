"""Diagnostics of predictions: foreign script, length, and degenerate (repeated or copied) output.

:func:`has_foreign_script` flags Latin letters, Japanese kana, emoji, URLs, and Han
characters (hanja in a Korean summary usually means a model leaked Chinese), after removing
the data tokens (speaker tags and PII masks), whose Latin letters are not foreign text.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kdsum.korean.guards import resolve_tokenizer, tokenize_texts
from kdsum.korean.text import DATA_TOKEN_RE

# Foreign script = Latin letters (incl. full-width), Han (CJK ideographs: in Korean summaries
# they are hanja leaking from a model, counted as foreign), Japanese kana, emoji, URLs.
# The character classes are shared with kdsum.generation.predict's blocker, so generation blocks what the metric counts.
FOREIGN_CHAR_PATTERN = (
    r"[A-Za-z\uff21-\uff3a\uff41-\uff5a]|"
    r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]|"  # hiragana, katakana, half-width katakana
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]|"  # Han
    r"[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f]"  # emoji and pictographs
)
_FOREIGN_RE = re.compile(r"https?://|www\.|" + FOREIGN_CHAR_PATTERN)


def has_foreign_script(text: str) -> bool:
    """True if ``text``, with its data tokens removed, has Latin, Han, kana, emoji or a URL."""
    return _FOREIGN_RE.search(DATA_TOKEN_RE.sub(" ", text)) is not None


def foreign_script_share(texts: Sequence[str]) -> float:
    """Share of ``texts`` for which :func:`has_foreign_script` is true (0.0 for no texts)."""
    texts = list(texts)
    if not texts:
        return 0.0
    return sum(has_foreign_script(t) for t in texts) / len(texts)


def prediction_length(
    texts: Sequence[str], tokenizer: Any = None, token_counts: Sequence[int] | None = None
) -> dict[str, float]:
    """Mean length of ``texts`` in characters and in (Kiwi) morphemes.

    ``token_counts``: the texts' morpheme counts when the caller has them already (``rouge_scores``'
    ``pred_tokens`` column), so the texts are not tokenised a second time."""
    texts = list(texts)
    if not texts:
        return {"mean_chars": 0.0, "mean_morphemes": 0.0}
    if token_counts is None:
        counts = [len(t) for t in tokenize_texts(resolve_tokenizer(tokenizer), texts)]
    else:
        counts = list(token_counts)
        if len(counts) != len(texts):
            raise ValueError(f"token_counts has {len(counts)} entries for {len(texts)} texts")
    return {
        "mean_chars": float(np.mean([len(t) for t in texts])),
        "mean_morphemes": float(np.mean(counts)),
    }


# --------------------------------------------------------------------------- degenerate output

_NOT_WORD_RE = re.compile(r"[\W_]+")


def _text_key(text: str) -> str:
    """What "the same text" means for :func:`output_diversity`: NFC, case-folded, letters and digits only (so
    predictions that differ only in spacing or punctuation count as one)."""
    return _NOT_WORD_RE.sub("", unicodedata.normalize("NFC", text).casefold())


def _copied(prediction: str, dialogue: str) -> bool:
    """A non-empty prediction that is, whitespace collapsed, a substring of its dialogue (e.g. an utterance)."""
    pred = " ".join(prediction.split())
    return bool(pred) and pred in " ".join(dialogue.split())


def repetition(predictions: Sequence[str]) -> dict[str, float]:
    """``distinct_share``: distinct predictions / predictions; ``top_share``: the most common prediction's count /
    predictions (both comparing :func:`_text_key`); 0 for no predictions."""
    keys = Counter(_text_key(p) for p in predictions)
    n = len(predictions) or 1
    return {"distinct_share": len(keys) / n, "top_share": max(keys.values(), default=0) / n}


def output_diversity(predictions: Sequence[str], dialogues: Sequence[str]) -> dict[str, float]:
    """How varied a system's predictions are, over its dialogues (in the same order): :func:`repetition`'s shares,
    and ``copied_share``, the share of predictions copied from their own dialogue (:func:`_copied`)."""
    if len(predictions) != len(dialogues):
        raise ValueError(f"{len(predictions)} predictions for {len(dialogues)} dialogues")
    copied = sum(_copied(p, d) for p, d in zip(predictions, dialogues, strict=True))
    return {**repetition(predictions), "copied_share": copied / (len(predictions) or 1)}


def is_degenerate(diversity: Mapping[str, float], threshold: float) -> bool:
    """(Nearly) the same text for ``threshold`` of the dialogues or more (``evaluation.degenerate_share``)."""
    return diversity["top_share"] >= threshold


def degenerate_warning(what: str, diversity: Mapping[str, float], threshold: float) -> str | None:
    """One warning line for a degenerate system's predictions, or None."""
    if not is_degenerate(diversity, threshold):
        return None
    return (
        f"warning: {what}: one text is {diversity['top_share']:.0%} of the predictions (distinct "
        f"{diversity['distinct_share']:.0%}; evaluation.degenerate_share {threshold}): degenerate output, never "
        "the submitted system"
    )
