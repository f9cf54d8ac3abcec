"""ROUGE on Korean morphemes, with guards against the silent-zero bug, and bootstrap statistics.

Why this module exists
----------------------
``rouge_score``'s default tokenizer lowercases the text and deletes every character outside
``[a-z0-9]``, so Korean text tokenises to (almost) nothing and scores 0 without any warning.
Here every text is tokenised into Kiwi morphemes, and any scoring path refuses to run when
Hangul would be lost (:class:`TokenizationError`).

Tokenisation choices (:class:`KiwiMorphemeTokenizer`)
-----------------------------------------------------
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
* Speaker/PII masks matching ``#[A-Za-z]+\\d*#`` (``#Person1#``, ``#PhoneNumber#``) are one
  token each.  Without protection Kiwi splits ``#Person2#는`` into the hashtags ``#Person2``
  and ``#는``; we register the pattern with ``Kiwi.add_re_word`` (tag NNP) so the mask is a
  single morpheme and the particle after it is analysed normally.  Masks are lowercased like
  every token (``#person1#``).

Guard
-----
A text containing Hangul syllables (가-힣) whose tokens contain no Hangul at all (the empty
list included) raises :class:`TokenizationError`, a ``ValueError``; so does giving Korean
text to rouge-score's default tokenizer (:func:`check_tokenizer`).  Texts without Hangul may
tokenise to nothing (an empty prediction): that is a real score of 0, not an error.

Scoring
-------
:func:`rouge_scores` gives per-item ROUGE-1/2/L F1 aggregated over each item's references by
mean (the competition's rule) or max.  It is bit-for-bit identical to calling
``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=tok)
.score(ref, pred)`` for every pair and aggregating with ``sum(xs) / len(xs)`` (or ``max``),
but tokenises each distinct text once, in one Kiwi batch spread over Kiwi's C++ worker
threads (one per core this process may use, :func:`default_num_workers`), counts the
n-gram overlaps of all pairs at once with numpy on integer token ids, and computes the LCS
with a bit-parallel algorithm (Hyyrö 2004) on Python integers instead of rouge_score's
O(n*m) Python table.  ``"max"`` takes each metric's maximum independently, like
``RougeScorer.score_multi``.  docs/BENCHMARKS.md section 4 has the measured speed.

Note: ROUGE-L F1 <= ROUGE-1 F1 always holds (an LCS is a sub-multiset of both texts), but
ROUGE-L >= ROUGE-2 does not (``a b c d`` vs ``c d a b``: ROUGE-2 2/3, ROUGE-L 1/2).

Statistics
----------
:func:`bootstrap_ci` is the percentile bootstrap of a mean (items resampled with
replacement, ``numpy.random.default_rng(seed)``); :func:`corpus_summary` reports means ×100
and CIs, the CI of the sum being bootstrapped on per-item sums.  :func:`paired_bootstrap`
resamples the per-item differences ``b - a``; its ``p_value`` is the one-sided share of
resamples with mean difference <= 0 ("b is not better than a").

Diagnostics
-----------
:func:`has_foreign_script` flags Latin letters, Japanese kana, emoji, URLs, and Han
characters (hanja in a Korean summary usually means a model leaked Chinese), after removing
the speaker/PII masks, whose Latin letters are not foreign text.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, count
from typing import Any, Protocol

import numpy as np
import pandas as pd

# rouge_score.tokenizers is imported only where it is used: it imports nltk, which imports
# scipy.stats (about 1 s), a cost every process importing this module (evaluate, predict) paid.

__all__ = [
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
    "lcs_length",
    "paired_bootstrap",
    "prediction_length",
    "resolve_tokenizer",
    "rouge_scores",
    "tokenizer_name",
]

ROUGE_KEYS: tuple[str, str, str] = ("rouge1", "rouge2", "rougeL")

#: Speaker and PII masks of the DialogSum / competition data: ``#Person1#``, ``#PhoneNumber#``.
MASK_PATTERN = r"#[A-Za-z]+\d*#"
_MASK_RE = re.compile(MASK_PATTERN)

# Hangul syllables: a text with any of these must produce Hangul tokens.
_HANGUL_SYLLABLE_RE = re.compile(r"[\uac00-\ud7a3]")
# Any Hangul: syllables, conjoining jamo (Kiwi emits e.g. "ᆸ니다"), compatibility jamo.
_HANGUL_ANY_RE = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\ud7b0-\ud7ff]")

_KEEP_S_TAGS = frozenset({"SL", "SN", "SH"})
_DROP_TAGS = frozenset({"W_EMOJI"})


class TokenizationError(ValueError):
    """A text with Hangul lost its Hangul in tokenisation: scoring it would silently give 0."""


class Tokenizer(Protocol):
    """What ``rouge_score.RougeScorer(tokenizer=...)`` needs."""

    def tokenize(self, text: str) -> list[str]: ...


# --------------------------------------------------------------------------- tokenizer

_KIWI_LOCK = threading.Lock()
_KIWI_INSTANCES: dict[int, Any] = {}


def default_num_workers() -> int:
    """The number of cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def _get_kiwi(num_workers: int) -> Any:
    """The process-wide Kiwi instance for ``num_workers`` (loading the model takes 1-4 s)."""
    with _KIWI_LOCK:
        kiwi = _KIWI_INSTANCES.get(num_workers)
        if kiwi is None:
            from kiwipiepy import Kiwi  # imported lazily: only Korean scoring needs it

            kiwi = Kiwi(num_workers=num_workers)
            # Masks become one NNP morpheme; see module docstring.
            kiwi.add_re_word(MASK_PATTERN, "NNP")
            _KIWI_INSTANCES[num_workers] = kiwi
        return kiwi


