"""What a prediction job reads of the selection: the decoding search's choice (``decoding.json``), and the
summaries of the dev set's tuning rows that one candidate setting writes (``kdsum decode``).

Nothing here scores: a prediction depends on this module, and a change of the scorer must rerun no prediction
(kdsum.workflow.deps). Scoring and choosing are kdsum.selection.select.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from kdsum.config.spec import EvaluationArgs, GenerationArgs, Job
from kdsum.errors import KdsumError
from kdsum.generation.predict import predict_rows, read_prompt_rows
from kdsum.io import read_json, write_csv
from kdsum.selection.tuning import TUNING, part_fnames


class SelectionError(KdsumError):
    """Selection inputs that do not fit together (counts, parts, systems)."""


def with_selected_decoding(job: Job, path: str | Path) -> Job:
    """``job`` with the generation settings the decoding search chose (``decoding.json``)."""
    choice = read_json(path)
    if choice.get("system") != job.name:
        raise SelectionError(f"{path}: the decoding choice of {choice.get('system')!r}, not of {job.name!r}")
    try:
        generation = GenerationArgs(**choice["generation"])
    except (KeyError, TypeError) as exc:
        raise SelectionError(f"{path}: no complete generation settings ({exc}); rerun the selection") from None
    return dataclasses.replace(job, generation=generation)


def predict_tuning_rows(
    job: Job,
    evaluation: EvaluationArgs,
    prompts_dir: str | Path,
    references: str | Path,
    model_dir: str | Path | None,
    base_dir: str | Path | None,
    out: str | Path,
    progress: bool = False,
) -> int:
    """Summarise the dev set's tuning rows with ``job`` (its model: ``model_dir`` / ``base_dir``) into ``out``
    (CSV ``fname,summary``); the number of rows."""
    rows = read_prompt_rows(Path(prompts_dir) / "dev.jsonl", job.family)
    tuning = set(part_fnames([r["fname"] for r in rows], evaluation.tuning_fraction, TUNING, str(references)))
    rows = [r for r in rows if r["fname"] in tuning]
    summaries, _ = predict_rows(job, rows, prompts_dir, model_dir, base_dir, progress=progress)
    write_csv(out, pd.DataFrame({"fname": [r["fname"] for r in rows], "summary": summaries}))
    return len(rows)
