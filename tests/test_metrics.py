"""Tests for kdsum.scoring.metrics (Korean-morpheme ROUGE, guards, bootstrap) and the two scoring stages (evaluate, compare).

Run: cd /work/main && PYTHONPATH=src python3 -m pytest tests/test_metrics.py -q
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rouge_score import rouge_scorer, tokenizers

from kdsum.cli import main as kdsum_main
from kdsum.config.catalog import spec_for
from kdsum.config.resolve import load_config
from kdsum.config.spec import to_json
from kdsum.errors import KdsumError
from kdsum.scoring.metrics import (
    KiwiMorphemeTokenizer,
    TokenizationError,
    bootstrap_ci,
    check_tokenizer,
    corpus_summary,
    default_num_workers,
    foreign_script_share,
    has_foreign_script,
    has_hangul,
    lcs_length,
    paired_bootstrap,
    prediction_length,
    rouge_scores,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KEYS = ["rouge1", "rouge2", "rougeL"]

KIWI = KiwiMorphemeTokenizer()


def korean_dev() -> pd.DataFrame:
    """The competition's Korean dev split from ../shared (skips the test when it is absent)."""
    path = SHARED / "ko" / "dev.csv"
    if not path.exists():
        pytest.skip(f"Korean dev split not found: {path}")
    return pd.read_csv(path, keep_default_na=False)


def naive_scores(pred: str, refs: list[str], tokenizer, aggregate: str = "mean") -> tuple[float, ...]:
    """The reference implementation: rouge_score pair by pair, then sum/len (or max)."""
    scorer = rouge_scorer.RougeScorer(KEYS, tokenizer=tokenizer)
    per_ref = [scorer.score(r, pred) for r in refs]
    out = []
    for k in KEYS:
        xs = [s[k].fmeasure for s in per_ref]
        out.append(sum(xs) / len(xs) if aggregate == "mean" else max(xs))
    return tuple(out)


def row(df: pd.DataFrame, i: int = 0) -> tuple[float, ...]:
    return tuple(float(df.loc[i, k]) for k in KEYS)


class WhitespaceTokenizer:
    """Deterministic tokenizer for property tests on synthetic token sequences."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_masks_punctuation_and_scripts():
    toks = KIWI.tokenize("#Person2#는 Jimmy. 😀 ㅋㅋ 漢字, 3시에 #PhoneNumber#로 연락!")
    # masks stay whole (lowercased), particles after them are separate morphemes; the period
    # glued to "Jimmy." by Kiwi is stripped; emoji, ㅋㅋ (SW) and punctuation are dropped;
    # hanja (SH) and numbers (SN) are kept.
    assert toks == ["#person2#", "는", "jimmy", "漢字", "3", "시", "에", "#phonenumber#", "로", "연락"]
    assert KIWI.tokenize("#Person1#과#Person2#가") == ["#person1#", "과", "#person2#", "가"]


def test_tokenize_many_equals_tokenize():
    texts = ["민수는 어제 학교에 갔다.", "", "#Person1#: 안녕하세요!", "Hello, world.", "민수는 어제 학교에 갔다."]
    assert KIWI.tokenize_many(texts) == [KIWI.tokenize(t) for t in texts]
    assert KIWI.tokenize_many([]) == []


def test_default_threads_are_the_cores_this_process_may_use():
    assert default_num_workers() == len(os.sched_getaffinity(0))
    assert KiwiMorphemeTokenizer().num_workers == default_num_workers()
    assert KiwiMorphemeTokenizer(-1).num_workers == default_num_workers()
    assert KiwiMorphemeTokenizer(0).num_workers == 1
    assert KiwiMorphemeTokenizer(3).num_workers == 3
    with pytest.raises(ValueError, match="num_workers"):
        KiwiMorphemeTokenizer(-2)


@pytest.mark.integration
def test_batch_tokens_do_not_depend_on_threads():
    """Kiwi's multi-threaded batch gives each text exactly the tokens of a one-by-one call."""
    dev = korean_dev()
    texts = dev["summary"].tolist()[:150] + [d.split("\n")[0] for d in dev["dialogue"].tolist()[:150]]
    one_by_one = [KIWI.tokenize(t) for t in texts]
    for threads in (1, 2, 4):
        assert KiwiMorphemeTokenizer(threads).tokenize_many(texts) == one_by_one, threads


# --------------------------------------------------------------------------- exact scores


def test_identical_korean_prediction_scores_100():
    ref = "#Person1#은 #Person2#에게 천식 검사를 위해 폐 전문의에게 가볼 것을 권합니다."
    df = rouge_scores([ref], [[ref]])
    assert row(df) == (1.0, 1.0, 1.0)
    summary = corpus_summary(df, n_resamples=10)
    assert summary["rouge_sum"] == pytest.approx(300.0)


