#!/usr/bin/env python
"""Gather scores, training metrics and build metrics into results/summary.csv (+ Markdown and plots)."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdsum.cli import run_cli  # noqa: E402


def main() -> None:
    from kdsum.config import load_config
    from kdsum.summary import markdown_table, write_summary

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--out-csv", required=True)
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--scores-plot", required=True)
    ap.add_argument("--loss-plot", required=True)
    args = ap.parse_args()
    df = write_summary(load_config(args.config), args.results, args.out_csv, args.out_md, args.scores_plot,
                       args.loss_plot)
    print(markdown_table(df))


if __name__ == "__main__":
    run_cli(main)
