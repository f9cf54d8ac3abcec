"""Text conventions of the data, defined once: the Unicode normalisation of every text, data tokens (#Person1#,
#PhoneNumber#, #Address2# ...) and the rendering of a dialogue's turns.

Every module that needs one of these imports it from here: ingestion (the normalised text, the canonical dialogue
text, the special tokens handed to the tokenizer), prompt formatting (the conversation block), scoring (the same
normalisation of predictions and references, the tokens Kiwi keeps whole) and generation (the tokens foreign-script
blocking leaves allowed).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

# A speaker tag's name or a PII mask: letters, then optional digits, between '#' signs.
DATA_TOKEN_PATTERN = r"#[A-Za-z]+\d*#"
DATA_TOKEN_RE = re.compile(DATA_TOKEN_PATTERN)

# A speaker tag: the data tokens that name a speaker (``#Person1#`` ... ``#Person10#``); every other data token
# is a mask (``#PhoneNumber#``, ``#Address2#``).
SPEAKER_PATTERN = r"#Person(\d+)#"
_SPEAKER_RE = re.compile(SPEAKER_PATTERN)


# Invisible characters that raw text may carry and no dialogue needs: every Unicode format character (category Cf:
# U+200B zero-width space, U+200C/U+200D zero-width (non-)joiner, U+2060 word joiner, U+FEFF byte-order mark /
# zero-width no-break space, U+00AD soft hyphen, the bidirectional marks, ...). Written out, so that importing this
# module does not scan the Unicode database; tests/test_data.py checks it covers every Cf character of this Python.
FORMAT_CHARS = (
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
)
_FORMAT_RE = re.compile(f"[{FORMAT_CHARS}]")
# Control characters: C0 except tab and the line ends (NUL included), DEL, and C1 (U+0080-U+009F).
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_UNWANTED_RE = re.compile(f"[{FORMAT_CHARS}\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]")
_CR_RE = re.compile("\r\n?")

#: The keys :func:`normalize_text` counts under.
TEXT_FIXES = ("nfc", "format_chars", "control_chars")


def normalize_text(text: str, counts: Counter | None = None) -> str:
    """Text as every stage should see it: line ends ``\\n``, no format or control characters, Unicode NFC.

    Hangul typed or saved in NFD (decomposed conjoining jamo, as macOS file names and some editors produce) is
    composed to syllables, so that it equals, tokenises and scores like the same text in NFC; a zero-width space
    before ``#Person2#:`` no longer hides the tag; NUL bytes and other control characters are dropped (tab and
    newline are kept; CR and CRLF become newlines). Text that is already clean is returned unchanged (the same
    string), so its scores are bit-identical. ``counts`` (optional) is incremented by what changed: ``nfc`` (1 if
    NFC changed the text), ``format_chars`` and ``control_chars`` (characters removed).
    """
    if "\r" in text:
        text = _CR_RE.sub("\n", text)
    if _UNWANTED_RE.search(text) is None:
        pass
    elif counts is None:
        text = _CONTROL_RE.sub("", _FORMAT_RE.sub("", text))
    else:
        text, n_format = _FORMAT_RE.subn("", text)
        text, n_control = _CONTROL_RE.subn("", text)
        counts["format_chars"] += n_format
        counts["control_chars"] += n_control
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
        if counts is not None:
            counts["nfc"] += 1
    return text


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
