"""results/summary.csv: one row per system, gathered from the score, training and build files of the run."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from kdsum import plan
from kdsum.config import BASELINE_MODEL, ZERO_SHOT, resolve
from kdsum.io import atomic_path, read_json, write_text

SCORES = ("rouge1", "rouge2", "rougeL", "rouge_sum")


def system_kind(model: str, variant: str) -> str:
    if model == BASELINE_MODEL:
        return "baseline"
    return "zero-shot" if variant == ZERO_SHOT else "fine-tuned"


def summary_table(config: dict, results: str | Path = "results") -> pd.DataFrame:
    results = Path(results)
    rows = []
    split = (plan.scored_splits(config) or [None])[0]
    for model, variant in plan.systems(config):
        kind = system_kind(model, variant)
        row: dict = {"system": f"{model}/{variant}", "model": model, "variant": variant, "kind": kind}
        if kind != "baseline":
            spec = resolve(config, model, variant)
            row.update(family=spec["family"], method=spec["method"] if kind == "fine-tuned" else "none",
                       source=spec["source"] or f"built:{plan.path('base', model=model)}")
        if split:
            scores = read_json(results.parent / plan.path("scores", model=model, variant=variant, split=split))
            row["split"] = split
            row["n"] = scores["n"]
            for key in SCORES:
                row[key] = scores[key]
                lo, hi = scores.get(f"{key}_ci", (math.nan, math.nan))
                row[f"{key}_lo"], row[f"{key}_hi"] = lo, hi
            row["mean_chars"] = scores.get("mean_chars")
            row["foreign_script_share"] = scores.get("foreign_script_share")
            row["empty_predictions"] = scores.get("empty_predictions")
        if kind == "fine-tuned":
            tm = read_json(results.parent / plan.path("train_metrics", model=model, variant=variant))
            row.update(
                method_effective=tm.get("method_effective"),
                total_params=tm.get("total_params"), trainable_params=tm.get("trainable_params"),
                train_time_s=tm.get("wall_time_s"), train_tokens=tm.get("train_tokens"),
                tokens_per_s=tm.get("tokens_per_s"), peak_memory_gb=tm.get("peak_memory_gb"),
                memory_device=tm.get("memory_device"), final_loss=tm.get("final_loss"),
                max_grad_norm=tm.get("max_grad_norm"), warnings="; ".join(tm.get("warnings") or []),
            )
        elif kind == "zero-shot" and config["models"][model].get("build"):
            bm = read_json(results.parent / plan.path("base_metrics", model=model))
            row.update(total_params=bm.get("parameters"), trainable_params=0)
        rows.append(row)
    df = pd.DataFrame(rows)
    if "rouge_sum" in df:
        df = df.sort_values("rouge_sum", ascending=False, kind="stable").reset_index(drop=True)
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
    cols = [c for c in ("system", "kind", "method", "rouge1", "rouge2", "rougeL", "rouge_sum", "mean_chars",
                        "foreign_script_share", "total_params", "trainable_params", "train_time_s", "tokens_per_s",
                        "peak_memory_gb") if c in df]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            cell = _fmt(r[c])
            if c in SCORES and f"{c}_lo" in df and cell:
                cell = f"{cell} [{r[f'{c}_lo']:.1f}, {r[f'{c}_hi']:.1f}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_scores(df: pd.DataFrame, out: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(df) + 1.5))
    if "rouge_sum" in df:
        d = df.iloc[::-1]
        colors = {"fine-tuned": "tab:blue", "zero-shot": "tab:orange", "baseline": "tab:gray"}
        err = [d["rouge_sum"] - d["rouge_sum_lo"], d["rouge_sum_hi"] - d["rouge_sum"]]
        ax.barh(d["system"], d["rouge_sum"], xerr=err, color=[colors[k] for k in d["kind"]], capsize=3)
        ax.set_xlabel(f"ROUGE-1 + ROUGE-2 + ROUGE-L (F1 x100, {df['split'].iloc[0]}; bars: bootstrap 95% CI)")
    ax.set_title("Systems by ROUGE sum (Kiwi morphemes)")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_losses(config: dict, results: str | Path, out: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for model, variant in plan.systems(config):
        if system_kind(model, variant) != "fine-tuned":
            continue
        hist = pd.read_csv(Path(results).parent / plan.path("log_history", model=model, variant=variant))
        if "loss" in hist:
            h = hist.dropna(subset=["loss"])
            ax.plot(h["step"], h["loss"], label=f"{model}/{variant}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_summary(config: dict, results: str | Path, out_csv, out_md, scores_plot, loss_plot) -> pd.DataFrame:
    df = summary_table(config, results)
    plot_scores(df, scores_plot)
    plot_losses(config, results, loss_plot)
    header = ("# Results\n\nScores: ROUGE F1 x100 on Kiwi morphemes, averaged over each dialogue's references, "
              "with bootstrap 95% intervals. Made by `scripts/summarize.py` from the run's files.\n\n")
    write_text(out_md, header + markdown_table(df))
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    return df
