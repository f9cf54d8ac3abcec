"""Scoring files: a predictions CSV against multi-reference JSONL (``kdsum evaluate``), and two systems' per-item
scores against each other (``kdsum compare``).

Predictions: a CSV with columns ``fname,summary`` (other columns, e.g. a submission's index, are ignored).
References: JSONL with one ``{"fname", "summaries": [...], ...}`` object per line. Both are normalised as ingest
normalises the data (:func:`kdsum.korean.text.normalize_text`: NFC, no zero-width or control characters), and the texts
that changed are counted (``normalised_texts``). Every problem with the input files raises :class:`InputError`
naming the file; this module writes nothing but the morpheme cache it may be given (kdsum.scoring.token_cache).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from kdsum.config.spec import DEGENERATE_SHARE
from kdsum.errors import KdsumError
from kdsum.io import read_jsonl
from kdsum.korean.diagnostics import (
    degenerate_warning,
    foreign_script_share,
    is_degenerate,
    output_diversity,
    prediction_length,
)
from kdsum.korean.guards import tokenizer_name
from kdsum.korean.kiwi import KiwiMorphemeTokenizer
from kdsum.korean.text import normalize_text
from kdsum.scoring.bootstrap import corpus_summary, paired_bootstrap
from kdsum.scoring.rouge import ROUGE_KEYS, _gc_paused, final_score, rouge_scores
from kdsum.scoring.token_cache import ReferenceTokens, ServedAhead, TextTokens, TokensAhead

log = logging.getLogger(__name__)
_SHOW = 5  # how many fnames an error message names
T = TypeVar("T")


class InputError(KdsumError, ValueError):
    """Bad input files (or settings) of a scoring job."""


def _names(xs: list[str]) -> str:
    head = ", ".join(xs[:_SHOW])
    return head + (f", ... ({len(xs)} in all)" if len(xs) > _SHOW else "")


def _read(path: Path, reader: Callable[[Path], T]) -> T:
    """``reader(path)``, with a missing or unreadable file as an :class:`InputError` naming it."""
    try:
        return reader(path)
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except (OSError, ValueError) as exc:  # a directory, undecodable bytes, malformed CSV / JSON
        raise InputError(f"{path}: cannot be read: {exc}") from None


def load_predictions(path: Path) -> dict[str, str]:
    """fname -> summary; empty summaries are kept (they are scored as real failures)."""
    df = _read(path, lambda p: pd.read_csv(p, dtype=str, keep_default_na=False))
    missing = [c for c in ("fname", "summary") if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    dup = df.loc[df["fname"].duplicated(), "fname"].tolist()
    if dup:
        raise InputError(f"{path}: duplicated fname(s): {_names(dup)}")
    return dict(zip(df["fname"].tolist(), df["summary"].tolist(), strict=True))


def _quick_predictions(path: Path) -> list[str]:
    """The normalised summaries of a predictions CSV read with the csv module, for tokenising them ahead: a guess
    of what :func:`load_predictions` reads (tokens are served by exact text, so a wrong guess only costs time)."""
    with open(path, encoding="utf-8", newline="") as fh:
        return [normalize_text(row["summary"]) for row in csv.DictReader(fh)]


def _reference_lists(path: Path, records: list[Any]) -> tuple[dict[str, list[str]], list[str]]:
    refs: dict[str, list[str]] = {}
    no_summaries: list[str] = []
    for i, rec in enumerate(records, start=1):
        if not isinstance(rec, dict) or "fname" not in rec:
            raise InputError(f"{path}: record {i} has no 'fname'")
        fname = str(rec["fname"])
        if fname in refs:
            raise InputError(f"{path}: duplicated fname {fname!r}")
        summaries = rec.get("summaries")
        if not summaries:
            no_summaries.append(fname)
            refs[fname] = []
            continue
        if not isinstance(summaries, list) or not all(isinstance(s, str) for s in summaries):
            raise InputError(f"{path}: record {fname!r}: 'summaries' must be a list of strings")
        refs[fname] = summaries
    return refs, no_summaries


def load_references(path: Path) -> dict[str, list[str]]:
    """fname -> reference summaries, in file order."""
    refs, no_summaries = _reference_lists(path, _read(path, read_jsonl))
    if not refs:
        raise InputError(f"{path}: no records")
    if no_summaries:
        hint = " (is this a test split without summaries?)" if len(no_summaries) == len(refs) else ""
        raise InputError(
            f"{path}: {len(no_summaries)} of {len(refs)} records have no reference summaries{hint}: "
            f"{_names(no_summaries)}"
        )
    return refs


def _normalized(text: str, fixed: dict[str, int], side: str) -> str:
    out = normalize_text(text)
    fixed[side] += out != text
    return out


def _paired(
    predictions: Path, references: Path, rows: Callable[[list[str]], list[str]] | None = None
) -> tuple[list[str], list[str], list[list[str]], list[list[str]]]:
    """(fnames in reference order, their predictions, their references, the references of every row of the file);
    every fname on both sides.

    ``rows``: given the references' fnames, those to score (e.g. one part of the dev set, kdsum.selection.tuning); the
    predictions of the others are ignored."""
    preds = load_predictions(predictions)
    refs = load_references(references)
    every = list(refs.values())
    if rows is not None:
        keep, known = set(rows(list(refs))), set(refs)
        refs = {f: r for f, r in refs.items() if f in keep}
        # the other part's predictions are dropped; a fname that is in no reference stays (and is refused below)
        preds = {f: p for f, p in preds.items() if f in keep or f not in known}
    lacking = [f for f in refs if f not in preds]
    if lacking:
        raise InputError(
            f"{predictions} lacks predictions for {len(lacking)} fname(s) of {references}: {_names(lacking)}"
        )
    extra = [f for f in preds if f not in refs]
    if extra:
        raise InputError(f"{predictions} has {len(extra)} fname(s) not in references {references}: {_names(extra)}")
    fnames = list(refs)
    return fnames, [preds[f] for f in fnames], [refs[f] for f in fnames], every


def _scored(
    tokenizer: KiwiMorphemeTokenizer,
    predictions: Path,
    references: Path,
    aggregate: str,
    token_cache: Path | None,
    rows: Callable[[list[str]], list[str]] | None,
) -> tuple[list[str], list[str], dict[str, int], pd.DataFrame]:
    """(fnames, normalised predictions, the counts of normalised texts, rouge_scores' table) of :func:`evaluate`."""
    # Kiwi's workers analyse the predictions (read quickly, in the background) while this thread reads both files
    # and the morpheme cache; with ``rows`` and no cache, only some predictions are scored, and none is made ahead.
    ahead = _predictions_ahead(tokenizer, predictions, token_cache, rows)
    fnames, texts, refs, every = _paired(predictions, references, rows)
    # Both sides normalised as ingest normalises the data (NFC, no zero-width or control characters); counted.
    fixed = {"predictions": 0, "references": 0}
    texts = [_normalized(t, fixed, "predictions") for t in texts]
    refs = [[_normalized(r, fixed, "references") for r in rs] for rs in refs]
    # keyed by every reference of the file, so that each part of the dev set (tuning, report) shares one cache file
    scorer = ReferenceTokens(tokenizer, [[normalize_text(r) for r in rs] for rs in every], token_cache)
    served = scorer if ahead is None else ServedAhead(scorer, ahead)
    scores = rouge_scores(texts, refs, aggregate=aggregate, tokenizer=served)
    scorer.store()  # after a miss, for the split's other systems; only once the scores are made
    if isinstance(ahead, TextTokens):
        ahead.store()  # after a miss, for the next scoring of this file
    if token_cache is not None:  # the job's log, not S.json: a hit and a miss write the same outputs
        log.info("reference morphemes: cache %s in %s", scorer.status, token_cache)
        log.info("prediction morphemes: cache %s", getattr(ahead, "status", "off"))
    return fnames, texts, fixed, scores


def _predictions_ahead(
    tokenizer: Any, predictions: Path, token_cache: Path | None, rows: Callable | None
) -> TextTokens | TokensAhead | None:
    """The predictions' tokens made ahead: from the morpheme cache (or made and stored there) when there is one,
    else in the background for a whole file (``rows`` None)."""
    if token_cache is not None:
        try:
            texts = _quick_predictions(predictions)
        except (OSError, ValueError, KeyError, csv.Error):  # a bad file: _paired names what is wrong
            return None
        return TextTokens(tokenizer, texts, token_cache)
    return TokensAhead(tokenizer, lambda: _quick_predictions(predictions)) if rows is None else None


def evaluate(
    predictions: Path,
    references: Path,
    aggregate: str = "mean",
    n_bootstrap: int = 1000,
    seed: int = 0,
    threads: int | None = None,
    token_cache: Path | None = None,
    rows: Callable[[list[str]], list[str]] | None = None,
    degenerate_share: float = DEGENERATE_SHARE,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Return (corpus summary for S.json, per-item table ×100 for I.csv); writes only to ``token_cache``.

    ``threads``: Kiwi's tokenisation threads; ``None``: one per core this process may use.
    ``token_cache``: a directory where the references' morphemes are kept (:mod:`kdsum.scoring.token_cache`), so that the
    systems scored on one split tokenise its references once; the scores are the same with or without it.
    ``rows``: which of the references' fnames to score (:func:`_paired`); ``None``: all.
    ``degenerate_share``: ``evaluation.degenerate_share`` (:func:`kdsum.scoring.metrics.is_degenerate`).
    Where references carry ingest's ``near_dup_train`` flag, ``rouge_sum_clean`` (and its interval) is the score
    over the rows without a near-duplicate in train (:func:`_clean_scores`).
    """
    if aggregate not in ("mean", "max"):
        raise InputError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
    if n_bootstrap < 0:
        raise InputError("bootstrap must be >= 0")
    tokenizer = KiwiMorphemeTokenizer(num_workers=threads)
    # The cyclic GC is paused for the whole scoring, the background tokenisation included (see rouge._gc_paused), and
    # _scored returns before it resumes: the token lists it made are freed by then, so the GC has nothing to scan
    # or promote (a resumed GC that finds them alive runs a full collection of the process every few jobs).
    with _gc_paused():
        fnames, texts, fixed, scores = _scored(tokenizer, predictions, references, aggregate, token_cache, rows)
    summary = corpus_summary(scores, n_resamples=n_bootstrap, seed=seed)
    result: dict[str, Any] = {
        "n": summary["n"],
        "aggregate": aggregate,
        **{k: summary[k] for k in (*ROUGE_KEYS, "rouge_sum")},
        **{f"{k}_ci": summary[f"{k}_ci"] for k in (*ROUGE_KEYS, "rouge_sum")},
        # the predictions' morpheme counts come from the scoring: no second Kiwi pass
        **prediction_length(texts, token_counts=scores["pred_tokens"].tolist()),
        "foreign_script_share": foreign_script_share(texts),
        "empty_predictions": sum(1 for t in texts if not t.strip()),
        "normalised_texts": fixed,
        "tokenizer": tokenizer_name(tokenizer),
        "bootstrap": n_bootstrap,
        "seed": seed,
    }
    rows_info = _row_info(references, fnames)
    result.update(_diversity(texts, rows_info["dialogue"], degenerate_share))
    result.update(_clean_scores(scores, rows_info["near_dup_train"], n_bootstrap, seed))
    columns: dict[str, Any] = {"fname": fnames, **{k: scores[k].to_numpy() * 100.0 for k in ROUGE_KEYS}}
    columns["rouge_sum"] = columns["rouge1"] + columns["rouge2"] + columns["rougeL"]
    columns["n_refs"] = scores["n_refs"].to_numpy()
    return result, pd.DataFrame(columns)  # one constructor call, not one per column


def _row_info(references: Path, fnames: list[str]) -> dict[str, list]:
    """The scored rows' dialogues and ``near_dup_train`` flags (False where ingest set none), in ``fnames`` order."""
    by_fname = {str(r["fname"]): r for r in _read(references, read_jsonl)}
    rows = [by_fname[f] for f in fnames]
    return {
        "dialogue": [str(r.get("dialogue") or "") for r in rows],
        "near_dup_train": [bool(r.get("near_dup_train")) for r in rows],
    }


def _diversity(texts: list[str], dialogues: list[str], threshold: float) -> dict[str, Any]:
    """distinct / top / copied shares and the degenerate flag (warned in the job's log)."""
    diversity = output_diversity(texts, dialogues)
    if warning := degenerate_warning("these predictions", diversity, threshold):
        log.warning(warning.removeprefix("warning: "))
    return {**diversity, "degenerate": is_degenerate(diversity, threshold), "degenerate_share": threshold}


def _clean_scores(scores: pd.DataFrame, flags: list[bool], n_bootstrap: int, seed: int) -> dict[str, Any]:
    """The score over the rows without a near-duplicate in train (none when no row is flagged, or all are)."""
    flagged = sum(flags)
    if not flagged or flagged == len(flags):
        return {"n_near_dup_train": flagged} if flagged else {}
    clean = corpus_summary(scores[[not f for f in flags]], n_resamples=n_bootstrap, seed=seed)
    return {
        "n_near_dup_train": flagged,
        "n_clean": clean["n"],
        "rouge_sum_clean": clean["rouge_sum"],
        "rouge_sum_clean_ci": clean["rouge_sum_ci"],
    }


def headline_scores(result: dict[str, Any]) -> dict[str, float]:
    """``{split}_metrics.json``, the DVC metric of a scored system: the leaderboard's ``final`` (the mean of
    ROUGE-1/2/L F1 x100, i.e. ``rouge_sum / 3``, as kdsum.reporting.summary reports it) and the three F1s."""
    return {"final": final_score(result["rouge_sum"]), **{k: result[k] for k in ROUGE_KEYS}}


# --------------------------------------------------------------------------- comparing two systems


def load_item_scores(path: Path, metric: str) -> pd.Series:
    """One system's per-item ``metric`` (an I.csv of ``kdsum evaluate``), indexed by fname."""
    df = _read(path, lambda p: pd.read_csv(p, dtype={"fname": str}, keep_default_na=False))
    for col in ("fname", metric):
        if col not in df.columns:
            raise InputError(f"{path}: no column {col!r}; found {list(df.columns)}")
    dup = df.loc[df["fname"].duplicated(), "fname"].tolist()
    if dup:
        raise InputError(f"{path}: duplicated fname(s): {dup[:_SHOW]}")
    values = pd.to_numeric(df[metric], errors="coerce")
    if values.isna().any():
        bad = df.loc[values.isna(), "fname"].tolist()[:_SHOW]
        raise InputError(f"{path}: non-numeric {metric!r} for fname(s) {bad}")
    return pd.Series(values.to_numpy(), index=df["fname"], name=metric)


def compare_systems(
    a_path: Path, b_path: Path, metric: str = "rouge_sum", n_resamples: int = 1000, seed: int = 0
) -> tuple[pd.Series, pd.Series, dict[str, float]]:
    """(A's scores, B's scores paired to A's fnames, :func:`kdsum.scoring.bootstrap.paired_bootstrap` of B - A).

    Items are paired on fname; the two files must hold exactly the same fnames."""
    a = load_item_scores(a_path, metric)
    b = load_item_scores(b_path, metric)
    only_a = sorted(set(a.index) - set(b.index))
    only_b = sorted(set(b.index) - set(a.index))
    if only_a or only_b:
        raise InputError(
            f"fname sets differ: {len(only_a)} only in {a_path} {only_a[:_SHOW]}, "
            f"{len(only_b)} only in {b_path} {only_b[:_SHOW]}"
        )
    b = b.loc[a.index]  # pair on fname
    try:
        res = paired_bootstrap(a.to_numpy(), b.to_numpy(), n_resamples=n_resamples, seed=seed)
    except ValueError as exc:  # no items, NaN, n_resamples < 1
        raise InputError(str(exc)) from None
    return a, b, res