def test_hand_worked_korean_pair():
    # Reference  "민수는 어제 학교에 갔다." -> 8 morphemes: 민수 는 어제 학교 에 가 었 다
    # Prediction "민수가 학교에 갔다."      -> 7 morphemes: 민수 가 학교 에 가 었 다
    # (the particle 가/JKS and the verb 가/VV share the form "가": tags are not compared)
    ref, pred = "민수는 어제 학교에 갔다.", "민수가 학교에 갔다."
    assert KIWI.tokenize(ref) == ["민수", "는", "어제", "학교", "에", "가", "었", "다"]
    assert KIWI.tokenize(pred) == ["민수", "가", "학교", "에", "가", "었", "다"]
    # ROUGE-1: clipped overlap 민수 1, 학교 1, 에 1, 가 min(1 in ref, 2 in pred) = 1, 었 1, 다 1 -> 6
    #   P = 6/7, R = 6/8, F = 2PR/(P+R) = 2*6/(7+8) = 12/15 = 0.8
    # ROUGE-2: ref bigrams (7): 민수-는 는-어제 어제-학교 학교-에 에-가 가-었 었-다
    #          pred bigrams (6): 민수-가 가-학교 학교-에 에-가 가-었 었-다
    #   overlap 4 (학교-에 에-가 가-었 었-다): P = 4/6, R = 4/7, F = 2*4/(6+7) = 8/13
    # ROUGE-L: LCS = 민수 학교 에 가 었 다 = 6 (matching pred's first 가 instead gives only
    #   민수 가 었 다 = 4): P = 6/7, R = 6/8, F = 12/15 = 0.8
    df = rouge_scores([pred], [[ref]])
    assert row(df) == pytest.approx((0.8, 8 / 13, 0.8))
    assert int(df.loc[0, "n_refs"]) == 1


def test_hand_worked_reordering_separates_r1_r2_rl():
    # Same morphemes, two nouns swapped:
    # ref : #person1# 은 사과 와 배 를 사 었 다   (9 tokens; the mask is ONE token)
    # pred: #person1# 은 배 와 사과 를 사 었 다   (9 tokens)
    ref, pred = "#Person1#은 사과와 배를 샀다.", "#Person1#은 배와 사과를 샀다."
    assert KIWI.tokenize(ref) == ["#person1#", "은", "사과", "와", "배", "를", "사", "었", "다"]
    assert KIWI.tokenize(pred) == ["#person1#", "은", "배", "와", "사과", "를", "사", "었", "다"]
    # ROUGE-1: the bags are equal: 9/9 -> 1
    # ROUGE-2: 8 bigrams each; shared: #person1#-은 를-사 사-었 었-다 = 4 -> P = R = F = 0.5
    # ROUGE-L: LCS = #person1# 은 + one of {사과, 와, 배} + 를 사 었 다 = 7 -> 7/9
    df = rouge_scores([pred], [[ref]])
    assert row(df) == pytest.approx((1.0, 0.5, 7 / 9))


def test_multi_reference_mean_vs_max():
    pred = "민수가 학교에 갔다."
    refs = [
        "민수는 어제 학교에 갔다.",  # (0.8, 8/13, 0.8): worked out above
        "고양이는 잔다.",  # 고양이 는 자 ᆫ다: no morpheme in common -> (0, 0, 0)
        "학교에 민수가 갔다.",  # see below -> (1, 2/3, 5/7)
    ]
    assert KIWI.tokenize(refs[1]) == ["고양이", "는", "자", "ᆫ다"]
    # ref3: 학교 에 민수 가 가 었 다 vs pred 민수 가 학교 에 가 었 다
    #   R1: same bag -> 1.  R2: ref bigrams 학교-에 에-민수 민수-가 가-가 가-었 었-다, shared
    #   학교-에 민수-가 가-었 었-다 = 4 of 6 -> 2/3.  RL: LCS 5 (e.g. 학교 에 가 었 다) -> 5/7
    assert KIWI.tokenize(refs[2]) == ["학교", "에", "민수", "가", "가", "었", "다"]
    mean = rouge_scores([pred], [refs], aggregate="mean")
    assert row(mean) == pytest.approx(((0.8 + 0 + 1) / 3, (8 / 13 + 0 + 2 / 3) / 3, (0.8 + 0 + 5 / 7) / 3))
    # max is per metric: R1 and R2 come from ref 3, ROUGE-L from ref 1
    mx = rouge_scores([pred], [refs], aggregate="max")
    assert row(mx) == pytest.approx((1.0, 2 / 3, 0.8))
    assert int(mean.loc[0, "n_refs"]) == 3
    # and both equal rouge_score's own numbers
    assert row(mean) == naive_scores(pred, refs, KIWI, "mean")
    assert row(mx) == naive_scores(pred, refs, KIWI, "max")
    with pytest.raises(ValueError, match="aggregate"):
        rouge_scores([pred], [refs], aggregate="median")


