"""Paired bootstrap comparison of two systems' per-item scores.

    kdsum compare A_items.csv B_items.csv [--metric rouge_sum] [--n 1000] [--seed 0]

Prints the mean difference B - A, its 95% bootstrap CI and the one-sided p-value of
"B is not better than A" (share of resamples with mean(B - A) <= 0).  Items are paired on
``fname``; the two files must hold exactly the same fnames.  Errors: ``error: ...``, exit 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdsum.scoring.evaluate import compare_systems


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="kdsum compare", description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path, help="per-item CSV of system A (baseline)")
    ap.add_argument("b", type=Path, help="per-item CSV of system B (candidate)")
    ap.add_argument("--metric", default="rouge_sum", help="column to compare (default rouge_sum)")
    ap.add_argument("--n", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    a, b, res = compare_systems(args.a, args.b, args.metric, n_resamples=args.n, seed=args.seed)
    print(f"metric: {args.metric}  n={len(a)}  A={args.a}  B={args.b}")
    print(f"mean A {a.mean():.4f}  mean B {b.mean():.4f}")
    print(f"mean difference (B - A): {res['mean_diff']:+.4f}")
    print(
        f"95% CI: [{res['ci_low']:+.4f}, {res['ci_high']:+.4f}]  ({args.n} paired bootstrap resamples, seed {args.seed})"
    )
    floor = f" (< {1 / args.n:g}: no resample had mean(B - A) <= 0)" if res["p_value"] == 0 else ""
    print(f"p-value (one-sided, H0: B not better than A): {res['p_value']:.4f}{floor}")
