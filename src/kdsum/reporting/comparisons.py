"""Every system against the best single system: paired bootstrap of the difference in `final`.

The reference is the best *single* system that is not degenerate (kdsum.scoring.metrics.is_degenerate; not an ensemble, which chooses among the single systems' summaries),
so an ensemble's row answers "does it beat the best system it chose from". Items are paired on fname
(:func:`kdsum.scoring.evaluate.compare_systems`, :func:`kdsum.scoring.bootstrap.paired_bootstrap`); ``p_not_better`` is the
share of resamples in which the system's mean `final` is not above the reference's (small: reliably better).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from kdsum.scoring.evaluate import compare_systems
from kdsum.scoring.rouge import final_score

COLUMNS = ("vs_best", "diff_vs_best", "diff_vs_best_lo", "diff_vs_best_hi", "p_not_better")


def best_of(finals: Mapping[str, float]) -> str:
    """The name with the highest score; the earliest (mapping order) on a tie, NaN never wins."""
    best = None
    for name, value in finals.items():
        if not math.isnan(value) and (best is None or value > finals[best]):
            best = name
    if best is None:
        raise ValueError("no system has a score")
    return best


def paired_against_best(df: pd.DataFrame, items: Mapping[str, str | Path], n_resamples: int, seed: int) -> pd.DataFrame:
    """``df`` (the summary table: system, kind, final) with the :data:`COLUMNS` added.

    ``items``: system name -> its per-item scores (I.csv of ``kdsum evaluate``). The reference's own row has
    difference 0 and no interval."""
    singles = df[df["kind"] != "ensemble"]
    # a system that writes one text for most dialogues is no reference (unless every single system is degenerate)
    sound = ~singles["degenerate"].fillna(False).astype(bool) if "degenerate" in singles else None
    if sound is not None and sound.any():
        singles = singles[sound]
    ref = best_of(dict(zip(singles["system"], singles["final"], strict=True)))
    out = df.copy()
    rows = []
    for name in out["system"]:
        if name == ref:
            rows.append((ref, 0.0, math.nan, math.nan, math.nan))
            continue
        # compare_systems works on per-item rouge_sum; final is rouge_sum / 3 item by item, p is scale-free
        _, _, res = compare_systems(Path(items[ref]), Path(items[name]), "rouge_sum", n_resamples, seed)
        rows.append((ref, *map(final_score, (res["mean_diff"], res["ci_low"], res["ci_high"])), res["p_value"]))
    for col, values in zip(COLUMNS, zip(*rows, strict=True), strict=True):
        out[col] = list(values)
    return out


def markdown(df: pd.DataFrame) -> str:
    """The section of summary.md: one line per system against the reference."""
    if "vs_best" not in df or df.empty:
        return ""
    ref = df["vs_best"].iloc[0]
    lines = [
        f"## Paired bootstrap against the best single system ({ref})",
        "",
        "Difference in `final` (system minus reference, per dialogue), its bootstrap 95% interval, and the share of "
        "resamples in which the system is not better than the reference (p; small means reliably better).",
        "",
        "| system | final | difference | 95% interval | p (not better) |",
        "|---|---|---|---|---|",
    ]
    for _, r in df.iterrows():
        if r["system"] == ref:
            lines.append(f"| {ref} | {r['final']:.2f} | (reference) | | |")
            continue
        lines.append(
            f"| {r['system']} | {r['final']:.2f} | {r['diff_vs_best']:+.2f} | "
            f"[{r['diff_vs_best_lo']:+.2f}, {r['diff_vs_best_hi']:+.2f}] | {r['p_not_better']:.3f} |"
        )
    return "\n".join(lines) + "\n"