def test_english_default_tokenizer_matches_rouge_score():
    pairs = [
        ("The cat sat on the mat.", ["A cat was sitting on the mat.", "The cat sat on a mat"]),
        ("Person1 asks Person2 about the 3 o'clock meeting.", ["Person2 tells Person1 the meeting is at 3."]),
        ("", ["An empty prediction scores zero."]),
        ("Nothing in common here", ["Totally different words"]),
        ("the the the the", ["the cat the dog the end"]),
        (
            "Tom and Mary go to the movies on Friday night.",
            ["Mary and Tom will see a movie Friday.", "Tom invites Mary to the cinema.", "They go to the movies."],
        ),
    ]
    default = tokenizers.DefaultTokenizer(use_stemmer=False)
    for agg in ("mean", "max"):
        df = rouge_scores([p for p, _ in pairs], [r for _, r in pairs], aggregate=agg, tokenizer="rouge-score-default")
        for i, (p, refs) in enumerate(pairs):
            assert row(df, i) == naive_scores(p, refs, default, agg), (agg, p)
    assert row(df, 2) == (0.0, 0.0, 0.0)
    assert 0 < df.loc[0, "rouge1"] < 1


# --------------------------------------------------------------------------- the silent-zero bug


def test_plain_rouge_score_zeroes_korean_but_ours_does_not():
    text = "민수는 어제 학교에 갔다."
    plain = rouge_scorer.RougeScorer(KEYS).score(text, text)  # default tokenizer
    assert [plain[k].fmeasure for k in KEYS] == [0, 0, 0]  # the bug: Korean identical texts score 0
    assert row(rouge_scores([text], [[text]])) == (1.0, 1.0, 1.0)
    with pytest.raises(TokenizationError, match="default tokenizer"):
        rouge_scores([text], [[text]], tokenizer="rouge-score-default")
    with pytest.raises(TokenizationError):
        check_tokenizer(tokenizers.DefaultTokenizer(), text)
    # English text is fine with the default tokenizer
    assert check_tokenizer(tokenizers.DefaultTokenizer(), "Hello there") == ["hello", "there"]
    assert check_tokenizer(KIWI, text)[:2] == ["민수", "는"]


def test_guard_refuses_tokenizers_that_lose_hangul():
    class Empty:
        def tokenize(self, text: str) -> list[str]:
            return []

    class LatinOnly:  # what rouge-score's default does to "Jimmy를 만났다": ["jimmy"]
        def tokenize(self, text: str) -> list[str]:
            return tokenizers.DefaultTokenizer().tokenize(text)

    korean = "Jimmy를 어제 만났다."
    for tok in (Empty(), LatinOnly()):
        with pytest.raises(TokenizationError):
            rouge_scores([korean], [[korean]], tokenizer=tok)
        with pytest.raises(TokenizationError):
            check_tokenizer(tok, korean)
    assert issubclass(TokenizationError, ValueError) and issubclass(TokenizationError, KdsumError)
    # texts without Hangul may tokenise empty: an empty prediction is a real 0, not an error
    df = rouge_scores(["", "!!!"], [["민수는 학교에 갔다."], ["민수는 학교에 갔다."]])
    assert df[KEYS].to_numpy().tolist() == [[0.0] * 3, [0.0] * 3]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no reference"):
        rouge_scores(["a"], [[]])
    with pytest.raises(ValueError, match="one list of references"):
        rouge_scores(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="list of strings"):
        rouge_scores(["a"], ["a"])
    with pytest.raises(TypeError):
        rouge_scores([float("nan")], [["a"]])


# --------------------------------------------------------------------------- ROUGE-L properties


