"""ROUGE-1/2/L F1, bit-for-bit rouge_score's, computed for many pairs at once.

:func:`rouge_scores` gives per-item ROUGE-1/2/L F1 aggregated over each item's references by
mean (the competition's rule) or max.  It is bit-for-bit identical to calling
``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=tok)
.score(ref, pred)`` for every pair and aggregating with ``sum(xs) / len(xs)`` (or ``max``),
but tokenises each distinct text once, in one Kiwi batch spread over Kiwi's C++ worker
threads (one per core this process may use, :func:`kdsum.korean.kiwi.default_num_workers`), counts the
n-gram overlaps of all pairs at once with numpy on integer token ids, and computes the LCS
with a bit-parallel algorithm (Hyyrö 2004) on Python integers instead of rouge_score's
O(n*m) Python table.  ``"max"`` takes each metric's maximum independently, like
``RougeScorer.score_multi``.  docs/BENCHMARKS.md section 4 has the measured speed.

Every text is first normalised like ingest's (:func:`kdsum.korean.text.normalize_text`: NFC, no zero-width or control
characters), predictions and references alike, so that Hangul saved in NFD (conjoining jamo) scores like the same
text in NFC; clean text is unchanged by it. Every text is checked by :func:`kdsum.korean.guards.guard_tokens`: a Hangul
text that lost its Hangul in tokenisation raises :class:`kdsum.korean.guards.TokenizationError` instead of scoring 0.

Note: ROUGE-L F1 <= ROUGE-1 F1 always holds (an LCS is a sub-multiset of both texts), but
ROUGE-L >= ROUGE-2 does not (``a b c d`` vs ``c d a b``: ROUGE-2 2/3, ROUGE-L 1/2).
"""

from __future__ import annotations

import contextlib
import gc
from collections import defaultdict
from collections.abc import Iterator, Sequence
from itertools import chain, count
from typing import Any

import numpy as np
import pandas as pd

from kdsum.korean.guards import (
    check_tokenizer,
    guard_tokens,
    has_hangul,
    is_rouge_default,
    resolve_tokenizer,
    tokenize_texts,
)
from kdsum.korean.text import normalize_text

ROUGE_KEYS: tuple[str, str, str] = ("rouge1", "rouge2", "rougeL")


def final_score(rouge_sum: float) -> float:
    """The leaderboard's ``final``: the mean of ROUGE-1/2/L F1 from their sum (``rouge_sum``, also of a bound of its
    interval: the same bootstrap resamples, so ``final``'s interval is ``rouge_sum``'s scaled alike)."""
    return rouge_sum / len(ROUGE_KEYS)


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
    ids = np.fromiter(
        map(vocab.__getitem__, chain.from_iterable(token_lists)), dtype=np.int64, count=int(lengths.sum())
    )
    n_vocab = max(len(vocab), 1)
    text_of = np.repeat(np.arange(n_texts, dtype=np.int64), lengths)
    hits1 = _clipped_overlaps(_ngram_table(text_of, ids, n_texts, n_vocab), ref_text, pred_text, n_vocab)

    within = text_of[1:] == text_of[:-1]  # consecutive tokens of one text form a bigram
    bigrams = ids[:-1][within] * n_vocab + ids[1:][within]
    # keys text * V^2 + bigram fit int64 up to e.g. 10^5 texts with 9 * 10^6 distinct tokens
    stride2 = n_vocab * n_vocab
    hits2 = _clipped_overlaps(
        _ngram_table(text_of[:-1][within], bigrams, n_texts, stride2), ref_text, pred_text, stride2
    )

    lcs = []
    masks_of: dict[int, dict[Any, int]] = {}  # by text index: a text used in several pairs
    for r, p in zip(ref_text.tolist(), pred_text.tolist(), strict=True):
        a, b = token_lists[r], token_lists[p]
        if not a or not b:
            lcs.append(0)
            continue
        if len(a) > len(b):
            # LCS is symmetric. Masks of the shorter side: fewer dict entries to build and smaller integers to
            # update, while the longer side's tokens that the shorter lacks cost one dict lookup each (measured on
            # the Korean dev split, references ~45 morphemes, predictions ~10: 3.4 ms instead of 6.2 ms per system)
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


