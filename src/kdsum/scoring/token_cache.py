"""A content-addressed cache of Kiwi morphemes: each data set's references are tokenised once, not once per system,
and each predictions file once, not once per scoring of it.

Every evaluate job of a split scores its system against the same references, and tokenising them is most of a
warm job's scoring time (Kiwi). :class:`ReferenceTokens` (the evaluate path) and :func:`cached_tokens` keep the
morphemes of a list of texts in one file named by a digest of

* the tokenizer's :func:`fingerprint` (kiwipiepy and model versions, the source of :mod:`kdsum.korean.kiwi`, which holds
  every tokenisation choice, and the data-token pattern), and
* the texts themselves, in order.

So a changed reference, a new kiwipiepy or a changed tokenisation rule gives a new key: a miss, never stale tokens.
The cache is not a pipeline output (nothing depends on it; deleting it only costs time), which is why it may be
shared by jobs without Snakemake or DVC knowing it: a file is written whole through :mod:`kdsum.io` (a temporary
sibling, then ``os.replace``), so parallel jobs that both miss write the same bytes and a reader sees a whole file
or none. A file that does not read back as what its name promises (truncated, another format or key, a wrong
count) is a miss and is rewritten; the bytes of a well-formed file are trusted (no checksum of the tokens). Files are
never pruned: one per distinct reference set and tokenizer (about 128 kB for the 499 Korean dev references).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from kdsum.errors import SystemFaultError
from kdsum.io import write_text
from kdsum.korean.guards import tokenize_texts

log = logging.getLogger(__name__)
FORMAT = 1
_SUFFIX = ".morphemes.json"


def fingerprint(tokenizer: Any) -> str | None:
    """What the tokens of a text depend on, as one string; None for a tokenizer whose tokens cannot be keyed.

    Only :class:`kdsum.korean.kiwi.KiwiMorphemeTokenizer` is keyed: its thread count does not change tokens (tested), so it
    is left out; everything else that could is in."""
    from kdsum.korean import kiwi

    if not isinstance(tokenizer, kiwi.KiwiMorphemeTokenizer):
        return None
    import kiwipiepy

    try:
        import kiwipiepy_model

        model = getattr(kiwipiepy_model, "__version__", "unknown")
    except ImportError:  # a model installed some other way: its version is unknown, the kiwipiepy version still keys
        model = "unknown"
    rules = hashlib.sha256(Path(kiwi.__file__).read_bytes()).hexdigest()[:16]
    return f"kiwipiepy {kiwipiepy.__version__}; model {model}; kdsum.korean.kiwi {rules}; data tokens {kiwi.DATA_TOKEN_PATTERN}"


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


def _write(path: Path, key: str, print_: str, tokens: list[list[str]]) -> None:
    payload = {"format": FORMAT, "key": key, "tokenizer": print_, "n": len(tokens), "tokens": tokens}
    try:
        write_text(path, json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n")
    except (OSError, SystemFaultError) as exc:  # the cache only saves time: a job must not fail for it
        log.warning("morpheme cache %s not written: %s", path, exc)


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
    _write(path, key, print_, tokens)
    return tokens, "miss"


class ReferenceTokens:
    """``inner`` with a data set's reference tokens read from the cache in ``directory`` (see the module docstring).

    On a hit, :meth:`tokenize_many` serves the references from the file and sends only the other texts (the
    predictions) to ``inner``. On a miss it sends every text to ``inner`` in one batch, exactly as without a cache,
    and :meth:`store`, called once the scores are made, writes the references' tokens for the next job. The tokens
    it serves are ``inner``'s own, so the scores are; its ``name`` is ``inner``'s, so the recorded tokenizer is too.

    ``references``: as the scorer will see them (normalised), since tokens are served by exact text. ``status``:
    ``"hit"``, ``"miss"`` or ``"off"`` (no directory, or a tokenizer without a :func:`fingerprint`)."""

    def __init__(self, inner: Any, references: Sequence[Sequence[str]], directory: Path | None) -> None:
        self.inner = inner
        self.references = list(dict.fromkeys(r for refs in references for r in refs))
        self.known: dict[str, list[str]] = {}
        self._made: dict[str, list[str]] = {}
        self._print = None if directory is None else fingerprint(inner)
        if self._print is None:
            self.status = "off"
            return
        self._key = cache_key(self._print, self.references)
        self.path = cache_path(Path(directory), self._key)
        tokens = _read(self.path, self._key, len(self.references))
        self.status = "miss" if tokens is None else "hit"
        if tokens is not None:
            self.known = dict(zip(self.references, tokens, strict=True))

    @property
    def name(self) -> str:
        from kdsum.korean.guards import tokenizer_name

        return tokenizer_name(self.inner)

    def tokenize(self, text: str) -> list[str]:
        tokens = self.known.get(text)
        return list(tokens) if tokens is not None else self.inner.tokenize(text)

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        todo = list(dict.fromkeys(t for t in texts if t not in self.known))
        fresh = dict(zip(todo, tokenize_texts(self.inner, todo), strict=True)) if todo else {}
        if self.status == "miss":
            self._made.update(fresh)
        return [self.known[t] if t in self.known else fresh[t] for t in texts]

    def store(self) -> None:
        """After a miss: write the references' tokens (those not yet made are made now, in one batch)."""
        if self.status != "miss":
            return
        missing = [r for r in self.references if r not in self._made]
        if missing:
            self._made.update(zip(missing, tokenize_texts(self.inner, missing), strict=True))
        _write(self.path, self._key, self._print, [list(self._made[r]) for r in self.references])


