"""ROUGE-1/2/L F1 on Kiwi morphemes of a predictions file, with bootstrap intervals.

    kdsum evaluate --spec results/specs/evaluation.json --predictions P.csv --references R.jsonl \\
        --out-json S.json --out-items I.csv [--out-metrics M.json] [--part tuning|report] [--threads N]
        [--token-cache DIR]

The spec (kdsum.config.spec.EvaluationArgs) gives the aggregation over references (mean|max), the bootstrap resamples
(0: no CIs) and the seed. P.csv: columns ``fname,summary`` (other columns, e.g. a submission's index, are
ignored). R.jsonl: one ``{"fname", "summaries": [...], ...}`` object per line. S.json: corpus scores ×100, their
sum, bootstrap CIs and diagnostics; M.json: final and ROUGE-1/2/L only (the pipeline's DVC metric); I.csv:
per-item scores ×100. On any input error: ``error: ...`` on stderr, exit status 2, and no output file is written.
``--token-cache DIR`` keeps the references' and the predictions' morphemes in DIR, keyed by their content and the
tokenizer (kdsum.scoring.token_cache), so the other systems of the split do not tokenise the references again and a
second scoring of the same file (its report part, or after a change of the ROUGE code) loads no Kiwi at all. --part scores one part of the
dev set only (kdsum.selection.tuning, by the spec's tuning_fraction): ``report`` for the score of a setting that was
selected on the ``tuning`` rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdsum.config.spec import EvaluationArgs, read_spec
from kdsum.io import write_csv, write_json
from kdsum.scoring.evaluate import InputError, evaluate, headline_scores
from kdsum.selection.tuning import PARTS, part_fnames


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kdsum evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, required=True, help="evaluation spec (results/specs/evaluation.json)")
    ap.add_argument("--predictions", type=Path, required=True, help="CSV with fname,summary")
    ap.add_argument("--references", type=Path, required=True, help="JSONL with fname, summaries")
    ap.add_argument("--out-json", type=Path, required=True, help="corpus scores (JSON)")
    ap.add_argument("--out-items", type=Path, required=True, help="per-item scores (CSV)")
    ap.add_argument("--out-metrics", type=Path, default=None, help="final and ROUGE-1/2/L only (JSON)")
    ap.add_argument("--part", choices=PARTS, help="score only this part of the dev set (kdsum.selection.tuning)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Kiwi tokenisation threads (default: one per core this process may use)",
    )
    ap.add_argument(
        "--token-cache",
        type=Path,
        default=None,
        help="directory of cached morphemes (keyed by content; same scores with or without)",
    )
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    spec = read_spec(args.spec, EvaluationArgs)
    rows = None
    if args.part:

        def rows(fnames: list[str]) -> list[str]:
            return part_fnames(fnames, spec.tuning_fraction, args.part, str(args.references))

    result, items = evaluate(
        args.predictions,
        args.references,
        spec.aggregate,
        spec.bootstrap,
        spec.seed,
        args.threads,
        args.token_cache,
        rows,
        spec.degenerate_share,
    )
    if args.part:
        result["part"] = args.part
        result["tuning_fraction"] = spec.tuning_fraction
    # Both outputs exist only after all scoring succeeded; each write is atomic.
    write_csv(args.out_items, items)
    write_json(args.out_json, result)
    if args.out_metrics is not None:
        write_json(args.out_metrics, headline_scores(result))
    print(
        f"n={result['n']} ROUGE-1 {result['rouge1']:.2f} ROUGE-2 {result['rouge2']:.2f} "
        f"ROUGE-L {result['rougeL']:.2f} sum {result['rouge_sum']:.2f} ({spec.aggregate} over references"
        f"{f'; dev {args.part} rows' if args.part else ''})"
    )
