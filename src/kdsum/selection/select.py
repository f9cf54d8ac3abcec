"""Selecting settings on the dev set's tuning rows (kdsum.selection.tuning): decoding settings and training checkpoints.

Every candidate (a decoding setting of ``decoding.grid``, a checkpoint kept by ``train.select_checkpoints``)
summarises the tuning rows and is scored there (:func:`score_tuning_rows`); the best by ROUGE-1+2+L F1 (the
leaderboard's ``final`` x3; ties: the first candidate in config or step order) is chosen. Its score on the
*report* rows comes from ``kdsum evaluate --part report`` on the chosen setting's dev predictions: a score from
a selection file is refused unless it says it is of tuning rows (:func:`_tuning_scores`).

Outputs: ``decoding.json`` (the choice and its complete generation settings, which ``kdsum predict --decoding``
reads), and per search a table (CSV and Markdown) and a plot.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kdsum.config.spec import EvaluationArgs, Job
from kdsum.io import read_json, write_csv, write_json, write_text
from kdsum.plots import pyplot, save_png
from kdsum.scoring.evaluate import evaluate
from kdsum.selection.choice import SelectionError, predict_tuning_rows
from kdsum.selection.choice import with_selected_decoding as with_selected_decoding  # re-exported
from kdsum.selection.tuning import TUNING, part_fnames

METRIC = "rouge_sum"  # what selection maximises: final x3, the same order
SCORE_COLUMNS = ("final", "rouge1", "rouge2", "rougeL", "rouge_sum", "n", "mean_chars", "empty_predictions")
DECODING_COLUMNS = (
    "num_beams",
    "length_penalty",
    "no_repeat_ngram_size",
    "repetition_penalty",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "seed",
)


# --------------------------------------------------------------------------------------------- scoring
def score_tuning_rows(
    job: Job,
    evaluation: EvaluationArgs,
    prompts_dir: str | Path,
    references: str | Path,
    model_dir: str | Path | None,
    base_dir: str | Path | None,
    out_predictions: str | Path | None = None,
    progress: bool = False,
    token_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Summarise the dev set's tuning rows with ``job`` (its model: ``model_dir`` / ``base_dir``), score them;
    the score dict of ``kdsum evaluate`` (with ``part: tuning``). Writes the predictions to ``out_predictions``
    when given; ``token_cache``: the morpheme cache (kdsum.scoring.token_cache)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(out_predictions) if out_predictions else Path(tmp) / "tuning.csv"
        predict_tuning_rows(job, evaluation, prompts_dir, references, model_dir, base_dir, path, progress)
        result, _ = evaluate(
            path,
            Path(references),
            evaluation.aggregate,
            evaluation.bootstrap,
            evaluation.seed,
            token_cache=None if token_cache is None else Path(token_cache),
            rows=lambda fnames: part_fnames(fnames, evaluation.tuning_fraction, TUNING, str(references)),
        )
    return {**result, "part": TUNING, "tuning_fraction": evaluation.tuning_fraction}


def _tuning_scores(path: str | Path) -> dict[str, Any]:
    scores = read_json(path)
    if scores.get("part") != TUNING:
        raise SelectionError(f"{path}: not a score of the dev set's tuning rows (part: {scores.get('part')!r})")
    return scores


def score_fields(scores: dict[str, Any]) -> dict[str, Any]:
    row = {k: scores.get(k) for k in SCORE_COLUMNS if k != "final"}
    row["final"] = scores[METRIC] / 3
    return {k: row[k] for k in SCORE_COLUMNS}


def best_index(values: Sequence[float]) -> int:
    """The first of the largest values; NaN never wins (an unscorable candidate is no choice)."""
    finite = [(v, -i) for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    if not finite:
        raise SelectionError("no candidate has a score")
    return -max(finite)[1]


# --------------------------------------------------------------------------------------------- decoding
def decoding_table(names: Sequence[str], scores: Sequence[str | Path], jobs: Sequence[Job]) -> pd.DataFrame:
    """One row per decoding setting: its tuning-row scores and generation settings; ``chosen`` marks the best."""
    if not (len(names) == len(scores) == len(jobs)):
        raise SelectionError(f"{len(names)} settings, {len(scores)} score files, {len(jobs)} specs: one each")
    systems = {j.name for j in jobs}
    if len(systems) != 1:
        raise SelectionError(f"the settings belong to several systems ({', '.join(sorted(systems))})")
    rows = []
    for name, path, job in zip(names, scores, jobs, strict=True):
        g = dataclasses.asdict(job.generation)
        rows.append({"setting": name, **score_fields(_tuning_scores(path)), **{k: g[k] for k in DECODING_COLUMNS}})
    df = pd.DataFrame(rows)
    df.insert(1, "chosen", False)
    df.loc[best_index(df[METRIC].tolist()), "chosen"] = True
    return df


def decoding_choice(df: pd.DataFrame, jobs: Sequence[Job]) -> dict[str, Any]:
    i = int(df.index[df["chosen"]][0])
    job = jobs[i]
    return {
        "system": job.name,
        "setting": df.loc[i, "setting"],
        "selected_on": TUNING,
        "tuning_final": float(df.loc[i, "final"]),
        "tuning_n": int(df.loc[i, "n"]),
        "generation": dataclasses.asdict(job.generation),
    }


def markdown(df: pd.DataFrame, title: str) -> str:
    def cell(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.2f}"
        return "**yes**" if v is True else ("" if v is False else str(v))

    lines = [f"# {title}\n", "| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plot_decoding(df: pd.DataFrame, system: str, out: str | Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(df) + 1.6))
    d = df.iloc[::-1]
    colors = ["tab:green" if c else "tab:blue" for c in d["chosen"]]
    ax.barh(d["setting"], d["final"], color=colors)
    ax.set_xlabel(f"final (mean ROUGE-1/2/L F1 x100) on {int(df['n'].iloc[0])} dev tuning rows; green: chosen")
    ax.set_title(f"Decoding search: {system}")
    save_png(fig, out)
    plt.close(fig)


def write_decoding_selection(
    names: Sequence[str], scores: Sequence[str | Path], jobs: Sequence[Job], out_json, out_csv, out_md, out_plot
) -> dict[str, Any]:
    df = decoding_table(names, scores, jobs)
    choice = decoding_choice(df, jobs)
    plot_decoding(df, choice["system"], out_plot)
    write_csv(out_csv, df)
    title = f"Decoding search: {choice['system']} (scores on the dev set's tuning rows)"
    write_text(out_md, markdown(df, title))
    write_json(out_json, choice)
    return choice


# --------------------------------------------------------------------------------------------- checkpoints
def loss_at(history: pd.DataFrame, step: int) -> float:
    """The last training loss logged at or before ``step`` (NaN if none)."""
    if "loss" not in history:
        return math.nan
    h = history.dropna(subset=["loss"])
    h = h[h["step"] <= step]
    return float(h["loss"].iloc[-1]) if len(h) else math.nan


def checkpoint_table(steps: Sequence[int], scores: Sequence[dict], history: pd.DataFrame) -> pd.DataFrame:
    rows = [{"step": s, "loss": loss_at(history, s), **score_fields(sc)} for s, sc in zip(steps, scores, strict=True)]
    df = pd.DataFrame(rows)
    df.insert(1, "chosen", False)
    df.loc[best_index(df[METRIC].tolist()), "chosen"] = True
    return df


def plot_checkpoints(df: pd.DataFrame, history: pd.DataFrame, system: str, out: str | Path) -> None:
    """Training loss by step (line) and each candidate's tuning-row final score (points; the chosen one ringed)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if "loss" in history:
        h = history.dropna(subset=["loss"])
        ax.plot(h["step"], h["loss"], color="tab:blue", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(df["step"], df["final"], "o-", color="tab:red", label="final on dev tuning rows")
    chosen = df[df["chosen"]]
    ax2.scatter(chosen["step"], chosen["final"], s=160, facecolors="none", edgecolors="black", label="chosen")
    ax2.set_ylabel("final (mean ROUGE-1/2/L F1 x100)", color="tab:red")
    ax2.legend(loc="lower right")
    ax.set_title(f"Checkpoint selection: {system}")
    save_png(fig, out)
    plt.close(fig)
