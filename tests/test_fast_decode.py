"""kdsum.generation.engine.greedy: the static-cache greedy engine gives exactly ``model.generate``'s greedy tokens."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from kdsum.generation.engine import greedy as fast_decode

torch.set_num_threads(1)

TINY = dict(
    vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, pad_token_id=0, eos_token_id=1,
    bos_token_id=2,
)  # fmt: skip
PAD = 0


def tiny_model(arch: str, device: str = "cpu", dtype=torch.float32):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    cfg = {
        "llama": lambda: LlamaConfig(**TINY),
        "qwen2": lambda: Qwen2Config(**TINY),  # q/k/v biases
        "qwen3": lambda: Qwen3Config(**TINY, head_dim=16),  # q_norm / k_norm
    }[arch]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    with torch.no_grad():  # random biases and norm weights, so that a missed one changes the tokens
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.normal_(1.0 if "norm" in name else 0.0, 0.3)
    return model.to(device=device, dtype=dtype).eval()


def prompts(device="cpu"):
    g = torch.Generator().manual_seed(1)
    lengths = [9, 4, 7, 1, 12]
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, width - n :] = torch.randint(3, TINY["vocab_size"], (n,), generator=g)
        mask[r, width - n :] = 1
    return ids.to(device), mask.to(device)


def both(model, ids, mask, **kw):
    kw = {"max_new_tokens": 20, "eos_token_id": [1], "pad_token_id": PAD, **kw}
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, **kw)
    fast = fast_decode.greedy_generate(model, ids, mask, **kw)
    return ref, fast


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_engine_equals_generate(arch):
    model = tiny_model(arch)
    ids, mask = prompts()
    ref, fast = both(model, ids, mask)
    assert fast.shape == ref.shape and torch.equal(fast, ref)
    # an end id the model emits: row 0's third new token; that row pads after it, and others may end too
    eos = int(ref[0, ids.shape[1] + 2])
    ref, fast = both(model, ids, mask, eos_token_id=[eos, 1])
    assert (ref[0, ids.shape[1] + 3 :] == PAD).all()
    assert torch.equal(fast, ref)
    # min_new_tokens holds the end ids back (the benchmark's setting)
    ref, fast = both(model, ids, mask, eos_token_id=[eos, 1], min_new_tokens=6)
    assert ref[0, ids.shape[1] + 2] != eos and torch.equal(fast, ref)


def test_prefill_in_groups_padded_to_their_own_longest_row(monkeypatch):
    model = tiny_model("qwen2")
    ids, mask = prompts()
    order = mask.sum(1).argsort(descending=True)  # longest first, as kdsum.generation.predict batches them
    ids, mask = ids[order], mask[order]
    ref, _ = both(model, ids, mask)
    monkeypatch.setattr(fast_decode, "PREFILL", "grouped")  # the CPU's default is packed (the other tests)
    for rows in (1, 2):  # groups of one row (no padding at all) and of two (the second group is shorter)
        monkeypatch.setattr(fast_decode, "PREFILL_ROWS", rows)
        timings: dict = {}
        fast = fast_decode.greedy_generate(
            model, ids, mask, timings=timings, max_new_tokens=20, eos_token_id=[1], pad_token_id=PAD
        )
        assert torch.equal(fast, ref)
        assert timings["prefill_s"] > 0 and timings["decode_s"] > 0


def test_prefill_is_packed_on_the_cpu_unless_told_otherwise(monkeypatch):
    model, ids = tiny_model("llama"), prompts()[0]
    assert fast_decode._packs(model, ids)  # float32 on the CPU: the varlen reference, exact (the other tests' path)
    monkeypatch.setattr(fast_decode, "PREFILL", "grouped")
    assert not fast_decode._packs(model, ids)


def test_a_model_that_keeps_its_attention_is_prefilled_in_padded_groups(monkeypatch):
    # without the varlen kernel, one packed sequence through SDPA would attend across prompts
    model = tiny_model("llama")
    monkeypatch.setattr(model, "set_attn_implementation", lambda name: None)
    ids, mask = prompts()
    ref, fast = both(model, ids, mask)
    assert torch.equal(fast, ref)


def test_engine_stops_early_when_every_row_ended():
    model = tiny_model("llama")
    ids, mask = prompts()
    ref, _ = both(model, ids, mask)
    ends = sorted({int(t) for t in ref[:, ids.shape[1] : ids.shape[1] + 2].flatten()})  # every row ends by step 2
    ref, fast = both(model, ids, mask, eos_token_id=ends)
    assert ref.shape[1] <= ids.shape[1] + 2 and torch.equal(fast, ref)


def _job(**generation):
    from kdsum.config.resolve import load_config, resolve

    job = resolve(load_config(Path(__file__).resolve().parents[1] / "config.yaml"), "tiny-llama", "zeroshot")
    return dataclasses.replace(job, generation=dataclasses.replace(job.generation, **generation))


KWARGS = dict(
    do_sample=False, num_beams=1, max_new_tokens=8, no_repeat_ngram_size=0, repetition_penalty=1.0,
    length_penalty=1.0, eos_token_id=[1], pad_token_id=PAD, temperature=None, top_p=None, top_k=None,
)  # fmt: skip


def test_supports_only_plain_greedy_of_a_supported_model():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BartConfig, BartForConditionalGeneration, Qwen2Config

    model, job = tiny_model("llama"), _job()
    assert fast_decode.supports(model, job, KWARGS, None)
    assert fast_decode.supports(model, job, {**KWARGS, "min_new_tokens": 4}, None)
    assert not fast_decode.supports(model, _job(engine="generate"), KWARGS, None)
    assert not fast_decode.supports(model, job, {**KWARGS, "num_beams": 4}, None)
    assert not fast_decode.supports(model, job, {**KWARGS, "do_sample": True}, None)
    assert not fast_decode.supports(model, job, {**KWARGS, "no_repeat_ngram_size": 3}, None)
    assert not fast_decode.supports(model, job, {**KWARGS, "repetition_penalty": 1.2}, None)
    assert not fast_decode.supports(model, job, {**KWARGS, "cache_implementation": "static"}, None)
    assert not fast_decode.supports(model, job, KWARGS, ["a logits processor"])
    assert not fast_decode.supports(model, dataclasses.replace(job, family="seq2seq"), KWARGS, None)
    bart = BartForConditionalGeneration(
        BartConfig(vocab_size=300, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32,
                   decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2)
    )  # fmt: skip
    assert "architecture 'bart'" in fast_decode.model_refusal(bart)
    assert not fast_decode.supports(bart, job, KWARGS, None)
    window = AutoModelForCausalLM.from_config(
        Qwen2Config(**TINY, use_sliding_window=True, sliding_window=8, max_window_layers=0)
    )
    assert fast_decode.model_refusal(window) is not None
    adapter = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    assert "adapter" in fast_decode.model_refusal(adapter)
    assert fast_decode.model_refusal(adapter.merge_and_unload()) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA-graph path needs a CUDA GPU")
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_cuda_graph_path_equals_generate(arch):
    # float32 only: in bf16 the hand-written step and generate's (SDPA over repeat_kv) round differently, and the
    # tokens of these random models differ (measured on an H200, transformers 5.17: 14-65 of 100 tokens)
    model = tiny_model(arch, "cuda", torch.float32)
    ids, mask = prompts("cuda")
    for kw in ({}, {"min_new_tokens": 6}):
        ref, fast = both(model, ids, mask, **kw)
        assert fast_decode._cached["engine"].graph is not None  # captured, replayed
        assert torch.equal(fast, ref)
    eos = int(ref[0, ids.shape[1] + 2])
    ref, fast = both(model, ids, mask, eos_token_id=[eos, 1])
    assert torch.equal(fast, ref)
    ref2, fast2 = both(model, ids, mask, eos_token_id=[eos, 1])  # the same engine again (graph reused)
    assert torch.equal(fast2, ref)


def _prefilled(prefill, model, ids, mask):
    """The first-token logits and the last layer's cached keys, laid out [B, P, Hkv, D], from one prefill."""
    lengths = mask.long().sum(1)
    logits, keys = None, None
    for cache, lg, rows, tok_row, tok_col, tokens in prefill(model, ids, mask, lengths):
        last = cache.layers[-1].keys
        if logits is None:
            logits = lg.new_zeros(ids.shape[0], lg.shape[1])
            keys = torch.zeros(*ids.shape, last.shape[1], last.shape[3], device=ids.device)
        logits[rows] = lg
        keys[tok_row, tok_col] = tokens(last).float()
    return logits, keys


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen flash kernel needs a CUDA GPU")
def test_packed_prefill_on_cuda_matches_the_grouped_one():
    # bf16 (the flash kernel's dtype): equal within bf16 rounding, every token in its row and column
    model = tiny_model("qwen3", "cuda", torch.bfloat16)
    ids, mask = prompts("cuda")
    packed = _prefilled(fast_decode._prefill_packed, model, ids, mask)
    grouped = _prefilled(fast_decode._prefill_grouped, model, ids, mask)
    real = mask == 1  # the grouped prefill also caches its padding tokens' keys (masked in decoding)
    for a, b in ((packed[0], grouped[0]), (packed[1][real], grouped[1][real])):
        assert (a - b).abs().max() <= 0.03 * b.abs().max()
    assert (packed[1][~real] == 0).all()  # the packed one writes real tokens only