def _reference_lists(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str]]:
    """The references as lists, refusing a length mismatch, a bare string and an item without references."""
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
    return refs_lists


def _normalized(text: Any) -> Any:
    """``kdsum.korean.text.normalize_text`` of a str; anything else is left for :func:`_distinct_texts` to refuse."""
    return normalize_text(text) if isinstance(text, str) else text


def _distinct_texts(texts: Iterator[str]) -> dict[str, int]:
    """text -> index, each distinct text once, in first-seen order."""
    index: dict[str, int] = {}
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}: {text!r}")
        if text not in index:
            index[text] = len(index)
    return index


def _guarded_tokens(tok: Any, distinct: list[str]) -> list[list[str]]:
    """The tokens of every distinct text, each checked by the guard."""
    if is_rouge_default(tok):
        for text in distinct:
            if has_hangul(text):
                check_tokenizer(tok, text)  # raises, with the explanation
    token_lists = tokenize_texts(tok, distinct)
    if len(token_lists) != len(distinct):
        raise RuntimeError("tokenizer returned a wrong number of token lists")
    for text, tokens in zip(distinct, token_lists, strict=True):
        guard_tokens(text, tokens)
    return token_lists


def _aggregate(pair_scores: np.ndarray, n_refs: np.ndarray, aggregate: str) -> np.ndarray:
    """One row per item from its pairs' rows.

    An item with one reference scores its pair (sum([x]) / 1 == max([x]) == x).  Items with
    several use Python's own sum / max over the references in order, exactly what a naive
    loop computes (Python 3.12's sum() of floats is compensated; numpy's is not).
    """
    first_pair = np.cumsum(n_refs) - n_refs
    rows = pair_scores[first_pair].copy()
    reduce = max if aggregate == "max" else (lambda xs: sum(xs) / len(xs))
    for i in np.flatnonzero(n_refs > 1).tolist():
        per_ref = pair_scores[first_pair[i] : first_pair[i] + n_refs[i]].T.tolist()
        rows[i] = [reduce(xs) for xs in per_ref]
    return rows


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
    refs_lists = _reference_lists(predictions, references)
    tok = resolve_tokenizer(tokenizer)
    # Both sides as ingest normalises text (NFC, no zero-width or control characters): Hangul in NFD is conjoining
    # jamo, which would tokenise and score as other text. Clean text is unchanged, so its scores too.
    predictions = [_normalized(p) for p in predictions]
    refs_lists = [[_normalized(r) for r in refs] for refs in refs_lists]
    # Tokenise every distinct text exactly once, in one batch.
    index = _distinct_texts(chain(predictions, (r for refs in refs_lists for r in refs)))
    n_refs = np.fromiter(map(len, refs_lists), dtype=np.int64, count=len(refs_lists))
    # pairs item by item, each item's references in order
    pred_ids = np.fromiter((index[p] for p in predictions), dtype=np.int64, count=len(predictions))
    pred_text = np.repeat(pred_ids, n_refs)
    ref_text = np.fromiter((index[r] for refs in refs_lists for r in refs), dtype=np.int64, count=int(n_refs.sum()))
    with _gc_paused():  # _tokens_and_scores returns first: its token lists are freed before the GC resumes
        pair_scores, n_tokens = _tokens_and_scores(tok, list(index), ref_text, pred_text)
    rows = _aggregate(pair_scores, n_refs, aggregate)
    columns = {k: rows[:, j] for j, k in enumerate(ROUGE_KEYS)}
    return pd.DataFrame({**columns, "n_refs": n_refs, "pred_tokens": n_tokens[pred_ids]})


def _tokens_and_scores(
    tok: Any, distinct: list[str], ref_text: np.ndarray, pred_text: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`_pair_scores` of the pairs, the number of tokens of each distinct text)."""
    token_lists = _guarded_tokens(tok, distinct)
    n_tokens = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    return _pair_scores(token_lists, ref_text, pred_text), n_tokens
