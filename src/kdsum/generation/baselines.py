"""Non-neural reference systems, scored like any model.

Definitions (on the ingested turns, ``[{"speaker": "#Person1#", "text": ...}]``):

* ``lead``: the opening of the dialogue. The first utterance with any text, split into sentences with Kiwi
  (``Kiwi().split_into_sents``); its first sentence is taken, and the following sentences of the same utterance
  are added while the taken text is shorter than ``LEAD_MIN_CHARS`` characters (Kiwi splits a greeting such as
  ``안녕하세요,`` off as a sentence of its own, and a summary made of a greeting alone says nothing). The text is
  cut from the utterance itself, so its spacing and punctuation are kept. The speaker tag is kept as the subject:
  ``#Person1#: <sentence(s)>``.
* ``longest``: the longest utterance, by characters of its text (ties: the earliest), whole, speaker tag kept:
  ``#Person2#: <utterance>``.

Kiwi is loaded once per process (about a second; ``kdsum.korean.kiwi.sentence_kiwi``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kdsum.errors import KdsumError
from kdsum.korean.kiwi import sentence_kiwi as get_kiwi

__all__ = ["BASELINES", "LEAD_MIN_CHARS", "BaselineError", "get_kiwi", "lead", "longest", "run_baseline"]

LEAD_MIN_CHARS = 20


class BaselineError(KdsumError, ValueError):
    """An unknown baseline, or a dialogue it cannot summarize."""


def _spoken(turns: Sequence[dict]) -> list[dict]:
    spoken = [t for t in turns if t["text"].strip()]
    if not spoken:
        raise BaselineError("dialogue has no utterance with text")
    return spoken


def lead(turns: Sequence[dict], min_chars: int = LEAD_MIN_CHARS) -> str:
    """``#PersonN#: `` + the first sentence(s) of the first utterance (see the module docstring)."""
    first = _spoken(turns)[0]
    text = first["text"].strip()
    sents = get_kiwi().split_into_sents(text)
    end = len(text)
    for s in sents:
        end = s.end
        if len(text[:end].strip()) >= min_chars:
            break
    return f"{first['speaker']}: {text[:end].strip()}"


def longest(turns: Sequence[dict]) -> str:
    """``#PersonN#: `` + the longest utterance (by characters; the earliest on ties)."""
    spoken = _spoken(turns)
    best = max(range(len(spoken)), key=lambda i: (len(spoken[i]["text"].strip()), -i))
    return f"{spoken[best]['speaker']}: {spoken[best]['text'].strip()}"


BASELINES: dict[str, Callable[[Sequence[dict]], str]] = {"lead": lead, "longest": longest}


def run_baseline(name: str, records: Sequence[dict]) -> list[str]:
    """One summary per ingested record, in order."""
    if name not in BASELINES:
        raise BaselineError(f"unknown baseline '{name}' (known: {', '.join(BASELINES)})")
    fn = BASELINES[name]
    out = []
    for r in records:
        try:
            out.append(fn(r["turns"]))
        except BaselineError as exc:
            raise BaselineError(f"fname {r['fname']}: {exc}") from None
    return out