def _masked_softmax_attention(q, k, v, start, col, scale):
    """The reference: every buffer column, the ones outside ``start[b] .. col`` masked, in float32."""
    keys = torch.arange(k.shape[2], device=k.device)
    masked = ((keys[None] < start[:, None]) | (keys[None] > col))[:, None, None]
    w = (q.float() @ k.float().transpose(2, 3)) * scale
    return w.masked_fill(masked, float("-inf")).softmax(-1) @ v.float()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton decode kernel needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("groups", "head_dim"), [(3, 128), (4, 64), (1, 16)])
def test_ragged_attention_kernel_matches_masked_softmax(dtype, groups, head_dim):
    from kdsum.generation.engine.kernel import ragged_attention

    torch.manual_seed(0)
    b, hkv, s = 6, 2, 300
    q = torch.randn(b, hkv, groups, head_dim, device="cuda", dtype=dtype)
    k, v = (torch.randn(b, hkv, s, head_dim, device="cuda", dtype=dtype) for _ in range(2))
    start = torch.tensor([0, 1, 63, 64, 200, 250], device="cuda")  # ranges of 1 to 251 columns
    col = torch.tensor([250], device="cuda")
    out = ragged_attention(q, k, v, start, col, head_dim**-0.5)
    ref = _masked_softmax_attention(q, k, v, start, col, head_dim**-0.5)
    assert out.dtype == dtype and out.shape == q.shape
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    assert (out.float() - ref).abs().max() <= tol


