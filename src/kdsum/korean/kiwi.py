"""Kiwi (kiwipiepy): the morpheme tokenizer that scoring uses, and the process-wide Kiwi instances.

Loading Kiwi's model takes 1-4 s, so each configuration is loaded once per process; ``kiwipiepy`` itself is
imported only when a Kiwi is first needed.

Tokenisation choices (:class:`KiwiMorphemeTokenizer`)
-----------------------------------------------------
* Text is composed to Unicode NFC first: Kiwi analyses Hangul in NFD (conjoining jamo) as other text.
* Tokens are Kiwi morpheme *forms* (``kiwipiepy`` with its default ``cong`` model, allomorphs
  integrated, default dictionaries), lowercased.  Tags are not part of the token: ROUGE
  compares surface morphemes, so the particle ``가/JKS`` and the verb stem ``가/VV`` match.
* Dropped: every symbol tag, i.e. tags starting with ``S`` except ``SL`` (foreign/Latin words),
  ``SN`` (numbers) and ``SH`` (hanja), which are content; in kiwipiepy 0.24 these are
  SF SP SS SSO SSC SE SO SW SB.  Emoji (``W_EMOJI``) are dropped too, as symbols.  Jamo-only
  interjections such as ``ㅋㅋ`` are tagged SW by Kiwi and are therefore dropped as well.
* Kept: all other tags, including ``UN`` (unanalysable), ``W_URL``, ``W_EMAIL``,
  ``W_HASHTAG``, ``W_MENTION``, ``W_SERIAL`` and ``Z_CODA``/``Z_SIOT``.
* Kiwi leaves sentence-final periods attached to Latin words (``Jimmy.``, ``memo.``,
  ``U.S.``); trailing periods are stripped from ``SL`` tokens so that ``Jimmy.`` and
  ``Jimmy를`` share the token ``jimmy`` (``U.S.`` becomes ``u.s``).
* Data tokens matching ``kdsum.korean.text.DATA_TOKEN_PATTERN`` (``#Person1#``, ``#PhoneNumber#``) are one
  token each.  Without protection Kiwi splits ``#Person2#는`` into the hashtags ``#Person2``
  and ``#는``; we register the pattern with ``Kiwi.add_re_word`` (tag NNP) so the mask is a
  single morpheme and the particle after it is analysed normally.  Masks are lowercased like
  every token (``#person1#``).
"""

from __future__ import annotations

import os
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from kdsum.korean.text import DATA_TOKEN_PATTERN

_KIWI_LOCK = threading.Lock()
_KIWI_INSTANCES: dict[int, Any] = {}

_KEEP_S_TAGS = frozenset({"SL", "SN", "SH"})
_DROP_TAGS = frozenset({"W_EMOJI"})
_KEEP_TAG_CACHE: dict[str, bool] = {}


def default_num_workers() -> int:
    """The number of cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def morpheme_kiwi(num_workers: int) -> Any:
    """The process-wide Kiwi for scoring with ``num_workers`` threads (data tokens registered as one word)."""
    with _KIWI_LOCK:
        kiwi = _KIWI_INSTANCES.get(num_workers)
        if kiwi is None:
            from kiwipiepy import Kiwi  # imported lazily: only Korean scoring needs it

            kiwi = Kiwi(num_workers=num_workers)
            # Data tokens become one NNP morpheme; see module docstring.
            kiwi.add_re_word(DATA_TOKEN_PATTERN, "NNP")
            _KIWI_INSTANCES[num_workers] = kiwi
        return kiwi


@lru_cache(maxsize=1)
def sentence_kiwi() -> Any:
    """A plain ``Kiwi()`` (default settings), for sentence splitting (kdsum.generation.baselines)."""
    from kiwipiepy import Kiwi

    return Kiwi()


def _keep_tag(tag: str) -> bool:
    if tag in _DROP_TAGS:
        return False
    if tag.startswith("S"):
        return tag in _KEEP_S_TAGS
    return True


def _forms(tokens: Iterable[Any]) -> list[str]:
    # Hot loop (one pass per Kiwi token): the tag decision is memoised per tag, which made
    # this conversion ~3x faster than calling _keep_tag per token.
    cache = _KEEP_TAG_CACHE
    out: list[str] = []
    append = out.append
    for tok in tokens:
        tag = tok.tag
        keep = cache.get(tag)
        if keep is None:
            keep = cache[tag] = _keep_tag(tag)
        if keep:
            form = tok.form.lower()
            if tag == "SL":
                form = form.rstrip(".") or form
            append(form)
    return out


def _nfc(text: str) -> str:
    """Unicode NFC: Kiwi reads Hangul in NFD (conjoining jamo) as other text."""
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def _check_str(text: Any) -> None:
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}: {text!r}")


class KiwiMorphemeTokenizer:
    """Kiwi morpheme tokenizer usable by ``rouge_score.RougeScorer`` and in batches.

    Args:
        num_workers: Kiwi's C++ worker threads for batch tokenisation (:meth:`tokenize_many`);
            ``None`` or ``-1`` (default): one per core this process may use
            (:func:`default_num_workers`).  Tokens do not depend on it (tested).
    """

    def __init__(self, num_workers: int | None = None) -> None:
        if num_workers is None or num_workers == -1:
            num_workers = default_num_workers()
        elif num_workers == 0:
            num_workers = 1  # kiwipiepy warns on 0; one thread is what 0 means anyway
        elif num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, or -1/None for all cores; got {num_workers}")
        self.num_workers = num_workers

    @property
    def kiwi(self) -> Any:
        return morpheme_kiwi(self.num_workers)

    @property
    def name(self) -> str:
        import kiwipiepy

        return f"kiwi {kiwipiepy.__version__} morphemes"

    def tokenize(self, text: str) -> list[str]:
        """Morpheme forms of one text (the ``RougeScorer`` interface); NFD Hangul is composed first."""
        _check_str(text)
        return _forms(self.kiwi.tokenize(_nfc(text)))

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        """Morpheme forms of many texts, using Kiwi's multi-threaded list input."""
        texts = list(texts)
        for t in texts:
            _check_str(t)
        if not texts:
            return []
        return [_forms(toks) for toks in self.kiwi.tokenize([_nfc(t) for t in texts])]

    def __repr__(self) -> str:
        return f"KiwiMorphemeTokenizer(num_workers={self.num_workers})"
