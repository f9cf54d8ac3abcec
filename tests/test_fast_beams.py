"""kdsum.generation.engine.beams: the static-cache beam search gives exactly ``model.generate(num_beams=K)``'s sequences."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_fast_decode import KWARGS, PAD, TINY, _job, prompts, tiny_model

from kdsum.generation.engine import beams as fast_beams
from kdsum.generation.engine import greedy as fast_decode

torch.set_num_threads(1)

END, OTHER_END = 1, 7  # end ids made likely by a bias on lm_head (the tiny random models rarely emit one)


def ending_model(arch: str, bias: float = 3.5, ends=(END,), device: str = "cpu"):
    """A tiny model whose lm_head has a bias for the end ids, so that beams end mid-sequence (and hypotheses
    finish at different lengths) instead of running to ``max_new_tokens``."""
    if arch == "mistral":
        from transformers import AutoModelForCausalLM, MistralConfig

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(MistralConfig(**TINY, sliding_window=None), attn_implementation="sdpa")
        model = model.to(device).eval()
    else:
        model = tiny_model(arch, device)
    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True, device=device)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[list(ends)] = bias
    model.lm_head = biased
    return model.eval()


def both(model, ids, mask, **kw):
    kw = {"max_new_tokens": 16, "eos_token_id": [END], "pad_token_id": PAD, "do_sample": False, "num_beams": 4, **kw}
    ref = model.generate(input_ids=ids, attention_mask=mask, **kw)
    fast = fast_beams.beam_generate(model, ids, mask, **kw)
    assert fast.shape == ref.shape, (fast.shape, ref.shape)
    return ref, fast


def ended_at(seqs: torch.Tensor, width: int, ends) -> list[int | None]:
    """Each row's first generated position holding an end id (None: it ran to the length limit)."""
    hit = torch.isin(seqs[:, width:], torch.tensor(list(ends)))
    return [int(r.nonzero()[0]) if r.any() else None for r in hit]


@pytest.mark.parametrize("beams", [2, 4])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_beams_equal_generate(arch, beams):
    model = ending_model(arch)
    ids, mask = prompts()  # five ragged left-padded prompts (1 to 12 tokens)
    ref, fast = both(model, ids, mask, num_beams=beams)
    assert torch.equal(fast, ref)
    plain, fast = both(ending_model(arch, bias=0.0), ids, mask, num_beams=beams)  # (almost) never ending
    assert torch.equal(fast, plain)
    assert not torch.equal(plain, ref)


@pytest.mark.parametrize("early_stopping", [False, True, "never"])
@pytest.mark.parametrize("length_penalty", [1.0, 0.6, 2.0, -0.5])
def test_length_penalty_and_early_stopping(length_penalty, early_stopping):
    model = ending_model("llama", ends=(END, OTHER_END))
    ids, mask = prompts()
    kw = dict(length_penalty=length_penalty, early_stopping=early_stopping, eos_token_id=[END, OTHER_END])
    ref, fast = both(model, ids, mask, **kw)
    assert torch.equal(fast, ref)
    stops = ended_at(ref, ids.shape[1], (END, OTHER_END))
    assert any(s is not None and s > 0 for s in stops)  # hypotheses end mid-sequence


@pytest.mark.parametrize("length_penalty", [1.0, 2.0])
def test_more_end_candidates_than_beams(length_penalty):
    # three likely end ids: most of a step's top continuations end, and generate keeps max(2, 1 + n_eos) * K of
    # them so that K running beams remain ("never": the heuristic looks at max_length, so the search goes on)
    ends = (END, OTHER_END, 9)
    model = ending_model("llama", bias=6.0, ends=ends)
    ids, mask = prompts()
    ref, fast = both(model, ids, mask, eos_token_id=list(ends), early_stopping="never", length_penalty=length_penalty)
    assert torch.equal(fast, ref)


def test_hypotheses_of_different_lengths_are_padded_as_generate_pads():
    # generate fills after an end with ``pad_token_id or eos_token_id[0]``: the pad id unless it is 0
    model = ending_model("qwen3")
    ids, mask = prompts()
    width = ids.shape[1]
    for pad, fill in ((PAD, END), (5, 5)):
        ref, fast = both(model, ids, mask, pad_token_id=pad)
        stops = ended_at(ref, width, (END,))
        first = min(s for s in stops if s is not None)
        assert len(set(stops)) > 2 and first < ref.shape[1] - width - 2  # ended at different steps
        assert (ref[stops.index(first), width + first + 1 :] == fill).all()
        assert torch.equal(fast, ref)


def test_min_new_tokens_holds_the_end_ids_back():
    model = ending_model("qwen2", bias=8.0)  # every beam would end at once
    ids, mask = prompts()
    ref, fast = both(model, ids, mask)
    assert ref.shape[1] == ids.shape[1] + 1 and torch.equal(fast, ref)  # every prompt ended at step 1
    ref, fast = both(model, ids, mask, min_new_tokens=5, eos_token_id=[END, OTHER_END])
    assert all(s is not None and s >= 5 for s in ended_at(ref, ids.shape[1], (END, OTHER_END)))
    assert torch.equal(fast, ref)


def test_search_stops_early_when_every_prompt_is_done():
    model = ending_model("llama", bias=5.0)
    ids, mask = prompts()
    ref, fast = both(model, ids, mask, max_new_tokens=30)
    assert ref.shape[1] < ids.shape[1] + 17 and torch.equal(fast, ref)
    ref2, fast2 = both(model, ids, mask, max_new_tokens=30)  # the same engine again, reset
    assert torch.equal(fast2, ref)


