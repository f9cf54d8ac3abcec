"""results/submission.csv: the submission of the best system on the dev report rows, never a degenerate one.

    kdsum best-submission --evaluation-spec results/specs/evaluation.json --systems NAME ... --scores F ...
        --items F ... --predictions F ... --data results/data/test.jsonl
        --out-csv results/submission.csv --out-json results/submission.json

One --scores (dev S.json), --items (dev I.csv) and --predictions (test.csv) per --systems name, in that order.
The choice and the format: kdsum.reporting.submission. submission.json names the system, the candidates' scores
and the selection rule.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdsum.config.spec import EvaluationArgs, read_spec
from kdsum.data.ingest import load_split
from kdsum.io import write_json
from kdsum.reporting.submission import (
    SELECTION_RULE,
    Candidate,
    SubmissionError,
    build_submission,
    candidate_table,
    choose_system,
    write_submission,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="kdsum best-submission", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--evaluation-spec", required=True, help="results/specs/evaluation.json")
    for option in ("--systems", "--scores", "--items", "--predictions"):
        ap.add_argument(option, nargs="+", required=True)
    ap.add_argument("--data", required=True, help="the ingested test split (results/data/test.jsonl)")
    ap.add_argument("--out-csv", required=True)
    ap.add_argument("--out-json", required=True)
    return ap


def _candidates(args: argparse.Namespace) -> list[Candidate]:
    lists = (args.systems, args.scores, args.items, args.predictions)
    if len({len(x) for x in lists}) != 1:
        raise SubmissionError(
            f"--systems, --scores, --items, --predictions: {', '.join(str(len(x)) for x in lists)} given; "
            "one of each per system"
        )
    return [Candidate(n, Path(s), Path(i), Path(p)) for n, s, i, p in zip(*lists, strict=True)]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    evaluation = read_spec(args.evaluation_spec, EvaluationArgs)
    candidates = _candidates(args)
    test = load_split(args.data)
    rows = candidate_table(candidates, test, evaluation.tuning_fraction, evaluation.degenerate_share)
    best = choose_system(rows)
    chosen = next(c for c in candidates if c.name == best["system"])
    frame = build_submission(chosen.predictions, Path(args.data))
    empty = write_submission(frame, args.out_csv, args.data)
    write_json(
        args.out_json,
        {"system": best["system"], **best, "rows": len(frame), "empty_summaries": empty, "selection": SELECTION_RULE,
         "tuning_fraction": evaluation.tuning_fraction, "degenerate_share": evaluation.degenerate_share,
         "candidates": rows},
    )  # fmt: skip
    for r in rows:
        if r["degenerate_dev"] or r["degenerate_test"]:
            print(f"warning: {r['system']}: degenerate output, not a candidate", file=sys.stderr)
    print(f"wrote {args.out_csv}: {best['system']} (final_report {best['final_report']:.2f}), {len(frame)} rows")
