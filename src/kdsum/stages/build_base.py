"""Build a small base model offline (tokenizer, architecture and pretraining on the train split).

Build a small base model offline: a tokenizer trained on the training dialogues, the architecture of the model's
``build`` section, a brief pretraining on the dialogue text. The output is an ordinary Hugging Face model directory.

    kdsum build-base --spec results/specs/base/M.json --train results/data/train.jsonl \\
        --special-tokens results/prompts/P/special_tokens.json --out-dir results/base/M --metrics results/base/M.json
"""

from __future__ import annotations

import argparse

from kdsum.config.spec import BaseSpec, read_spec
from kdsum.data.ingest import load_split
from kdsum.io import atomic_dir, read_json, write_json
from kdsum.models.build import build_base_model
from kdsum.training.checkpoints import refuse_foreign


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="kdsum build-base", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--spec", required=True, help="the base model's spec (results/specs/base/M.json)")
    ap.add_argument("--train", required=True, help="ingested training split (results/data/train.jsonl)")
    ap.add_argument("--special-tokens", required=True, help="special_tokens.json written beside the prompts")
    ap.add_argument("--out-dir", required=True, help="results/base/M")
    ap.add_argument("--metrics", required=True, help="results/base/M.json")
    args = ap.parse_args(argv)

    refuse_foreign(args.out_dir, "--out-dir")  # the build replaces it whole: never a directory not the pipeline's
    spec = read_spec(args.spec, BaseSpec)
    texts = [r["dialogue"] for r in load_split(args.train)]
    tokens = read_json(args.special_tokens)["tokens"]
    with atomic_dir(args.out_dir) as tmp:
        metrics = build_base_model(spec.family, spec.build, texts, tokens, tmp)
    write_json(args.metrics, {"model": spec.model, **metrics})
    print(
        f"built {spec.model}: {metrics['parameters']:,} parameters, pretrain loss "
        f"{metrics['pretrain_first_loss']:.3f} -> {metrics['pretrain_final_loss']:.3f}"
    )
