"""A non-neural baseline's summaries of one ingested split.

    kdsum baseline --name lead|longest --data results/data/S.jsonl --out results/predictions/baseline/NAME/S.csv

CSV ``fname,summary`` in the split's order, whole or not at all. Definitions: kdsum.generation.baselines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from kdsum.config.spec import DEGENERATE_SHARE
from kdsum.data.ingest import load_split
from kdsum.generation.baselines import BASELINES, BaselineError, run_baseline
from kdsum.io import write_csv
from kdsum.korean.diagnostics import degenerate_warning, repetition


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="kdsum baseline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--name", required=True, help=f"one of: {', '.join(BASELINES)}")
    ap.add_argument("--data", required=True, help="an ingested split (results/data/S.jsonl)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    if args.name not in BASELINES:
        raise BaselineError(f"unknown baseline '{args.name}' (known: {', '.join(BASELINES)})")
    if not Path(args.data).is_file():
        raise BaselineError(f"data file not found: {args.data}")
    records = load_split(args.data)
    if not records:
        raise BaselineError(f"{args.data}: the split has no rows; nothing to predict")
    summaries = run_baseline(args.name, records)
    frame = pd.DataFrame({"fname": [r["fname"] for r in records], "summary": summaries})
    write_csv(args.out, frame)
    # evaluation.degenerate_share's default (its evaluate job applies the configured one)
    if warning := degenerate_warning(
        f"baseline/{args.name} {Path(args.data).stem}", repetition(summaries), DEGENERATE_SHARE
    ):
        print(warning, file=sys.stderr)
    print(f"wrote {args.out}: {len(frame)} {args.name} summaries")
