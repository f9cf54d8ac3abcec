"""results/summary.csv: one row per system, gathered from the score, training and build files of the run.

The systems come from the summary spec (:class:`kdsum.config.spec.SummarySpec`); the files come as lists, in the spec's
order (:class:`SummaryInputs`): the scores of every system (when a split is scored), the training metrics and
loss histories of every fine-tuned system, the build metrics of every zero-shot system whose model was built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kdsum.config.spec import SummarySpec, SystemRow
from kdsum.errors import KdsumError
from kdsum.io import read_json, write_csv, write_text
from kdsum.plots import pyplot, save_png
from kdsum.reporting import comparisons
from kdsum.scoring.rouge import final_score

# `final` is the leaderboard's score: the mean of ROUGE-1/2/L F1 x100; `rouge_sum` (their sum) is the earlier
# work's scale, three times as large. Both come from the same bootstrap, so final's interval is rouge_sum's / 3.
SCORES = ("final", "rouge1", "rouge2", "rougeL", "rouge_sum")
# kdsum.scoring.metrics.output_diversity, and whether evaluation.degenerate_share calls it degenerate
DIVERSITY = ("distinct_share", "top_share", "copied_share", "degenerate")
BASE_DIR = "results/base/{model}"  # where a built model lives (the `source` text of its rows)
MARKDOWN_COLUMNS = (
    "system",
    "kind",
    "method",
    "final",
    "final_clean",
    "rouge1",
    "rouge2",
    "rougeL",
    "rouge_sum",
    "final_report",
    "decoding",
    "mean_chars",
    "foreign_script_share",
    "distinct_share",
    "copied_share",
    "total_params",
    "trainable_params",
    "train_time_s",
    "tokens_per_s",
    "peak_memory_gb",
)


class SummaryError(KdsumError):
    """The summary's input files do not match its spec."""


@dataclass(frozen=True)
class SummaryInputs:
    """The run's files, one list per kind, in ``spec.systems`` order."""

    scores: Sequence[str | Path] = field(default_factory=list)  # every system, when spec.split is set
    train_metrics: Sequence[str | Path] = field(default_factory=list)  # fine-tuned systems
    log_histories: Sequence[str | Path] = field(default_factory=list)  # fine-tuned systems
    base_metrics: Sequence[str | Path] = field(default_factory=list)  # zero-shot systems of built models
    items: Sequence[str | Path] = field(default_factory=list)  # per-item scores of every system, or none
    # fine-tuned systems: the score on the dev report rows (when a split is scored; kdsum.selection.tuning), and the
    # decoding search's choice (when spec.decoding)
    report_scores: Sequence[str | Path] = field(default_factory=list)
    decodings: Sequence[str | Path] = field(default_factory=list)
    submission: Sequence[str | Path] = field(default_factory=list)  # results/submission.json, or none


def _wants_base_metrics(row: SystemRow) -> bool:
    return row.kind == "zero-shot" and row.built


def check_inputs(spec: SummarySpec, inputs: SummaryInputs) -> None:
    """Refuse file lists whose lengths are not what ``spec.systems`` needs."""
    tuned = [r.name for r in spec.systems if r.kind == "fine-tuned"]
    built = [r.name for r in spec.systems if _wants_base_metrics(r)]
    expected = {
        "--scores": (
            len(spec.systems) if spec.split is not None else 0,
            "one per system" if spec.split is not None else "none: the spec scores no split",
        ),
        "--train-metrics": (len(tuned), "one per fine-tuned system"),
        "--log-histories": (len(tuned), "one per fine-tuned system"),
        "--base-metrics": (len(built), "one per zero-shot system of a built model"),
        "--items": (len(spec.systems) if inputs.items else 0, "one per system, or none"),
        "--report-scores": (len(tuned) if spec.split else 0, "one per fine-tuned system when a split is scored"),
        "--decodings": (len(tuned) if spec.decoding else 0, "one per fine-tuned system with a decoding search"),
        "--submission": (min(len(inputs.submission), 1), "one, or none"),
    }
    given = {
        "--scores": inputs.scores,
        "--train-metrics": inputs.train_metrics,
        "--log-histories": inputs.log_histories,
        "--base-metrics": inputs.base_metrics,
        "--items": inputs.items,
        "--report-scores": inputs.report_scores,
        "--decodings": inputs.decodings,
        "--submission": inputs.submission,
    }
    for option, (n, what) in expected.items():
        if len(given[option]) != n:
            raise SummaryError(f"{option}: {len(given[option])} file(s) given, {n} expected ({what})")


