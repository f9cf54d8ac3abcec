"""A hub-shaped local replica of a seed model (real tokenizer, random weights).

``kdsum replica NAME --size full|cpu --out DIR``: a hub-shaped local replica of a seed model (kdsum.models.replicas).

    kdsum replica llama-3.2-3b --size cpu --out results/replicas/llama-3.2-3b-cpu
    kdsum replica kobart-base --size full --train results/data/train.jsonl --out results/replicas/kobart-base-full

Seed models: kobart-base, llama-3.2-3b, qwen3-4b, qwen2.5-7b, llama-3-8b. The real tokenizers come from
--tokenizers (default ../shared/tokenizers); KoBART's replica trains the project's tokenizer on --train.
"""

from __future__ import annotations

import argparse

from kdsum.data.ingest import load_split
from kdsum.models.replicas import SEEDS, SIZES, write_replica
from kdsum.training.checkpoints import refuse_foreign


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="kdsum replica", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("name", choices=sorted(SEEDS))
    ap.add_argument("--size", choices=SIZES, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizers", default="../shared/tokenizers", help="the real tokenizers (llama3/, qwen3/)")
    ap.add_argument("--train", help="ingested training split, for a replica whose tokenizer is trained (kobart)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="where the random weights are made (auto: CUDA if present)")
    args = ap.parse_args(argv)

    refuse_foreign(args.out, "--out")  # the replica replaces it whole: never a directory not the pipeline's
    texts = [r["dialogue"] for r in load_split(args.train)] if args.train else None
    info = write_replica(
        args.name, args.size, args.out, args.tokenizers, seed=args.seed, train_texts=texts, device=args.device
    )
    print(
        f"wrote {args.out}: {info['stands_for']} replica ({args.size}), {info['parameters']:,} parameters, "
        f"vocabulary {info['vocab_size']:,}, tokenizer: {info['tokenizer']}"
    )
