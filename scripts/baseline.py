#!/usr/bin/env python
"""Write a non-neural baseline's predictions for one ingested split.

    python scripts/baseline.py --name lead|longest --data results/data/S.jsonl \\
        --out results/predictions/baseline/NAME/S.csv

CSV ``fname,summary`` in the split's order, whole or not at all. Definitions: kdsum.baselines.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdsum.baselines import BaselineError  # noqa: E402
from kdsum.cli import register_error, run_cli  # noqa: E402

register_error(BaselineError)


def main() -> None:
    import pandas as pd

    from kdsum.baselines import BASELINES, run_baseline
    from kdsum.data import load_split
    from kdsum.io import atomic_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help=f"one of: {', '.join(BASELINES)}")
    ap.add_argument("--data", required=True, help="an ingested split (results/data/S.jsonl)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    if args.name not in BASELINES:
        raise BaselineError(f"unknown baseline '{args.name}' (known: {', '.join(BASELINES)})")
    if not Path(args.data).is_file():
        raise BaselineError(f"data file not found: {args.data}")
    records = load_split(args.data)
    if not records:
        raise BaselineError(f"{args.data}: the split has no rows; nothing to predict")
    summaries = run_baseline(args.name, records)
    frame = pd.DataFrame({"fname": [r["fname"] for r in records], "summary": summaries})
    with atomic_path(args.out) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")
    print(f"wrote {args.out}: {len(frame)} {args.name} summaries")


if __name__ == "__main__":
    run_cli(main)