class TokensAhead:
    """The tokens of some texts (each distinct text once), made by ``tokenizer`` in a background thread started at once.

    ``texts``: the texts, or a function that returns them, called in the background thread (e.g. a quick read of a
    file that the calling thread reads meanwhile). The evaluate path starts one on the predictions' file, so that
    Kiwi's C++ workers analyse the predictions while the calling thread reads both files and the morpheme cache;
    :class:`ServedAhead` then serves them. It serves by exact text, so the texts need not be the ones scored: any
    other text is tokenised as usual. Kiwi analyses every text of a batch on its own, so a text's tokens do not
    depend on the batch it is in (the tests compare the outputs). An error in the background is not raised there:
    :meth:`tokens` then returns nothing and the texts are tokenised again in the caller's thread, where an error
    of the tokenizer surfaces as it would have."""

    def __init__(self, tokenizer: Any, texts: Iterable[str] | Callable[[], Iterable[str]]) -> None:
        self._source = texts
        self._tokenizer = tokenizer
        self.texts: list[str] = []
        self._tokens: list[list[str]] | None = None
        self._served: dict[str, list[str]] | None = None
        self._thread = threading.Thread(target=self._run, name="kdsum-tokens-ahead")
        self._thread.start()

    def _run(self) -> None:
        try:
            source = self._source
            self.texts = list(dict.fromkeys(source() if callable(source) else source))
            self._tokens = tokenize_texts(self._tokenizer, self.texts)
        except Exception:  # noqa: BLE001 - the caller's own reading and tokenisation raise what is wrong
            self._tokens = None

    def tokens(self) -> dict[str, list[str]]:
        """text -> tokens, once the background batch is done (empty if it failed)."""
        if self._served is None:
            self._thread.join()
            ok = self._tokens is not None and len(self._tokens) == len(self.texts)
            self._served = dict(zip(self.texts, self._tokens, strict=True)) if ok else {}
        return self._served


class TextTokens:
    """The tokens of a fixed list of texts (a predictions file's summaries), from the cache in ``directory``.

    On a hit they are served from the file, and Kiwi is not loaded at all: a rerun of scoring after a change of the
    ROUGE code, or the report part of a file the evaluate job has scored, costs no Kiwi model load (1-4 s a job). On a
    miss they are made ahead, in a background :class:`TokensAhead` (the whole list, also when only some rows are
    scored, so the file is complete for the next job), and :meth:`store` writes them once the scores are made. It
    offers :class:`TokensAhead`'s :meth:`tokens`, so :class:`ServedAhead` serves either."""

    def __init__(self, tokenizer: Any, texts: Sequence[str], directory: Path) -> None:
        self.texts = list(dict.fromkeys(texts))
        self._print = fingerprint(tokenizer)
        self._ahead: TokensAhead | None = None
        self._known: dict[str, list[str]] | None = None
        self.status = "off" if self._print is None else "miss"
        if self._print is not None:
            self._key = cache_key(self._print, self.texts)
            self.path = cache_path(Path(directory), self._key)
            tokens = _read(self.path, self._key, len(self.texts))
            if tokens is not None:
                self.status, self._known = "hit", dict(zip(self.texts, tokens, strict=True))
        if self._known is None:
            self._ahead = TokensAhead(tokenizer, self.texts)

    def tokens(self) -> dict[str, list[str]]:
        return self._known if self._known is not None else self._ahead.tokens()

    def store(self) -> None:
        """After a miss: write the texts' tokens (all of them made ahead, or nothing is written)."""
        if self.status != "miss":
            return
        made = self._ahead.tokens()
        if len(made) == len(self.texts):
            _write(self.path, self._key, self._print, [list(made[t]) for t in self.texts])


class ServedAhead:
    """``inner`` (a tokenizer, e.g. a :class:`ReferenceTokens`), with the texts of a :class:`TokensAhead` served from
    it: :meth:`tokenize_many` waits for the background batch and sends only the other texts to ``inner``. Its
    ``name`` is ``inner``'s."""

    def __init__(self, inner: Any, ahead: TokensAhead | TextTokens) -> None:
        self.inner = inner
        self.ahead = ahead

    @property
    def name(self) -> str:
        from kdsum.korean.guards import tokenizer_name

        return tokenizer_name(self.inner)

    def tokenize(self, text: str) -> list[str]:
        tokens = self.ahead.tokens().get(text)
        return list(tokens) if tokens is not None else self.inner.tokenize(text)

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        known = self.ahead.tokens()
        todo = [t for t in texts if t not in known]
        fresh = dict(zip(todo, tokenize_texts(self.inner, todo), strict=True)) if todo else {}
        return [known[t] if t in known else fresh[t] for t in texts]


__all__ = [
    "FORMAT",
    "ReferenceTokens",
    "ServedAhead",
    "TextTokens",
    "TokensAhead",
    "cache_key",
    "cache_path",
    "cached_tokens",
    "fingerprint",
]