def independent_lcs(a: list[str], b: list[str]) -> int:
    """Textbook O(n*m) DP with two rows (independent of both rouge_score and kdsum)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def longest_common_substring(a: list[str], b: list[str]) -> int:
    best = 0
    for i in range(len(a)):
        for j in range(len(b)):
            k = 0
            while i + k < len(a) and j + k < len(b) and a[i + k] == b[j + k]:
                k += 1
            best = max(best, k)
    return best


def test_rouge_l_properties_on_random_sequences():
    rng = random.Random(20240521)
    preds, refs, pairs = [], [], []
    for _ in range(400):
        alphabet = [f"w{i}" for i in range(rng.randint(1, 8))]
        a = [rng.choice(alphabet) for _ in range(rng.randint(0, 30))]
        b = [rng.choice(alphabet) for _ in range(rng.randint(0, 30))]
        pairs.append((a, b))
        refs.append([" ".join(a)])
        preds.append(" ".join(b))
    df = rouge_scores(preds, refs, tokenizer=WhitespaceTokenizer())
    for i, (ref, pred) in enumerate(pairs):
        lcs = independent_lcs(ref, pred)
        assert lcs_length(ref, pred) == lcs
        rl = float(df.loc[i, "rougeL"])
        expected = 0.0 if lcs == 0 else 2 * (lcs / len(pred)) * (lcs / len(ref)) / (lcs / len(pred) + lcs / len(ref))
        assert rl == pytest.approx(expected, abs=1e-12)
        assert 0.0 <= rl <= 1.0
        # Theorem 1: a common substring is a common subsequence, so LCS >= longest common
        # substring, hence ROUGE-L recall >= LCSubstr / len(ref).
        lcsub = longest_common_substring(ref, pred)
        assert lcs >= lcsub
        if ref:
            assert lcs / len(ref) >= lcsub / len(ref)
        # Theorem 2: the LCS is a sub-multiset of both sequences, so LCS <= clipped unigram
        # overlap; P and R are both <= ROUGE-1's and F is monotone, so ROUGE-L F1 <= ROUGE-1 F1.
        assert rl <= float(df.loc[i, "rouge1"]) + 1e-12
    # ...and all of it is rouge_score's own arithmetic, bit for bit
    for i in range(0, 400, 7):
        assert row(df, i) == naive_scores(preds[i], refs[i], WhitespaceTokenizer())


def test_every_score_equals_rouge_score_on_random_token_sequences():
    """Bit-for-bit against rouge_score on every item: repeated tokens, empty sides, sequences longer
    than 64 tokens (multi-word bit masks), texts shared between items and between prediction and
    reference, and one to four references per item, for both aggregations."""
    rng = random.Random(7)
    pool = []
    for _ in range(60):
        alphabet = [f"w{i}" for i in range(rng.randint(1, 12))]
        pool.append(" ".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 2, 5, 20, 70, 150]))))
    preds = [rng.choice(pool) for _ in range(150)]
    refs = [[rng.choice(pool) for _ in range(rng.randint(1, 4))] for _ in range(150)]
    refs[0] = [preds[0]]  # a prediction that is its own reference
    tok = WhitespaceTokenizer()
    for agg in ("mean", "max"):
        df = rouge_scores(preds, refs, aggregate=agg, tokenizer=tok)
        for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
            assert row(df, i) == naive_scores(p, r, tok, agg), (agg, i)  # exact, not approx
        assert df["n_refs"].tolist() == [len(r) for r in refs]
        assert df["pred_tokens"].tolist() == [len(p.split()) for p in preds]
    assert (df.loc[[i for i, p in enumerate(preds) if not p], KEYS] == 0.0).all().all()


def test_no_items_gives_an_empty_table():
    df = rouge_scores([], [])
    assert len(df) == 0 and list(df.columns) == [*KEYS, "n_refs", "pred_tokens"]


def test_ngram_keys_that_would_overflow_are_refused():
    from kdsum.scoring.rouge import _ngram_table

    codes = np.array([0, 1], dtype=np.int64)
    with pytest.raises(OverflowError, match="int64"):
        _ngram_table(np.array([0, 1], dtype=np.int64), codes, 2, 2**62)


def test_importing_metrics_does_not_import_nltk():
    """rouge_score.tokenizers pulls in nltk and scipy.stats (about 1 s): only the rouge-score
    default tokenizer needs it, so evaluate and predict jobs do not pay for it."""
    code = (
        "import sys; import kdsum.scoring.metrics as m; assert 'nltk' not in sys.modules, 'nltk imported'; "
        "m.resolve_tokenizer('rouge-score-default'); assert 'nltk' in sys.modules"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.returncode == 0, proc.stderr


def test_rouge_l_is_not_bounded_below_by_rouge_2():
    # "ROUGE-L >= ROUGE-2" is NOT a theorem: swapping two blocks keeps the bigrams but halves
    # the LCS.  ref a b c d, pred c d a b: bigrams ab cd shared (2 of 3 -> 2/3), LCS 2 -> 1/2.
    df = rouge_scores(["c d a b"], [["a b c d"]], tokenizer=WhitespaceTokenizer())
    assert row(df) == pytest.approx((1.0, 2 / 3, 0.5))
    assert df.loc[0, "rougeL"] < df.loc[0, "rouge2"]


# --------------------------------------------------------------------------- fast path == naive


def _korean_pairs(n: int = 50) -> tuple[list[str], list[list[str]]]:
    dev = korean_dev()
    summaries = dev["summary"].tolist()
    preds, refs = [], []
    for i in range(n):
        lead = dev["dialogue"][i].split("\n")[0]  # a real "system": the first turn, mask kept
        preds.append(summaries[i] if i % 2 else lead)
        refs.append([summaries[i], summaries[i + 1], summaries[(i * 7) % len(summaries)]][: 1 + i % 3])
    return preds, refs


def test_fast_path_equals_naive_loop_on_real_korean():
    preds, refs = _korean_pairs(50)
    for agg in ("mean", "max"):
        df = rouge_scores(preds, refs, aggregate=agg, tokenizer=KIWI)
        for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
            assert row(df, i) == naive_scores(p, r, KIWI, agg), i  # exact, not approx
    assert df[KEYS].stack().between(0, 1).all() and df["rouge1"].mean() > 0.2


# --------------------------------------------------------------------------- statistics


def test_bootstrap_ci_brackets_mean_and_is_deterministic():
    values = np.random.default_rng(1).normal(50, 10, size=300)
    lo, hi = bootstrap_ci(values, n_resamples=1000, seed=0)
    assert lo < values.mean() < hi
    # a 95% interval of a mean is about 2 * 1.96 standard errors wide (normal approximation)
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_ci(values, n_resamples=1000, seed=0) == (lo, hi)
    assert bootstrap_ci(values, n_resamples=1000, seed=1) != (lo, hi)
    assert bootstrap_ci([3.0] * 20) == (3.0, 3.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_corpus_summary_sum_and_cis():
    df = pd.DataFrame({"rouge1": [0.5, 0.7, 0.6, 0.4], "rouge2": [0.2, 0.3, 0.1, 0.2], "rougeL": [0.4, 0.6, 0.5, 0.3]})
    s = corpus_summary(df, n_resamples=500, seed=0)
    assert s["rouge1"] == pytest.approx(55.0)
    assert s["rouge2"] == pytest.approx(20.0)
    assert s["rougeL"] == pytest.approx(45.0)
    assert s["rouge_sum"] == pytest.approx(120.0)
    for k in ("rouge1", "rouge2", "rougeL", "rouge_sum"):
        lo, hi = s[f"{k}_ci"]
        assert lo <= s[k] <= hi
    assert corpus_summary(df, n_resamples=0)["rouge_sum_ci"] is None


@pytest.mark.parametrize(("n", "n_resamples"), [(1, 7), (499, 1000), (9000, 1200)])  # 9000 x 1200: chunked draws
def test_corpus_summary_cis_equal_bootstrap_ci_per_column(n, n_resamples):
    """corpus_summary draws the resample indices once for its four columns: each CI equals bootstrap_ci's exactly."""
    rng = np.random.default_rng(n)
    df = pd.DataFrame({k: rng.random(n) for k in ("rouge1", "rouge2", "rougeL")})
    s = corpus_summary(df, n_resamples=n_resamples, seed=3)
    cols = {k: df[k].to_numpy() * 100.0 for k in ("rouge1", "rouge2", "rougeL")}
    cols["rouge_sum"] = cols["rouge1"] + cols["rouge2"] + cols["rougeL"]
    for k, v in cols.items():
        assert s[f"{k}_ci"] == list(bootstrap_ci(v, n_resamples=n_resamples, seed=3))


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    a = rng.uniform(20, 60, size=200)
    better = a + rng.normal(3.0, 2.0, size=200)
    res = paired_bootstrap(a, better, n_resamples=1000, seed=0)
    assert res["p_value"] < 0.01
    assert res["ci_low"] < res["mean_diff"] < res["ci_high"]
    assert res["ci_low"] > 0
    same = paired_bootstrap(a, a.copy())
    assert same["p_value"] == 1.0 and same["mean_diff"] == 0.0
    worse = paired_bootstrap(better, a)
    assert worse["p_value"] > 0.99
    assert paired_bootstrap(a, better, seed=0) == res
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap(a, a[:-1])


