"""Benchmark: training throughput and peak memory of the earlier recipe vs the pipeline's training path, on GPU.

Models are randomly initialised with the public shapes of Llama-3.2-3B and Qwen2.5-7B (bf16; no weights needed),
saved once to local disk so that both recipes load them as the pipeline does (``from_pretrained``, 4-bit NF4 with
double quantization and bf16 compute for QLoRA). The data are real: DialogSum train dialogues + summaries in the
pipeline's chat prompt/completion format, tokenised with a BPE tokenizer trained on that text by
``kdsum.models.loading.train_tokenizer`` (8,000 entries: 1.30 tokens per whitespace word, about what Llama-3's tokenizer
gives on English chat text). Token ids stay below 8,000, the model keeps its real 128k/152k vocabulary.

Recipes (see ``JOBS``):

* ``earlier``: ``transformers.Trainer``, batch 4 x gradient accumulation 2, each batch padded to its longest row,
  no packing, gradient checkpointing, LoRA r=16 on all linears (QLoRA: ``prepare_model_for_kbit_training``), the
  model's own loss (full logits). Attention: transformers' default SDPA.
* ``pipeline``: ``kdsum.training.trainer.build_trainer`` exactly as the training stage calls it (TRL ``SFTTrainer``,
  completion-only loss, best-fit-decreasing packing into padding-free rows with per-sequence ``position_ids``),
  with the GPU settings under test: micro-batch of packed bins, checkpointing on/off, and the attention
  implementation: ``sdpa`` (the default: transformers builds a dense block-diagonal mask from ``position_ids``)
  or ``varlen`` (``train.attention: varlen``, kdsum.gpu.attention: PyTorch's variable-length flash kernel driven by
  the collator's ``cu_seq_lens``; no mask, no cross-sequence FLOPs; what ``attention: auto`` picks on CUDA).

Measured per job, in a fresh process: useful (non-padding) tokens per second over ``--measure`` optimizer steps
after ``--warmup`` steps, cut into windows (median reported); ``torch.cuda.max_memory_allocated`` /
``max_memory_reserved`` during training; optionally a ``torch.profiler`` trace of extra steps at the end.
The driver also measures the card's bf16 peak (8192^3 matmul), checks that packed batches are masked correctly on
each attention path, and writes everything to ``--out`` (JSON) with a table on stdout.

    python benchmarks/bench_train.py prepare --out .bench          # CPU: tokenizer, data subset, lengths
    python benchmarks/bench_train.py run --data .bench --models llama-3b --out results/bench_train.json
    python benchmarks/bench_train.py run --data .bench --models tiny --jobs smoke --out /tmp/x.json   # CPU smoke

MFU = useful tokens/s x model FLOPs per token / measured peak, with model FLOPs per token =
``4 x N_matmul + 3 x A``: LoRA freezes the base, so a step does the forward (2N) and the input-gradient half of the
backward (2N) but no weight gradients; ``N_matmul`` = the layers' linear weights + the LM head (the embedding is a
lookup); ``A`` = causal attention FLOPs per token, ``2 L q E[l^2]/E[l]`` over the real sequence lengths ``l``
(forward; x3 with its backward). Checkpointing recomputes the forward (+2N) and the fused LM head of TRL scores only
completion tokens: neither is counted (MFU counts model FLOPs, not hardware FLOPs); the adapters' own FLOPs
(< 1%) are not counted either.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only: never wait on the network
sys.path.insert(0, str(ROOT / "src"))

from kdsum.models.replicas import SEEDS  # noqa: E402

DEFAULT_RAW = ROOT.parent / "shared" / "data" / "dialogsum" / "train.jsonl"
EN_FORMAT = {
    "system": "You summarize dialogues.",
    "question": "Summarize the dialogue above in one or two sentences.",
    "topic": False,
}
VOCAB_EN = 8000
SUBSET = 2000

# Public configurations: the replicas' (kdsum.models.replicas, one definition), without the token ids (the benchmark's
# tokenizer sets them) and rope scaling (it changes no cost). tie/untie as the released models.
_NOT_COST = ("bos_token_id", "eos_token_id", "rope_scaling")
ARCHS = {
    "llama-3b": {k: v for k, v in SEEDS["llama-3.2-3b"].config.items() if k not in _NOT_COST},
    "qwen-7b": {k: v for k, v in SEEDS["qwen2.5-7b"].config.items() if k not in _NOT_COST},
    # CPU smoke test only
    "tiny": dict(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=8200,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        max_position_embeddings=2048,
        hidden_act="silu",
    ),
}
PIPELINE_MODEL = {"llama-3b": "llama-ko-3b", "qwen-7b": "qwen2-5-7b", "tiny": "llama-ko-3b"}


def J(name, recipe, method, **kw):
    job = dict(
        name=name,
        recipe=recipe,
        method=method,
        attention="sdpa",
        micro_batch=4,
        grad_accum=2,
        max_length=1024,
        packing=False,
        ckpt=True,
        warmup=3,
        measure=12,
        windows=4,
        profile=0,
        kernels="none",  # train.kernels (kdsum.gpu.kernels); "none" unless a job names it, so rows stay comparable
        compile=False,  # train.compile: torch.compile of each decoder layer (kdsum.gpu.kernels)
    )
    job.update(kw)
    return job


def fast(name, method="lora", **kw):
    """A pipeline job on the fast path (packed, varlen, no checkpointing, 8 bins, no accumulation), changed by kw."""
    base = dict(attention="varlen", packing=True, micro_batch=8, grad_accum=1, ckpt=False, measure=12)
    return J(name, "pipeline", method, **{**base, **kw})


# The job lists, by model. `profile` steps are traced after the timed ones (not part of the timing).
JOBS = {
    "llama-3b": [
        J("earlier-lora", "earlier", "lora", measure=8),
        J("earlier-qlora", "earlier", "qlora", measure=8),
        # config.yaml as shipped for hub models: QLoRA, 8 packed bins of 1,024, checkpointing, accumulation 2
        J(
            "pipeline-qlora-shipped",
            "pipeline",
            "qlora",
            attention="varlen",
            packing=True,
            micro_batch=8,
            grad_accum=2,
            ckpt=True,
            measure=8,
        ),
        J(
            "pipeline-lora-varlen-ckpt",
            "pipeline",
            "lora",
            attention="varlen",
            packing=True,
            micro_batch=8,
            grad_accum=2,
            ckpt=True,
            measure=8,
        ),
        # the same without checkpointing (an 80 GB card)
        J(
            "pipeline-lora-varlen",
            "pipeline",
            "lora",
            attention="varlen",
            packing=True,
            micro_batch=8,
            grad_accum=1,
            ckpt=False,
            measure=12,
            profile=2,
        ),
        J(
            "pipeline-qlora-varlen",
            "pipeline",
            "qlora",
            attention="varlen",
            packing=True,
            micro_batch=8,
            grad_accum=1,
            ckpt=False,
            measure=12,
        ),
        # packed rows on transformers' SDPA path (dense block-diagonal mask): what the varlen kernel saves
        J(
            "pipeline-lora-sdpa",
            "pipeline",
            "lora",
            attention="sdpa",
            packing=True,
            micro_batch=8,
            grad_accum=1,
            ckpt=False,
            measure=12,
        ),
        J("earlier-lora-profiled", "earlier", "lora", profile=2),
        # what the profile of pipeline-lora-varlen points at: dropout kernels on every LoRA branch
        J(
            "pipeline-lora-varlen-nodropout",
            "pipeline",
            "lora",
            attention="varlen",
            packing=True,
            micro_batch=8,
            grad_accum=1,
            ckpt=False,
            measure=12,
            lora_dropout=0.0,
        ),
        # train.kernels: liger, and what goes beyond it
        fast("pipeline-lora-liger", kernels="liger"),
        fast("pipeline-lora-liger-nodropout", kernels="liger", lora_dropout=0.0),
        fast("pipeline-lora-liger-nodropout-compile", kernels="liger", lora_dropout=0.0, compile=True),
        fast("pipeline-lora-liger-nodropout-mb16", kernels="liger", lora_dropout=0.0, micro_batch=16),
        fast("pipeline-lora-liger-nodropout-profiled", kernels="liger", lora_dropout=0.0, measure=6, profile=2),
        J(
            "pipeline-qlora-shipped-liger",
            "pipeline",
            "qlora",
            attention="varlen",
            packing=True,
            micro_batch=8,
            grad_accum=2,
            ckpt=True,
            measure=8,
            kernels="liger",
        ),
        fast("pipeline-qlora-liger-nodropout", "qlora", kernels="liger", lora_dropout=0.0),
        # the defaults as shipped (kernels and compile auto: Liger and compiled layers on CUDA, LoRA dropout 0.05)
        fast("pipeline-lora-auto", kernels="auto", compile="auto"),
        # config.yaml's hub recipe (8 bins x accumulation 2 = 16 bins per optimizer step) as shipped, and the same
        # 16 bins as one micro-batch (train.fold_accumulation, when the memory planner says they fit)
        fast("pipeline-lora-auto-8x2", kernels="auto", compile="auto", grad_accum=2),
        fast("pipeline-lora-auto-mb16", kernels="auto", compile="auto", micro_batch=16),
        fast("pipeline-lora-auto-8x2-folded", kernels="auto", compile="auto", grad_accum=2, fold="auto"),
        # the same with PEFT's float32 copies of the LoRA branches' inputs (the pipeline's behaviour before)
        fast("pipeline-lora-auto-peftcast", kernels="auto", compile="auto", peft_cast=True),
        fast("pipeline-lora-peftcast", peft_cast=True),  # against pipeline-lora-varlen: no kernels, no compile
        J(
            "pipeline-qlora-shipped-auto",
            "pipeline",
            "qlora",
            attention="varlen",
            packing=True,
            micro_batch=8,
            grad_accum=2,
            ckpt=True,
            measure=8,
            kernels="auto",
            compile="auto",
        ),
        # config.yaml's llama-ko-3b as shipped: checkpointing and folding left to the memory planner
        J(
            "pipeline-qlora-shipped-ckpt-auto",
            "pipeline",
            "qlora",
            attention="varlen",
            packing=True,
            micro_batch=8,
            grad_accum=2,
            ckpt="auto",
            fold="auto",
            measure=8,
            kernels="auto",
            compile="auto",
        ),
    ],
    "qwen-7b": [
        J("earlier-lora", "earlier", "lora", measure=6, windows=3),
        J("earlier-qlora", "earlier", "qlora", measure=6, windows=3),
        J(
            "pipeline-qlora-shipped",
            "pipeline",
            "qlora",
            attention="varlen",
            packing=True,
            micro_batch=8,
            grad_accum=2,
            ckpt=True,
            measure=6,
            windows=3,
        ),
        J(
            "pipeline-lora-varlen-ckpt",
            "pipeline",
            "lora",
            attention="varlen",
            packing=True,
            micro_batch=8,
            grad_accum=2,
            ckpt=True,
            measure=6,
            windows=3,
        ),
        J(
            "pipeline-lora-varlen",
            "pipeline",
            "lora",
            attention="varlen",
            packing=True,
            micro_batch=4,
            grad_accum=2,
            ckpt=False,
            measure=6,
            windows=3,
        ),
        J(
            "pipeline-qlora-varlen",
            "pipeline",
            "qlora",
            attention="varlen",
            packing=True,
            micro_batch=4,
            grad_accum=2,
            ckpt=False,
            measure=6,
            windows=3,
        ),
        fast("pipeline-lora-liger-nodropout", kernels="liger", lora_dropout=0.0, micro_batch=4, grad_accum=2),
        fast("pipeline-lora-liger-nodropout-mb8", kernels="liger", lora_dropout=0.0, measure=6, windows=3),
        fast("pipeline-lora-auto", kernels="auto", compile="auto", micro_batch=4, grad_accum=2, measure=6, windows=3),
    ],
    "smoke": [
        J("earlier-lora", "earlier", "lora", warmup=1, measure=4, windows=2, max_length=256),
        J(
            "pipeline-lora-sdpa",
            "pipeline",
            "lora",
            packing=True,
            micro_batch=2,
            grad_accum=1,
            ckpt=False,
            warmup=1,
            measure=4,
            windows=2,
            max_length=256,
        ),
        J(
            "pipeline-lora-varlen",
            "pipeline",
            "lora",
            attention="varlen",
            packing=True,
            micro_batch=2,
            grad_accum=1,
            ckpt=False,
            warmup=1,
            measure=4,
            windows=2,
            max_length=256,
            profile=1,
        ),
    ],
}


# ============================================================================================ attention
# The varlen path is the pipeline's own (train.attention: varlen | auto), imported, not redefined here.
from kdsum.gpu.attention import VARLEN, register_varlen, set_attention  # noqa: E402


# ============================================================================================ prepare (CPU)
def prepare(out: Path, raw: Path, subset: int, seed: int) -> dict:
    from kdsum.data.ingest import read_split
    from kdsum.data.prompts import format_chat_record
    from kdsum.data.stats import collect_special_tokens
    from kdsum.io import write_json, write_jsonl
    from kdsum.models.build import train_tokenizer

    recs = read_split(raw, "train")
    data_tokens = collect_special_tokens(recs)
    texts = [r["dialogue"] for r in recs] + [s for r in recs for s in r["summaries"]]
    tok = train_tokenizer(texts, VOCAB_EN, data_tokens, "causal")
    words = sum(len(t.split()) for t in texts)
    n_tok = sum(len(x) for x in tok(texts, add_special_tokens=False)["input_ids"])
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out / "tok_en")
    rows = [format_chat_record(r, EN_FORMAT) for r in recs]
    totals, prompts = [], []
    for row in rows:
        p = chat_ids(tok, row["prompt"], generation_prompt=True)
        f = chat_ids(tok, row["prompt"] + row["completion"])
        prompts.append(len(p))
        totals.append(len(f))
    rng = random.Random(seed)
    pick = sorted(rng.sample(range(len(rows)), min(subset, len(rows))))
    (out / "train_en").mkdir(exist_ok=True)
    write_jsonl(out / "train_en" / "train.jsonl", [rows[i] for i in pick])
    write_json(out / "train_en" / "special_tokens.json", {"tokens": data_tokens})
    stats = length_stats(totals)
    stats.update(
        prompt_mean=statistics.fmean(prompts),
        completion_mean=statistics.fmean(t - p for t, p in zip(totals, prompts, strict=True)),
        tokens_per_word=n_tok / words,
        vocab=len(tok),
        source=str(raw),
        rows=len(rows),
        subset=len(pick),
        subset_seed=seed,
        subset_stats=length_stats([totals[i] for i in pick]),
    )
    write_json(out / "lengths_en.json", {"stats": stats, "total": totals, "prompt": prompts})
    return stats


def chat_ids(tokenizer, messages, generation_prompt: bool = False) -> list[int]:
    """Token ids of messages in the tokenizer's chat template (transformers 5 returns a BatchEncoding)."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def length_stats(lengths: list[int]) -> dict:
    s = sorted(lengths)
    return {
        "n": len(s),
        "mean": statistics.fmean(s),
        "p50": s[len(s) // 2],
        "p90": s[int(len(s) * 0.9)],
        "max": s[-1],
        "mean_sq_over_mean": sum(x * x for x in s) / sum(s),
    }


# ============================================================================================ one job (subprocess)
def _timer_callback(job, backbone_tokens):
    import torch
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.marks = [], []
            self.prof = None
            self.mem_after_first = None

        def on_train_begin(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.t0 = time.perf_counter()

        def on_step_begin(self, args, state, control, **kw):
            if job["profile"] and state.global_step == job["warmup"] + job["measure"] and self.prof is None:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.start()
                self.prof_t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            self.marks.append(len(backbone_tokens))
            if state.global_step == 1 and torch.cuda.is_available():
                self.mem_after_first = torch.cuda.memory_allocated() / 2**30
            if self.prof is not None and state.global_step == job["warmup"] + job["measure"] + job["profile"]:
                self.prof.stop()
                self.prof_wall = time.perf_counter() - self.prof_t0

    return Timer()


def _hook_backbone(model, store: list, rows: list):
    """Count useful tokens at the backbone's forward (called once per micro-batch, whatever wraps it)."""

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, "model", base)

    def hook(mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            store.append(mask.sum())
        else:
            store.append(int(ids.numel()))
        rows.append(tuple(ids.shape))

    backbone.register_forward_pre_hook(hook, with_kwargs=True)
    return backbone


def _profile_summary(averages, steps: int, wall: float) -> dict:
    """Group CUDA kernel time by kind (``averages``: the profiler's ``key_averages()``); compare with the wall time
    of the profiled steps."""
    import torch

    groups = {"gemm": 0.0, "attention": 0.0, "nf4_dequant": 0.0, "optimizer": 0.0, "elementwise/other": 0.0}
    rows = []
    total = 0.0
    for evt in averages:
        dev = getattr(evt, "device_type", None)
        if dev is None or dev != torch.autograd.DeviceType.CUDA:
            continue
        t = getattr(evt, "self_device_time_total", None)
        if t is None:
            t = getattr(evt, "self_cuda_time_total", 0.0)
        t = float(t) / 1e3  # ms
        name = evt.key
        low = name.lower()
        # attention first: flash-attention kernels' template names contain "cutlass" too
        if any(s in low for s in ("flash", "fmha", "attention", "mem_eff", "efficient")):
            g = "attention"
        elif any(s in low for s in ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "matmul")):
            g = "gemm"
        elif any(s in low for s in ("dequant", "kdequantize", "nf4", "bnb")):
            g = "nf4_dequant"
        elif any(s in low for s in ("adam", "foreach", "multi_tensor")):
            g = "optimizer"
        else:
            g = "elementwise/other"
        groups[g] += t
        total += t
        rows.append((t, name[:110], evt.count))
    rows.sort(reverse=True)
    return {
        "profiled_steps": steps,
        "wall_ms": wall * 1e3,
        "kernel_ms": total,
        "gpu_busy_share": total / (wall * 1e3) if wall else None,
        "groups_ms": groups,
        "top_kernels": [{"ms": r[0], "name": r[1], "count": r[2]} for r in rows[:20]],
    }


def _earlier_dataset(tokenizer, rows, max_length):
    data = []
    for row in rows:
        p = chat_ids(tokenizer, row["prompt"], generation_prompt=True)
        f = chat_ids(tokenizer, row["prompt"] + row["completion"])[:max_length]
        labels = [-100] * min(len(p), len(f)) + f[len(p) :]
        data.append({"input_ids": f, "attention_mask": [1] * len(f), "labels": labels})
    return data


def run_job(job: dict, result_path: str | None = None) -> dict:
    import torch

    from kdsum.io import read_jsonl

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    result = {"job": job, "device": torch.cuda.get_device_name() if cuda else "cpu"}
    tokens, shapes = [], []
    model_dir, data_dir = job["model_dir"], Path(job["data_dir"])
    total_steps = job["warmup"] + job["measure"] + job["profile"]
    timer = _timer_callback(job, tokens)
    t_start = time.perf_counter()
    if job["recipe"] == "earlier":
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import (
            AutoModelForCausalLM,
            AutoTokenizer,
            BitsAndBytesConfig,
            DataCollatorForSeq2Seq,
            Trainer,
            TrainingArguments,
        )

        tok = AutoTokenizer.from_pretrained(model_dir)
        tok.padding_side = "right"
        kw = {"dtype": torch.bfloat16 if cuda else torch.float32}
        if job["method"] == "qlora":
            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
            kw["device_map"] = {"": 0}
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
        if job["method"] == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=job["ckpt"])
        elif job["ckpt"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.config.use_cache = False
        model = get_peft_model(
            model,
            LoraConfig(
                r=16, lora_alpha=32, lora_dropout=0.05, bias="none", target_modules="all-linear", task_type="CAUSAL_LM"
            ),
        )
        rows = read_jsonl(data_dir / "train_en" / "train.jsonl")
        dataset = _earlier_dataset(tok, rows, job["max_length"])
        args = TrainingArguments(
            output_dir=job["work_dir"],
            per_device_train_batch_size=job["micro_batch"],
            gradient_accumulation_steps=job["grad_accum"],
            max_steps=total_steps,
            learning_rate=2e-4,
            lr_scheduler_type="constant",
            warmup_steps=0,
            bf16=cuda,
            use_cpu=not cuda,
            gradient_checkpointing=job["ckpt"] and job["method"] != "qlora",
            gradient_checkpointing_kwargs={"use_reentrant": False} if job["ckpt"] else None,
            logging_steps=10**6,
            save_strategy="no",
            report_to="none",
            remove_unused_columns=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100),
            callbacks=[timer],
        )
    else:
        import dataclasses

        import kdsum.training.trainer as training
        from kdsum.config.resolve import load_config, resolve

        spec = resolve(load_config(ROOT / "config.yaml"), PIPELINE_MODEL[job["arch"]], "default")
        lora = spec.lora
        if "lora_dropout" in job:
            lora = dataclasses.replace(lora, lora_dropout=job["lora_dropout"])
        train = dataclasses.replace(
            spec.train,
            per_device_train_batch_size=job["micro_batch"],
            gradient_accumulation_steps=job["grad_accum"],
            max_length=job["max_length"],
            packing=job["packing"],
            gradient_checkpointing=job["ckpt"],
            max_steps=total_steps,
            num_train_epochs=1,
            save_steps=10**6,
            logging_steps=10**6,
            warmup_steps=0,
            learning_rate=2e-4,
            lr_scheduler_type="constant",
            attention=job["attention"],
            kernels=job.get("kernels", "none"),
            compile=job.get("compile", False),
            fold_accumulation=job.get("fold", False),  # each job as named unless it says "auto"
        )
        spec = dataclasses.replace(spec, train=train, lora=lora)
        import kdsum.gpu.kernels

        kdsum.gpu.kernels.ADAPTER_INPUT_CAST = job.get("peft_cast", False)
        trainer, _info = training.build_trainer(
            spec,
            model_dir,
            data_dir / "train_en",
            job["work_dir"],
            progress=False,
            method=job["method"],
            callbacks=[timer],
        )
        result["kernels_effective"] = _info.get("kernels_effective")
        result["accumulation_folded"] = _info.get("accumulation_folded")
        result["micro_batch_effective"] = _info.get("micro_batch_effective")
        result["gradient_checkpointing_effective"] = _info.get("gradient_checkpointing_effective")
    model = trainer.model
    if job["recipe"] == "pipeline":
        result["compiled_layers"] = _info["compiled_layers"]
        result["adapter_inputs_16bit"] = _info["adapter_inputs_16bit"]
    result["attn_implementation"] = getattr(getattr(model, "config", None), "_attn_implementation", None)
    _hook_backbone(model, tokens, shapes)
    if cuda:
        torch.cuda.synchronize()
        result["mem_before_train_gb"] = torch.cuda.memory_allocated() / 2**30
        result["peak_load_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
    result["setup_s"] = time.perf_counter() - t_start
    try:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result["trainable_params"] = trainable
    except Exception:  # pragma: no cover
        pass
    trainer.train()
    if cuda:
        result["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
        result["mem_after_first_step_gb"] = timer.mem_after_first
        free, total = torch.cuda.mem_get_info()
        result["non_torch_gb"] = (total - free) / 2**30 - torch.cuda.memory_reserved() / 2**30
    counts = [int(t) if not hasattr(t, "item") else int(t.item()) for t in tokens]
    result["micro_batches"] = len(counts)
    result["row_shapes_max"] = max((s[-1] for s in shapes), default=None)
    result["rows_max"] = max((s[0] for s in shapes), default=None)
    # per optimizer step: time and useful tokens
    times = [timer.t0] + timer.times
    marks = [0] + timer.marks
    step_tokens = [sum(counts[marks[i] : marks[i + 1]]) for i in range(len(marks) - 1)]
    step_time = [times[i + 1] - times[i] for i in range(len(times) - 1)]
    result["step_tokens"] = step_tokens
    result["step_time_s"] = step_time
    w, m, k = job["warmup"], job["measure"], job["windows"]
    per = max(1, m // k)
    windows = []
    for j in range(k):
        a, b = w + j * per, w + (j + 1) * per
        if b > len(step_time):
            break
        windows.append(sum(step_tokens[a:b]) / sum(step_time[a:b]))
    result["window_tokens_per_s"] = windows
    result["tokens_per_s"] = statistics.median(windows) if windows else None
    result["tokens_per_step_mean"] = statistics.fmean(step_tokens[w : w + m]) if len(step_tokens) > w else None
    result["wall_s"] = time.perf_counter() - t_start
    if result_path:  # the timings and peaks survive even if summarising the profile takes too long
        Path(result_path).write_text(json.dumps(result, default=str))
    if timer.prof is not None:
        averages = timer.prof.key_averages()
        try:
            result["profile"] = _profile_summary(averages, job["profile"], timer.prof_wall)
        except Exception as exc:  # pragma: no cover - diagnostic only
            result["profile_error"] = repr(exc)
        for key in ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",):
            try:
                result["profile_table"] = averages.table(sort_by=key, row_limit=30)
                break
            except Exception as exc:  # pragma: no cover
                result["profile_table_error"] = repr(exc)
    result["wall_s"] = time.perf_counter() - t_start
    return result


# ============================================================================================ driver
def bf16_peak_tflops(n: int = 8192, reps: int = 20) -> dict:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    med = statistics.median(times)
    return {
        "n": n,
        "reps": reps,
        "median_s": med,
        "tflops_median": 2 * n**3 / med / 1e12,
        "tflops_best": 2 * n**3 / min(times) / 1e12,
    }


def packed_mask_check(device: str) -> dict:
    """Do packed rows (one row, per-sequence position_ids, no attention mask) give the same logits as each
    sequence alone? For transformers' SDPA path (block-diagonal mask from position_ids), the varlen path, and as a
    negative control the same row with positions 0..T-1 (one long sequence: contamination expected)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    register_varlen()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=512,
        vocab_size=1000,
        max_position_embeddings=4096,
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=dtype).eval()
    lens = [37, 120, 64, 9]
    seqs = [torch.randint(0, 1000, (n,), device=device) for n in lens]
    ids = torch.cat(seqs)[None]
    pos = torch.cat([torch.arange(n, device=device) for n in lens])[None]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=device)
    out = {}
    with torch.no_grad():
        for impl in ("sdpa", VARLEN, "eager"):
            set_attention(model, impl)
            ref = torch.cat([model(input_ids=s[None]).logits[0] for s in seqs]).float()
            kw = dict(input_ids=ids, position_ids=pos, use_cache=False)
            if impl == VARLEN:
                kw.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lens), max_length_k=max(lens))
            packed = model(**kw).logits[0].float()
            ctrl = (
                model(input_ids=ids, position_ids=torch.arange(ids.shape[1], device=device)[None], use_cache=False)
                .logits[0]
                .float()
            )
            scale = ref.abs().max().item()
            out[impl] = {
                "max_abs_diff_vs_separate": (packed - ref).abs().max().item(),
                "negative_control_diff": (ctrl - ref).abs().max().item(),
                "logit_scale": scale,
                "ok": (packed - ref).abs().max().item() < 0.02 * scale + 1e-3,
            }
    return out


def transformers_mask_source() -> dict:
    """The lines of the installed transformers that make the SDPA path block-diagonal for packed rows."""
    import inspect

    import transformers
    from transformers import masking_utils

    src = inspect.getsource(masking_utils)
    keep = [
        ln.rstrip()
        for ln in src.splitlines()
        if any(
            k in ln
            for k in (
                "def find_packed_sequence_indices",
                "packed_sequence_mask = find_packed",
                "if position_ids is not None and attention_mask is None",
                "packed_sequence_compatibility_function(",
                "position_diff != 1",
            )
        )
    ]
    return {
        "transformers": transformers.__version__,
        "file": masking_utils.__file__,
        "lines": keep,
        "detects_packed_rows": any("find_packed_sequence_indices(position_ids)" in ln for ln in keep),
    }


def make_model_dir(arch: str, data: Path, root: Path) -> Path:
    """Random-init the architecture (bf16, on the GPU when there is one), save it with the benchmark tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = root / arch
    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(data / "tok_en")
    cfg_kw = dict(ARCHS[arch])
    cfg = AutoConfig.for_model(cfg_kw.pop("model_type"), **cfg_kw)
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if dev == "cuda" else torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    if dev == "cuda":
        torch.cuda.empty_cache()
    return out


def model_flops_per_token(arch: str, lengths: dict) -> dict:
    from kdsum.gpu.memory import matmul_parameter_count, model_dims

    d = model_dims(dict(ARCHS[arch]), arch)
    n = matmul_parameter_count(d)
    attn = 2 * d.layers * d.q_dim * lengths["mean_sq_over_mean"]
    return {
        "n_matmul": n,
        "attn_fwd_per_token": attn,
        "model_flops_per_token": 4 * n + 3 * attn,
        "with_recompute_per_token": 6 * n + 4 * attn,
    }


def run_driver(args) -> dict:
    import torch

    data = Path(args.data)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget_s
    cuda = torch.cuda.is_available()
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "host": platform.node(),
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "jobs": [],
    }
    lengths = json.loads((data / "lengths_en.json").read_text())["stats"]
    report["lengths"] = lengths
    report["versions"] = versions()

    def save():
        out_path.write_text(json.dumps(report, indent=1, default=str))

    if cuda:
        report["mask_source"] = transformers_mask_source()
        report["bf16_peak"] = bf16_peak_tflops()
        print(f"bf16 peak: {report['bf16_peak']['tflops_median']:.0f} TFLOP/s", flush=True)
    try:
        report["packed_mask_check"] = packed_mask_check("cuda" if cuda else "cpu")
    except Exception as exc:
        report["packed_mask_check"] = {"error": repr(exc)}
    print("packed mask check:", json.dumps(report["packed_mask_check"]), flush=True)
    save()
    work = Path(args.work)
    # the run order: --only's order when given (most important first, so a time budget cuts the rest)
    archs = args.models.split(",")
    sequence = [(arch, job) for arch in archs for job in (JOBS[args.jobs] if args.jobs else JOBS[arch])]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        sequence = [(a, j) for w in wanted for a, j in sequence if w in (j["name"], f"{a}/{j['name']}")]
    model_dirs: dict[str, Path] = {}
    for arch, job in sequence:
        if arch not in model_dirs:
            t0 = time.time()
            model_dirs[arch] = make_model_dir(arch, data, work / "models")
            report.setdefault("flops", {})[arch] = model_flops_per_token(arch, lengths)
            print(f"{arch}: model dir ready in {time.time() - t0:.0f}s", flush=True)
        flops = report["flops"][arch]
        job = dict(
            job,
            arch=arch,
            model_dir=str(model_dirs[arch]),
            data_dir=str(data),
            work_dir=str(work / "runs" / f"{arch}-{job['name']}"),
        )
        left = deadline - time.time()
        if left < args.min_job_s:
            report["jobs"].append({"job": job, "skipped": f"time budget: {left:.0f}s left"})
            print(f"skip {arch}/{job['name']}: {left:.0f}s left", flush=True)
            continue
        res = run_subprocess(job, timeout=max(min(args.job_timeout_s, left), args.min_job_s))
        res["arch"] = arch
        if res.get("tokens_per_s"):
            res["model_flops_per_token"] = flops["model_flops_per_token"]
            res["achieved_tflops"] = res["tokens_per_s"] * flops["model_flops_per_token"] / 1e12
            if cuda:
                res["mfu"] = res["achieved_tflops"] / report["bf16_peak"]["tflops_median"]
        report["jobs"].append(res)
        save()
        print(summary_line(res), flush=True)
        shutil.rmtree(job["work_dir"], ignore_errors=True)
    report["ratios"] = ratios(report["jobs"])
    save()
    print_table(report)
    return report


def run_subprocess(job: dict, timeout: float) -> dict:
    Path(job["work_dir"]).mkdir(parents=True, exist_ok=True)
    res_file = Path(job["work_dir"]) / "result.json"
    cmd = [sys.executable, __file__, "one", "--job", json.dumps(job), "--result", str(res_file)]
    t0 = time.time()
    env = dict(os.environ, **job.get("env", {}))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        tail = (proc.stdout + proc.stderr)[-3000:]
        rc = proc.returncode
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        tail = (tail + "\nTIMEOUT")[-3000:]
        rc = "timeout"
    if res_file.exists():
        res = json.loads(res_file.read_text())
    else:
        res = {"job": job, "error": f"rc={rc}", "log_tail": tail}
        oom = "out of memory" in tail.lower() or "OutOfMemoryError" in tail
        res["oom"] = oom
    res["subprocess_s"] = time.time() - t0
    return res


def versions() -> dict:
    from kdsum.training.checkpoints import LIBRARIES, library_versions

    return {"python": platform.python_version(), **library_versions((*LIBRARIES, "pyarrow", "triton"))}


def summary_line(r: dict) -> str:
    j = r["job"]
    if "tokens_per_s" not in r or r.get("tokens_per_s") is None:
        return f"{r.get('arch', '?')}/{j['name']}: FAILED {r.get('error')} {str(r.get('log_tail', ''))[-400:]}"
    return (
        f"{r['arch']}/{j['name']}: {r['tokens_per_s']:.0f} tok/s (windows "
        f"{', '.join(f'{w:.0f}' for w in r['window_tokens_per_s'])}), peak alloc "
        f"{r.get('peak_allocated_gb', 0):.1f} / reserved {r.get('peak_reserved_gb', 0):.1f} GiB, "
        f"MFU {100 * r.get('mfu', 0):.1f}%, attn={r.get('attn_implementation')}"
    )


def ratios(jobs: list[dict]) -> dict:
    by = {(r.get("arch"), r["job"]["name"]): r.get("tokens_per_s") for r in jobs if r.get("tokens_per_s")}
    out = {}
    for (arch, name), v in by.items():
        if name.startswith("pipeline"):
            method = "qlora" if "qlora" in name else "lora"
            base = by.get((arch, f"earlier-{method}"))
            if base:
                out[f"{arch}/{name} vs earlier-{method}"] = v / base
    return out


def print_table(report: dict) -> None:
    print(f"\n{report['device']}  {report['date']}")
    print(f"{'model/job':38s} {'tok/s':>8s} {'MFU%':>6s} {'alloc':>6s} {'resv':>6s} attention")
    for r in report["jobs"]:
        j = r["job"]
        key = f"{r.get('arch', '?')}/{j['name']}"
        if r.get("tokens_per_s"):
            print(
                f"{key:38s} {r['tokens_per_s']:8.0f} {100 * r.get('mfu', 0):6.1f} "
                f"{r.get('peak_allocated_gb', 0):6.1f} {r.get('peak_reserved_gb', 0):6.1f} "
                f"{r.get('attn_implementation')}"
            )
        else:
            print(f"{key:38s} {'-':>8s} {r.get('skipped') or r.get('error')}")
    for k, v in report.get("ratios", {}).items():
        print(f"  {k}: {v:.2f}x")


def estimate_for_job(res: dict) -> dict:
    """kdsum.gpu.memory's estimate for a finished job, with the sizes the job actually saw (its longest padded row,
    or its longest packed row)."""
    from kdsum.gpu.memory import estimate_peak_memory

    job = res["job"]
    mb = res.get("micro_batch_effective") or job["micro_batch"]  # train.fold_accumulation may have raised it
    if job["packing"]:
        seq = max(1, math.ceil(res["row_shapes_max"] / mb))
    else:
        seq = res["row_shapes_max"]
    return estimate_peak_memory(
        dict(ARCHS[job["arch"]]),
        job["method"],
        mb,
        seq,
        bool(res.get("gradient_checkpointing_effective", job["ckpt"])),  # "auto": what the planner chose
        job["packing"],
        16,
        "bfloat16",
        lora_dropout=job.get("lora_dropout", 0.05),
        attention=job["attention"],
        kernels=res.get("kernels_effective") or "none",
        loss="full" if job["recipe"] == "earlier" else "fused",
        name=f"{job['arch']}/{job['name']}",
    )


def memory_table(paths: list[str]) -> list[dict]:
    """Estimate vs measured for every finished job of the given result files. Measured = the process's footprint
    on the card: peak reserved by PyTorch's allocator + memory outside it (CUDA context, library handles)."""
    rows = []
    for path in paths:
        report = json.loads(Path(path).read_text())
        for res in report["jobs"]:
            if not res.get("peak_reserved_gb") or res["job"].get("env"):
                continue
            est = estimate_for_job(res)
            measured = res["peak_reserved_gb"] + res.get("non_torch_gb", 0.0)
            rows.append(
                {
                    "config": res["job"]["arch"] + "/" + res["job"]["name"],
                    "file": path,
                    "micro_batch": est["inputs"]["micro_batch"],
                    "seq_len": est["inputs"]["seq_len"],
                    "ckpt": res["job"]["ckpt"],
                    "estimate_gb": est["total_gb"],
                    "measured_gb": round(measured, 2),
                    "error_pct": round(100 * (est["total_gb"] - measured) / measured, 1),
                    "estimate_allocated_gb": est["allocated_gb"],
                    "measured_allocated_gb": round(res["peak_allocated_gb"], 2),
                    "allocated_error_pct": round(
                        100 * (est["allocated_gb"] - res["peak_allocated_gb"]) / res["peak_allocated_gb"], 1
                    ),
                    "parts": est["parts"],
                }
            )
    print(
        f"{'config':40s} {'mb x len':>10s} {'est':>6s} {'meas':>6s} {'err%':>6s} | {'est_al':>6s} {'alloc':>6s} {'err%':>6s}"
    )
    for r in rows:
        print(
            f"{r['config']:40s} {r['micro_batch']:>3d} x {r['seq_len']:<5d} {r['estimate_gb']:6.1f} "
            f"{r['measured_gb']:6.1f} {r['error_pct']:6.1f} | {r['estimate_allocated_gb']:6.1f} "
            f"{r['measured_allocated_gb']:6.1f} {r['allocated_error_pct']:6.1f}"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="CPU: tokenizer, data subset and token lengths (writes --out)")
    p.add_argument("--out", default=".bench")
    p.add_argument("--raw", default=str(DEFAULT_RAW))
    p.add_argument("--subset", type=int, default=SUBSET)
    p.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="GPU: all jobs of the given models")
    r.add_argument("--data", default=".bench")
    r.add_argument("--models", default="llama-3b")
    r.add_argument("--jobs", default=None, help="job list name (default: the model's own)")
    r.add_argument("--only", default=None, help="comma-separated job names (NAME or MODEL/NAME) to run")
    r.add_argument("--out", required=True)
    r.add_argument("--work", default="/tmp/kdsum_bench")
    r.add_argument("--budget-s", type=float, default=480)
    r.add_argument("--min-job-s", type=float, default=45)
    r.add_argument("--job-timeout-s", type=float, default=150)
    o = sub.add_parser("one", help="internal: one job in this process")
    o.add_argument("--job", required=True)
    o.add_argument("--result", required=True)
    m = sub.add_parser("memory-table", help="CPU: kdsum.gpu.memory's estimate vs the measured peaks of result files")
    m.add_argument("results", nargs="+")
    m.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.cmd == "memory-table":
        rows = memory_table(args.results)
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=1))
    elif args.cmd == "prepare":
        stats = prepare(Path(args.out), Path(args.raw), args.subset, args.seed)
        print(json.dumps(stats, indent=1))
    elif args.cmd == "run":
        run_driver(args)
    else:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        res = run_job(json.loads(args.job), args.result)
        Path(args.result).write_text(json.dumps(res, default=str))
        print(summary_line(dict(res, arch=res["job"].get("arch"))))


if __name__ == "__main__":
    main()
