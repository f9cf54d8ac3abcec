"""Validate and normalise the raw splits into JSONL and stats.json.

    kdsum ingest --spec results/specs/data.json --out-dir results/data [--leakage POLICY]

The raw paths and settings come from the data spec (kdsum.config.spec.DataSpec: data.encoding, data.leakage,
data.near_duplicate_threshold), never from a shell command line. Inputs are competition CSV (UTF-8, UTF-8+BOM,
CRLF or CP949 with data.encoding: auto; any codec named by data.encoding) or DialogSum-style JSONL, chosen by
extension. Refused input raises kdsum.data.ingest.DataError (``error: <message>``, exit status 2), leaving the output
directory untouched. All logic lives in :mod:`kdsum.data.ingest`.
"""

from __future__ import annotations

import argparse
import sys

from kdsum.config.spec import DataSpec, read_spec
from kdsum.data.ingest import ingest_splits
from kdsum.data.leakage import LEAKAGE_POLICIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdsum ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="the data spec (results/specs/data.json)")
    parser.add_argument("--out-dir", required=True, help="where {split}.jsonl and stats.json go")
    parser.add_argument(
        "--leakage",
        choices=LEAKAGE_POLICIES,
        help="what to do with dialogues shared between splits, whatever data.leakage says (kdsum.data.leakage)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    spec = read_spec(args.spec, DataSpec)
    stats = ingest_splits(
        spec.splits(),
        args.out_dir,
        leakage=args.leakage or spec.leakage,
        encoding=spec.encoding,
        near_duplicate_threshold=spec.near_duplicate_threshold,
    )
    rows = ", ".join(f"{name}={s['rows']}" for name, s in stats["splits"].items())
    print(f"wrote {args.out_dir}: {rows}; {len(stats['special_tokens'])} special tokens", file=sys.stderr)
    for name, s in stats["splits"].items():
        fixed = {k: v["count"] for k, v in s["normalisation"].items() if k != "rows_changed" and v["count"]}
        if fixed:
            what = ", ".join(f"{k} {n}" for k, n in fixed.items())
            print(f"note: {name}: normalised {s['normalisation']['rows_changed']} row(s) ({what})", file=sys.stderr)
    for item in stats["leakage"]:
        shared = " and ".join(item["splits"])
        identical = sum(p["identical"] for p in item["pairs"])
        print(
            f"warning: {len(item['pairs'])} dialogue(s) shared by {shared} ({identical} identical, "
            f"{len(item['pairs']) - identical} near-duplicate(s) at similarity >= {stats['near_duplicate_threshold']})"
            + (f"; {len(item['shared_fnames'])} fname(s) in both" if item["shared_fnames"] else ""),
            file=sys.stderr,
        )
        pairs = ", ".join(f"{a} ~ {b} ({p['similarity']:.2f})" for p in item["pairs"] for a, b in [p["fnames"]])
        print(f"  pairs: {pairs}", file=sys.stderr)
    _print_policy(stats)


def _print_policy(stats: dict) -> None:
    """What data.leakage did: the dev/test rows flagged, the train rows dropped."""
    flagged = ", ".join(f"{split} {n}" for split, n in stats["near_dup_train"].items() if n)
    if flagged:
        print(f"warning: rows with a near-duplicate in train (flagged near_dup_train): {flagged}", file=sys.stderr)
    if stats["dropped_train"]:
        print(f"note: data.leakage drop_train removed {len(stats['dropped_train'])} train row(s)", file=sys.stderr)