def _count_kernel_calls(monkeypatch) -> list:
    """Record every call of kdsum.generation.engine.kernel's attention made through fast_decode."""
    calls: list = []
    kernel = fast_decode.ragged_attention
    monkeypatch.setattr(fast_decode, "ragged_attention", lambda *a: calls.append(1) or kernel(*a))
    return calls


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton decode kernel needs a CUDA GPU")
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_engine_through_the_ragged_kernel_equals_generate_in_float32(arch, monkeypatch):
    # the kernel in IEEE float32 (forced: by default float32 keeps the matmuls) under the CUDA graph
    monkeypatch.setattr(fast_decode, "ATTENTION", "ragged")
    calls = _count_kernel_calls(monkeypatch)
    model = tiny_model(arch, "cuda", torch.float32)
    ids, mask = prompts("cuda")
    ref, fast = both(model, ids, mask, min_new_tokens=6)
    assert calls  # the step went through the kernel (captured in the graph's warm-up and capture)
    assert fast_decode._cached["engine"].graph is not None
    assert torch.equal(fast, ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton decode kernel needs a CUDA GPU")
def test_bf16_engine_uses_the_ragged_kernel_by_default(monkeypatch):
    calls = _count_kernel_calls(monkeypatch)
    model = tiny_model("llama", "cuda", torch.bfloat16)
    ids, mask = prompts("cuda")
    ragged = fast_decode.greedy_generate(model, ids, mask, max_new_tokens=20, eos_token_id=[1], pad_token_id=PAD)
    assert calls  # by default (ATTENTION auto), a bf16 model on CUDA decodes through the kernel
    calls.clear()
    fast_decode.ATTENTION = "matmul"
    try:
        matmul = fast_decode.greedy_generate(model, ids, mask, max_new_tokens=20, eos_token_id=[1], pad_token_id=PAD)
    finally:
        fast_decode.ATTENTION = "auto"
    assert not calls  # ATTENTION matmul: the batched matmuls only
    new = ids.shape[1]
    assert torch.equal(ragged[:, : new + 1], matmul[:, : new + 1])  # prompt and the prefill's token
    assert (ragged[:, new:] == matmul[:, new:]).float().mean() >= 0.6  # bf16 rounding may flip later argmaxes
