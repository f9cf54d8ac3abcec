"""Choose a system's decoding setting on the dev set's tuning rows.

    kdsum select-decoding --names S1 S2 ... --scores F1 F2 ... --specs J1 J2 ... --out-json decoding.json \\
        --out-csv decoding.csv --out-md decoding.md --plot decoding.png

One score file (``kdsum decode``) and one spec (results/specs/decode/M/V/S.json) per setting, in the names'
order. decoding.json holds the choice and its generation settings (``kdsum predict --decoding`` reads it).
"""

from __future__ import annotations

import argparse

from kdsum.config.spec import Job, read_spec
from kdsum.selection.select import write_decoding_selection


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="kdsum select-decoding", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--names", nargs="+", required=True)
    ap.add_argument("--scores", nargs="+", required=True)
    ap.add_argument("--specs", nargs="+", required=True)
    for option in ("--out-json", "--out-csv", "--out-md", "--plot"):
        ap.add_argument(option, required=True)
    args = ap.parse_args(argv)
    jobs = [read_spec(p, Job) for p in args.specs]
    choice = write_decoding_selection(
        args.names, args.scores, jobs, args.out_json, args.out_csv, args.out_md, args.plot
    )
    print(
        f"{choice['system']}: decoding '{choice['setting']}' (final {choice['tuning_final']:.2f} on "
        f"{choice['tuning_n']} dev tuning rows); wrote {args.out_json}"
    )
