#!/usr/bin/env python
"""Turn test-split predictions into the competition's submission file.

    python scripts/make_submission.py --predictions results/predictions/M/V/test.csv \\
        --data results/data/test.jsonl --out results/predictions/M/V/submission.csv

The output has the layout of sample_submission.csv: header ``,fname,summary`` (an unnamed index column 0..n-1,
then fname and summary), one row per test dialogue in the test data's order, UTF-8 without BOM, ``\\n`` line
ends, a final newline, fields quoted only where CSV needs it (pandas ``to_csv``). Refused, with nothing written:
a test fname without a prediction, a prediction for an fname the test data does not have, duplicated fnames,
a predictions file without ``fname``/``summary`` columns. Empty summaries are written (and counted on stderr).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdsum.cli import register_error, run_cli  # noqa: E402


class SubmissionError(ValueError):
    """Predictions that do not cover the test data exactly."""


register_error(SubmissionError)
_SHOW = 5


def _names(xs: list[str]) -> str:
    return ", ".join(xs[:_SHOW]) + (f", ... ({len(xs)} in all)" if len(xs) > _SHOW else "")


def build_submission(pred_path: Path, data_path: Path):
    import pandas as pd

    from kdsum.data import load_split

    for p in (pred_path, data_path):
        if not p.is_file():
            raise SubmissionError(f"file not found: {p}")
    preds = pd.read_csv(pred_path, dtype=str, keep_default_na=False)
    missing_cols = [c for c in ("fname", "summary") if c not in preds.columns]
    if missing_cols:
        raise SubmissionError(f"{pred_path}: missing column(s) {', '.join(missing_cols)}; "
                              f"found {', '.join(map(str, preds.columns))}")
    dup = sorted(set(preds.loc[preds["fname"].duplicated(), "fname"]))
    if dup:
        raise SubmissionError(f"{pred_path}: duplicated fname(s): {_names(dup)}")
    records = load_split(data_path)
    if not records:
        raise SubmissionError(f"{data_path}: the test data has no rows")
    order = [r["fname"] for r in records]
    by_fname = dict(zip(preds["fname"], preds["summary"]))
    lacking = [f for f in order if f not in by_fname]
    if lacking:
        raise SubmissionError(f"{pred_path}: no prediction for {len(lacking)} test fname(s) of {data_path}: "
                              f"{_names(lacking)}")
    known = set(order)
    unknown = [f for f in preds["fname"] if f not in known]
    if unknown:
        raise SubmissionError(f"{pred_path}: {len(unknown)} prediction(s) for fname(s) not in {data_path}: "
                              f"{_names(unknown)}")
    return pd.DataFrame({"fname": order, "summary": [by_fname[f] for f in order]})


def main() -> None:
    from kdsum.io import atomic_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", required=True, help="CSV fname,summary (results/predictions/M/V/test.csv)")
    ap.add_argument("--data", required=True, help="the ingested test split (results/data/test.jsonl)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    frame = build_submission(Path(args.predictions), Path(args.data))
    with atomic_path(args.out) as tmp:
        frame.to_csv(tmp, index=True, encoding="utf-8", lineterminator="\n")
    empty = int((frame["summary"].str.strip() == "").sum())
    if empty:
        print(f"warning: {empty} empty summaries in the submission", file=sys.stderr)
    print(f"wrote {args.out}: {len(frame)} rows")


if __name__ == "__main__":
    run_cli(main)