def _keep_tag(tag: str) -> bool:
    if tag in _DROP_TAGS:
        return False
    if tag.startswith("S"):
        return tag in _KEEP_S_TAGS
    return True


_KEEP_TAG_CACHE: dict[str, bool] = {}


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
        return _get_kiwi(self.num_workers)

    @property
    def name(self) -> str:
        import kiwipiepy

        return f"kiwi {kiwipiepy.__version__} morphemes"

    def tokenize(self, text: str) -> list[str]:
        """Morpheme forms of one text (the ``RougeScorer`` interface)."""
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}: {text!r}")
        return _forms(self.kiwi.tokenize(text))

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        """Morpheme forms of many texts, using Kiwi's multi-threaded list input."""
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"expected str, got {type(t).__name__}: {t!r}")
        if not texts:
            return []
        return [_forms(toks) for toks in self.kiwi.tokenize(texts)]

    def __repr__(self) -> str:
        return f"KiwiMorphemeTokenizer(num_workers={self.num_workers})"


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


def _tokenize_many(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[str]]:
    batch: Callable[[Sequence[str]], list[list[str]]] | None = getattr(tokenizer, "tokenize_many", None)
    if batch is not None:
        return list(batch(texts))
    return [tokenizer.tokenize(t) for t in texts]


# --------------------------------------------------------------------------- guards


def has_hangul(text: str) -> bool:
    """True if ``text`` contains a Hangul syllable (가-힣)."""
    return _HANGUL_SYLLABLE_RE.search(text) is not None


def _is_rouge_default(tokenizer: Any) -> bool:
    # An instance of DefaultTokenizer exists only if its module was imported by someone.
    rs_tokenizers = sys.modules.get("rouge_score.tokenizers")
    return rs_tokenizers is not None and isinstance(tokenizer, rs_tokenizers.DefaultTokenizer)


def _guard_tokens(text: str, tokens: Sequence[str]) -> None:
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
    if _is_rouge_default(tok) and has_hangul(sample_text):
        raise TokenizationError(
            "rouge-score's default tokenizer deletes everything outside [a-z0-9], so Korean text "
            f"scores 0; use KiwiMorphemeTokenizer. Text: {sample_text[:80]!r}"
        )
    tokens = tok.tokenize(sample_text)
    _guard_tokens(sample_text, tokens)
    return tokens


