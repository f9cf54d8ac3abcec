"""End ids from the chat template: every special token the template writes between two turns (the end of turn, the
next turn's start and header) stops generation, so a model that opens a new turn without ending its own never puts
a role name in a summary. Checked on token ids with the real Llama-3 and Qwen3 tokenizers (../shared/tokenizers)
and with the small tokenizer the offline models are built with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdsum.config.resolve import load_config, resolve
from kdsum.generation.engine import greedy as fast_decode
from kdsum.generation.predict import decode_new_tokens, generation_kwargs
from kdsum.models.build import IM_END, IM_START, train_tokenizer
from kdsum.models.fitting import end_of_turn_ids, template_kwargs
from kdsum.models.loading import load_tokenizer, turn_boundary_ids

ROOT = Path(__file__).resolve().parents[1]
TOKENIZERS = ROOT.parent / "shared" / "tokenizers"
SUMMARY = "#Person1#은 병원에 간다."
# per real tokenizer: the config model of its family, the tokens a turn boundary holds, a malformed answer that opens
# a new assistant turn first, and one that opens it after a summary
REAL = {
    "llama3": dict(
        model="llama-ko-3b",
        boundary=["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
        opened=f"<|start_header_id|>assistant<|end_header_id|>\n\n{SUMMARY}<|eot_id|>",
        after=f"{SUMMARY}<|start_header_id|>assistant<|end_header_id|>\n\n다시 말한다.<|eot_id|>",
    ),
    "qwen3": dict(
        model="qwen3-4b",
        boundary=["<|im_end|>", "<|im_start|>"],
        opened=f"<|im_start|>assistant\n{SUMMARY}<|im_end|>",
        after=f"{SUMMARY}<|im_start|>assistant\n다시 말한다.<|im_end|>",
    ),
}
real_tokenizers = pytest.mark.skipif(
    not all((TOKENIZERS / n / "tokenizer.json").is_file() for n in REAL),
    reason=f"the real tokenizers are not at {TOKENIZERS} (../shared/tokenizers; README there)",
)


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "config.yaml")


def _real(name: str):
    tok = load_tokenizer(str(TOKENIZERS / name), name, "causal")
    tok.add_tokens(["#Person1#"])  # a data token, as format_prompts adds it
    return tok


def _tiny_model(tok):
    """A one-layer Llama over the tokenizer's vocabulary: a real model whose generation config has no end ids."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def _decode(tok, text: str, ends) -> str:
    prompt = tok("질문", add_special_tokens=False)["input_ids"]
    row = prompt + tok(text, add_special_tokens=False)["input_ids"] + [tok.pad_token_id] * 2
    return decode_new_tokens(tok, torch.tensor([row]), len(prompt), "causal", ends)[0]


@real_tokenizers
@pytest.mark.integration
@pytest.mark.parametrize("name", list(REAL))
def test_turn_boundaries_come_from_the_template(name):
    tok = _real(name)
    expected = tok.convert_tokens_to_ids(REAL[name]["boundary"])
    assert turn_boundary_ids(tok, {"enable_thinking": False}) == expected
    assert tok.pad_token_id not in expected
    tok.chat_template = None
    assert turn_boundary_ids(tok) == []


@real_tokenizers
@pytest.mark.integration
@pytest.mark.parametrize("name", list(REAL))
def test_a_new_turn_ends_the_summary_on_both_engines(config, name):
    real = REAL[name]
    tok = _real(name)
    job = resolve(config, real["model"], "default")
    model = _tiny_model(tok)
    kw = generation_kwargs(job, tok, model)
    assert set(tok.convert_tokens_to_ids(real["boundary"])) <= set(kw["eos_token_id"])
    assert fast_decode.supports(model, job, kw, None)  # the fast engine takes the same end ids as generate
    # what the end of turn alone gave: the role name in the text
    assert _decode(tok, real["opened"], end_of_turn_ids(tok, template_kwargs(job))).startswith("assistant")
    assert _decode(tok, real["opened"], kw["eos_token_id"]) == ""
    assert _decode(tok, real["after"], kw["eos_token_id"]) == SUMMARY


@real_tokenizers
@pytest.mark.integration
@pytest.mark.parametrize("name", list(REAL))
def test_the_engine_stops_at_a_turn_start(config, name):
    """A model that emits the turn start at its first step: generate and the fast engine both stop there."""
    tok = _real(name)
    model = _tiny_model(tok)
    kw = generation_kwargs(resolve(config, REAL[name]["model"], "default"), tok, model)
    start = tok.convert_tokens_to_ids(REAL[name]["boundary"][1])
    with torch.no_grad():  # every position's logits peak at the turn start
        model.lm_head.weight.zero_()
        model.model.norm.weight.zero_()
    bias = torch.zeros(len(tok))
    bias[start] = 1.0
    model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)
    ids = torch.tensor([tok("질문", add_special_tokens=False)["input_ids"]])
    kw = {**kw, "max_new_tokens": 5, "do_sample": False, "num_beams": 1}
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    assert out[0, ids.shape[1] :].tolist() == [start]
    fast = fast_decode.greedy_generate(model, ids, torch.ones_like(ids), **kw)
    assert fast[0, ids.shape[1] :].tolist() == [start]


def test_the_built_tokenizer_keeps_its_chatml_ends():
    texts = ["#Person1#: 안녕하세요. 병원에 가요.", "#Person2#: 네, 내일 만나요."] * 20
    tok = train_tokenizer(texts, 200, ["#Person1#", "#Person2#"], "causal")
    ends = turn_boundary_ids(tok, template_kwargs(None))
    assert ends == tok.convert_tokens_to_ids([IM_END, IM_START])
    assert tok.pad_token_id not in ends
    ids = tok("#Person1#", add_special_tokens=False)["input_ids"]
    row = ids + tok.convert_tokens_to_ids([IM_START]) + tok("assistant", add_special_tokens=False)["input_ids"]
    assert decode_new_tokens(tok, torch.tensor([row]), 0, "causal", ends) == ["#Person1#"]
