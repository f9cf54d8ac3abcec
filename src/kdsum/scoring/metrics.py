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
* :mod:`kdsum.korean.diagnostics`: foreign-script share, prediction length, degenerate (repeated) output.

Importing it does not import ``rouge_score.tokenizers`` (nltk and scipy.stats, about 1 s): only the
rouge-score default tokenizer needs that.
"""

from __future__ import annotations

from kdsum.korean.diagnostics import (
    FOREIGN_CHAR_PATTERN,
    degenerate_warning,
    foreign_script_share,
    has_foreign_script,
    is_degenerate,
    output_diversity,
    prediction_length,
    repetition,
)
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
    "repetition",
    "paired_bootstrap",
    "prediction_length",
    "resolve_tokenizer",
    "rouge_scores",
    "tokenizer_name",
]
