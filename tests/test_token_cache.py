"""Tests for kdsum.scoring.token_cache: reference morphemes kept by content, and the scores made with them.

Run: PYTHONPATH=src python -m pytest tests/test_token_cache.py -q
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from kdsum.korean.kiwi import KiwiMorphemeTokenizer
from kdsum.scoring.evaluate import evaluate
from kdsum.scoring.rouge import ROUGE_KEYS, rouge_scores
from kdsum.scoring.token_cache import (
    ReferenceTokens,
    ServedAhead,
    TextTokens,
    TokensAhead,
    cache_key,
    cached_tokens,
    fingerprint,
)

KIWI = KiwiMorphemeTokenizer()
PREDS = ["#Person1#은 사과를 샀다.", "민수가 학교에 갔다.", "", "Jimmy와 #Person2#는 내일 만난다."]
REFS = [
    ["#Person1#은 사과와 배를 샀다."],
    ["민수는 어제 학교에 갔다.", "민수가 학교에 갔다."],
    ["#Person2#가 #PhoneNumber#로 전화한다."],
    ["#Person2#는 Jimmy를 만난다.", "둘이 만난다."],
]


def _naive(pred: str, refs: list[str]) -> tuple[float, ...]:
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), tokenizer=KIWI)
    per_ref = [scorer.score(r, pred) for r in refs]
    return tuple(sum(s[k].fmeasure for s in per_ref) / len(per_ref) for k in ROUGE_KEYS)


def _rows(df) -> list[tuple[float, ...]]:
    return list(df[list(ROUGE_KEYS)].itertuples(index=False, name=None))


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_a_hit_gives_the_scores_of_the_naive_loop(tmp_path):
    naive = [_naive(p, r) for p, r in zip(PREDS, REFS, strict=True)]
    statuses = []
    for _ in range(2):  # a miss that fills the cache, then a hit that reads it
        tok = ReferenceTokens(KIWI, REFS, tmp_path)
        statuses.append(tok.status)
        assert _rows(rouge_scores(PREDS, REFS, tokenizer=tok)) == naive  # exact, not approx
        tok.store()
    assert statuses == ["miss", "hit"]
    assert len(_files(tmp_path)) == 1  # one file per data set, no temporary left behind
    assert tok.name == KIWI.name


def test_a_changed_reference_misses(tmp_path):
    tokens, status = cached_tokens(KIWI, [r for refs in REFS for r in refs], tmp_path)
    assert status == "miss" and tokens == KIWI.tokenize_many([r for refs in REFS for r in refs])
    changed = [list(refs) for refs in REFS]
    changed[1][0] = "민수는 오늘 학교에 갔다."  # one word of one reference
    tok = ReferenceTokens(KIWI, changed, tmp_path)
    assert tok.status == "miss"
    assert _rows(rouge_scores(PREDS, changed, tokenizer=tok)) == [
        _naive(p, r) for p, r in zip(PREDS, changed, strict=True)
    ]
    tok.store()
    assert len(_files(tmp_path)) == 2
    assert ReferenceTokens(KIWI, changed, tmp_path).status == "hit"
    # the order of the texts is part of the key too, and so is the tokenizer's fingerprint
    texts = [r for refs in REFS for r in refs]
    print_ = fingerprint(KIWI)
    assert cache_key(print_, texts) != cache_key(print_, texts[::-1])
    assert cache_key(print_, ["ab", "c"]) != cache_key(print_, ["a", "bc"])
    assert cache_key(print_, texts) != cache_key(print_.replace("kiwipiepy ", "kiwipiepy 9"), texts)


class CountingKiwi(KiwiMorphemeTokenizer):
    """The real Kiwi tokenizer, counting the texts of each batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def tokenize_many(self, texts):
        self.batches.append(len(texts))
        return super().tokenize_many(texts)


