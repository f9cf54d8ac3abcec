"""The tokenizers scoring accepts, and the guard against the silent-zero bug.

``rouge_score``'s default tokenizer lowercases the text and deletes every character outside
``[a-z0-9]``, so Korean text tokenises to (almost) nothing and scores 0 without any warning.

Guard
-----
A text containing Hangul syllables (가-힣) whose tokens contain no Hangul at all (the empty
list included) raises :class:`TokenizationError`, a ``ValueError``; so does giving Korean
text to rouge-score's default tokenizer (:func:`check_tokenizer`).  Texts without Hangul may
tokenise to nothing (an empty prediction): that is a real score of 0, not an error.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from kdsum.errors import KdsumError
from kdsum.korean.kiwi import KiwiMorphemeTokenizer

# rouge_score.tokenizers is imported only where it is used: it imports nltk, which imports
# scipy.stats (about 1 s), a cost every process importing the scorer (evaluate, predict) paid.

# Hangul syllables: a text with any of these must produce Hangul tokens.
_HANGUL_SYLLABLE_RE = re.compile(r"[\uac00-\ud7a3]")
_CONJOINING_JAMO_RE = re.compile(r"[\u1100-\u11ff]")
# Any Hangul: syllables, conjoining jamo (Kiwi emits e.g. "ᆸ니다"), compatibility jamo.
_HANGUL_ANY_RE = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\ud7b0-\ud7ff]")


class TokenizationError(KdsumError, ValueError):
    """A text with Hangul lost its Hangul in tokenisation: scoring it would silently give 0."""


class Tokenizer(Protocol):
    """What ``rouge_score.RougeScorer(tokenizer=...)`` needs."""

    def tokenize(self, text: str) -> list[str]: ...


_DEFAULT_KIWI = KiwiMorphemeTokenizer()


def resolve_tokenizer(tokenizer: Any = None) -> Tokenizer:
    """``None``/``"kiwi"`` -> Kiwi morphemes; ``"rouge-score-default"`` -> rouge_score's own."""
    if tokenizer is None or tokenizer == "kiwi":
        return _DEFAULT_KIWI
    if tokenizer == "rouge-score-default":
        from rouge_score import tokenizers as rs_tokenizers

        return rs_tokenizers.DefaultTokenizer(use_stemmer=False)
    if isinstance(tokenizer, str):
        raise ValueError(f"unknown tokenizer {tokenizer!r}: use 'kiwi' or 'rouge-score-default'")
    if not callable(getattr(tokenizer, "tokenize", None)):
        raise TypeError(f"tokenizer {tokenizer!r} has no tokenize(text) method")
    return tokenizer


def tokenizer_name(tokenizer: Any = None) -> str:
    tok = resolve_tokenizer(tokenizer)
    name = getattr(tok, "name", None)
    return name if isinstance(name, str) else type(tok).__name__


def tokenize_texts(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[str]]:
    """The tokens of each text: in one batch where the tokenizer has ``tokenize_many``."""
    batch: Callable[[Sequence[str]], list[list[str]]] | None = getattr(tokenizer, "tokenize_many", None)
    if batch is not None:
        return list(batch(texts))
    return [tokenizer.tokenize(t) for t in texts]


def has_hangul(text: str) -> bool:
    """True if ``text`` contains a Hangul syllable (가-힣), also one written in NFD as conjoining jamo."""
    if _HANGUL_SYLLABLE_RE.search(text) is not None:
        return True
    return _CONJOINING_JAMO_RE.search(text) is not None and bool(
        _HANGUL_SYLLABLE_RE.search(unicodedata.normalize("NFC", text))
    )


def is_rouge_default(tokenizer: Any) -> bool:
    # An instance of DefaultTokenizer exists only if its module was imported by someone.
    rs_tokenizers = sys.modules.get("rouge_score.tokenizers")
    return rs_tokenizers is not None and isinstance(tokenizer, rs_tokenizers.DefaultTokenizer)


def guard_tokens(text: str, tokens: Sequence[str]) -> None:
    """Refuse a tokenisation that lost all Hangul of a Hangul text (empty list included)."""
    if has_hangul(text) and not any(_HANGUL_ANY_RE.search(t) for t in tokens):
        what = "an empty token list" if not tokens else f"tokens without Hangul {list(tokens)[:8]}"
        raise TokenizationError(
            f"text with Hangul tokenised to {what}; it would score 0 silently. "
            f"Use KiwiMorphemeTokenizer. Text: {text[:80]!r}"
        )


def check_tokenizer(tokenizer: Any, sample_text: str) -> list[str]:
    """Refuse tokenizers that would silently score Korean text 0; return the sample's tokens.

    Raises :class:`TokenizationError` if ``tokenizer`` is rouge-score's default tokenizer and
    ``sample_text`` has Hangul, or if ``sample_text`` has Hangul but its tokens have none.
    """
    tok = resolve_tokenizer(tokenizer)
    if is_rouge_default(tok) and has_hangul(sample_text):
        raise TokenizationError(
            "rouge-score's default tokenizer deletes everything outside [a-z0-9], so Korean text "
            f"scores 0; use KiwiMorphemeTokenizer. Text: {sample_text[:80]!r}"
        )
    tokens = tok.tokenize(sample_text)
    guard_tokens(sample_text, tokens)
    return tokens
