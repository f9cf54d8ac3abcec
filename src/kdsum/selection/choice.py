"""What a prediction job reads of the selection: the decoding search's choice (``decoding.json``), the checkpoint
search's choice (``checkpoint.json``: which training candidate is the system's model, by path and content hash), and
the summaries of the dev set's tuning rows that one candidate setting writes (``kdsum decode``).

The checkpoint choice is a small file naming a directory that training wrote, not a copy of it: a rerun of the
selection that chooses the same candidate rewrites the same bytes, and the model directories are untouched.

Nothing here scores: a prediction depends on this module, and a change of the scorer must rerun no prediction
(kdsum.workflow.deps). Scoring and choosing are kdsum.selection.select.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pandas as pd

from kdsum.config.spec import EvaluationArgs, GenerationArgs, Job
from kdsum.errors import KdsumError
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


def dir_sha256(path: str | Path) -> str:
    """One hash of a directory's files (relative names and contents, in name order)."""
    root, digest = Path(path), hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f.relative_to(root).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def checkpoint_choice(system: str, step: int, model_dir: str | Path) -> dict:
    """The content of ``checkpoint.json``: the chosen candidate's step, directory and hash."""
    return {"system": system, "step": int(step), "path": Path(model_dir).as_posix(), "sha256": dir_sha256(model_dir)}


def chosen_model_dir(job: Job, path: str | Path) -> Path:
    """The model directory that ``checkpoint.json`` names, checked against its system and hash."""
    choice = read_json(path)
    if choice.get("system") != job.name:
        raise SelectionError(f"{path}: the checkpoint choice of {choice.get('system')!r}, not of {job.name!r}")
    model_dir = Path(choice["path"])
    if not model_dir.is_dir() or dir_sha256(model_dir) != choice["sha256"]:
        raise SelectionError(f"{path}: {model_dir} is missing or not the chosen model; rerun select-checkpoint")
    return model_dir


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
    # imported here: the choosing stages read this module's choices and need no torch (2 s of every process)
    from kdsum.generation.predict import predict_rows, read_prompt_rows

    rows = read_prompt_rows(Path(prompts_dir) / "dev.jsonl", job.family)
    tuning = set(part_fnames([r["fname"] for r in rows], evaluation.tuning_fraction, TUNING, str(references)))
    rows = [r for r in rows if r["fname"] in tuning]
    summaries, _ = predict_rows(job, rows, prompts_dir, model_dir, base_dir, progress=progress)
    write_csv(out, pd.DataFrame({"fname": [r["fname"] for r in rows], "summary": summaries}))
    return len(rows)
