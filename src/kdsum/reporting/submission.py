"""The competition's submission file from test-split predictions, and the best system's submission.

The output has the layout of sample_submission.csv: header ``,fname,summary`` (an unnamed index column 0..n-1,
then fname and summary), one row per test dialogue in the test data's order, summaries in NFC, UTF-8 without
BOM, ``\\n`` line ends, a final newline, fields quoted only where CSV needs it (pandas ``to_csv``); the text is
read back and checked (:func:`check_submission_text`) before it is written. Refused, with nothing written: a test
fname without a prediction, a prediction for an fname the test data does not have, duplicated fnames, a
predictions file without ``fname``/``summary`` columns.

The best system (:func:`choose_system`): the highest ``final`` over the dev set's report rows
(kdsum.selection.tuning: the rows no checkpoint or decoding setting was chosen on), among the systems whose dev
and test predictions are not degenerate (kdsum.scoring.metrics.is_degenerate).
"""

from __future__ import annotations

import io
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kdsum.data.ingest import load_split
from kdsum.errors import KdsumError
from kdsum.io import read_json, write_text
from kdsum.korean.diagnostics import is_degenerate, output_diversity
from kdsum.scoring.rouge import final_score
from kdsum.selection.tuning import REPORT, part_fnames

HEADER = ",fname,summary"  # sample_submission.csv's first line

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
    summaries = [unicodedata.normalize("NFC", by_fname[f]) for f in order]
    return pd.DataFrame({"fname": order, "summary": summaries})


def check_submission_text(text: str, order: Sequence[str], source: str = "submission") -> None:
    """Refuse a submission text that is not sample_submission.csv's format for the test fnames ``order``."""
    first = text.split("\n", 1)[0]
    if first != HEADER:
        raise SubmissionError(f"{source}: header {first!r}, expected {HEADER!r}")
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    if frame.iloc[:, 0].tolist() != [str(i) for i in range(len(frame))]:
        raise SubmissionError(f"{source}: the index column is not 0..{len(frame) - 1}")
    if frame["fname"].tolist() != list(order):
        raise SubmissionError(
            f"{source}: {len(frame)} rows whose fnames are not the test data's {len(order)}, in order"
        )
    not_nfc = [
        f for f, t in zip(frame["fname"], frame["summary"], strict=True) if not unicodedata.is_normalized("NFC", t)
    ]
    if not_nfc or not text.endswith("\n"):
        raise SubmissionError(f"{source}: summaries not in NFC ({_names(not_nfc)}) or no final newline")


def write_submission(frame: pd.DataFrame, out: str | Path, data_path: str | Path) -> int:
    """Write the submission (index column included), checked against the test data's fnames, whole or not at all;
    returns the number of empty summaries."""
    text = frame.to_csv(index=True, lineterminator="\n")
    check_submission_text(text, [r["fname"] for r in load_split(data_path)], str(out))
    write_text(out, text)
    return int((frame["summary"].str.strip() == "").sum())


# --------------------------------------------------------------------------- the best system


@dataclass(frozen=True)
class Candidate:
    """A system that may be submitted: its dev scores (S.json) and per-item scores (I.csv), its test predictions."""

    name: str
    scores: Path
    items: Path
    predictions: Path


def _report_final(items: Path, tuning_fraction: float) -> float:
    """final (mean of ROUGE-1/2/L F1 x100) over the dev report rows of a system's per-item scores."""
    table = pd.read_csv(items, dtype={"fname": str}, keep_default_na=False)
    report = set(part_fnames(table["fname"], tuning_fraction, REPORT, str(items)))
    return final_score(float(table.loc[table["fname"].isin(report), "rouge_sum"].mean()))


def _test_diversity(predictions: Path, records: list[dict[str, Any]]) -> dict[str, float]:
    by_fname = dict(_read_predictions(predictions)[["fname", "summary"]].itertuples(index=False))
    return output_diversity([by_fname.get(r["fname"], "") for r in records], [r["dialogue"] for r in records])


def candidate_table(
    candidates: Sequence[Candidate], test: list[dict[str, Any]], tuning_fraction: float, degenerate_share: float
) -> list[dict[str, Any]]:
    """One row per candidate: final over all dev rows and over the report rows, degenerate on dev or test."""
    rows = []
    for c in candidates:
        dev, test_div = read_json(c.scores), _test_diversity(c.predictions, test)
        rows.append(
            {
                "system": c.name,
                "final_report": _report_final(c.items, tuning_fraction),
                "final": final_score(dev["rouge_sum"]),
                "degenerate_dev": bool(dev.get("degenerate")),
                "degenerate_test": is_degenerate(test_div, degenerate_share),
                "test_top_share": test_div["top_share"],
            }
        )
    return rows


def choose_system(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the highest final_report among those degenerate on neither split (the first on a tie)."""
    sound = [r for r in rows if not (r["degenerate_dev"] or r["degenerate_test"])]
    if not sound:
        raise SubmissionError(
            f"every candidate system is degenerate (one text for most dialogues): {_names([r['system'] for r in rows])}; "
            "nothing to submit (a baseline, e.g. baselines: [longest], is always a candidate)"
        )
    return max(sound, key=lambda r: r["final_report"])  # max keeps the first of equals


SELECTION_RULE = (
    "the highest final (mean of ROUGE-1/2/L F1 x100) over the dev report rows (kdsum.selection.tuning: rows on which "
    "no checkpoint or decoding setting was chosen), among the systems whose dev and test predictions are not "
    "degenerate (evaluation.degenerate_share)"
)