# --------------------------------------------------------------------------- ROUGE core


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (bit-parallel, Hyyrö 2004).

    Bit i of ``v`` tracks column i of the DP table over ``a``; each element of ``b`` updates
    all columns at once with a few big-integer operations, so the cost is O(len(b)) Python
    operations instead of O(len(a) * len(b)).
    """
    if not a or not b:
        return 0
    return _lcs_with_masks(_lcs_masks(a), len(a), b)


def _lcs_masks(a: Sequence[Any]) -> dict[Any, int]:
    """token -> bit mask of its positions in ``a`` (bit i is set where ``a[i]`` is the token)."""
    masks: dict[Any, int] = {}
    get = masks.get
    bit = 1
    for x in a:
        masks[x] = get(x, 0) | bit
        bit <<= 1
    return masks


def _lcs_with_masks(masks: dict[Any, int], n: int, b: Sequence[Any]) -> int:
    full = (1 << n) - 1
    v = full
    get = masks.get
    for x in b:
        m = get(x)
        if m is None:
            continue  # no match: v is unchanged
        u = v & m
        # Hyyrö's update (v + u) | (v & ~m) with v & ~m written as v - u (u is a subset of v's
        # bits).  Carries above bit n-1 never flow back down, so they are masked off once, at
        # the end, instead of at every step.
        v = (v + u) | (v - u)
    return n - (v & full).bit_count()


def _fmeasures(hits: np.ndarray, n_pred: np.ndarray, n_target: np.ndarray) -> np.ndarray:
    """rouge_score's precision, recall and F1 (``_score_ngrams``, ``scoring.fmeasure``), element-wise.

    The same IEEE operations in the same order, so the results are bit-identical:
    ``hits / max(n, 1)`` on int64 arrays converts both to float64 and divides once, like
    Python's int / int for ints below 2**53; F = ``2 * P * R / (P + R)``, 0 where P + R == 0.
    """
    precision = hits / np.maximum(n_pred, 1)
    recall = hits / np.maximum(n_target, 1)
    total = precision + recall
    out = np.zeros(total.shape, dtype=np.float64)
    positive = total > 0
    out[positive] = 2 * precision[positive] * recall[positive] / total[positive]
    return out


def _ngram_table(
    text_of: np.ndarray, codes: np.ndarray, n_texts: int, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each text's n-gram counts as one sorted table.

    Returns the distinct keys ``text * stride + code`` (sorted, so each text's n-grams form one
    run), their counts, and the start and end of each text's run.
    """
    if n_texts * stride >= 2**63:
        raise OverflowError(f"{n_texts} texts x {stride} n-gram codes do not fit in int64 keys")
    keys, counts = np.unique(text_of * stride + codes, return_counts=True)
    bounds = np.searchsorted(keys, np.arange(n_texts + 1, dtype=np.int64) * stride)
    return keys, counts, bounds[:-1], bounds[1:]


def _clipped_overlaps(
    table: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    ref_text: np.ndarray,
    pred_text: np.ndarray,
    stride: int,
) -> np.ndarray:
    """Per pair, the sum over n-grams of min(count in prediction, count in reference):
    rouge_score's intersection count.  All pairs at once: every distinct n-gram of each pair's
    prediction is looked up (binary search) in the reference's run of the same table."""
    keys, counts, start, end = table
    n = end[pred_text] - start[pred_text]  # distinct n-grams of each pair's prediction
    total = int(n.sum())
    if total == 0:
        return np.zeros(len(pred_text), dtype=np.int64)
    first = np.cumsum(n) - n  # where each pair's entries begin in the expanded arrays
    entry = np.arange(total, dtype=np.int64) + np.repeat(start[pred_text] - first, n)
    query = keys[entry] + np.repeat((ref_text - pred_text) * stride, n)  # same code, reference's text
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    in_ref = np.where(keys[pos] == query, counts[pos], 0)
    common = np.minimum(in_ref, counts[entry])
    cumulative = np.concatenate(([0], np.cumsum(common)))
    return cumulative[first + n] - cumulative[first]


