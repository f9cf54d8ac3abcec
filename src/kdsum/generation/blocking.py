"""Foreign-script blocking at generation time (``generation.block_foreign_scripts``).

Every vocabulary entry whose decoded text contains Latin letters (incl. full-width), Han characters, Japanese kana,
emoji or URL pieces is suppressed, the same classes that ``kdsum.korean.diagnostics.has_foreign_script`` counts as
foreign.
Exempt: special tokens (the end-of-turn token must stay reachable), data tokens (``#Person1#``, ``#PhoneNumber#``;
text matching ``kdsum.korean.text.DATA_TOKEN_PATTERN``), and, when a tokenizer splits a data token into pieces, those
pieces. The mask is computed once per tokenizer (:func:`foreign_token_mask`) and applied as a precomputed additive
bias (0 / -inf, :class:`BlockTokensProcessor`): on a 152k vocabulary at batch 16 that costs about 1.5 ms per step
on CPU, against about 45 ms for ``masked_fill`` with the boolean mask and about 400 ms for ``suppress_tokens``
(which rebuilds an ``isin`` mask over the vocabulary at every step), measured with 2 threads on a shared CPU.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from kdsum.korean.diagnostics import FOREIGN_CHAR_PATTERN
from kdsum.korean.text import DATA_TOKEN_RE

# Latin (ASCII + full-width), Han, kana, emoji and URL pieces: the classes kdsum.korean.diagnostics counts as foreign.
# Latin-1 / extended Latin letters (é, ß) are included too: a Korean summary has no use for them.
# Token pieces are matched, so URL fragments ("://", "https") count on their own here.
_FOREIGN_RE = re.compile(r"://|https?|www\.|[\u00c0-\u024f]|" + FOREIGN_CHAR_PATTERN)


def has_foreign_text(text: str) -> bool:
    """True if ``text`` (data tokens removed) has Latin, Han, kana, emoji or a URL piece."""
    return _FOREIGN_RE.search(DATA_TOKEN_RE.sub(" ", text)) is not None


def _allowed_ids(tokenizer, keep_tokens: Iterable[str], n: int) -> list[int]:
    allowed = set(tokenizer.all_special_ids)
    allowed.update(i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special and i < n)
    for t in keep_tokens:
        allowed.update(tokenizer(t, add_special_tokens=False)["input_ids"])
    return [i for i in allowed if 0 <= i < n]


def foreign_token_mask(tokenizer, keep_tokens: Iterable[str] = ()) -> torch.Tensor:
    """Boolean mask over the tokenizer's ids (``len(tokenizer)``): True = suppress. Cached on the tokenizer.

    ``keep_tokens``: data tokens (``#Person1#`` ...) whose ids, or pieces if the tokenizer splits them, stay allowed.
    """
    key = (len(tokenizer), tuple(sorted(set(keep_tokens))))
    cache = tokenizer.__dict__.setdefault("_kdsum_foreign_masks", {})
    if key in cache:
        return cache[key]
    n = len(tokenizer)
    texts = tokenizer.batch_decode(
        [[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    mask = torch.tensor([has_foreign_text(t) for t in texts], dtype=torch.bool)
    allowed = _allowed_ids(tokenizer, key[1], n)
    if allowed:
        mask[torch.tensor(allowed)] = False
    cache[key] = mask
    return mask


try:  # transformers' base class, so generate() accepts the processor in its LogitsProcessorList
    from transformers import LogitsProcessor as _LogitsProcessorBase
except ImportError:  # pragma: no cover
    _LogitsProcessorBase = object


class BlockTokensProcessor(_LogitsProcessorBase):
    """Suppress the masked ids by adding a precomputed bias (0 or -inf) to the scores.

    Ids beyond the mask (embedding rows padded past the tokenizer, as in Qwen) are blocked too. An additive bias
    is the cheapest form measured on CPU (see the module docstring): about 10-30x faster per step than
    ``masked_fill`` with a broadcast boolean mask and about 60-300x faster than ``suppress_tokens``.
    """

    def __init__(self, mask: torch.Tensor):
        self.mask = mask
        self._bias: dict[tuple, torch.Tensor] = {}

    def bias_for(self, scores: torch.Tensor) -> torch.Tensor:
        key = (scores.shape[-1], scores.dtype, scores.device)
        bias = self._bias.get(key)
        if bias is None:
            v = scores.shape[-1]
            m = torch.ones(v, dtype=torch.bool)
            k = min(v, self.mask.shape[0])
            m[:k] = self.mask[:k]
            bias = torch.zeros(v, dtype=scores.dtype).masked_fill(m, float("-inf")).to(scores.device)
            self._bias[key] = bias
        return bias

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores + self.bias_for(scores)
