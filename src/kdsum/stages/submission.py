"""The competition's submission file from test predictions.

    kdsum submission --predictions results/predictions/M/V/test.csv --data results/data/test.jsonl \\
        --out results/predictions/M/V/submission.csv

The layout and the refusals: kdsum.reporting.submission. Empty summaries are written (and counted on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdsum.reporting.submission import build_submission, write_submission


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="kdsum submission", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--predictions", required=True, help="CSV fname,summary (results/predictions/M/V/test.csv)")
    ap.add_argument("--data", required=True, help="the ingested test split (results/data/test.jsonl)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    frame = build_submission(Path(args.predictions), Path(args.data))
    empty = write_submission(frame, args.out, args.data)
    if empty:
        print(f"warning: {empty} empty summaries in the submission", file=sys.stderr)
    print(f"wrote {args.out}: {len(frame)} rows")