def test_a_miss_tokenises_in_one_batch_and_a_hit_only_the_predictions(tmp_path):
    n_refs = len({r for refs in REFS for r in refs})
    n_texts = len({*PREDS, *(r for refs in REFS for r in refs)})
    kiwi = CountingKiwi()
    tok = ReferenceTokens(kiwi, REFS, tmp_path)
    rouge_scores(PREDS, REFS, tokenizer=tok)
    tok.store()
    assert kiwi.batches == [n_texts]  # as without a cache: no second pass over the references
    distinct_refs = list(dict.fromkeys(r for refs in REFS for r in refs))
    assert list(ReferenceTokens(kiwi, REFS, tmp_path).known.values()) == KIWI.tokenize_many(distinct_refs)
    kiwi.batches.clear()
    rouge_scores(PREDS, REFS, tokenizer=ReferenceTokens(kiwi, REFS, tmp_path))
    assert kiwi.batches == [n_texts - n_refs]
    # a failed scoring stores nothing: store() is what writes, and only the evaluate path calls it after scoring
    other = tmp_path / "other"
    with pytest.raises(ValueError):
        rouge_scores(PREDS[:2], REFS, tokenizer=ReferenceTokens(kiwi, REFS, other))
    assert not other.exists()


def test_fingerprint_names_what_tokens_depend_on():
    import kiwipiepy

    print_ = fingerprint(KIWI)
    assert f"kiwipiepy {kiwipiepy.__version__}" in print_ and "kdsum.korean.kiwi " in print_
    assert fingerprint(KiwiMorphemeTokenizer(1)) == print_  # threads do not change tokens
    assert fingerprint(object()) is None  # an unknown tokenizer is never cached


