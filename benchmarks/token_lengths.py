"""Korean tokens per character with the real Llama-3 and Qwen3 tokenizers, and the share of rows a max_length cuts.

    python benchmarks/token_lengths.py [--data ../shared/data/ko] [--tokenizers ../shared/tokenizers]

For each tokenizer: tokens per character of dialogues and summaries (train_subset_2500 + dev), the 50/95/99th
percentile and maximum of the whole chat training sequence (the real chat template with the pipeline's prompt
format, plus the summary), and the share of training rows that max_length 768 / 1024 / 1536 / 2048 would cut.
The figures set max_length and max_new_tokens of config.yaml's hub entries (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import AutoTokenizer

from kdsum.config.resolve import load_config, resolve
from kdsum.data.ingest import parse_turns
from kdsum.data.prompts import format_chat_prompt

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/ko"))
    ap.add_argument("--tokenizers", default=str(ROOT.parent / "shared/tokenizers"))
    args = ap.parse_args()
    frames = [pd.read_csv(Path(args.data) / f) for f in ("train_subset_2500.csv", "dev.csv")]
    df = pd.concat(frames, ignore_index=True)
    fmt = resolve(load_config(ROOT / "config.yaml"), "llama-ko-3b", "default").prompt
    for name in ("llama3", "qwen3"):
        tok = AutoTokenizer.from_pretrained(str(Path(args.tokenizers) / name))
        d_tok = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in df["dialogue"]]
        s_tok = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in df["summary"]]
        seqs = []
        for dialogue, summary in zip(df["dialogue"], df["summary"], strict=True):
            record = {"dialogue": dialogue, "turns": parse_turns(dialogue), "topic": None}
            messages = format_chat_prompt(record, fmt) + [{"role": "assistant", "content": summary}]
            text = tok.apply_chat_template(messages, tokenize=False, enable_thinking=False)
            seqs.append(len(tok(text, add_special_tokens=False)["input_ids"]))
        seqs = np.array(seqs)
        print(
            f"{name}: dialogue {sum(d_tok) / df['dialogue'].str.len().sum():.3f} tokens/char, "
            f"summary {sum(s_tok) / df['summary'].str.len().sum():.3f} tokens/char; summary tokens p99 "
            f"{np.percentile(s_tok, 99):.0f}, max {max(s_tok)}; chat sequence p50 {np.percentile(seqs, 50):.0f}, "
            f"p95 {np.percentile(seqs, 95):.0f}, p99 {np.percentile(seqs, 99):.0f}, max {seqs.max()}; rows cut at "
            + ", ".join(f"{n}: {(seqs > n).mean() * 100:.2f}%" for n in (768, 1024, 1536, 2048))
            + f" (n={len(seqs)})"
        )


if __name__ == "__main__":
    main()
