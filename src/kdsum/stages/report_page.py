"""The examples page of the Snakemake report (results/report/examples.html).

    kdsum report-page --spec results/specs/report.json --data results/data/S.jsonl \\
        --predictions P.csv ... --items I.csv ... --out results/report/examples.html

--predictions and --items: one file per system of the spec, in its order. Content and choice of dialogues:
kdsum.reporting.report_page.
"""

from __future__ import annotations

import argparse

from kdsum.config.spec import ReportSpec, read_spec
from kdsum.io import write_text
from kdsum.reporting.report_page import report_page


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="kdsum report-page", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--spec", required=True, help="results/specs/report.json")
    ap.add_argument("--data", required=True, help="the scored split (results/data/S.jsonl)")
    ap.add_argument("--predictions", nargs="+", required=True, metavar="P", help="S.csv of each system")
    ap.add_argument("--items", nargs="+", required=True, metavar="I", help="S_items.csv of each system")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    spec = read_spec(args.spec, ReportSpec)
    write_text(args.out, report_page(spec, args.data, args.predictions, args.items))
    print(f"wrote {args.out}")
