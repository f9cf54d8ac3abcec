#!/usr/bin/env python
"""Format the ingested splits into a prompt dataset for one model family (and, for chat models, one prompt format).

Writes DIR/{split}.jsonl for every ingested split and DIR/special_tokens.json (every #PersonN# and PII mask seen
in the data, for the training stage to keep whole).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdsum.cli import run_cli  # noqa: E402


def main() -> None:
    from kdsum.config import ConfigError, load_config
    from kdsum.data import SPLITS, collect_special_tokens, load_split
    from kdsum.io import atomic_dir, write_json, write_jsonl
    from kdsum.prompts import format_split

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--data-dir", required=True, help="ingested data (results/data)")
    ap.add_argument("--family", required=True, choices=["seq2seq", "chat"])
    ap.add_argument("--format", help="prompt format name from config (chat family)")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args()

    config = load_config(args.config)
    fmt = None
    if args.family == "chat":
        formats = config["prompt"]["formats"]
        if args.format not in formats:
            raise ConfigError(f"{args.config}: prompt format '{args.format}' is not under key 'prompt.formats' "
                              f"(known: {', '.join(formats)})")
        fmt = formats[args.format]
    data_dir = Path(args.data_dir)
    splits = {s: load_split(data_dir / f"{s}.jsonl") for s in SPLITS if (data_dir / f"{s}.jsonl").exists()}
    formatted = {s: format_split(recs, args.family, args.format, fmt, split=s, source=str(data_dir / f"{s}.jsonl"))
                 for s, recs in splits.items()}
    tokens = collect_special_tokens(r for recs in splits.values() for r in recs)
    with atomic_dir(args.out_dir) as tmp:
        for split, rows in formatted.items():
            write_jsonl(tmp / f"{split}.jsonl", rows)
        write_json(tmp / "special_tokens.json", {
            "tokens": tokens,
            "speakers": [t for t in tokens if t.startswith("#Person")],
            "masks": [t for t in tokens if not t.startswith("#Person")],
        })
        if fmt is not None:
            write_json(tmp / "format.json", {"name": args.format, **fmt})
    print(f"wrote {args.out_dir}: " + ", ".join(f"{s}={len(r)}" for s, r in formatted.items())
          + f"; {len(tokens)} special tokens")


if __name__ == "__main__":
    run_cli(main)