# --------------------------------------------------------------------------- diagnostics


def test_foreign_script_detection():
    assert not has_foreign_script("#Person1#은 #PhoneNumber#로 #Person2#에게 전화합니다.")
    assert has_foreign_script("#Person1#은 Jimmy를 만납니다.")  # Latin
    assert has_foreign_script("회의는 明日입니다")  # Han
    assert has_foreign_script("ありがとう 라고 말합니다")  # kana
    assert has_foreign_script("좋아요 😀")  # emoji
    assert has_foreign_script("링크 https://example.com 참고")  # URL
    assert not has_foreign_script("3시 30분에 만나요.")
    assert foreign_script_share(["#Person1#는 좋다", "Jimmy", "漢", "좋다"]) == 0.5
    assert foreign_script_share([]) == 0.0


def test_prediction_length():
    out = prediction_length(["민수는 학교에 갔다.", ""])
    assert out["mean_chars"] == pytest.approx((11 + 0) / 2)
    assert out["mean_morphemes"] == pytest.approx((len(KIWI.tokenize("민수는 학교에 갔다.")) + 0) / 2)
    # the evaluate CLI passes the counts the scoring already made instead of tokenising again
    assert prediction_length(["민수는 학교에 갔다.", ""], token_counts=[7, 0]) == {
        "mean_chars": 5.5,
        "mean_morphemes": 3.5,
    }
    with pytest.raises(ValueError, match="token_counts"):
        prediction_length(["a", "b"], token_counts=[1])


