"""results/summary.csv, summary.md and plots, gathered from every system's files.

    kdsum summary --spec results/specs/summary.json [--scores F ...] [--train-metrics F ...]
        [--log-histories F ...] [--base-metrics F ...] [--items F ...] --out-csv results/summary.csv
        --out-md results/summary.md --scores-plot results/plots/scores.png --loss-plot results/plots/loss.png

The file lists follow the order of the spec's systems: --scores one per system (only when the spec scores a
split); --train-metrics and --log-histories one per fine-tuned system; --base-metrics one per zero-shot system
of a built model; --items one per system, or none (then no paired bootstrap against the best single system);
--report-scores (when a split is scored) and --decodings (with a decoding search) one per fine-tuned system;
--submission the best-system submission's JSON, named in summary.md (or none). A count that differs is a one-line
error.
"""

from __future__ import annotations

import argparse

from kdsum.config.spec import SummarySpec, read_spec
from kdsum.reporting.summary import SummaryInputs, markdown_table, write_summary


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="kdsum summary", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--spec", required=True, help="the summary spec (results/specs/summary.json)")
    for option, what in (
        ("--scores", "S.json of each system"),
        ("--train-metrics", "train_metrics.json"),
        ("--log-histories", "log_history.csv"),
        ("--base-metrics", "build metrics (M.json)"),
        ("--items", "S_items.csv of each system (paired bootstrap against the best single system)"),
        ("--report-scores", "S-report.json of each fine-tuned system (dev report rows)"),
        ("--decodings", "decoding.json of each fine-tuned system (the decoding search's choice)"),
        ("--submission", "results/submission.json (the best system's submission), or none"),
    ):
        ap.add_argument(option, nargs="*", default=[], metavar="F", help=what)
    ap.add_argument("--out-csv", required=True)
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--scores-plot", required=True)
    ap.add_argument("--loss-plot", required=True)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    spec = read_spec(args.spec, SummarySpec)
    inputs = SummaryInputs(
        scores=args.scores,
        train_metrics=args.train_metrics,
        log_histories=args.log_histories,
        base_metrics=args.base_metrics,
        items=args.items,
        report_scores=args.report_scores,
        decodings=args.decodings,
        submission=args.submission,
    )
    df = write_summary(spec, inputs, args.out_csv, args.out_md, args.scores_plot, args.loss_plot)
    print(markdown_table(df))