def test_settings_from_the_models_generation_config():
    model = ending_model("llama", ends=(END, OTHER_END))
    ids, mask = prompts()
    model.generation_config.num_beams = 3
    model.generation_config.length_penalty = 0.6
    model.generation_config.early_stopping = True
    kw = {"max_new_tokens": 16, "eos_token_id": [END, OTHER_END], "pad_token_id": PAD}
    ref = model.generate(input_ids=ids, attention_mask=mask, **kw)
    assert torch.equal(fast_beams.beam_generate(model, ids, mask, **kw), ref)
    other = model.generate(input_ids=ids, attention_mask=mask, **kw, num_beams=2, length_penalty=2.0)
    assert torch.equal(fast_beams.beam_generate(model, ids, mask, **kw, num_beams=2, length_penalty=2.0), other)


def test_one_prompt_and_an_int_end_id():
    model = ending_model("qwen2")
    ids, mask = prompts()
    ref, fast = both(model, ids[:1, -9:], mask[:1, -9:], eos_token_id=END)  # row 0: 9 tokens, no padding
    assert torch.equal(fast, ref)


def test_prefill_in_groups(monkeypatch):
    model = ending_model("qwen3")
    ids, mask = prompts()
    order = mask.sum(1).argsort(descending=True)  # longest first, as kdsum.generation.predict batches them
    ids, mask = ids[order], mask[order]
    ref, _ = both(model, ids, mask)
    monkeypatch.setattr(fast_decode, "PREFILL", "grouped")
    monkeypatch.setattr(fast_decode, "PREFILL_ROWS", 2)
    timings: dict = {}
    kw = {"max_new_tokens": 16, "eos_token_id": [END], "pad_token_id": PAD, "num_beams": 4}
    assert torch.equal(fast_beams.beam_generate(model, ids, mask, timings=timings, **kw), ref)
    assert timings["prefill_s"] > 0 and timings["decode_s"] > 0


def test_supports_beam_search_only_without_processors_or_penalties():
    model, job = tiny_model("llama"), _job(num_beams=4)
    beams = {**KWARGS, "num_beams": 4}
    assert fast_beams.supports_beams(model, job, beams, None)
    assert fast_beams.supports_beams(model, job, {**beams, "min_new_tokens": 4, "length_penalty": 0.6}, None)
    assert fast_beams.supports_beams(model, job, {**beams, "early_stopping": True}, None)
    assert not fast_beams.supports_beams(model, job, KWARGS, None)  # greedy: kdsum.generation.engine.greedy's
    assert not fast_beams.supports_beams(model, _job(num_beams=4, engine="generate"), beams, None)
    assert not fast_beams.supports_beams(model, job, {**beams, "do_sample": True}, None)
    assert not fast_beams.supports_beams(model, job, {**beams, "no_repeat_ngram_size": 3}, None)
    assert not fast_beams.supports_beams(model, job, {**beams, "repetition_penalty": 1.2}, None)
    assert not fast_beams.supports_beams(model, job, {**beams, "num_return_sequences": 2}, None)
    assert not fast_beams.supports_beams(model, job, {**beams, "cache_implementation": "static"}, None)
    assert not fast_beams.supports_beams(model, job, {**beams, "diversity_penalty": 0.5}, None)
    assert not fast_beams.supports_beams(model, job, beams, ["a logits processor"])
    assert not fast_beams.supports_beams(model, dataclasses.replace(job, family="seq2seq"), beams, None)
    model.generation_config.no_repeat_ngram_size = 2  # the model's own generation_config counts too
    assert not fast_beams.supports_beams(
        model, job, {k: v for k, v in beams.items() if k != "no_repeat_ngram_size"}, None
    )
    from peft import LoraConfig, get_peft_model

    adapter = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    assert not fast_beams.supports_beams(adapter, job, beams, None)


def test_choose_engine_picks_beams_for_beam_search():
    from kdsum.generation.predict import choose_engine

    model = tiny_model("llama")
    assert choose_engine(model, _job(num_beams=4), {**KWARGS, "num_beams": 4}, None) == "beams"
    assert choose_engine(model, _job(), KWARGS, None) == "fast"
    assert choose_engine(model, _job(num_beams=4), {**KWARGS, "num_beams": 4}, ["a processor"]) == "generate"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA-graph path needs a CUDA GPU")
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_cuda_graph_path_equals_generate(arch):
    # float32 only, as fast_decode's CUDA test: in bf16 the hand-written step and generate's round differently
    model = ending_model(arch, ends=(END, OTHER_END), device="cuda")
    ids, mask = prompts("cuda")
    for kw in ({}, {"min_new_tokens": 4}, {"length_penalty": 0.6, "early_stopping": True}):
        ref, fast = both(model, ids, mask, eos_token_id=[END, OTHER_END], **kw)
        assert fast_beams._cached["engine"].graphs is not None  # captured, replayed
        assert torch.equal(fast, ref)
    ref2, fast2 = both(model, ids, mask, eos_token_id=[END, OTHER_END], length_penalty=0.6, early_stopping=True)
    assert torch.equal(fast2, ref)  # the same engine again (graphs reused)


def test_one_engine_is_kept_whichever_search_ran_last():
    # the greedy and the beam engines share one cache, so a process that runs both holds one set of KV buffers
    model = tiny_model("llama")
    ids, mask = prompts()
    kw = dict(max_new_tokens=5, eos_token_id=[1], pad_token_id=PAD)
    fast_decode.greedy_generate(model, ids, mask, **kw)
    assert isinstance(fast_decode._cached["engine"], fast_decode._Engine)
    fast_beams.beam_generate(model, ids, mask, num_beams=2, **kw)
    assert list(fast_decode._cached) == ["engine"] and isinstance(fast_decode._cached["engine"], fast_beams._Engine)
    fast_decode.greedy_generate(model, ids, mask, **kw)
    assert isinstance(fast_decode._cached["engine"], fast_decode._Engine)
