"""Paired bootstrap comparison of two systems' per-item scores (I.csv files of evaluate.py).

    python scripts/compare_systems.py A_items.csv B_items.csv [--metric rouge_sum] [--n 1000] [--seed 0]

Prints the mean difference B - A, its 95% bootstrap CI and the one-sided p-value of
"B is not better than A" (share of resamples with mean(B - A) <= 0).  Items are paired on
``fname``; the two files must hold exactly the same fnames.  Errors: ``error: ...``, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pandas as pd  # noqa: E402

from kdsum.metrics import paired_bootstrap  # noqa: E402

_SHOW = 5


def _load(path: Path, metric: str) -> pd.Series:
    df = pd.read_csv(path, dtype={"fname": str}, keep_default_na=False)
    for col in ("fname", metric):
        if col not in df.columns:
            raise ValueError(f"{path}: no column {col!r}; found {list(df.columns)}")
    dup = df.loc[df["fname"].duplicated(), "fname"].tolist()
    if dup:
        raise ValueError(f"{path}: duplicated fname(s): {dup[:_SHOW]}")
    values = pd.to_numeric(df[metric], errors="coerce")
    if values.isna().any():
        raise ValueError(f"{path}: non-numeric {metric!r} for fname(s) {df.loc[values.isna(), 'fname'].tolist()[:_SHOW]}")
    return pd.Series(values.to_numpy(), index=df["fname"], name=metric)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path, help="per-item CSV of system A (baseline)")
    ap.add_argument("b", type=Path, help="per-item CSV of system B (candidate)")
    ap.add_argument("--metric", default="rouge_sum", help="column to compare (default rouge_sum)")
    ap.add_argument("--n", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        a = _load(args.a, args.metric)
        b = _load(args.b, args.metric)
        only_a = sorted(set(a.index) - set(b.index))
        only_b = sorted(set(b.index) - set(a.index))
        if only_a or only_b:
            raise ValueError(
                f"fname sets differ: {len(only_a)} only in {args.a} {only_a[:_SHOW]}, "
                f"{len(only_b)} only in {args.b} {only_b[:_SHOW]}"
            )
        b = b.loc[a.index]  # pair on fname
        res = paired_bootstrap(a.to_numpy(), b.to_numpy(), n_resamples=args.n, seed=args.seed)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"metric: {args.metric}  n={len(a)}  A={args.a}  B={args.b}")
    print(f"mean A {a.mean():.4f}  mean B {b.mean():.4f}")
    print(f"mean difference (B - A): {res['mean_diff']:+.4f}")
    print(f"95% CI: [{res['ci_low']:+.4f}, {res['ci_high']:+.4f}]  ({args.n} paired bootstrap resamples, seed {args.seed})")
    floor = f" (< {1 / args.n:g}: no resample had mean(B - A) <= 0)" if res["p_value"] == 0 else ""
    print(f"p-value (one-sided, H0: B not better than A): {res['p_value']:.4f}{floor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
