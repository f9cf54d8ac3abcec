"""A content-addressed cache of Kiwi morphemes: each data set's references are tokenised once, not once per system.

Every evaluate job of a split scores its system against the same references, and tokenising them is most of a
job's scoring time (Kiwi). :func:`cached_tokens` keeps the morphemes of a list of texts in one file named by a
digest of

* the tokenizer's :func:`fingerprint` (kiwipiepy and model versions, the source of :mod:`kdsum.kiwi`, which holds
  every tokenisation choice, and the data-token pattern), and
* the texts themselves, in order.

So a changed reference, a new kiwipiepy or a changed tokenisation rule gives a new key: a miss, never stale tokens.
The cache is not a pipeline output (nothing depends on it; deleting it only costs time), which is why it may be
shared by jobs without Snakemake or DVC knowing it: a file is written whole through :mod:`kdsum.io` (a temporary
sibling, then ``os.replace``), so parallel jobs that both miss write the same bytes and a reader sees a whole file
or none. A file that does not read back as what its name promises (truncated, edited, another format) is a miss
and is rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdsum.guards import tokenize_texts
from kdsum.io import write_text

log = logging.getLogger(__name__)
FORMAT = 1
_SUFFIX = ".morphemes.json"


def fingerprint(tokenizer: Any) -> str | None:
    """What the tokens of a text depend on, as one string; None for a tokenizer whose tokens cannot be keyed.

    Only :class:`kdsum.kiwi.KiwiMorphemeTokenizer` is keyed: its thread count does not change tokens (tested), so it
    is left out; everything else that could is in."""
    from kdsum import kiwi

    if not isinstance(tokenizer, kiwi.KiwiMorphemeTokenizer):
        return None
    import kiwipiepy

    try:
        import kiwipiepy_model

        model = getattr(kiwipiepy_model, "__version__", "unknown")
    except ImportError:  # a model installed some other way: its version is unknown, the kiwipiepy version still keys
        model = "unknown"
    rules = hashlib.sha256(Path(kiwi.__file__).read_bytes()).hexdigest()[:16]
    return (
        f"kiwipiepy {kiwipiepy.__version__}; model {model}; kdsum.kiwi {rules}; data tokens {kiwi.DATA_TOKEN_PATTERN}"
    )


def cache_key(print_: str, texts: Sequence[str]) -> str:
    """Digest of a fingerprint and the texts; each part length-prefixed, so no two lists of texts share a key."""
    h = hashlib.sha256()
    for part in (f"kdsum morphemes {FORMAT}", print_, *texts):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def cache_path(directory: Path, key: str) -> Path:
    return Path(directory) / f"{key[:32]}{_SUFFIX}"


def _read(path: Path, key: str, n: int) -> list[list[str]] | None:
    """The token lists in ``path`` if it holds exactly ``n`` of them under ``key``; None otherwise (a miss)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):  # absent, unreadable, truncated
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != key or data.get("n") != n:
        return None
    tokens = data.get("tokens")
    if not isinstance(tokens, list) or len(tokens) != n:
        return None
    if not all(isinstance(ts, list) and all(isinstance(t, str) for t in ts) for ts in tokens):
        return None
    return tokens


def cached_tokens(tokenizer: Any, texts: Sequence[str], directory: Path | None) -> tuple[list[list[str]], str]:
    """The tokens of each text, read from the cache in ``directory`` or made (in one batch) and stored there.

    Returns (token lists, ``"hit"``, ``"miss"`` or ``"off"``); ``"off"`` when ``directory`` is None or the tokenizer
    has no :func:`fingerprint`: then the texts are simply tokenised."""
    texts = list(texts)
    print_ = None if directory is None else fingerprint(tokenizer)
    if print_ is None:
        return tokenize_texts(tokenizer, texts), "off"
    key = cache_key(print_, texts)
    path = cache_path(Path(directory), key)
    tokens = _read(path, key, len(texts))
    if tokens is not None:
        return tokens, "hit"
    tokens = [list(ts) for ts in tokenize_texts(tokenizer, texts)]
    payload = {"format": FORMAT, "key": key, "tokenizer": print_, "n": len(texts), "tokens": tokens}
    try:
        write_text(path, json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n")
    except OSError as exc:  # the cache only saves time: a job must not fail for it
        log.warning("morpheme cache %s not written: %s", path, exc)
    return tokens, "miss"


class KnownTokens:
    """A tokenizer that serves the texts it was given tokens for and sends the rest, in one batch, to ``inner``.

    The tokens it serves are ``inner``'s own (made by it, or read from a cache keyed by its fingerprint), so scores are
    those of ``inner``; its ``name`` is ``inner``'s, so the recorded tokenizer is too."""

    def __init__(self, inner: Any, known: dict[str, list[str]]) -> None:
        self.inner, self.known = inner, known

    @property
    def name(self) -> str:
        from kdsum.guards import tokenizer_name

        return tokenizer_name(self.inner)

    def tokenize(self, text: str) -> list[str]:
        tokens = self.known.get(text)
        return list(tokens) if tokens is not None else self.inner.tokenize(text)

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        todo = list(dict.fromkeys(t for t in texts if t not in self.known))
        fresh = dict(zip(todo, tokenize_texts(self.inner, todo), strict=True)) if todo else {}
        return [self.known[t] if t in self.known else fresh[t] for t in texts]


def with_cached_references(
    tokenizer: Any, references: Sequence[Sequence[str]], directory: Path | None
) -> tuple[Any, str]:
    """``tokenizer`` with the distinct reference texts' tokens taken from the cache (see :func:`cached_tokens`).

    The references must be given as the scorer will see them (normalised): tokens are served by exact text."""
    if directory is None:
        return tokenizer, "off"
    distinct = list(dict.fromkeys(r for refs in references for r in refs))
    tokens, status = cached_tokens(tokenizer, distinct, directory)
    return KnownTokens(tokenizer, dict(zip(distinct, tokens, strict=True))), status


__all__ = ["KnownTokens", "cache_key", "cache_path", "cached_tokens", "fingerprint", "with_cached_references"]
