"""The prompt dataset of one prompt set (a model family and, for chat models, a prompt format).

Format the ingested splits into the prompt dataset of one prompt set (a model family and, for chat models,
a prompt format).

    kdsum prompts --spec results/specs/prompts/P.json --data-dir results/data --out-dir results/prompts/P

Writes DIR/{split}.jsonl for every ingested split, DIR/special_tokens.json (every #PersonN# and PII mask seen
in the data, for the training stage to keep whole) and, for a chat set, DIR/format.json; whole or not at all.
"""

from __future__ import annotations

import argparse

from kdsum.config.spec import PromptSetSpec, read_spec
from kdsum.data.prompts import write_prompt_set


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="kdsum prompts", description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", required=True, help="the prompt set's spec (results/specs/prompts/P.json)")
    ap.add_argument("--data-dir", required=True, help="ingested data (results/data)")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)

    spec = read_spec(args.spec, PromptSetSpec)
    counts, tokens = write_prompt_set(spec, args.data_dir, args.out_dir)
    print(
        f"wrote {args.out_dir}: " + ", ".join(f"{s}={n}" for s, n in counts.items()) + f"; {len(tokens)} special tokens"
    )
