"""Bootstrap statistics of per-item scores.

:func:`bootstrap_ci` is the percentile bootstrap of a mean (items resampled with
replacement, ``numpy.random.default_rng(seed)``); :func:`corpus_summary` reports means ×100
and CIs, the CI of the sum being bootstrapped on per-item sums.  :func:`paired_bootstrap`
resamples the per-item differences ``b - a``; its ``p_value`` is the one-sided share of
resamples with mean difference <= 0 ("b is not better than a").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from kdsum.scoring.rouge import ROUGE_KEYS


def _resample_indices(n: int, n_resamples: int, seed: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """The bootstrap's resamples as ``(start, stop, indices)`` chunks of at most 4M indices: those of
    ``numpy.random.default_rng(seed)``, drawn in this order, so they depend only on ``n``, ``n_resamples`` and
    ``seed``."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, 4_000_000 // max(n, 1)))
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        yield start, stop, rng.integers(0, n, size=(stop - start, n))


def _resample_means(values: np.ndarray, n_resamples: int, seed: int, columns: int = 1) -> list[np.ndarray]:
    """Means of ``n_resamples`` bootstrap resamples of each of ``columns`` value arrays (``values``: shape
    ``(columns, n)``, or ``(n,)`` for one), vectorised in memory-bounded chunks.

    Every column is resampled with the same indices, drawn once: exactly what ``columns`` separate calls with
    one seed draw (the indices depend only on n, n_resamples and seed), without drawing them ``columns`` times.
    """
    rows = values.reshape(columns, -1)
    outs = [np.empty(n_resamples, dtype=np.float64) for _ in range(columns)]
    for start, stop, idx in _resample_indices(rows.shape[1], n_resamples, seed):
        for row, out in zip(rows, outs, strict=True):
            out[start:stop] = np.take(row, idx).mean(axis=1)  # row[idx], the same array, made faster
    return outs


def _as_1d(values: Any, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def bootstrap_ci(values: Any, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap ``1 - alpha`` confidence interval of the mean of ``values``."""
    arr = _as_1d(values)
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    (means,) = _resample_means(arr, n_resamples, seed)
    return _percentiles(means, alpha)


def _percentiles(means: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def corpus_summary(df: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Corpus means ×100 of rouge1/rouge2/rougeL, their sum, and bootstrap CIs (``<key>_ci``).

    The CI of the sum is bootstrapped on per-item sums (not the sum of the three CIs).
    ``n_resamples=0`` skips the bootstrap (CIs are ``None``).
    """
    missing = [k for k in ROUGE_KEYS if k not in df.columns]
    if missing:
        raise ValueError(f"scores lack columns {missing}")
    cols = {k: _as_1d(df[k].to_numpy(), k) * 100.0 for k in ROUGE_KEYS}
    cols["rouge_sum"] = cols["rouge1"] + cols["rouge2"] + cols["rougeL"]
    out: dict[str, Any] = {"n": int(len(df))}
    for k, v in cols.items():
        out[k] = float(v.mean())
    if n_resamples == 0:
        out.update({f"{k}_ci": None for k in cols})
        return out
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    # bootstrap_ci of each column, with the resample indices drawn once for all four (the same seed and n: the same
    # indices), so the CIs are bit-identical to four bootstrap_ci calls
    means = _resample_means(np.stack(list(cols.values())), n_resamples, seed, columns=len(cols))
    for k, m in zip(cols, means, strict=True):
        out[f"{k}_ci"] = list(_percentiles(m, alpha))
    return out


def paired_bootstrap(a: Any, b: Any, n_resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap of the mean difference ``b - a`` over items.

    Returns ``mean_diff`` (mean of b - a), the 95% percentile CI (``ci_low``, ``ci_high``) and
    ``p_value``: the one-sided bootstrap p-value for "system b is not better than a", i.e. the
    share of resamples whose mean(b - a) is <= 0.  Small p: b is reliably better; identical
    systems give p = 1.
    """
    a_arr, b_arr = _as_1d(a, "a"), _as_1d(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired arrays differ in length: {a_arr.size} vs {b_arr.size}")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    d = b_arr - a_arr
    (means,) = _resample_means(d, n_resamples, seed)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {
        "mean_diff": float(d.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_value": float(np.mean(means <= 0.0)),
    }
