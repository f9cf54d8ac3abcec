"""QLoRA prediction on the fast path: the planner's decision (kdsum.gpu.preflight.plan_generation_load), the load path
in the predict stats, and the merge of an adapter into a 16-bit model (kdsum.models.loading.load_for_generation).

The CPU tests use the tiny Llama and LoRA adapter of test_generation; the ``gpu`` test loads that adapter on a 4-bit
base both ways (dequantized + merged, and unmerged) and compares their next-token logits.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_generation import causal_base, config, job_for, lora_dir, work  # noqa: F401  (session fixtures)

from kdsum.generation.predict import predict_rows
from kdsum.gpu.preflight import FOLD_MARGIN, plan_generation_load
from kdsum.models.loading import _attach_adapter, load_for_generation, load_tokenizer

torch.set_num_threads(1)

# meta-llama/Llama-3.2-3B's public shape (as benchmarks/gpu_qlora_run.py builds it)
LLAMA_3B = dict(
    model_type="llama",
    hidden_size=3072,
    num_hidden_layers=28,
    num_attention_heads=24,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=8192,
    vocab_size=128256,
    tie_word_embeddings=True,
)


def _prompt_batch(tok, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [
        "#Person1#: 안녕하세요. #Person2#: 네, 반갑습니다.",
        "오늘 회의는 세 시에 시작합니다.",
        "요약:",
        "#Person1#",
    ]
    enc = tok(texts[:n], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


# --------------------------------------------------------------------------------------------- the plan
def test_merge_plan_follows_the_estimate_and_the_free_memory(config):  # noqa: F811
    """Just above the estimate plus the spare share the copy is planned; just below it is not, and the reason says
    so. The weights part is 2 bytes x the parameters of the real model built from the same config (counted by
    torch), and the plan grows with the batch (the KV cache)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    job = dataclasses.replace(job_for(config, "tiny-llama", "default"), method="qlora")
    probe = plan_generation_load(job, "unused", available_gb=1e6, model_config=LLAMA_3B)
    need = probe["estimate_gb"] / (1 - FOLD_MARGIN)
    assert plan_generation_load(job, "unused", available_gb=need * 1.001, model_config=LLAMA_3B)["merge"]
    refused = plan_generation_load(job, "unused", available_gb=need * 0.999, model_config=LLAMA_3B)
    assert not refused["merge"] and "does not fit" in refused["reason"] and "4-bit" in refused["reason"]
    small = dict(LLAMA_3B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    small.update(head_dim=16, intermediate_size=128, vocab_size=1000)
    with torch.device("meta"):
        n = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**small)).parameters())
    from kdsum.gpu.memory import GIB, estimate_generation_memory

    est = estimate_generation_memory(small, rows=1, tokens=1)
    assert est["parts"]["weights"] == round(2 * n / GIB, 3)
    bigger = dataclasses.replace(job, generation=dataclasses.replace(job.generation, batch_size=64))
    assert (
        plan_generation_load(bigger, "x", available_gb=1e6, model_config=LLAMA_3B)["estimate_gb"] > probe["estimate_gb"]
    )


def test_merge_plan_without_a_card_keeps_the_4bit_path(config):  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine plans on its card")
    job = dataclasses.replace(job_for(config, "tiny-llama", "default"), method="qlora")
    plan = plan_generation_load(job, "unused", model_config=LLAMA_3B)
    assert plan == {"merge": False, "reason": "no CUDA device to plan a 16-bit copy on"}


# --------------------------------------------------------------------------------------------- the load path
def test_predict_stats_record_the_load_path(config, work, lora_dir, causal_base):  # noqa: F811
    """A LoRA adapter is merged in the load dtype (``merged``); a base alone is ``full``; both land in the stats
    that the predict stage's log line reports."""
    from kdsum.io import read_jsonl

    rows = read_jsonl(work / "prompts" / "chat-plain" / "dev.jsonl")[:2]
    stats: dict = {}
    job = job_for(config, "tiny-llama", "default")
    predict_rows(job, rows, work / "prompts" / "chat-plain", model_dir=lora_dir, progress=False, stats=stats)
    assert stats["load_path"] == "merged" and stats["load_seconds"] > 0 and stats["rows"] == 2
    zero: dict = {}
    job0 = job_for(config, "tiny-llama", "zeroshot")
    predict_rows(job0, rows, work / "prompts" / "chat-plain", base_dir=causal_base, progress=False, stats=zero)
    assert zero["load_path"] == "full"


def test_lora_merged_into_16bit_matches_the_unmerged_adapter(config, lora_dir, causal_base):  # noqa: F811
    """The merge into a bf16 base: next-token logits of the merged model against the unmerged adapter on the same
    bf16 base, within bf16 rounding; the adapter's own effect is far above that tolerance (so a lost adapter
    fails)."""
    from transformers import AutoModelForCausalLM

    job = job_for(config, "tiny-llama", "default")
    tok = load_tokenizer(str(lora_dir), job.model, job.family)
    ids, mask = _prompt_batch(tok)

    def logits(merge: bool | None) -> torch.Tensor:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(causal_base, dtype=torch.bfloat16)
        if merge is not None:
            model = _attach_adapter(model, tok, job, str(lora_dir), str(causal_base), merge)
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits[:, -1].float()

    merged, unmerged, base = logits(True), logits(False), logits(None)
    tol = 0.02 * unmerged.abs().max().item()
    assert (merged - unmerged).abs().max().item() <= tol
    assert (unmerged - base).abs().max().item() > 5 * tol


# --------------------------------------------------------------------------------------------- on the GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="4-bit (bitsandbytes) bases need a CUDA GPU")
def test_qlora_merged_16bit_logits_match_the_unmerged_4bit_model(config, lora_dir, causal_base):  # noqa: F811
    """The merged path (4-bit base dequantized, adapter merged, a plain 16-bit model the engine accepts) against
    the 4-bit base with the unmerged adapter: next-token logits within bf16 rounding."""
    from kdsum.generation.engine.greedy import model_refusal

    job = dataclasses.replace(job_for(config, "tiny-llama", "default"), method="qlora")
    fits = load_for_generation(job, model_dir=lora_dir, merge_plan=lambda s, v: {"merge": True, "reason": "test"})
    kept = load_for_generation(job, model_dir=lora_dir, merge_plan=lambda s, v: {"merge": False, "reason": "test"})
    assert (fits.load_path, kept.load_path) == ("merged_16bit", "4bit_unmerged")
    assert model_refusal(fits.model) is None and model_refusal(kept.model) is not None
    assert next(fits.model.parameters()).dtype == torch.bfloat16
    ids, mask = _prompt_batch(fits.tokenizer)
    with torch.no_grad():
        a = fits.model(input_ids=ids.cuda(), attention_mask=mask.cuda()).logits[:, -1].float()
        b = kept.model(input_ids=ids.cuda(), attention_mask=mask.cuda()).logits[:, -1].float()
    assert (a - b).abs().max().item() <= 0.02 * b.abs().max().item()
