"""ROUGE on Korean morphemes, with guards against the silent-zero bug, and bootstrap statistics.

``rouge_score``'s default tokenizer lowercases the text and deletes every character outside
``[a-z0-9]``, so Korean text tokenises to (almost) nothing and scores 0 without any warning.
Here every text is tokenised into Kiwi morphemes, and any scoring path refuses to run when
Hangul would be lost (:class:`TokenizationError`).

This module gathers the scoring API in one import; each part lives in the module of its responsibility:

* :mod:`kdsum.korean.kiwi`: the Kiwi morpheme tokenizer (what a token is: the tokenisation choices);
* :mod:`kdsum.korean.guards`: which tokenizers scoring accepts, and the guard against losing Hangul;
* :mod:`kdsum.scoring.rouge`: ROUGE-1/2/L F1, bit-for-bit rouge_score's, for many pairs at once;
* :mod:`kdsum.scoring.bootstrap`: bootstrap confidence intervals and the paired bootstrap;
* :mod:`kdsum.korean.diagnostics`: foreign-script share and prediction length.

Importing it does not import ``rouge_score.tokenizers`` (nltk and scipy.stats, about 1 s): only the
rouge-score default tokenizer needs that.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence

from kdsum.korean.diagnostics import FOREIGN_CHAR_PATTERN, foreign_script_share, has_foreign_script, prediction_length
from kdsum.korean.guards import (
    TokenizationError,
    Tokenizer,
    check_tokenizer,
    has_hangul,
    resolve_tokenizer,
    tokenizer_name,
)
from kdsum.korean.kiwi import KiwiMorphemeTokenizer, default_num_workers
from kdsum.korean.text import DATA_TOKEN_PATTERN
from kdsum.scoring.bootstrap import bootstrap_ci, corpus_summary, paired_bootstrap
from kdsum.scoring.rouge import ROUGE_KEYS, lcs_length, rouge_scores

#: The data tokens (speaker tags and PII masks) that Kiwi keeps whole: ``kdsum.korean.text.DATA_TOKEN_PATTERN``.
MASK_PATTERN = DATA_TOKEN_PATTERN

__all__ = [
    "FOREIGN_CHAR_PATTERN",
    "MASK_PATTERN",
    "ROUGE_KEYS",
    "TokenizationError",
    "KiwiMorphemeTokenizer",
    "Tokenizer",
    "bootstrap_ci",
    "check_tokenizer",
    "corpus_summary",
    "default_num_workers",
    "foreign_script_share",
    "has_foreign_script",
    "has_hangul",
    "degenerate_warning",
    "is_degenerate",
    "lcs_length",
    "output_diversity",
    "paired_bootstrap",
    "prediction_length",
    "resolve_tokenizer",
    "rouge_scores",
    "tokenizer_name",
]


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


def output_diversity(predictions: Sequence[str], dialogues: Sequence[str]) -> dict[str, float]:
    """How varied a system's predictions are, over its dialogues (in the same order):

    ``distinct_share``: distinct predictions / predictions; ``top_share``: the most common prediction's count /
    predictions (both comparing :func:`_text_key`); ``copied_share``: the share of predictions copied from their
    own dialogue (:func:`_copied`)."""
    if len(predictions) != len(dialogues):
        raise ValueError(f"{len(predictions)} predictions for {len(dialogues)} dialogues")
    n = len(predictions)
    if not n:
        return {"distinct_share": 0.0, "top_share": 0.0, "copied_share": 0.0}
    keys = Counter(_text_key(p) for p in predictions)
    copied = sum(_copied(p, d) for p, d in zip(predictions, dialogues, strict=True))
    return {"distinct_share": len(keys) / n, "top_share": max(keys.values()) / n, "copied_share": copied / n}


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
