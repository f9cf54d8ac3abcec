"""Minimum Bayes risk (MBR) selection among the summaries of several systems.

For each dialogue, the candidates are the member systems' summaries; each candidate's utility is its mean `final`
score (the mean of ROUGE-1/2/L F1 x100, on Kiwi morphemes: :func:`kdsum.scoring.rouge.rouge_scores`) against the other
candidates, and the candidate with the highest utility is chosen: the consensus summary. ROUGE F1 is symmetric, so
with two candidates both always tie; the schema asks for three or more. Ties (identical candidates, or equal
utilities) go to the member listed first, so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdsum.errors import KdsumError
from kdsum.scoring.evaluate import load_predictions
from kdsum.scoring.rouge import ROUGE_KEYS, rouge_scores

# Utilities are rounded before the argmax so that equal utilities computed in a different order (float noise)
# still tie and go to the earlier member.
_DECIMALS = 9


class EnsembleError(KdsumError):
    """The member predictions of an ensemble do not fit together."""


def utilities(candidates: Sequence[Sequence[str]], tokenizer: Any = None) -> np.ndarray:
    """``(n_items, n_members)`` array: each candidate's mean `final` (x100) against the item's other candidates.

    ``candidates[i][k]``: member k's summary of item i; every item has the same number (>= 2) of members."""
    k = len(candidates[0]) if candidates else 0
    if k < 2 or any(len(c) != k for c in candidates):
        raise EnsembleError(
            f"every item needs the same number (>= 2) of candidates, got {sorted({len(c) for c in candidates})}"
        )
    preds = [c[m] for c in candidates for m in range(k)]
    refs = [[c[o] for o in range(k) if o != m] for c in candidates for m in range(k)]
    scores = rouge_scores(preds, refs, aggregate="mean", tokenizer=tokenizer)
    final = scores[list(ROUGE_KEYS)].to_numpy().mean(axis=1) * 100.0
    return final.reshape(len(candidates), k)


def select(utility: np.ndarray) -> np.ndarray:
    """Index of the chosen member per item: the highest utility, the earliest member on a tie."""
    return np.argmax(np.round(utility, _DECIMALS), axis=1)  # argmax returns the first maximum


def mbr_predictions(members: Sequence[str], paths: Sequence[str | Path], tokenizer: Any = None) -> pd.DataFrame:
    """The ensemble's predictions: ``fname, summary, system, mbr_utility`` in the first member's fname order.

    ``members``: the member system names, in tie-break order; ``paths``: their predictions CSVs, same order."""
    if len(members) != len(paths):
        raise EnsembleError(f"{len(members)} member system(s) but {len(paths)} predictions file(s)")
    tables = [load_predictions(Path(p)) for p in paths]
    fnames = list(tables[0])
    for path, table in zip(paths[1:], tables[1:], strict=True):
        if set(table) != set(fnames):
            missing, extra = sorted(set(fnames) - set(table)), sorted(set(table) - set(fnames))
            raise EnsembleError(
                f"{path}: fnames differ from {paths[0]}: {len(missing)} missing {missing[:5]}, "
                f"{len(extra)} extra {extra[:5]}"
            )
    candidates = [[t[f] for t in tables] for f in fnames]
    utility = utilities(candidates, tokenizer)
    chosen = select(utility)
    rows = np.arange(len(fnames))
    return pd.DataFrame(
        {
            "fname": fnames,
            "summary": [candidates[i][m] for i, m in enumerate(chosen)],
            "system": [members[m] for m in chosen],
            "mbr_utility": utility[rows, chosen],
        }
    )
