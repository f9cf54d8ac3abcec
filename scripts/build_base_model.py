#!/usr/bin/env python
"""Build a small offline base model: tokenizer trained on the training dialogues, architecture from config,
a brief pretraining on the dialogue text. Output is an ordinary Hugging Face model directory."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdsum.cli import run_cli  # noqa: E402


def main() -> None:
    import torch

    from kdsum.config import ConfigError, load_config, resolve
    from kdsum.data import load_split
    from kdsum.io import atomic_dir, read_json, write_json
    from kdsum.modeling import build_base_model

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True, help="ingested training split (results/data/train.jsonl)")
    ap.add_argument("--special-tokens", required=True, help="special_tokens.json written beside the prompts")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    spec = resolve(load_config(args.config), args.model, "default")
    if not spec["build"]:
        raise ConfigError(f"{args.config}: model '{args.model}' has no `build` section (it loads from "
                          f"'{spec['source']}'); nothing to build")
    records = load_split(args.train)
    texts = [r["dialogue"] for r in records]
    tokens = read_json(args.special_tokens)["tokens"]
    family = spec["family"]
    with atomic_dir(args.out_dir) as tmp:
        metrics = build_base_model(family, spec["build"], texts, tokens, tmp)
    write_json(args.metrics, {"model": args.model, **metrics})
    print(f"built {args.model}: {metrics['parameters']:,} parameters, pretrain loss "
          f"{metrics['pretrain_first_loss']:.3f} -> {metrics['pretrain_final_loss']:.3f}")


if __name__ == "__main__":
    run_cli(main)
