"""The examples page of the Snakemake report: dialogues with every system's summary, side by side.

Two sections: the best system's lowest-scoring dialogues (by `final`, the mean of ROUGE-1/2/L F1 x100 of
``kdsum evaluate``'s per-item scores; "best": :func:`kdsum.reporting.comparisons.best_of` over the systems' mean `final`,
ensembles included) and a seeded random sample of the split. Each dialogue shows its text, its references and,
per system, the summary, its scores, its length in characters and the foreign-script flag of
:func:`kdsum.korean.diagnostics.has_foreign_script`. One self-contained HTML file, no scripts, every text escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from kdsum.config.spec import ReportSpec
from kdsum.data.ingest import load_split
from kdsum.errors import KdsumError
from kdsum.korean.diagnostics import has_foreign_script
from kdsum.reporting.comparisons import best_of
from kdsum.scoring.evaluate import load_predictions

SCORE_COLUMNS = ("rouge1", "rouge2", "rougeL")


class ReportPageError(KdsumError):
    """The report page's input files do not match its spec."""


@dataclass(frozen=True)
class SystemFiles:
    name: str
    predictions: dict[str, str]  # fname -> summary
    chosen: dict[str, str]  # fname -> the member an ensemble chose (empty for single systems)
    items: pd.DataFrame  # indexed by fname: rouge1, rouge2, rougeL, final (x100)


def load_system(name: str, predictions: str | Path, items: str | Path) -> SystemFiles:
    scores = pd.read_csv(items, dtype={"fname": str}, keep_default_na=False).set_index("fname")
    missing = [c for c in SCORE_COLUMNS if c not in scores]
    if missing:
        raise ReportPageError(f"{items}: missing column(s) {missing}")
    scores["final"] = scores[list(SCORE_COLUMNS)].mean(axis=1)
    frame = pd.read_csv(predictions, dtype=str, keep_default_na=False)
    chosen = dict(zip(frame["fname"], frame["system"], strict=True)) if "system" in frame else {}
    return SystemFiles(name, load_predictions(Path(predictions)), chosen, scores)


def pick_dialogues(fnames: Sequence[str], best: SystemFiles, n_worst: int, n_sample: int, seed: int):
    """(the best system's ``n_worst`` lowest-`final` fnames, worst first; ``n_sample`` others at random, in
    split order). A stable sort: equal scores keep split order."""
    order = best.items.loc[list(fnames), "final"].reset_index(drop=True).sort_values(kind="stable")
    worst = [fnames[i] for i in order.index[:n_worst]]
    rest = [f for f in fnames if f not in set(worst)]
    rng = np.random.default_rng(seed)
    drawn = sorted(rng.choice(len(rest), size=min(n_sample, len(rest)), replace=False).tolist())
    return worst, [rest[i] for i in drawn]


_STYLE = """
body{font-family:sans-serif;max-width:1100px;margin:auto;line-height:1.45}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.3em;vertical-align:top}
td.n{text-align:right;white-space:nowrap}.flag{color:#b00;font-weight:bold}tr.best{background:#eef6ee}
"""


def _dialogue_html(fname: str, record: dict, systems: Sequence[SystemFiles], best: str) -> str:
    refs = "".join(f"<li>{escape(r)}</li>" for r in record["summaries"])
    rows = []
    for s in systems:
        text, sc = s.predictions[fname], s.items.loc[fname]
        note = f"<br><small>chosen: {escape(s.chosen[fname])}</small>" if fname in s.chosen else ""
        flag = '<span class="flag">yes</span>' if has_foreign_script(text) else "no"
        cells = "".join(f'<td class="n">{sc[c]:.1f}</td>' for c in ("final", *SCORE_COLUMNS))
        rows.append(
            f"<tr{' class=best' if s.name == best else ''}><td>{escape(s.name)}</td><td>{escape(text)}{note}</td>"
            f'{cells}<td class="n">{len(text)}</td><td>{flag}</td></tr>'
        )
    return (
        f"<h3>{escape(fname)}</h3><pre>{escape(record['dialogue'])}</pre><p><b>Reference(s)</b></p><ol>{refs}</ol>"
        "<table><tr><th>system</th><th>summary</th><th>final</th><th>R1</th><th>R2</th><th>RL</th>"
        "<th>chars</th><th>foreign script</th></tr>" + "".join(rows) + "</table>"
    )


def render(spec: ReportSpec, records: list[dict], systems: Sequence[SystemFiles]) -> str:
    by_fname = {r["fname"]: r for r in records}
    fnames = list(by_fname)
    for s in systems:
        lacking = [f for f in fnames if f not in s.predictions or f not in s.items.index]
        if lacking:
            raise ReportPageError(f"system {s.name}: no prediction or score for {len(lacking)} fname(s): {lacking[:5]}")
    means = {s.name: float(s.items.loc[fnames, "final"].mean()) for s in systems}
    best = best_of(means)
    worst, sample = pick_dialogues(
        fnames, next(s for s in systems if s.name == best), spec.worst, spec.sample, spec.seed
    )
    ranking = "".join(
        f"<tr><td>{escape(n)}</td><td class=n>{m:.2f}</td></tr>"
        for n, m in sorted(means.items(), key=lambda kv: -kv[1])
    )
    parts = [
        f"<!doctype html><html lang=ko><head><meta charset=utf-8><title>kdsum examples ({spec.split})</title>",
        f"<style>{_STYLE}</style></head><body><h1>Examples from the {escape(spec.split)} split</h1>",
        "<p>Scores: ROUGE F1 x100 on Kiwi morphemes, averaged over the references; <i>final</i> is the mean of "
        "R1/R2/RL (the leaderboard's scale). <i>foreign script</i>: Latin, Han, kana, emoji or a URL outside the "
        "data tokens. Made by <code>kdsum report-page</code>.</p>",
        f"<table><tr><th>system</th><th>mean final</th></tr>{ranking}</table>",
        f"<h2>The {len(worst)} lowest-scoring dialogues of the best system ({escape(best)})</h2>",
        *(_dialogue_html(f, by_fname[f], systems, best) for f in worst),
        f"<h2>{len(sample)} dialogues drawn at random (seed {spec.seed})</h2>",
        *(_dialogue_html(f, by_fname[f], systems, best) for f in sample),
        "</body></html>\n",
    ]
    return "\n".join(parts)


def report_page(spec: ReportSpec, data: str | Path, predictions: Sequence[str], items: Sequence[str]) -> str:
    """The page's HTML from the split's records and, per system of the spec (in its order), its files."""
    n = len(spec.systems)
    if len(predictions) != n or len(items) != n:
        raise ReportPageError(f"{len(predictions)} predictions and {len(items)} items file(s) for {n} systems")
    systems = [load_system(r.name, p, i) for r, p, i in zip(spec.systems, predictions, items, strict=True)]
    return render(spec, load_split(data), systems)
