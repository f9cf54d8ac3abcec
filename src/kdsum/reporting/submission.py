"""The competition's submission file from test-split predictions.

The output has the layout of sample_submission.csv: header ``,fname,summary`` (an unnamed index column 0..n-1,
then fname and summary), one row per test dialogue in the test data's order, UTF-8 without BOM, ``\\n`` line
ends, a final newline, fields quoted only where CSV needs it (pandas ``to_csv``). Refused, with nothing written:
a test fname without a prediction, a prediction for an fname the test data does not have, duplicated fnames,
a predictions file without ``fname``/``summary`` columns.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdsum.data.ingest import load_split
from kdsum.errors import KdsumError
from kdsum.io import write_csv

_SHOW = 5


class SubmissionError(KdsumError, ValueError):
    """Predictions that do not cover the test data exactly."""


def _names(xs: list[str]) -> str:
    return ", ".join(xs[:_SHOW]) + (f", ... ({len(xs)} in all)" if len(xs) > _SHOW else "")


def _read_predictions(pred_path: Path) -> pd.DataFrame:
    preds = pd.read_csv(pred_path, dtype=str, keep_default_na=False)
    missing_cols = [c for c in ("fname", "summary") if c not in preds.columns]
    if missing_cols:
        raise SubmissionError(
            f"{pred_path}: missing column(s) {', '.join(missing_cols)}; found {', '.join(map(str, preds.columns))}"
        )
    dup = sorted(set(preds.loc[preds["fname"].duplicated(), "fname"]))
    if dup:
        raise SubmissionError(f"{pred_path}: duplicated fname(s): {_names(dup)}")
    return preds


def build_submission(pred_path: Path, data_path: Path) -> pd.DataFrame:
    """``fname, summary`` in the test data's order; refuses predictions that do not cover it exactly."""
    for p in (pred_path, data_path):
        if not p.is_file():
            raise SubmissionError(f"file not found: {p}")
    preds = _read_predictions(pred_path)
    records = load_split(data_path)
    if not records:
        raise SubmissionError(f"{data_path}: the test data has no rows")
    order = [r["fname"] for r in records]
    by_fname = dict(zip(preds["fname"], preds["summary"], strict=True))
    lacking = [f for f in order if f not in by_fname]
    if lacking:
        raise SubmissionError(
            f"{pred_path}: no prediction for {len(lacking)} test fname(s) of {data_path}: {_names(lacking)}"
        )
    known = set(order)
    unknown = [f for f in preds["fname"] if f not in known]
    if unknown:
        raise SubmissionError(
            f"{pred_path}: {len(unknown)} prediction(s) for fname(s) not in {data_path}: {_names(unknown)}"
        )
    return pd.DataFrame({"fname": order, "summary": [by_fname[f] for f in order]})


def write_submission(frame: pd.DataFrame, out: str | Path) -> int:
    """Write the submission (index column included), whole or not at all; returns the number of empty summaries."""
    write_csv(out, frame, index=True)
    return int((frame["summary"].str.strip() == "").sum())
