"""An ensemble's summaries: per dialogue, the member summary with the highest mean ROUGE against the others.

    kdsum mbr --spec results/specs/ensemble/E.json --candidates P1.csv P2.csv P3.csv ... \\
        --out results/predictions/ensemble/E/S.csv

--candidates: one predictions CSV per member system of the spec, in the spec's order. The output CSV has the
columns of every predictions file (``fname,summary``) and, per dialogue, the member chosen (``system``) and its
mean ROUGE against the other candidates (``mbr_utility``, x100). Method: kdsum.selection.mbr.
"""

from __future__ import annotations

import argparse

from kdsum.config.spec import EnsembleSpec, read_spec
from kdsum.io import write_csv
from kdsum.selection.mbr import mbr_predictions


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="kdsum mbr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--spec", required=True, help="the ensemble's spec (results/specs/ensemble/E.json)")
    ap.add_argument("--candidates", nargs="+", required=True, metavar="P", help="one predictions CSV per member")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    spec = read_spec(args.spec, EnsembleSpec)
    frame = mbr_predictions(spec.systems, args.candidates)
    write_csv(args.out, frame)
    picks = frame["system"].value_counts().reindex(spec.systems, fill_value=0)
    print(
        f"wrote {args.out}: {len(frame)} summaries; chosen per member: "
        + ", ".join(f"{s} {n}" for s, n in picks.items())
    )