# --------------------------------------------------------------------------- CLIs


def _evaluation_spec(tmp: Path, **changes) -> Path:
    """The config's evaluation spec (kdsum.config.catalog.spec_for), with ``changes``, as a spec file."""
    spec = dataclasses.replace(spec_for(load_config(ROOT / "config.yaml"), "evaluation"), **changes)
    path = tmp / "specs" / "evaluation.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(spec), encoding="utf-8")
    return path


def _write_inputs(tmp: Path, preds: dict[str, str], refs: dict[str, list[str] | None]) -> tuple[Path, Path]:
    p, r = tmp / "pred.csv", tmp / "refs.jsonl"
    with open(p, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["fname", "summary"])
        w.writerows(preds.items())
    with open(r, "w", encoding="utf-8") as fh:
        for fname, summaries in refs.items():
            rec = {"fname": fname, "dialogue": "#Person1#: 안녕"}
            if summaries is not None:
                rec["summaries"] = summaries
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return p, r


REFS = {
    "dev_0": ["민수는 어제 학교에 갔다.", "민수가 학교에 갔다."],
    "dev_1": ["#Person1#은 사과와 배를 샀다."],
    "dev_2": ["#Person2#는 Jimmy를 만난다.", "#Person2#가 Jimmy와 만난다.", "둘이 만난다."],
}


def test_evaluate_cli_end_to_end(tmp_path):
    preds = {"dev_2": "#Person2#는 Jimmy를 만난다.", "dev_0": "민수가 학교에 갔다.", "dev_1": ""}
    p, r = _write_inputs(tmp_path, preds, REFS)
    out_json, out_items = tmp_path / "out" / "S.json", tmp_path / "out" / "I.csv"
    spec = _evaluation_spec(tmp_path, aggregate="mean", bootstrap=200, seed=0)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdsum",
            "evaluate",
            "--spec",
            str(spec),
            "--predictions",
            str(p),
            "--references",
            str(r),
            "--out-json",
            str(out_json),
            "--out-items",
            str(out_items),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # cwd elsewhere: the installed package is found
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("n=3 ROUGE-1 ") and "(mean over references)" in proc.stdout
    s = json.loads(out_json.read_text(encoding="utf-8"))
    items = pd.read_csv(out_items)
    assert list(items.columns) == ["fname", "rouge1", "rouge2", "rougeL", "rouge_sum", "n_refs"]
    assert items["fname"].tolist() == ["dev_0", "dev_1", "dev_2"]  # reference order
    assert items["n_refs"].tolist() == [2, 1, 3]
    expected0 = [100 * x for x in naive_scores(preds["dev_0"], REFS["dev_0"], KIWI)]
    assert items.loc[0, ["rouge1", "rouge2", "rougeL"]].tolist() == pytest.approx(expected0)
    assert items.loc[1, "rouge_sum"] == 0.0  # the empty prediction is scored, as 0
    assert s["n"] == 3 and s["aggregate"] == "mean" and s["empty_predictions"] == 1
    assert s["bootstrap"] == 200 and s["seed"] == 0  # the spec's settings
    assert s["rouge_sum"] == pytest.approx(items["rouge_sum"].mean())
    assert s["rouge1"] == pytest.approx(items["rouge1"].mean())
    lo, hi = s["rouge_sum_ci"]
    assert lo <= s["rouge_sum"] <= hi
    assert s["foreign_script_share"] == pytest.approx(1 / 3)  # "Jimmy"
    assert s["tokenizer"].startswith("kiwi 0.24") and s["tokenizer"].endswith("morphemes")
    assert s["mean_chars"] == pytest.approx(sum(len(v) for v in preds.values()) / 3)
    assert s["mean_morphemes"] == pytest.approx(sum(len(KIWI.tokenize(v)) for v in preds.values()) / 3)
    assert s["mean_morphemes"] > 0
    # one Kiwi thread gives the same files
    out_json1, out_items1 = tmp_path / "out1" / "S.json", tmp_path / "out1" / "I.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdsum",
            "evaluate",
            "--spec",
            str(spec),
            "--predictions",
            str(p),
            "--references",
            str(r),
            "--out-json",
            str(out_json1),
            "--out-items",
            str(out_items1),
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert out_json1.read_bytes() == out_json.read_bytes() and out_items1.read_bytes() == out_items.read_bytes()
    for key in ("rouge2", "rougeL", "rouge1_ci", "rouge2_ci", "rougeL_ci"):
        assert key in s