def _pair_scores(token_lists: Sequence[Sequence[Any]], ref_text: np.ndarray, pred_text: np.ndarray) -> np.ndarray:
    """ROUGE-1/2/L F1 of each (reference, prediction) pair, both given as indices into
    ``token_lists``; an array of shape (pairs, 3), bit-identical to rouge_score."""
    n_texts = len(token_lists)
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=n_texts)
    # Integer ids, so that numpy can sort and compare n-grams (object arrays of str would be slow).
    vocab: defaultdict[Any, int] = defaultdict(count().__next__)
    ids = np.fromiter(map(vocab.__getitem__, chain.from_iterable(token_lists)), dtype=np.int64,
                      count=int(lengths.sum()))
    n_vocab = max(len(vocab), 1)
    text_of = np.repeat(np.arange(n_texts, dtype=np.int64), lengths)
    hits1 = _clipped_overlaps(_ngram_table(text_of, ids, n_texts, n_vocab), ref_text, pred_text, n_vocab)

    within = text_of[1:] == text_of[:-1]  # consecutive tokens of one text form a bigram
    bigrams = ids[:-1][within] * n_vocab + ids[1:][within]
    # keys text * V^2 + bigram fit int64 up to e.g. 10^5 texts with 9 * 10^6 distinct tokens
    stride2 = n_vocab * n_vocab
    hits2 = _clipped_overlaps(_ngram_table(text_of[:-1][within], bigrams, n_texts, stride2),
                              ref_text, pred_text, stride2)

    lcs = []
    masks_of: dict[int, dict[Any, int]] = {}  # by text index: a text used in several pairs
    for r, p in zip(ref_text.tolist(), pred_text.tolist()):
        a, b = token_lists[r], token_lists[p]
        if not a or not b:
            lcs.append(0)
            continue
        if len(a) < len(b):  # LCS is symmetric; masks of the longer side mean fewer update steps
            r, a, b = p, b, a
        masks = masks_of.get(r)
        if masks is None:
            masks = masks_of[r] = _lcs_masks(a)
        lcs.append(_lcs_with_masks(masks, len(a), b))

    n_ref, n_pred = lengths[ref_text], lengths[pred_text]
    out = np.empty((len(ref_text), 3), dtype=np.float64)
    out[:, 0] = _fmeasures(hits1, n_pred, n_ref)
    out[:, 1] = _fmeasures(hits2, np.maximum(n_pred - 1, 0), np.maximum(n_ref - 1, 0))
    # rouge_score scores an empty side 0; here its LCS is 0, so P = R = 0 and F = 0 too
    out[:, 2] = _fmeasures(np.array(lcs, dtype=np.int64), n_pred, n_ref)
    return out


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: creating ~10^5 token lists and strings otherwise triggers repeated
    full scans of every live token list (measured: 3-4x slower n-gram counting)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def rouge_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    aggregate: str = "mean",
    tokenizer: Any = None,
) -> pd.DataFrame:
    """Per-item ROUGE-1/2/L F1 (in [0, 1]) aggregated over each item's references.

    Args:
        predictions: one text per item.
        references: for each item, a non-empty list of reference texts.
        aggregate: ``"mean"`` (``sum(xs) / len(xs)``, the competition rule) or ``"max"``
            (per metric, independently).
        tokenizer: ``None``/``"kiwi"`` (Kiwi morphemes), ``"rouge-score-default"``
            (rouge_score's own, for English comparisons) or any object with ``tokenize``.

    Returns:
        DataFrame with columns rouge1, rouge2, rougeL, n_refs, pred_tokens (the number of
        tokens of the prediction); one row per item, in order.

    Raises:
        TokenizationError: a text with Hangul lost its Hangul in tokenisation, or the
            rouge-score default tokenizer was given Korean text.
        ValueError: length mismatch, an item without references, unknown ``aggregate``.
    """
    if aggregate not in ("mean", "max"):
        raise ValueError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
    if isinstance(predictions, str) or len(predictions) != len(references):
        raise ValueError(
            f"need one list of references per prediction: {len(predictions)} predictions, "
            f"{len(references)} reference lists"
        )
    refs_lists: list[list[str]] = []
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            raise ValueError(f"item {i}: references must be a list of strings, got a string")
        refs = list(refs)
        if not refs:
            raise ValueError(f"item {i} has no reference summaries")
        refs_lists.append(refs)
    tok = resolve_tokenizer(tokenizer)

    # Tokenise every distinct text exactly once, in one batch.
    index: dict[str, int] = {}
    for text in [*predictions, *(r for refs in refs_lists for r in refs)]:
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}: {text!r}")
        if text not in index:
            index[text] = len(index)
    distinct = list(index)
    if _is_rouge_default(tok):
        for text in distinct:
            if has_hangul(text):
                check_tokenizer(tok, text)  # raises, with the explanation
    n_refs = np.fromiter(map(len, refs_lists), dtype=np.int64, count=len(refs_lists))
    # pairs item by item, each item's references in order
    pred_text = np.repeat(np.fromiter((index[p] for p in predictions), dtype=np.int64, count=len(predictions)),
                          n_refs)
    ref_text = np.fromiter((index[r] for refs in refs_lists for r in refs), dtype=np.int64,
                           count=int(n_refs.sum()))
    with _gc_paused():
        token_lists = _tokenize_many(tok, distinct)
        if len(token_lists) != len(distinct):
            raise RuntimeError("tokenizer returned a wrong number of token lists")
        for text, tokens in zip(distinct, token_lists):
            _guard_tokens(text, tokens)
        pair_scores = _pair_scores(token_lists, ref_text, pred_text)

    # An item with one reference scores its pair (sum([x]) / 1 == max([x]) == x).  Items with
    # several use Python's own sum / max over the references in order, exactly what a naive
    # loop computes (Python 3.12's sum() of floats is compensated; numpy's is not).
    first_pair = np.cumsum(n_refs) - n_refs
    rows = pair_scores[first_pair].copy()
    reduce = max if aggregate == "max" else (lambda xs: sum(xs) / len(xs))
    for i in np.flatnonzero(n_refs > 1).tolist():
        per_ref = pair_scores[first_pair[i]:first_pair[i] + n_refs[i]].T.tolist()
        rows[i] = [reduce(xs) for xs in per_ref]
    df = pd.DataFrame(rows, columns=list(ROUGE_KEYS))
    df["n_refs"] = n_refs
    df["pred_tokens"] = np.fromiter((len(token_lists[index[p]]) for p in predictions), dtype=np.int64,
                                    count=len(predictions))
    return df


