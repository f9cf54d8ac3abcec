"""Training rows: prompt sets read, fitted to the sequence budget (kdsum.models.fitting) and made into datasets.

:class:`FitReport` counts what fitting cut or dropped; the training stage writes it into train_metrics.json.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from kdsum.config.spec import Job
from kdsum.errors import KdsumError
from kdsum.io import read_jsonl
from kdsum.models.fitting import (
    GenerationError,
    fit_chat_example,
    fit_seq2seq,
    input_budget,
    sequence_limit,
    target_limit,
    template_kwargs,
)

log = logging.getLogger(__name__)


class TrainingError(KdsumError):
    """A training job that cannot run as configured; the message says why."""


# --------------------------------------------------------------------------------------------- datasets
def _read_rows(prompts_dir: str | os.PathLike, split: str, key: str, family: str) -> list[dict]:
    path = Path(prompts_dir) / f"{split}.jsonl"
    rows = read_jsonl(path)
    if not rows:
        raise TrainingError(f"{path}: no rows to train on")
    if key not in rows[0]:
        raise TrainingError(
            f"{path}: expected {family} rows (key '{key}', the {family} prompt set); got keys {sorted(rows[0])}"
        )
    return rows


@dataclasses.dataclass
class FitReport:
    """How the training rows were fitted to the sequence budget (see the module docstring: Long rows)."""

    family: str
    limit: int  # tokens per sequence (train.max_length, capped by the model's positions)
    budget: int  # the input budget prediction gives a prompt (causal) / a source (seq2seq)
    target_budget: int | None = None  # seq2seq: tokens per target
    rows: int = 0
    cut: int = 0
    dropped: int = 0
    targets_cut: int = 0
    first_drop: str | None = None

    def drop(self, why: str) -> None:
        self.dropped += 1
        if self.first_drop is None:
            self.first_drop = why
            log.warning("dropping training row %s", why)

    def metrics(self) -> dict:
        return {
            "rows_total": self.rows,
            "rows_trained": self.rows - self.dropped,
            "rows_cut": self.cut,
            "rows_dropped": self.dropped,
            "targets_cut": self.targets_cut,
            "input_budget": self.budget,
            "target_budget": self.target_budget,
        }

    def warnings(self, job: Job) -> list[str]:
        out, n = [], self.rows
        head = f"model '{job.model}'"
        if self.family == "causal":
            if self.cut:
                out.append(
                    f"{head}: {self.cut} of {n} training rows had their conversation cut to fit (prompt budget "
                    f"{self.budget} tokens = train.max_length - generation.max_new_tokens, as at prediction; "
                    f"less where the summary is longer); their summaries were kept whole"
                )
            if self.dropped:
                out.append(
                    f"{head}: {self.dropped} of {n} training rows dropped: the summary with the prompt's fixed "
                    f"part does not fit train.max_length={self.limit} (first: {self.first_drop})"
                )
        else:
            if self.cut:
                out.append(
                    f"{head}: {self.cut} of {n} training dialogues longer than {self.budget} tokens "
                    f"(train.max_length) were cut, their end dropped (as at prediction)"
                )
            if self.targets_cut:
                out.append(
                    f"{head}: {self.targets_cut} of {n} training summaries longer than {self.target_budget} "
                    f"tokens (train.max_target_length) were cut"
                )
            if self.dropped:
                out.append(f"{head}: {self.dropped} of {n} training rows without a target summary were dropped")
        for w in out:
            log.warning(w)
        return out


def _row_name(row: dict, i: int) -> str:
    return str(row.get("fname") or f"line {i}")


def encode_chat_rows(rows: list[dict], tokenizer, job: Job, model=None) -> tuple[list[dict], FitReport]:
    """Chat prompt/completion rows as ``{"input_ids", "completion_mask"}``, every row fitted by
    kdsum.models.fitting.fit_chat_example (the conversation cut as at prediction, the completion whole); rows whose
    completion alone does not fit are dropped. Returns the encoded rows and the counts."""
    report = FitReport("causal", sequence_limit(job, model), input_budget(job, model), rows=len(rows))
    kwargs = template_kwargs(job)  # the chat-template settings prediction renders with (enable_thinking)
    data = []
    for i, row in enumerate(rows, start=1):
        try:
            ids, n_prompt, cut = fit_chat_example(
                tokenizer, row["prompt"], row["completion"], report.limit, report.budget, kwargs
            )
        except GenerationError as exc:
            report.drop(f"{_row_name(row, i)}: {exc}")
            continue
        report.cut += cut
        data.append({"input_ids": ids, "completion_mask": [0] * n_prompt + [1] * (len(ids) - n_prompt)})
    return data, report


def encode_seq2seq_rows(rows: list[dict], tokenizer, job: Job, model=None) -> tuple[list[dict], FitReport]:
    """Seq2seq rows as ``{"input_ids", "attention_mask", "labels"}``: the source cut by kdsum.models.fitting.fit_seq2seq
    to prediction's encoder budget, the target to ``train.max_target_length`` (counted separately)."""
    report = FitReport(
        "seq2seq", sequence_limit(job, model), input_budget(job, model), target_limit(job, model), rows=len(rows)
    )
    data = []
    for i, row in enumerate(rows, start=1):
        if not row.get("target"):
            report.drop(f"{_row_name(row, i)}: no target summary")
            continue
        ids, cut = fit_seq2seq(tokenizer, row["source"], report.budget)
        labels, target_cut = fit_seq2seq(tokenizer, row["target"], report.target_budget)
        report.cut += cut
        report.targets_cut += target_cut
        data.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return data, report


def _dataset(data: list[dict], report: FitReport, path: Path):
    from datasets import Dataset

    if not data:
        raise TrainingError(
            f"{path}: none of the {report.rows} rows fits train.max_length={report.limit} ({report.first_drop})"
        )
    return Dataset.from_list(data)


def load_chat_dataset(prompts_dir: str | os.PathLike, tokenizer, job: Job, model=None, split: str = "train"):
    """The chat rows of ``split``, tokenized and fitted (:func:`encode_chat_rows`): ``(Dataset, FitReport)``."""
    rows = _read_rows(prompts_dir, split, "prompt", "chat prompt/completion")
    if "completion" not in rows[0]:
        raise TrainingError(f"{Path(prompts_dir) / f'{split}.jsonl'}: chat rows without a completion")
    data, report = encode_chat_rows(rows, tokenizer, job, model)
    return _dataset(data, report, Path(prompts_dir) / f"{split}.jsonl"), report


def load_seq2seq_dataset(prompts_dir: str | os.PathLike, tokenizer, job: Job, model=None, split: str = "train"):
    """The seq2seq rows of ``split``, encoded and fitted (:func:`encode_seq2seq_rows`): ``(Dataset, FitReport)``."""
    rows = _read_rows(prompts_dir, split, "source", "seq2seq source/target")
    data, report = encode_seq2seq_rows(rows, tokenizer, job, model)
    return _dataset(data, report, Path(prompts_dir) / f"{split}.jsonl"), report
