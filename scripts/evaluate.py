"""Score a predictions CSV against multi-reference JSONL: ROUGE-1/2/L F1 on Kiwi morphemes.

    python scripts/evaluate.py --predictions P.csv --references R.jsonl \\
        --out-json S.json --out-items I.csv [--aggregate mean|max] [--bootstrap 1000] [--seed 0] [--threads N]

P.csv: columns ``fname,summary`` (other columns, e.g. a submission's index, are ignored).
R.jsonl: one ``{"fname", "summaries": [...], ...}`` object per line.
S.json: corpus scores ×100, their sum, bootstrap CIs and diagnostics; I.csv: per-item scores ×100.
On any input error: ``error: ...`` on stderr, exit status 2, and no output file is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pandas as pd  # noqa: E402

from kdsum.io import atomic_path, read_jsonl, write_json  # noqa: E402
from kdsum.metrics import (  # noqa: E402
    ROUGE_KEYS,
    KiwiMorphemeTokenizer,
    corpus_summary,
    foreign_script_share,
    prediction_length,
    rouge_scores,
    tokenizer_name,
)

_SHOW = 5  # how many missing fnames an error message names


class InputError(ValueError):
    """Bad input files: reported as ``error: ...`` with exit status 2."""


def _names(xs: list[str]) -> str:
    head = ", ".join(xs[:_SHOW])
    return head + (f", ... ({len(xs)} in all)" if len(xs) > _SHOW else "")


def load_predictions(path: Path) -> dict[str, str]:
    """fname -> summary; empty summaries are kept (they are scored as real failures)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("fname", "summary") if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    dup = df.loc[df["fname"].duplicated(), "fname"].tolist()
    if dup:
        raise InputError(f"{path}: duplicated fname(s): {_names(dup)}")
    return dict(zip(df["fname"], df["summary"]))


def load_references(path: Path) -> dict[str, list[str]]:
    """fname -> reference summaries, in file order."""
    refs: dict[str, list[str]] = {}
    no_summaries: list[str] = []
    for i, rec in enumerate(read_jsonl(path), start=1):
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
    if not refs:
        raise InputError(f"{path}: no records")
    if no_summaries:
        hint = " (is this a test split without summaries?)" if len(no_summaries) == len(refs) else ""
        raise InputError(
            f"{path}: {len(no_summaries)} of {len(refs)} records have no reference summaries{hint}: "
            f"{_names(no_summaries)}"
        )
    return refs


def evaluate(
    predictions: Path, references: Path, aggregate: str = "mean", n_bootstrap: int = 1000, seed: int = 0,
    threads: int | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Return (corpus summary for S.json, per-item table ×100 for I.csv); writes nothing.

    ``threads``: Kiwi's tokenisation threads; ``None``: one per core this process may use.
    """
    preds = load_predictions(predictions)
    refs = load_references(references)
    lacking = [f for f in refs if f not in preds]
    if lacking:
        raise InputError(
            f"{predictions} lacks predictions for {len(lacking)} fname(s) of {references}: {_names(lacking)}"
        )
    extra = [f for f in preds if f not in refs]
    if extra:
        raise InputError(
            f"{predictions} has {len(extra)} fname(s) not in references {references}: {_names(extra)}"
        )
    fnames = list(refs)  # reference order
    texts = [preds[f] for f in fnames]
    tokenizer = KiwiMorphemeTokenizer(num_workers=threads)
    scores = rouge_scores(texts, [refs[f] for f in fnames], aggregate=aggregate, tokenizer=tokenizer)

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
        "tokenizer": tokenizer_name(tokenizer),
        "bootstrap": n_bootstrap,
        "seed": seed,
    }
    items = pd.DataFrame({"fname": fnames})
    for k in ROUGE_KEYS:
        items[k] = scores[k].to_numpy() * 100.0
    items["rouge_sum"] = items["rouge1"] + items["rouge2"] + items["rougeL"]
    items["n_refs"] = scores["n_refs"].to_numpy()
    return result, items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--predictions", type=Path, required=True, help="CSV with fname,summary")
    ap.add_argument("--references", type=Path, required=True, help="JSONL with fname, summaries")
    ap.add_argument("--out-json", type=Path, required=True, help="corpus scores (JSON)")
    ap.add_argument("--out-items", type=Path, required=True, help="per-item scores (CSV)")
    ap.add_argument("--aggregate", choices=("mean", "max"), default="mean",
                    help="combine an item's references by mean (competition) or max")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples; 0 = no CIs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="Kiwi tokenisation threads (default: one per core this process may use)")
    args = ap.parse_args(argv)
    try:
        if args.bootstrap < 0:
            raise InputError("--bootstrap must be >= 0")
        if args.threads is not None and args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        result, items = evaluate(args.predictions, args.references, args.aggregate, args.bootstrap, args.seed,
                                 args.threads)
    except (ValueError, OSError) as exc:  # InputError, TokenizationError, parse errors, missing files
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Both outputs exist only after all scoring succeeded; each write is atomic.
    with atomic_path(args.out_items) as tmp:
        items.to_csv(tmp, index=False)
    write_json(args.out_json, result)
    print(
        f"n={result['n']} ROUGE-1 {result['rouge1']:.2f} ROUGE-2 {result['rouge2']:.2f} "
        f"ROUGE-L {result['rougeL']:.2f} sum {result['rouge_sum']:.2f} ({args.aggregate} over references)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