def test_a_damaged_file_is_a_miss_and_is_rewritten(tmp_path):
    texts = ["민수는 어제 학교에 갔다.", "#Person1#은 사과와 배를 샀다."]
    expected, _ = cached_tokens(KIWI, texts, tmp_path)
    (path,) = tmp_path.iterdir()
    good = path.read_text(encoding="utf-8")
    for damaged in (good[: len(good) // 2], "[]", json.dumps({"format": 1}), good.replace('"n":2', '"n":3')):
        path.write_text(damaged, encoding="utf-8")
        tokens, status = cached_tokens(KIWI, texts, tmp_path)
        assert (tokens, status) == (expected, "miss"), damaged[:40]
        assert path.read_text(encoding="utf-8") == good


def test_an_unwritable_cache_only_costs_time(tmp_path, caplog):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the directory should be", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="kdsum.scoring.token_cache"):
        tokens, status = cached_tokens(KIWI, ["민수가 학교에 갔다."], blocker)
    assert status == "miss" and tokens == [KIWI.tokenize("민수가 학교에 갔다.")]
    assert "not written" in caplog.text


def _split_files(tmp_path):
    """A predictions CSV of PREDS and a references JSONL of REFS, for evaluate()."""
    fnames = [f"dev_{i}" for i in range(len(PREDS))]
    p, r = tmp_path / "pred.csv", tmp_path / "refs.jsonl"
    with open(p, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([("fname", "summary"), *zip(fnames, PREDS, strict=True)])
    r.write_text(
        "".join(
            json.dumps({"fname": f, "summaries": refs}, ensure_ascii=False) + "\n"
            for f, refs in zip(fnames, REFS, strict=True)
        ),
        encoding="utf-8",
    )
    return p, r


def test_evaluate_with_and_without_the_cache_gives_the_same_outputs(tmp_path):
    p, r = _split_files(tmp_path)
    cache = tmp_path / "cache"
    plain = evaluate(p, r, n_bootstrap=50)
    for _ in range(2):  # miss, then hit
        result, items = evaluate(p, r, n_bootstrap=50, token_cache=cache)
        assert result == plain[0]
        assert items.equals(plain[1])
    assert len(_files(cache)) == 2  # the references' file and the predictions'
    assert not [n for n in os.listdir(cache) if n.startswith(".")]


def test_a_second_scoring_of_a_file_loads_no_kiwi(tmp_path):
    """Once a predictions file was scored with the cache, scoring it again, whole or one part of it, is served from
    the cache: no Kiwi is loaded (a thread count never used in this process shows it), and the scores are those
    made without any cache."""
    from kdsum.korean import kiwi

    p, r = _split_files(tmp_path)
    cache = tmp_path / "cache"
    evaluate(p, r, n_bootstrap=50, token_cache=cache)
    unused = max(kiwi._KIWI_INSTANCES, default=1) + 5
    first_two = lambda fs: fs[:2]  # noqa: E731 - one part of the rows, as --part scores
    for rows in (None, first_two):
        cached = evaluate(p, r, n_bootstrap=50, threads=unused, token_cache=cache, rows=rows)
        plain = evaluate(p, r, n_bootstrap=50, rows=rows)
        assert cached[0] == {**plain[0], "tokenizer": cached[0]["tokenizer"]}
        assert cached[1].equals(plain[1])
    assert unused not in kiwi._KIWI_INSTANCES
    assert len(_files(cache)) == 2


def test_a_part_scored_first_fills_the_cache_for_the_whole_file(tmp_path):
    p, r = _split_files(tmp_path)
    cache = tmp_path / "cache"
    evaluate(p, r, n_bootstrap=0, token_cache=cache, rows=lambda fs: fs[:1])
    whole = TextTokens(KIWI, [line["summary"] for line in csv.DictReader(p.open(encoding="utf-8"))], cache)
    assert whole.status == "hit"
    assert list(whole.tokens().values()) == KIWI.tokenize_many(list(dict.fromkeys(PREDS)))


def test_a_failed_scoring_stores_no_predictions(tmp_path):
    p, r = _split_files(tmp_path)
    lines = p.read_text(encoding="utf-8").splitlines()
    p.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # one prediction missing: refused
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="lacks predictions"):
        evaluate(p, r, n_bootstrap=0, token_cache=cache)
    assert _files(cache) == []


@pytest.mark.parametrize("n_texts", [0, 1])
def test_small_lists(tmp_path, n_texts):
    texts = ["민수가 학교에 갔다."][:n_texts]
    assert cached_tokens(KIWI, texts, tmp_path)[0] == KIWI.tokenize_many(texts)
    assert cached_tokens(KIWI, texts, tmp_path) == (KIWI.tokenize_many(texts), "hit")
    assert cached_tokens(KIWI, texts, None) == (KIWI.tokenize_many(texts), "off")


def test_evaluate_with_and_without_the_predictions_tokenised_ahead_gives_the_same_outputs(tmp_path):
    """evaluate() tokenises the predictions in a background thread when every row is scored (``rows=None``); with
    ``rows`` it does not: both give the same outputs, with and without the cache."""
    p, r = _split_files(tmp_path)
    every_row = lambda fs: fs  # noqa: E731 - rows given: no tokenisation ahead
    for cache in (None, tmp_path / "cache"):
        ahead = evaluate(p, r, n_bootstrap=50, token_cache=cache)
        plain = evaluate(p, r, n_bootstrap=50, token_cache=cache, rows=every_row)
        assert ahead[0] == plain[0]
        assert ahead[1].equals(plain[1])


def test_tokens_ahead_serve_the_tokenizers_own_and_leave_errors_to_the_caller():
    kiwi = CountingKiwi()
    ahead = TokensAhead(kiwi, [*PREDS, PREDS[0]])
    served = ServedAhead(ReferenceTokens(kiwi, REFS, None), ahead)
    texts = [*PREDS, *(r for refs in REFS for r in refs)]
    assert served.tokenize_many(texts) == KIWI.tokenize_many(texts)
    assert kiwi.batches == [len(PREDS), len(set(texts) - set(PREDS))]  # the predictions once, ahead; then the rest
    assert served.name == KIWI.name

    class Failing:
        def tokenize_many(self, texts):
            raise RuntimeError("tokenizer broke")

    failed = ServedAhead(Failing(), TokensAhead(Failing(), PREDS))
    assert failed.ahead.tokens() == {}  # the background error is not raised there ...
    with pytest.raises(RuntimeError, match="tokenizer broke"):  # ... but by the caller's own tokenisation
        failed.tokenize_many(PREDS)


def test_tokens_ahead_from_a_function_run_in_the_background(tmp_path):
    """evaluate() reads the predictions' file for tokenising ahead with a quick reader; a reader that fails leaves
    nothing ahead, and the texts are tokenised as usual."""
    kiwi = CountingKiwi()
    served = ServedAhead(kiwi, TokensAhead(kiwi, lambda: iter(PREDS)))
    assert served.tokenize_many(PREDS) == KIWI.tokenize_many(PREDS)
    assert kiwi.batches == [len(set(PREDS))]  # made ahead once; nothing left for the caller's batch

    def missing():
        raise FileNotFoundError(tmp_path / "absent.csv")

    kiwi.batches.clear()
    served = ServedAhead(kiwi, TokensAhead(kiwi, missing))
    assert served.tokenize_many(PREDS) == KIWI.tokenize_many(PREDS)
    assert kiwi.batches == [len(PREDS)]
