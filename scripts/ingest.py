#!/usr/bin/env python3
"""Ingest raw dialogue-summarization splits into normalised JSONL + stats.json.

Usage:
    python scripts/ingest.py --train TRAIN [--dev DEV] [--test TEST] --out-dir results/data
                             [--allow-leakage]

Inputs are competition CSV (UTF-8, UTF-8+BOM, CRLF or CP949) or DialogSum-style JSONL,
chosen by extension. Refused input prints ``error: <message>`` to stderr and exits 2,
leaving the output directory untouched. All logic lives in :mod:`kdsum.data`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import kdsum  # noqa: F401
except ImportError:  # running from a clean clone without `pip install`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdsum.data import DataError, ingest_splits  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="raw train file (.csv or .jsonl)")
    parser.add_argument("--dev", help="raw dev file (optional)")
    parser.add_argument("--test", help="raw test file (optional; may lack summaries)")
    parser.add_argument("--out-dir", required=True, help="where {split}.jsonl and stats.json go")
    parser.add_argument(
        "--allow-leakage",
        action="store_true",
        help="record identical dialogues across splits in stats.json instead of refusing "
        "(explicit opt-in, e.g. for the public DialogSum release)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = {"train": args.train, "dev": args.dev, "test": args.test}
    try:
        stats = ingest_splits(paths, args.out_dir, allow_leakage=args.allow_leakage)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = ", ".join(f"{name}={s['rows']}" for name, s in stats["splits"].items())
    print(f"wrote {args.out_dir}: {rows}; {len(stats['special_tokens'])} special tokens", file=sys.stderr)
    for item in stats["leakage"]:
        shared = " and ".join(item["splits"])
        print(f"warning: {len(item['pairs'])} dialogue(s) shared by {shared}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
