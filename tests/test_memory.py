"""The GPU-memory planner (kdsum.gpu.memory): its arithmetic on known configurations; the pre-flight check and its
refusal message (kdsum.gpu.preflight)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from kdsum.config.resolve import load_config, resolve
from kdsum.gpu.memory import (
    GIB,
    estimate_peak_memory,
    lora_parameter_count,
    matmul_parameter_count,
    model_dims,
    parameter_counts,
)
from kdsum.gpu.preflight import (
    MemoryPlanError,
    RankBatch,
    check_fits,
    check_spec_fits,
    estimate_for_spec,
    fold_accumulation,
)

CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"

# Public configurations (config.json of meta-llama/Llama-3.2-3B and Qwen/Qwen2.5-7B), the fields the planner reads.
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
QWEN_7B = dict(
    model_type="qwen2",
    hidden_size=3584,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    intermediate_size=18944,
    vocab_size=152064,
    tie_word_embeddings=False,
)


def test_parameter_counts_match_the_published_sizes():
    llama = parameter_counts(model_dims(LLAMA_3B))
    qwen = parameter_counts(model_dims(QWEN_7B))
    # Llama-3.2-3B: 3.21B parameters; Qwen2.5-7B: 7.62B (model cards)
    assert llama["total"] == 3_212_749_824
    assert qwen["total"] == pytest.approx(7.6156e9, rel=1e-4)
    assert llama["lm_head"] == 0 and qwen["lm_head"] == qwen["embed"] == 152064 * 3584


def test_lora_parameter_count_all_linear():
    d = model_dims(LLAMA_3B)
    # per layer: q 3072->3072, k,v 3072->1024, o 3072->3072, gate,up 3072->8192, down 8192->3072
    per_layer = 16 * ((3072 + 3072) + 2 * (3072 + 1024) + (3072 + 3072) + 2 * (3072 + 8192) + (8192 + 3072))
    assert lora_parameter_count(d, 16) == 28 * per_layer == 24_313_856


def test_matmul_parameters_count_the_head_once_even_when_tied():
    d = model_dims(LLAMA_3B)
    c = parameter_counts(d)
    assert matmul_parameter_count(d) == c["linear"] + 128256 * 3072


def test_weights_lora_bf16_is_two_bytes_per_parameter():
    est = estimate_peak_memory(LLAMA_3B, "lora", 1, 128, False, False, 16, "bfloat16")
    assert est["parts"]["weights"] == pytest.approx(3_212_749_824 * 2 / GIB, abs=1e-3)


def test_weights_qlora_nf4_double_quant_and_fp32_rest():
    est = estimate_peak_memory(LLAMA_3B, "qlora", 1, 128, False, False, 16, "bfloat16")
    c = parameter_counts(model_dims(LLAMA_3B))
    nf4 = c["linear"] * (0.5 + 1 / 64 + 4 / (64 * 256))
    rest = (c["embed"] + c["other"]) * 4  # prepare_model_for_kbit_training upcasts the non-4-bit parameters
    assert est["parts"]["weights"] == pytest.approx((nf4 + rest) / GIB, abs=1e-3)
    no_upcast = estimate_peak_memory(LLAMA_3B, "qlora", 1, 128, False, False, 16, "bfloat16", kbit_upcast=False)
    assert no_upcast["parts"]["weights"] < est["parts"]["weights"]


def test_adapter_and_optimizer_bytes():
    d = model_dims(LLAMA_3B)
    n = lora_parameter_count(d, 16)
    lora = estimate_peak_memory(LLAMA_3B, "lora", 1, 128, False, False, 16)
    qlora = estimate_peak_memory(LLAMA_3B, "qlora", 1, 128, False, False, 16)
    assert lora["parts"]["lora+optimizer"] == pytest.approx(n * 16 / GIB, abs=1e-3)  # fp32 p, g, m, v
    assert qlora["parts"]["lora+optimizer"] == pytest.approx(n * 8 / GIB, abs=1e-3)  # bf16 (TRL casts)


def test_activations_scale_with_tokens_and_layers():
    small = estimate_peak_memory(LLAMA_3B, "lora", 2, 1024, False, True, attention="varlen")
    large = estimate_peak_memory(LLAMA_3B, "lora", 4, 1024, False, True, attention="varlen")
    assert large["parts"]["activations"] == pytest.approx(2 * small["parts"]["activations"], rel=1e-3)
    ckpt = estimate_peak_memory(LLAMA_3B, "lora", 4, 1024, True, True, attention="varlen")
    assert ckpt["parts"]["activations"] < large["parts"]["activations"] / 4


def test_per_layer_formula_on_a_known_configuration():
    # lora, dropout > 0, no mask: per token and layer 8h + 2(2q + 2kv) + 3(5h + q + i) + 6i + 28r bytes
    h, q, kv, i, r = 3072, 3072, 1024, 8192, 16
    per_layer = 8 * h + 2 * (2 * q + 2 * kv) + 3 * (5 * h + q + i) + 6 * i + 28 * r
    T = 8 * 1024
    expected = 28 * per_layer * T + (8 * h + 6 * i) * T + 10 * h * T
    est = estimate_peak_memory(LLAMA_3B, "lora", 8, 1024, False, True, attention="varlen", lora_dropout=0.05)
    assert est["parts"]["activations"] == pytest.approx(expected / GIB, abs=1e-3)


def test_sdpa_packing_pays_for_the_dense_mask():
    varlen = estimate_peak_memory(LLAMA_3B, "lora", 8, 1024, False, True, attention="varlen")
    sdpa = estimate_peak_memory(LLAMA_3B, "lora", 8, 1024, False, True, attention="sdpa")
    T = 8 * 1024
    mask = T * T * (1 + 2 * 28)
    kv_repeat = 28 * T * 2 * 2 * (3072 - 1024)  # k and v repeated to the query width when a mask is passed
    diff = sdpa["parts"]["activations"] - varlen["parts"]["activations"]
    assert diff == pytest.approx((mask + kv_repeat) / GIB, abs=2e-3)  # parts are rounded to 1 MiB


def test_full_logits_cost_twelve_bytes_per_token_and_entry():
    est = estimate_peak_memory(LLAMA_3B, "lora", 4, 500, True, False, loss="full")
    assert est["parts"]["logits"] == pytest.approx(12 * 2000 * 128256 / GIB, abs=1e-3)
    fused = estimate_peak_memory(LLAMA_3B, "lora", 4, 500, True, False, loss="fused")
    assert fused["parts"]["logits"] < est["parts"]["logits"] / 10


def test_total_is_the_sum_of_the_parts():
    est = estimate_peak_memory(QWEN_7B, "qlora", 4, 1024, False, True)
    assert est["total_gb"] == pytest.approx(sum(est["parts"].values()), abs=0.01)
    assert est["allocated_gb"] == pytest.approx(est["total_gb"] - est["parts"]["overhead"], abs=0.01)


def test_accepts_a_transformers_config():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(**{k: v for k, v in LLAMA_3B.items() if k != "model_type"})
    a = estimate_peak_memory(cfg, "lora", 2, 512, True, False)
    b = estimate_peak_memory(LLAMA_3B, "lora", 2, 512, True, False)
    assert a["total_gb"] == b["total_gb"]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="method"):
        estimate_peak_memory(LLAMA_3B, "dora", 1, 128, False, False)
    with pytest.raises(ValueError, match="micro_batch"):
        estimate_peak_memory(LLAMA_3B, "lora", 0, 128, False, False)
    with pytest.raises(ValueError, match="decoder-only"):
        model_dims({"d_ff": 3})


def test_check_fits_passes_and_refuses():
    est = estimate_peak_memory(QWEN_7B, "lora", 16, 1024, False, True, name="qwen2-5-7b")
    ok = check_fits(estimate_peak_memory(QWEN_7B, "qlora", 1, 1024, True, True), available_gb=79.0)
    assert ok["fits"] and ok["checked"]
    with pytest.raises(MemoryPlanError) as err:
        check_fits(est, available_gb=79.0, device_name="NVIDIA H100 80GB HBM3")
    msg = str(err.value)
    for part in (
        "qwen2-5-7b",
        "lora",
        "micro-batch 16",
        "1024 tokens",
        "gradient checkpointing off",
        f"{est['total_gb']:.1f} GiB",
        "NVIDIA H100 80GB HBM3 has 79.0 GiB free",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "gradient_checkpointing",
    ):
        assert part in msg, part


def test_suggestions_fit():
    est = estimate_peak_memory(LLAMA_3B, "lora", 32, 1024, False, True, name="llama-ko-3b")
    with pytest.raises(MemoryPlanError, match=r"lower train\.per_device_train_batch_size to (\d+)") as err:
        check_fits(est, available_gb=40.0)
    mb = int(__import__("re").search(r"per_device_train_batch_size to (\d+)", str(err.value)).group(1))
    assert estimate_peak_memory(LLAMA_3B, "lora", mb, 1024, False, True)["total_gb"] <= 40.0 * 0.95


def test_check_fits_without_cuda_checks_nothing(monkeypatch):
    import kdsum.gpu.preflight as preflight

    monkeypatch.setattr(preflight, "free_gpu_memory_gb", lambda device=None: None)
    res = check_fits(estimate_peak_memory(LLAMA_3B, "lora", 1, 128, False, False))
    assert res["checked"] is False


def _spec(**train):
    """llama-ko-3b (qlora, LoRA r=16, dropout 0.05, double quantization) with these train settings."""
    t = dict(per_device_train_batch_size=4, max_length=1024, gradient_checkpointing=True, packing=False)
    t.update(train)
    job = resolve(load_config(CONFIG), "llama-ko-3b", "default")
    assert job.method == "qlora" and job.lora.r == 16 and job.lora.lora_dropout == 0.05
    assert job.quantization.bnb_4bit_use_double_quant
    return dataclasses.replace(job, train=dataclasses.replace(job.train, **t))


def test_estimate_for_spec_reads_the_train_block():
    est = estimate_for_spec(_spec(packing=True, gradient_checkpointing=False), LLAMA_3B)
    assert est["inputs"]["packing"] and not est["inputs"]["gradient_checkpointing"]
    assert est["inputs"]["micro_batch"] == 4 and est["inputs"]["seq_len"] == 1024
    assert est["model"] == "llama-ko-3b" and est["inputs"]["method"] == "qlora"


def test_check_spec_fits_reads_a_local_config_and_refuses(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.LlamaConfig(**{k: v for k, v in LLAMA_3B.items() if k != "model_type"}).save_pretrained(tmp_path)
    res = check_spec_fits(_spec(), str(tmp_path), available_gb=79.0)
    assert res["checked"] and res["fits"]
    with pytest.raises(MemoryPlanError, match="llama-ko-3b"):
        check_spec_fits(
            _spec(per_device_train_batch_size=64, gradient_checkpointing=False, packing=True),
            str(tmp_path),
            available_gb=79.0,
        )


def test_fold_accumulation_only_where_the_planner_fits_it(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    transformers.LlamaConfig(**{k: v for k, v in LLAMA_3B.items() if k != "model_type"}).save_pretrained(tmp_path)
    src = str(tmp_path)
    job = _spec(
        per_device_train_batch_size=8, gradient_accumulation_steps=2, packing=True, gradient_checkpointing=False
    )
    assert job.train.fold_accumulation == "auto"  # config.yaml's default
    written = RankBatch(micro_batch=8, accumulation=2)
    assert fold_accumulation(job, src, "lora", attention="varlen", available_gb=141.0) == RankBatch(16, 1, True)  # H200
    # a card that fits 8 bins (~40 GiB planned) but not 16: as written
    assert fold_accumulation(job, src, "lora", attention="varlen", available_gb=48.0) == written
    # one that would fit 16 bins with the refusal's 5% spare but not with the fold's 15%: as written
    need = check_spec_fits(job, src, "lora", attention="varlen", available_gb=1e4, micro_batch=16)["estimate_gb"]
    assert need > check_spec_fits(job, src, "lora", attention="varlen", available_gb=1e4)["estimate_gb"]
    assert check_spec_fits(job, src, "lora", attention="varlen", available_gb=need / 0.9, micro_batch=16)["fits"]
    assert fold_accumulation(job, src, "lora", attention="varlen", available_gb=need / 0.9) == written
    if not torch.cuda.is_available():  # nothing to plan against: as written
        assert fold_accumulation(job, src, "lora", attention="varlen") == written
    off = dataclasses.replace(job, train=dataclasses.replace(job.train, fold_accumulation=False))
    assert fold_accumulation(off, src, "lora", attention="varlen", available_gb=141.0) == written
    seq2seq = dataclasses.replace(job, family="seq2seq", method="full")  # not planned: as written
    assert fold_accumulation(seq2seq, src, "full", available_gb=141.0) == written
    # DDP: each of 2 ranks accumulates 2 of the 4 micro-batches; folded, each runs one of 16 (the same global batch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    four = dataclasses.replace(job, train=dataclasses.replace(job.train, gradient_accumulation_steps=4))
    assert fold_accumulation(four, src, "lora", attention="varlen", available_gb=141.0) == RankBatch(16, 1, True)
    assert fold_accumulation(job, src, "lora", attention="varlen", available_gb=141.0) == RankBatch(8, 1)  # 1 per rank


def test_check_spec_fits_skips_seq2seq_and_unreadable_sources(tmp_path):
    seq2seq = dataclasses.replace(_spec(), family="seq2seq", method="full")
    assert check_spec_fits(seq2seq, "x", available_gb=10.0)["checked"] is False
    assert check_spec_fits(_spec(), str(tmp_path / "missing"), available_gb=10.0)["checked"] is False


# Peaks measured on an NVIDIA H100 80GB (torch 2.11, transformers 5.23, 2026-11-21, benchmarks/bench_train.py,
# docs/BENCHMARKS.md section 3): max_memory_reserved + memory outside PyTorch's allocator, and max_memory_allocated,
# GiB. Rows: the earlier recipe (Trainer, padded rows, full logits) and the pipeline (TRL, packed bins, fused loss).
MEASURED_H100 = [
    # (model, method, micro_batch, longest row or bin, checkpointing, packing, attention, loss, total, allocated)
    ("llama-3b", "lora", 4, 485, True, False, "sdpa", "full", 16.45, 9.44),
    ("llama-3b", "qlora", 4, 485, True, False, "sdpa", "full", 14.35, 7.32),
    ("llama-3b", "lora", 8, 1023, True, True, "varlen", "fused", 12.50, 9.95),
    ("llama-3b", "lora", 8, 1023, False, True, "varlen", "fused", 48.43, 45.17),
    ("llama-3b", "lora", 8, 1016, False, True, "sdpa", "fused", 51.34, 48.56),
    ("llama-3b", "qlora", 8, 1023, True, True, "varlen", "fused", 11.29, 8.17),
    ("llama-3b", "qlora", 8, 1016, False, True, "varlen", "fused", 55.69, 51.99),
    ("qwen-7b", "lora", 4, 650, True, False, "sdpa", "full", 26.87, 19.83),
    ("qwen-7b", "qlora", 4, 650, True, False, "sdpa", "full", 20.91, 14.29),
    ("qwen-7b", "lora", 8, 1024, True, True, "varlen", "fused", 23.44, 20.41),
    ("qwen-7b", "qlora", 8, 1024, True, True, "varlen", "fused", 19.78, 15.16),
]


@pytest.mark.parametrize("model,method,mb,seq,ckpt,packing,attention,loss,measured,allocated", MEASURED_H100)
def test_estimate_within_15_percent_of_measured_h100_peaks(
    model, method, mb, seq, ckpt, packing, attention, loss, measured, allocated
):
    cfg = {"llama-3b": LLAMA_3B, "qwen-7b": QWEN_7B}[model]
    est = estimate_peak_memory(
        cfg, method, mb, seq, ckpt, packing, 16, "bfloat16", lora_dropout=0.05, attention=attention, loss=loss
    )
    assert abs(est["total_gb"] - measured) / measured < 0.15
    assert abs(est["allocated_gb"] - allocated) / allocated < 0.15


def test_training_preflight_refuses_a_job_that_cannot_fit(tmp_path, repo_root):
    """The training stage's pre-flight check (kdsum.training.trainer.build_trainer calls kdsum.gpu.preflight.check_spec_fits before loading):
    a Llama-3.2-3B-shaped LoRA job with a 1,024-token micro-batch of 64 cannot fit a 16 GB card."""
    from transformers import LlamaConfig

    LlamaConfig(
        hidden_size=3072,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
        tie_word_embeddings=True,
    ).save_pretrained(tmp_path)
    spec = resolve(load_config(repo_root / "config.yaml"), "llama-ko-3b", "default")
    spec = dataclasses.replace(
        spec, train=dataclasses.replace(spec.train, per_device_train_batch_size=64, gradient_checkpointing=False)
    )
    with pytest.raises(MemoryPlanError) as err:
        check_spec_fits(spec, str(tmp_path), method="lora", available_gb=16.0)
    assert "llama-ko-3b" in str(err.value)
    ok = check_spec_fits(
        resolve(load_config(repo_root / "config.yaml"), "llama-ko-3b", "default"),
        str(tmp_path),
        method="qlora",
        available_gb=80.0,
    )
    assert ok["checked"] and ok["fits"]