def _score_fields(scores: dict, split: str) -> dict[str, Any]:
    row: dict[str, Any] = {"split": split, "n": scores["n"]}
    for key in SCORES:
        source = "rouge_sum" if key == "final" else key
        lo, hi = scores.get(f"{source}_ci", (math.nan, math.nan))
        values = (scores[source], lo, hi)
        row[key], row[f"{key}_lo"], row[f"{key}_hi"] = map(final_score, values) if key == "final" else values
    for key in ("mean_chars", "foreign_script_share", "empty_predictions", *DIVERSITY):
        row[key] = scores.get(key)
    row.update(_clean_fields(scores))
    return row


def _clean_fields(scores: dict) -> dict[str, Any]:
    """final over the dev rows without a near-duplicate in train (ingest's near_dup_train), where some are flagged."""
    if "rouge_sum_clean" not in scores:
        return {}
    lo, hi = scores.get("rouge_sum_clean_ci") or (math.nan, math.nan)
    return {
        "final_clean": final_score(scores["rouge_sum_clean"]),
        "final_clean_lo": final_score(lo),
        "final_clean_hi": final_score(hi),
        "n_clean": scores["n_clean"],
        "n_near_dup_train": scores["n_near_dup_train"],
    }


def _report_fields(scores: dict, path) -> dict[str, Any]:
    """final on the dev report rows: settings selected on the tuning rows are scored on the others only."""
    if scores.get("part") != "report":
        raise SummaryError(f"{path}: not a score of the dev set's report rows (part: {scores.get('part')!r})")
    lo, hi = scores.get("rouge_sum_ci", (math.nan, math.nan))
    return {
        "final_report": final_score(scores["rouge_sum"]),
        "final_report_lo": final_score(lo),
        "final_report_hi": final_score(hi),
        "n_report": scores["n"],
    }


def _train_fields(tm: dict) -> dict[str, Any]:
    return dict(
        method_effective=tm.get("method_effective"),
        total_params=tm.get("total_params"),
        trainable_params=tm.get("trainable_params"),
        train_time_s=tm.get("wall_time_s"),
        train_tokens=tm.get("train_tokens"),
        tokens_per_s=tm.get("tokens_per_s"),
        peak_memory_gb=tm.get("peak_memory_gb"),
        memory_device=tm.get("memory_device"),
        final_loss=tm.get("final_loss"),
        max_grad_norm=tm.get("max_grad_norm"),
        warnings="; ".join(tm.get("warnings") or []),
    )


def _system_row(system: SystemRow) -> dict[str, Any]:
    row: dict[str, Any] = {"system": system.name, "model": system.model, "variant": system.variant, "kind": system.kind}
    if system.kind == "ensemble":
        row.update(method=system.method, source=system.source)  # source: its member systems
    elif system.kind != "baseline":
        row.update(
            family=system.family,
            method=system.method,
            source=system.source or "built:" + BASE_DIR.format(model=system.model),
        )
    return row


def summary_table(spec: SummarySpec, inputs: SummaryInputs) -> pd.DataFrame:
    """One row per system of ``spec``, sorted by final (best first) when a split is scored."""
    check_inputs(spec, inputs)
    scores, train_metrics, base_metrics = iter(inputs.scores), iter(inputs.train_metrics), iter(inputs.base_metrics)
    reports, decodings = iter(inputs.report_scores), iter(inputs.decodings)
    rows = []
    for system in spec.systems:
        row = _system_row(system)
        if spec.split is not None:
            row.update(_score_fields(read_json(next(scores)), spec.split))
        if system.kind == "fine-tuned":
            row.update(_train_fields(read_json(next(train_metrics))))
            if inputs.report_scores:
                path = next(reports)
                row.update(_report_fields(read_json(path), path))
            if inputs.decodings:
                row["decoding"] = read_json(next(decodings))["setting"]
        elif _wants_base_metrics(system):
            bm = read_json(next(base_metrics))
            row.update(total_params=bm.get("parameters"), trainable_params=0)
        rows.append(row)
    df = pd.DataFrame(rows)
    if "final" in df:
        df = df.sort_values("final", ascending=False, kind="stable").reset_index(drop=True)
        if inputs.items and spec.bootstrap > 0:
            items = dict(zip((r.name for r in spec.systems), inputs.items, strict=True))
            df = comparisons.paired_against_best(df, items, spec.bootstrap, spec.seed)
    return df


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"  # counts become floats in a column with gaps
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value)