# --------------------------------------------------------------------------- statistics


def _resample_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of ``n_resamples`` bootstrap resamples, vectorised in memory-bounded chunks."""
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, 4_000_000 // max(n, 1)))
    out = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def _as_1d(values: Any, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def bootstrap_ci(
    values: Any, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap ``1 - alpha`` confidence interval of the mean of ``values``."""
    arr = _as_1d(values)
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    means = _resample_means(arr, n_resamples, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def corpus_summary(
    df: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """Corpus means ×100 of rouge1/rouge2/rougeL, their sum, and bootstrap CIs (``<key>_ci``).

    The CI of the sum is bootstrapped on per-item sums (not the sum of the three CIs).
    ``n_resamples=0`` skips the bootstrap (CIs are ``None``).
    """
    missing = [k for k in ROUGE_KEYS if k not in df.columns]
    if missing:
        raise ValueError(f"scores lack columns {missing}")
    cols = {k: _as_1d(df[k].to_numpy(), k) * 100.0 for k in ROUGE_KEYS}
    cols["rouge_sum"] = cols["rouge1"] + cols["rouge2"] + cols["rougeL"]
    out: dict[str, Any] = {"n": int(len(df))}
    for k, v in cols.items():
        out[k] = float(v.mean())
    for k, v in cols.items():
        out[f"{k}_ci"] = list(bootstrap_ci(v, n_resamples, seed, alpha)) if n_resamples > 0 else None
    return out


def paired_bootstrap(a: Any, b: Any, n_resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap of the mean difference ``b - a`` over items.

    Returns ``mean_diff`` (mean of b - a), the 95% percentile CI (``ci_low``, ``ci_high``) and
    ``p_value``: the one-sided bootstrap p-value for "system b is not better than a", i.e. the
    share of resamples whose mean(b - a) is <= 0.  Small p: b is reliably better; identical
    systems give p = 1.
    """
    a_arr, b_arr = _as_1d(a, "a"), _as_1d(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired arrays differ in length: {a_arr.size} vs {b_arr.size}")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    d = b_arr - a_arr
    means = _resample_means(d, n_resamples, seed)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {
        "mean_diff": float(d.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_value": float(np.mean(means <= 0.0)),
    }


# --------------------------------------------------------------------------- diagnostics

# Foreign script = Latin letters (incl. full-width), Han (CJK ideographs: in Korean summaries
# they are hanja leaking from a model, counted as foreign), Japanese kana, emoji, URLs.
# The character classes are shared with kdsum.generation's blocker, so generation blocks what the metric counts.
FOREIGN_CHAR_PATTERN = (
    r"[A-Za-z\uff21-\uff3a\uff41-\uff5a]|"
    r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]|"  # hiragana, katakana, half-width katakana
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]|"  # Han
    r"[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f]"  # emoji and pictographs
)
_FOREIGN_RE = re.compile(r"https?://|www\.|" + FOREIGN_CHAR_PATTERN)


def has_foreign_script(text: str) -> bool:
    """True if ``text``, with speaker/PII masks removed, has Latin, Han, kana, emoji or a URL."""
    return _FOREIGN_RE.search(_MASK_RE.sub(" ", text)) is not None


def foreign_script_share(texts: Sequence[str]) -> float:
    """Share of ``texts`` for which :func:`has_foreign_script` is true (0.0 for no texts)."""
    texts = list(texts)
    if not texts:
        return 0.0
    return sum(has_foreign_script(t) for t in texts) / len(texts)


def prediction_length(texts: Sequence[str], tokenizer: Any = None,
                      token_counts: Sequence[int] | None = None) -> dict[str, float]:
    """Mean length of ``texts`` in characters and in (Kiwi) morphemes.

    ``token_counts``: the texts' morpheme counts when the caller has them already (``rouge_scores``'
    ``pred_tokens`` column), so the texts are not tokenised a second time."""
    texts = list(texts)
    if not texts:
        return {"mean_chars": 0.0, "mean_morphemes": 0.0}
    if token_counts is None:
        counts = [len(t) for t in _tokenize_many(resolve_tokenizer(tokenizer), texts)]
    else:
        counts = list(token_counts)
        if len(counts) != len(texts):
            raise ValueError(f"token_counts has {len(counts)} entries for {len(texts)} texts")
    return {
        "mean_chars": float(np.mean([len(t) for t in texts])),
        "mean_morphemes": float(np.mean(counts)),
    }
