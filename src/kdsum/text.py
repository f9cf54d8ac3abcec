"""Text conventions of the data, defined once: data tokens (#Person1#, #PhoneNumber#, #Address2# ...) and the
rendering of a dialogue's turns.

Every module that needs one of these imports it from here: ingestion (the canonical dialogue text, the special
tokens handed to the tokenizer), prompt formatting (the conversation block), scoring (the tokens Kiwi keeps whole)
and generation (the tokens foreign-script blocking leaves allowed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

# A speaker tag's name or a PII mask: letters, then optional digits, between '#' signs.
DATA_TOKEN_PATTERN = r"#[A-Za-z]+\d*#"
DATA_TOKEN_RE = re.compile(DATA_TOKEN_PATTERN)

# A speaker tag: the data tokens that name a speaker (``#Person1#`` ... ``#Person10#``); every other data token
# is a mask (``#PhoneNumber#``, ``#Address2#``).
SPEAKER_PATTERN = r"#Person(\d+)#"
_SPEAKER_RE = re.compile(SPEAKER_PATTERN)


def data_tokens(text: str) -> list[str]:
    """Every data token of ``text``, in order, repeats included."""
    return DATA_TOKEN_RE.findall(text)


def is_speaker(token: str) -> bool:
    return _SPEAKER_RE.fullmatch(token) is not None


def sort_data_tokens(tokens: Iterable[str]) -> list[str]:
    """Distinct tokens: speakers by number first, then masks alphabetically."""
    tokens = set(tokens)
    speakers = sorted((t for t in tokens if is_speaker(t)), key=lambda t: int(_SPEAKER_RE.fullmatch(t).group(1)))
    return speakers + sorted(t for t in tokens if not is_speaker(t))


def collapse_whitespace(text: str) -> str:
    """Collapse every whitespace run (incl. newlines, NBSP, U+3000) to one space; strip."""
    return " ".join(text.split())


def render_turns(turns: Sequence[Mapping[str, str]]) -> str:
    """One ``"{speaker}: {text}"`` line per turn, joined by ``\\n``: the canonical dialogue text.

    rstrip: an empty turn (real in DialogSum train) becomes ``#Person1#:``, not ``#Person1#: ``.
    """
    return "\n".join(f"{t['speaker']}: {t['text']}".rstrip() for t in turns)
