#!/usr/bin/env python
"""Real-scale QLoRA run through the pipeline's training path, on a GPU.

Builds a RANDOMLY INITIALISED model with Llama-3.2-3B's public configuration (hidden 3072, 28 layers, 24 heads,
8 KV heads, intermediate 8192, vocab 128256, rope_theta 500000 with llama3 rope scaling, tied embeddings) in bf16,
saves it to local disk, and trains it with ``kdsum.training.trainer.train`` as the config's ``llama-ko-3b`` entry
(method qlora: NF4, double quantization, bf16 compute; LoRA r=16, alpha=32, dropout 0.05, all linear layers;
lr 2e-5 cosine, weight decay 0.1, warmup 3%, clip 1.0) on real Korean dialogues formatted by the pipeline
(chat prompt format ``plain``). The tokenizer is trained on the dialogues with ``kdsum.models.loading.train_tokenizer``
(all ids < 128256). Prints tokens/s, peak GPU memory and the loss, and writes a JSON to ``--out``.

    python benchmarks/gpu_qlora_run.py --data .gpu_data/train_subset_2500.csv --out $OUT --steps 300

Weights are random, so the loss only shows the recipe running and the adapter learning (from ~ln(128256)=11.8);
the throughput and memory figures are those of the real 3B shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
REPO = Path(__file__).resolve().parents[1]

LLAMA_32_3B = dict(  # meta-llama/Llama-3.2-3B config.json (public)
    hidden_size=3072,
    num_hidden_layers=28,
    num_attention_heads=24,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=8192,
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
    initializer_range=0.02,
    tie_word_embeddings=True,
    rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
    },
)


def prepare_prompts(csv_path: Path, prompts_dir: Path, config: dict, limit: int | None) -> tuple[list, list[str]]:
    from kdsum.config.catalog import spec_for
    from kdsum.data.ingest import read_split
    from kdsum.data.prompts import format_split
    from kdsum.data.stats import collect_special_tokens
    from kdsum.io import write_json, write_jsonl

    records = read_split(csv_path, "train")
    if limit:
        records = records[:limit]
    fmt = spec_for(config, "prompts/chat-plain").format
    rows = format_split(records, "chat", fmt.name, fmt, split="train", source=str(csv_path))
    tokens = collect_special_tokens(records)
    prompts_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(prompts_dir / "train.jsonl", rows)
    write_json(prompts_dir / "special_tokens.json", {"tokens": tokens})
    return records, tokens


def build_random_llama(records: list, tokens: list[str], base_dir: Path, vocab: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from kdsum.models.build import train_tokenizer

    t0 = time.time()
    texts = [r["dialogue"] for r in records] + [s for r in records for s in r["summaries"]]
    tok = train_tokenizer(texts, vocab, tokens, "causal")
    assert len(tok) < LLAMA_32_3B["vocab_size"], len(tok)
    cfg = LlamaConfig(
        **LLAMA_32_3B,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    del model
    torch.cuda.empty_cache()
    return {"parameters": n, "tokenizer_size": len(tok), "build_s": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / ".gpu_data" / "train_subset_2500.csv"))
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_qlora_out"))
    ap.add_argument("--work", default="/tmp/gpu_qlora")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--no-grad-checkpointing", action="store_true")
    ap.add_argument("--vocab", type=int, default=32000, help="size of the trained BPE tokenizer")
    ap.add_argument("--limit", type=int, default=None, help="use the first N dialogues")
    ap.add_argument("--time-budget-s", type=float, default=420, help="stop training (cleanly) after this long")
    ap.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="check the script on a CPU: tiny Llama shape, 40 dialogues, qlora runs as LoRA",
    )
    args = ap.parse_args()

    import torch
    from transformers import TrainerCallback

    from kdsum.config.resolve import load_config, resolve
    from kdsum.training.trainer import train

    if args.cpu_smoke:
        LLAMA_32_3B.update(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=128,
        )
        args.limit, args.vocab = args.limit or 40, min(args.vocab, 2000)
    else:
        assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    config = load_config(REPO / "config.yaml")
    records, tokens = prepare_prompts(Path(args.data), work / "prompts", config, args.limit)
    build = build_random_llama(records, tokens, work / "base", args.vocab)
    print(f"built random Llama-3.2-3B shape: {build}", flush=True)

    spec = resolve(config, "llama-ko-3b", "default")
    spec = dataclasses.replace(
        spec,
        source=str(work / "base"),
        method="qlora",
        lora=dataclasses.replace(spec.lora, r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"),
        quantization=dataclasses.replace(
            spec.quantization,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype="bfloat16",
        ),
        train=dataclasses.replace(
            spec.train,
            learning_rate=2e-5,
            lr_scheduler_type="cosine",
            weight_decay=0.1,
            warmup_steps=0.03,
            max_grad_norm=1.0,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=args.grad_accum,
            max_steps=args.steps,
            num_train_epochs=100,
            max_length=args.max_length,
            packing=args.packing,
            gradient_checkpointing=not args.no_grad_checkpointing,
            bf16="auto",
            logging_steps=10,
            save_steps=100,
            save_total_limit=2,
            seed=42,
        ),
    )

    class TimeBudget(TrainerCallback):
        stopped_at = None

        def __init__(self, budget):
            self.budget, self.t0 = budget, None

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()

        def on_step_end(self, args, state, control, **kw):
            if time.time() - self.t0 > self.budget:
                control.should_training_stop = True
                self.stopped_at = state.global_step

    budget = TimeBudget(args.time_budget_s)
    metrics = train(
        spec,
        str(work / "base"),
        work / "prompts",
        work / "train",
        work / "checkpoints",
        progress=False,
        callbacks=[budget],
    )
    metrics_out = {
        "benchmark": "gpu_qlora_run",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "dialogues": len(records),
        "build": build,
        "stopped_by_time_budget_at_step": budget.stopped_at,
        "total_wall_s": round(time.time() - t_start, 1),
        **{k: v for k, v in metrics.items() if k != "train_config"},
        "train_config": metrics["train_config"],
    }
    (out / "gpu_qlora_run.json").write_text(json.dumps(metrics_out, indent=2, ensure_ascii=False) + "\n")
    shutil.copy(work / "train" / "log_history.csv", out / "log_history.csv")
    shutil.copy(work / "train" / "model" / "adapter_config.json", out / "adapter_config.json")
    print("\n=== gpu_qlora_run ===")
    for k in (
        "gpu",
        "method",
        "method_effective",
        "steps",
        "epochs",
        "train_tokens",
        "wall_time_s",
        "tokens_per_s",
        "peak_memory_gb",
        "memory_device",
        "trainable_params",
        "total_params",
        "first_loss",
        "final_loss",
        "best_loss",
        "max_grad_norm",
        "stopped_by_time_budget_at_step",
        "total_wall_s",
        "warnings",
    ):
        print(f"{k:32s} {metrics_out.get(k)}")


if __name__ == "__main__":
    main()