def _exit_code(argv: list[str]) -> int:
    """``kdsum ARGV`` in this process: the exit status (0 when the stage returns)."""
    try:
        kdsum_main(argv)
    except SystemExit as exc:
        return exc.code
    return 0


def test_evaluate_cli_errors_write_nothing(tmp_path, capsys):
    out_json, out_items = tmp_path / "out" / "S.json", tmp_path / "out" / "I.csv"
    outs = ["--out-json", str(out_json), "--out-items", str(out_items)]
    spec = str(_evaluation_spec(tmp_path))

    def run(preds, refs):
        p, r = _write_inputs(tmp_path, preds, refs)
        code = _exit_code(["evaluate", "--spec", spec, "--predictions", str(p), "--references", str(r), *outs])
        return code, capsys.readouterr().err, p, r

    # a reference without a prediction
    code, err, p, r = run({"dev_0": "x", "dev_1": "y"}, REFS)
    assert code == 2 and err.startswith("error:")
    assert "dev_2" in err and str(p) in err
    # a prediction without a reference
    code, err, p, _ = run({"dev_0": "x", "dev_1": "y", "dev_2": "z", "dev_9": "w"}, REFS)
    assert code == 2 and "dev_9" in err and "not in references" in err
    # a thread count below 1
    p, r = _write_inputs(tmp_path, {"dev_0": "x", "dev_1": "y", "dev_2": "z"}, REFS)
    code = _exit_code(
        ["evaluate", "--spec", spec, "--predictions", str(p), "--references", str(r), *outs, "--threads", "0"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --threads must be >= 1")
    # a predictions file that is not a CSV, and a missing one: one line naming the file
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\xff\xfe\x00broken")
    for path in (bad, tmp_path / "missing.csv"):
        code = _exit_code(["evaluate", "--spec", spec, "--predictions", str(path), "--references", str(r), *outs])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and str(path) in err and "Traceback" not in err
    # a spec file of another kind
    other = tmp_path / "summary.json"
    other.write_text(to_json(spec_for(load_config(ROOT / "config.yaml"), "summary")), encoding="utf-8")
    code = _exit_code(["evaluate", "--spec", str(other), "--predictions", str(p), "--references", str(r), *outs])
    assert code == 2 and "expected EvaluationArgs" in capsys.readouterr().err
    # a test split: no summaries
    code, err, _, r = run({"test_0": "x"}, {"test_0": None})
    assert code == 2 and "no reference summaries" in err and "test split" in err and str(r) in err
    assert not out_json.exists() and not out_items.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_compare_systems_cli(tmp_path):
    rng = np.random.default_rng(0)
    fnames = [f"dev_{i}" for i in range(100)]
    a = rng.uniform(60, 90, size=100)
    pd.DataFrame({"fname": fnames, "rouge_sum": a}).to_csv(tmp_path / "A.csv", index=False)
    # B is better by ~5 points, listed in another order: pairing must be on fname
    b = pd.DataFrame({"fname": fnames, "rouge_sum": a + 5 + rng.normal(0, 2, 100)}).iloc[::-1]
    b.to_csv(tmp_path / "B.csv", index=False)
    stage = [sys.executable, "-m", "kdsum", "compare"]
    proc = subprocess.run(
        [*stage, str(tmp_path / "A.csv"), str(tmp_path / "B.csv"), "--n", "500"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    expected = (b.set_index("fname").loc[fnames, "rouge_sum"].to_numpy() - a).mean()  # ~ +5
    assert f"mean difference (B - A): {expected:+.4f}" in proc.stdout
    assert "p-value" in proc.stdout and "0.0000" in proc.stdout
    b.iloc[:-1].to_csv(tmp_path / "B_short.csv", index=False)
    proc = subprocess.run(
        [*stage, str(tmp_path / "A.csv"), str(tmp_path / "B_short.csv")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: fname sets differ") and "dev_0" in proc.stderr
    proc = subprocess.run(
        [*stage, str(tmp_path / "A.csv"), str(tmp_path / "B.csv"), "--metric", "rouge9"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "rouge9" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- real data


@pytest.mark.integration
def test_dialogsum_reference_vs_other_references():
    path = SHARED / "dialogsum" / "test.jsonl"
    if not path.exists():
        pytest.skip(f"DialogSum test split not found: {path}")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    df = rouge_scores([r["summary1"] for r in records], [[r["summary2"], r["summary3"]] for r in records])
    s = corpus_summary(df, n_resamples=200)
    print(
        f"\nDialogSum test, summary1 vs summaries 2-3 (Kiwi tokens): R1 {s['rouge1']:.2f} "
        f"R2 {s['rouge2']:.2f} RL {s['rougeL']:.2f} sum {s['rouge_sum']:.2f} CI {s['rouge_sum_ci']}"
    )
    assert len(df) == 500 and (df["n_refs"] == 2).all()
    # human-vs-human agreement on DialogSum is about R1 ~ 50, R2 ~ 25, RL ~ 40-45
    assert 40 < s["rouge1"] < 60 and 15 < s["rouge2"] < 35 and 30 < s["rougeL"] < 55
    assert 90 < s["rouge_sum"] < 145


@pytest.mark.integration
def test_korean_dev_summaries_against_themselves():
    dev = korean_dev()
    df = rouge_scores(dev["summary"].tolist(), [[s] for s in dev["summary"]])
    s = corpus_summary(df, n_resamples=100)
    assert len(df) == 499
    assert s["rouge_sum"] == pytest.approx(300.0)
    assert (df[KEYS] == 1.0).all().all()


# --------------------------------------------------------------------------- hostile text (issue 11)


def _nfd(text: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFD", text)


def test_nfd_hangul_scores_like_nfc_on_both_sides():
    ref = "#Person1#은 #Person2#에게 천식 검사를 위해 폐 전문의에게 가볼 것을 권합니다."
    assert _nfd(ref) != ref
    # before normalisation an NFD prediction equal to its reference scored 10-37
    for pred, refs in ((_nfd(ref), [ref]), (ref, [_nfd(ref)]), (_nfd(ref), [_nfd(ref)])):
        assert row(rouge_scores([pred], [refs])) == (1.0, 1.0, 1.0)
    other = "민수가 학교에 갔다."
    clean = rouge_scores([other], [["민수는 어제 학교에 갔다."]])
    hostile = rouge_scores([_nfd(other)], [[_nfd("민수는 어제 학교에 갔다.")]])
    assert row(hostile) == row(clean) and clean["pred_tokens"].tolist() == hostile["pred_tokens"].tolist()
    assert KIWI.tokenize(_nfd(ref)) == KIWI.tokenize(ref) and KIWI.tokenize_many([_nfd(ref)]) == [KIWI.tokenize(ref)]
    assert has_hangul(_nfd(ref))


def test_invisible_and_control_characters_do_not_change_scores():
    ref = "#Person2#는 Jimmy를 만난다."
    hostile = "#Person2#는\u200b Jim\u200dmy를\ufeff 만\x00난다.\u2060"
    assert row(rouge_scores([hostile], [[ref]])) == (1.0, 1.0, 1.0)
    assert row(rouge_scores([ref], [[hostile]])) == (1.0, 1.0, 1.0)


def test_evaluate_counts_normalised_texts(tmp_path):
    preds = {
        "dev_0": _nfd("민수가 학교에 갔다."),
        "dev_1": "#Person1#은\u200b 사과와 배를 샀다.",
        "dev_2": "둘이 만난다.",
    }
    refs = dict(REFS, dev_2=[_nfd(r) for r in REFS["dev_2"]])
    p, r = _write_inputs(tmp_path, preds, refs)
    spec = _evaluation_spec(tmp_path, bootstrap=0)
    out_json, out_items = tmp_path / "out" / "S.json", tmp_path / "out" / "I.csv"
    argv = ["evaluate", "--spec", str(spec), "--predictions", str(p), "--references", str(r)]
    assert _exit_code([*argv, "--out-json", str(out_json), "--out-items", str(out_items)]) == 0
    s = json.loads(out_json.read_text(encoding="utf-8"))
    assert s["normalised_texts"] == {"predictions": 2, "references": 3}
    items = pd.read_csv(out_items).set_index("fname")
    assert items.loc["dev_1", "rouge1"] == 100.0  # the zero-width space is gone
    assert items.loc["dev_2", "rougeL"] == pytest.approx(100 * naive_scores("둘이 만난다.", REFS["dev_2"], KIWI)[2])
    # clean inputs: nothing counted
    p, r = _write_inputs(tmp_path, {"dev_0": "민수", "dev_1": "사과", "dev_2": "둘"}, REFS)
    assert _exit_code(["evaluate", "--spec", str(spec), "--predictions", str(p), "--references", str(r),
                       "--out-json", str(out_json), "--out-items", str(out_items)]) == 0  # fmt: skip
    assert json.loads(out_json.read_text(encoding="utf-8"))["normalised_texts"] == {"predictions": 0, "references": 0}