def markdown_table(df: pd.DataFrame) -> str:
    cols = [c for c in MARKDOWN_COLUMNS if c in df]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            cell = _fmt(r[c])
            if c in (*SCORES, "final_report", "final_clean") and f"{c}_lo" in df and cell:
                cell = f"{cell} [{r[f'{c}_lo']:.1f}, {r[f'{c}_hi']:.1f}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def clean_note(df: pd.DataFrame) -> str:
    """How many dev rows have a near-duplicate in train, and what leaving them out does to the best system's final."""
    if "final_clean" not in df or df["final_clean"].isna().all():
        return ""
    best = df.dropna(subset=["final_clean"]).iloc[0]
    diff = best["final_clean"] - best["final"]
    return (
        f"`final_clean`: final over the {int(best['n_clean'])} dev rows without a near-duplicate in train; "
        f"{int(best['n_near_dup_train'])} of {int(best['n'])} dev rows have one (stats.json, data.leakage: report) "
        f"and may be inflated by training on a near-copy. {best['system']}: final_clean {best['final_clean']:.2f} "
        f"vs final {best['final']:.2f} ({diff:+.2f})."
    )


def degenerate_note(df: pd.DataFrame) -> str:
    """A warning line per system that writes (nearly) one text for most dialogues."""
    if "degenerate" not in df:
        return ""
    bad = df[df["degenerate"].fillna(False).astype(bool)]
    return "\n".join(
        f"**Warning: {r['system']} is degenerate**: one text is {r['top_share']:.0%} of its dev predictions "
        f"(distinct {r['distinct_share']:.0%}); it is never the submitted system."
        for _, r in bad.iterrows()
    )


def submission_note(inputs: SummaryInputs) -> str:
    """Which system results/submission.csv holds, and by which rule it was chosen."""
    if not inputs.submission:
        return ""
    chosen = read_json(inputs.submission[0])
    return (
        f"Submitted (results/submission.csv): **{chosen['system']}**, final {chosen['final_report']:.2f} on the dev "
        f"report rows; chosen as {chosen['selection']}."
    )


def plot_scores(df: pd.DataFrame, out: str | Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(df) + 1.5))
    if "final" in df:
        d = df.iloc[::-1]
        colors = {"fine-tuned": "tab:blue", "zero-shot": "tab:orange", "baseline": "tab:gray", "ensemble": "tab:green"}
        err = [d["final"] - d["final_lo"], d["final_hi"] - d["final"]]
        ax.barh(d["system"], d["final"], xerr=err, color=[colors[k] for k in d["kind"]], capsize=3)
        ax.set_xlabel(
            f"mean of ROUGE-1/2/L F1 x100 (the leaderboard's scale; {df['split'].iloc[0]}; bars: bootstrap 95% CI)"
        )
    ax.set_title("Systems by final score (Kiwi morphemes)")
    save_png(fig, out)
    plt.close(fig)


def plot_losses(spec: SummarySpec, log_histories: Sequence[str | Path], out: str | Path) -> None:
    """Training loss by optimizer step, one line per fine-tuned system (``log_histories`` in their order)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    tuned = [r for r in spec.systems if r.kind == "fine-tuned"]
    for system, path in zip(tuned, log_histories, strict=True):
        hist = pd.read_csv(path)
        if "loss" in hist:
            h = hist.dropna(subset=["loss"])
            ax.plot(h["step"], h["loss"], label=system.name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.legend()
    save_png(fig, out)
    plt.close(fig)


def write_summary(spec: SummarySpec, inputs: SummaryInputs, out_csv, out_md, scores_plot, loss_plot) -> pd.DataFrame:
    df = summary_table(spec, inputs)
    plot_scores(df, scores_plot)
    plot_losses(spec, inputs.log_histories, loss_plot)
    header = (
        "# Results\n\nScores: ROUGE F1 x100 on Kiwi morphemes, averaged over each dialogue's references, "
        "with bootstrap 95% intervals. Made by `kdsum summary` from the run's files. `final_report`: a fine-tuned "
        "system's final on the dev report rows only, its checkpoint and `decoding` having been selected on the "
        "other (tuning) rows (results/selection/).\n\n"
    )
    paired = comparisons.markdown(df)
    notes = "".join(f"\n{n}\n" for n in (clean_note(df), degenerate_note(df), submission_note(inputs)) if n)
    write_text(out_md, header + markdown_table(df) + notes + (f"\n{paired}" if paired else ""))
    write_csv(out_csv, df)
    return df
