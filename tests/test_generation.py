"""Prediction stage: kdsum.generation.predict, kdsum.generation.blocking, kdsum.models.loading.load_for_generation, kdsum.generation.baselines and the
stages `kdsum predict`, `kdsum baseline`, `kdsum submission`.

The models are tiny (one layer, hidden size 32) and built here in seconds from the sample data with the
project's own tokenizer training, so no hub access and no prebuilt results are needed. Where a test needs a
model to behave in a known way, a forward hook forces its logits (the prompt's content cannot leak into the
output that way, and a forced Latin token must disappear under foreign-script blocking).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from kdsum.config.catalog import spec_for
from kdsum.config.resolve import load_config, resolve
from kdsum.config.spec import to_json
from kdsum.data.ingest import ingest_splits, load_split, read_split
from kdsum.data.prompts import format_chat_prompt, format_user_message, write_prompt_set
from kdsum.data.stats import collect_special_tokens
from kdsum.generation.baselines import BaselineError, lead, longest, run_baseline
from kdsum.generation.blocking import foreign_token_mask, has_foreign_text
from kdsum.generation.predict import (
    decode_new_tokens,
    generate_summaries,
    length_sorted_order,
    map_sorted_batches,
    postprocess,
    read_prompt_rows,
)
from kdsum.io import read_jsonl, write_jsonl, write_text
from kdsum.models.fitting import (
    GenerationError,
    chat_prompt_text,
    chat_text,
    encode_rows,
    fit_chat_example,
    fit_chat_prompt,
    fit_seq2seq,
    input_budget,
    pad_batch,
    split_user_message,
)
from kdsum.models.loading import load_for_generation

# One thread: on a shared 2-core machine a second OpenMP thread made generation 10x slower (spin-waiting).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = {
    "seq2seq": dict(vocab_size=600, d_model=32, layers=1, heads=2, ffn_dim=64, seed=0),
    "causal": dict(vocab_size=600, hidden_size=32, layers=1, heads=2, intermediate_size=64, seed=0),
}
FAMILY_MODEL = {"seq2seq": "tiny-bart", "causal": "tiny-llama"}
TEST_GENERATION = dict(max_new_tokens=6, batch_size=8, no_repeat_ngram_size=0)
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT / "src"),
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def run_kdsum(stage: str, *args) -> subprocess.CompletedProcess:
    """``python -m kdsum STAGE ...`` in a fresh interpreter (exit status and stderr as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-m", "kdsum", stage, *map(str, args)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def invoke(stage: str, *args) -> int:
    """``kdsum STAGE ...`` through kdsum.cli in this process (importing torch and transformers once, not per call);
    returns the exit status."""
    from kdsum.cli import main

    try:
        main([stage, *map(str, args)])
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def call_kdsum(capsys, stage: str, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = invoke(stage, *args)
    out, err = capsys.readouterr()
    return code, out, err


def _with(job, **generation):
    return dataclasses.replace(job, generation=dataclasses.replace(job.generation, **generation))


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def config() -> dict:
    return load_config(ROOT / "config.yaml")


def job_for(config, model: str, variant: str):
    """The job of ``model`` under ``variant`` with the tests' small generation settings."""
    return _with(resolve(config, model, variant), **TEST_GENERATION)


@pytest.fixture(scope="session")
def work(tmp_path_factory, config) -> Path:
    """Sample data ingested and formatted (chat-plain and seq2seq); the spec files of the tiny models' jobs."""
    root = tmp_path_factory.mktemp("pred")
    ingest_splits({s: ROOT / "data" / "sample" / f"{s}.csv" for s in ("train", "dev", "test")}, root / "data")
    for name in ("chat-plain", "seq2seq"):
        write_prompt_set(spec_for(config, f"prompts/{name}"), root / "data", root / "prompts" / name)
    for model in ("tiny-llama", "tiny-bart"):
        for variant in ("default", "zeroshot"):
            write_text(root / "specs" / "model" / model / f"{variant}.json", to_json(job_for(config, model, variant)))
    write_text(root / "specs" / "base" / "tiny-llama.json", to_json(spec_for(config, "base/tiny-llama")))
    return root


def spec_path(work: Path, model: str, variant: str) -> Path:
    return work / "specs" / "model" / model / f"{variant}.json"


def _build(work: Path, config, family: str) -> Path:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from kdsum.models.build import build_config, train_tokenizer
    from kdsum.models.loading import set_seed

    out = work / "base" / family
    if out.exists():
        return out
    records = load_split(work / "data" / "train.jsonl")
    build = dataclasses.replace(resolve(config, FAMILY_MODEL[family], "default").build, **TINY[family])
    tok = train_tokenizer(
        [r["dialogue"] for r in records] + [s for r in records for s in r["summaries"]],
        build.vocab_size,
        collect_special_tokens(records),
        family,
    )
    set_seed(0)
    auto = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
    model = auto.from_config(build_config(family, build, tok))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def causal_base(work, config) -> Path:
    return _build(work, config, "causal")


@pytest.fixture(scope="session")
def seq2seq_base(work, config) -> Path:
    return _build(work, config, "seq2seq")


@pytest.fixture(scope="session")
def lora_dir(work, causal_base) -> Path:
    """A LoRA adapter on the tiny Llama, as the training stage saves it (adapter + tokenizer)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = work / "train" / "tiny-llama" / "default" / "model"
    base = AutoModelForCausalLM.from_pretrained(causal_base)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    peft_model = get_peft_model(base, cfg)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(causal_base).save_pretrained(out)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(causal_base)
    return out


@pytest.fixture(scope="session")
def causal(config, causal_base):
    spec = job_for(config, "tiny-llama", "zeroshot")
    return spec, load_for_generation(spec, base_dir=causal_base)


class ForceTokens:
    """A forward hook that makes the model write ``sequence`` (then repeat its last id): at generation step k the
    id ``sequence[k]`` gets +1000. A forward pass over more than one position (the prefill) starts at step 0."""

    def __init__(self, model, sequence: list[int]):
        self.seq, self.step = sequence, 0
        self.handle = model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        if kwargs["input_ids"].shape[1] > 1:
            self.step = 0
        output.logits[:, -1, self.seq[min(self.step, len(self.seq) - 1)]] += 1000.0
        self.step += 1
        return output

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# --------------------------------------------------------------------------------------------- ordering
def test_length_sorted_order_longest_first_and_stable():
    assert length_sorted_order([3, 9, 1, 9, 5]) == [1, 3, 4, 0, 2]


def test_map_sorted_batches_restores_input_order():
    items = ["bb", "a", "dddd", "ccc", "eeeee", "f"]
    seen = []

    def fn(batch):
        seen.append(list(batch))
        return [x.upper() for x in batch]

    out = map_sorted_batches(items, [len(x) for x in items], 4, fn)
    assert out == ["BB", "A", "DDDD", "CCC", "EEEEE", "F"]
    assert seen == [["eeeee", "dddd", "ccc", "bb"], ["a", "f"]]  # longest first, then in input order


def test_map_sorted_batches_rejects_a_short_batch_result():
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        map_sorted_batches(["a", "b"], [1, 1], 2, lambda b: b[:1])


# --------------------------------------------------------------------------------------------- inputs
def test_pad_batch_left_and_right():
    ids, mask = pad_batch([[5, 6, 7], [8]], 0, "left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[5, 6, 7], [8]], 0, "right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_split_user_message_matches_the_prompt_layout():
    rec = {
        "turns": [{"speaker": "#Person1#", "text": "안녕."}, {"speaker": "#Person2#", "text": "네."}],
        "topic": "인사",
    }
    content = format_user_message(rec, {"question": "요약해 주세요.", "topic": True})
    assert split_user_message(content) == (
        "[Conversation]\n",
        "#Person1#: 안녕.\n#Person2#: 네.",
        "\n\n[Question]\n요약해 주세요.\n주제: 인사",
    )
    assert split_user_message("다른 형식의 프롬프트") is None


def test_causal_inputs_end_with_generation_prompt_and_are_left_padded(causal, work):
    spec, lm = causal
    rows = read_prompt_rows(work / "prompts" / "chat-plain" / "dev.jsonl", "causal")[:2]
    text = chat_prompt_text(lm.tokenizer, rows[0]["prompt"])
    assert text.endswith("[Question]\n위 대화를 한두 문장으로 요약해 주세요.<|im_end|>\n<|im_start|>assistant\n")
    enc, n_cut = encode_rows(rows, lm.tokenizer, "causal", 10_000)
    assert n_cut == 0 and enc[0] == lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert lm.tokenizer.padding_side == "left"
    short, long_ = sorted(enc, key=len)
    ids, mask = pad_batch([long_, short], lm.tokenizer.pad_token_id, "left")
    gap = len(long_) - len(short)
    assert gap > 0 and mask[1, :gap].sum() == 0 and ids[1, gap:].tolist() == short


def test_long_prompt_cuts_the_conversation_not_the_question(causal):
    _, lm = causal
    tok = lm.tokenizer
    turns = [
        {"speaker": f"#Person{1 + i % 2}#", "text": f"{i}번째 발화입니다. 오늘 날씨가 정말 좋네요."} for i in range(40)
    ]
    fmt = {"system": "요약 도우미.", "question": "위 대화를 요약해 주세요.", "topic": False}
    messages = format_chat_prompt({"turns": turns}, fmt)
    full = tok(chat_prompt_text(tok, messages), add_special_tokens=False)["input_ids"]
    budget = len(full) // 3
    ids, cut = fit_chat_prompt(tok, messages, budget=budget)
    assert cut and len(ids) <= budget

    def encoded(k):  # the prompt with the first k turns of the conversation, question and markup intact
        return tok(chat_prompt_text(tok, format_chat_prompt({"turns": turns[:k]}, fmt)), add_special_tokens=False)[
            "input_ids"
        ]

    kept = next(k for k in range(1, 40) if encoded(k) == ids)  # StopIteration: not a whole-turn prefix
    assert len(encoded(kept + 1)) > budget  # as many whole turns as fit
    assert tok.decode(ids).endswith("주세요.<|im_end|>\n<|im_start|>assistant\n")
    assert fit_chat_prompt(tok, messages, budget=len(full)) == (full, False)
    with pytest.raises(GenerationError, match="without any conversation"):
        fit_chat_prompt(tok, messages, budget=20)


def test_training_rows_keep_the_summary_and_the_prediction_prompt(causal):
    """fit_chat_example (training) cuts by fit_chat_prompt's rule (prediction): with a summary that fits the new
    tokens the trained prompt is prediction's prompt; a longer summary takes room from the conversation, never the
    other way round; a summary that cannot fit at all is refused."""
    _, lm = causal
    tok = lm.tokenizer
    turns = [
        {"speaker": f"#Person{1 + i % 2}#", "text": f"{i}번째 발화입니다. 내일 회의는 세 시예요."} for i in range(60)
    ]
    fmt = {"system": "요약 도우미.", "question": "위 대화를 요약해 주세요.", "topic": False}
    prompt = format_chat_prompt({"turns": turns}, fmt)
    whole = tok(chat_prompt_text(tok, prompt), add_special_tokens=False)["input_ids"]
    total, new_tokens = len(whole) // 2, 24
    budget = total - new_tokens

    def completion_ids(summary):
        full = tok(chat_text(tok, prompt + summary), add_special_tokens=False)["input_ids"]
        return full[len(whole) :]

    short = [{"role": "assistant", "content": "#Person1#와 #Person2#는 회의 시간을 정한다."}]
    ids, n_prompt, cut = fit_chat_example(tok, prompt, short, total, budget)
    assert cut and len(ids) <= total and ids[n_prompt:] == completion_ids(short)
    assert len(completion_ids(short)) <= new_tokens and (ids[:n_prompt], True) == fit_chat_prompt(tok, prompt, budget)

    long_ = [{"role": "assistant", "content": " ".join(["회의는 내일 세 시에 열린다."] * 12)}]
    n_long = len(completion_ids(long_))
    assert new_tokens < n_long < total // 2
    ids, n_prompt, cut = fit_chat_example(tok, prompt, long_, total, budget)
    assert cut and len(ids) <= total and ids[n_prompt:] == completion_ids(long_)
    assert (ids[:n_prompt], True) == fit_chat_prompt(tok, prompt, total - n_long)

    fits = fit_chat_example(tok, prompt, short, 10 * len(whole), 10 * len(whole))
    assert fits[2] is False and fits[0][: fits[1]] == whole
    with pytest.raises(GenerationError, match="does not fit"):
        fit_chat_example(tok, prompt, [{"role": "assistant", "content": "요약 " * 400}], total, budget)


def test_fit_seq2seq_counts_the_cut(seq2seq_base):
    from kdsum.models.loading import load_tokenizer

    tok = load_tokenizer(str(seq2seq_base), "tiny-bart", "seq2seq")
    text = "#Person1#: 안녕하세요. 내일 회의는 세 시예요. " * 20
    ids, cut = fit_seq2seq(tok, text, 10_000)
    assert not cut and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    short, cut = fit_seq2seq(tok, text, 16)
    assert cut and len(short) == 16 and short[:15] == ids[:15] and short[-1] == tok.eos_token_id
    assert fit_seq2seq(tok, text, len(ids)) == (ids, False)


def test_seq2seq_inputs_are_framed_and_cut_like_training(config, seq2seq_base, work):
    from kdsum.models.loading import load_tokenizer

    tok = load_tokenizer(str(seq2seq_base), "tiny-bart", "seq2seq")
    rows = read_prompt_rows(work / "prompts" / "seq2seq" / "dev.jsonl", "seq2seq")[:3]
    enc, n_cut = encode_rows(rows, tok, "seq2seq", 10_000)
    assert n_cut == 0 and all(e[0] == tok.bos_token_id and e[-1] == tok.eos_token_id for e in enc)
    short, n_cut = encode_rows(rows, tok, "seq2seq", 20)
    assert n_cut == 3 and all(len(e) == 20 and e[-1] == tok.eos_token_id for e in short)
    assert [e[:19] for e in short] == [e[:19] for e in enc]  # the beginning is kept
    assert input_budget(job_for(config, "tiny-bart", "default")) == 512  # encoder budget: max_length alone
    assert input_budget(job_for(config, "tiny-llama", "default")) == 768 - 6  # shared with the new tokens


# --------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  #Person1#는   집에\n\n갑니다.  ", "#Person1#는 집에 갑니다."),
        ("요약: #Person2#가 예약합니다.", "#Person2#가 예약합니다."),
        ("요약 : 요약: 두 번 붙은 라벨", "두 번 붙은 라벨"),
        ("[요약]\n#Person1#가 묻습니다.", "#Person1#가 묻습니다."),
        ("Summary: 영어 라벨", "영어 라벨"),
        ("대화 요약: 긴 라벨", "긴 라벨"),
        ("요약하면 둘이 만납니다.", "요약하면 둘이 만납니다."),  # not a label
        ("#Person1#: 요약: 중간의 라벨은 그대로", "#Person1#: 요약: 중간의 라벨은 그대로"),
        ("\t\u3000 ", ""),
    ],
    ids=[
        "whitespace",
        "label",
        "double-label",
        "bracket-label",
        "english-label",
        "long-label",
        "not-a-label",
        "label-inside",
        "blank",
    ],
)
def test_postprocess_exact(raw, expected):
    assert postprocess(raw) == expected


def test_decode_new_tokens_skips_specials_and_keeps_data_tokens(causal):
    _, lm = causal
    tok = lm.tokenizer
    prompt = tok("<|im_start|>user\n안녕<|im_end|>", add_special_tokens=False)["input_ids"]
    new = tok("#Person1#는 요약: 안  녕<|im_end|><pad><pad>", add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("#Person1#") in new
    seqs = torch.tensor([prompt + new])
    assert decode_new_tokens(tok, seqs, len(prompt), "causal") == ["#Person1#는 요약: 안 녕"]


def test_generation_left_pads_and_decodes_only_new_tokens(causal, work, monkeypatch):
    spec, lm = causal
    tok = lm.tokenizer
    rows = read_prompt_rows(work / "prompts" / "chat-plain" / "dev.jsonl", "causal")[:5]
    target = tok("#Person1#는 집에 갑니다.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.unk_token_id not in target
    spec = _with(spec, batch_size=2, max_new_tokens=12, engine="generate")  # the spy and the hook see generate()
    calls, generate = [], lm.model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(lm.model, "generate", spy)
    with ForceTokens(lm.model, target):
        out = generate_summaries(lm.model, lm.tokenizer, rows, spec, progress=False)
    assert out == ["#Person1#는 집에 갑니다."] * 5
    assert [len(c["input_ids"]) for c in calls] == [2, 2, 1]
    widths = [c["input_ids"].shape[1] for c in calls]
    assert widths == sorted(widths, reverse=True)  # longest first
    for c in calls:  # left padding: every row ends with a real token, the pads come first
        mask = c["attention_mask"]
        assert mask[:, -1].all() and (mask.cummax(dim=1).values == mask).all()
        assert (c["input_ids"][mask == 0] == tok.pad_token_id).all()
    assert any((c["attention_mask"] == 0).any() for c in calls)
    assert calls[0]["do_sample"] is False and calls[0]["num_beams"] == 1
    # the end of turn, then the template's turn start (a new turn ends the answer)
    assert calls[0]["eos_token_id"] == tok.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    assert calls[0]["pad_token_id"] == tok.pad_token_id


def _auto_against_generate(lm, rows, spec, monkeypatch):
    """``spec`` (engine auto) and the same with engine generate on ``rows``: the summaries and the generated token
    sequences must be equal. Returns both runs' stats."""
    import kdsum.generation.predict as gen

    seqs, decode = [], gen.decode_new_tokens
    monkeypatch.setattr(gen, "decode_new_tokens", lambda tok, s, *a: seqs.append(s) or decode(tok, s, *a))
    fast, slow = {}, {}
    out = generate_summaries(lm.model, lm.tokenizer, rows, spec, progress=False, stats=fast)
    ref = generate_summaries(lm.model, lm.tokenizer, rows, _with(spec, engine="generate"), progress=False, stats=slow)
    assert out == ref
    assert len(seqs) == 4 and all(torch.equal(a, b) for a, b in zip(seqs[:2], seqs[2:], strict=True))
    return fast, slow


def test_engine_auto_is_the_fast_decoder_and_gives_generates_summaries(causal, work, monkeypatch):
    spec, lm = causal
    rows = read_prompt_rows(work / "prompts" / "chat-plain" / "dev.jsonl", "causal")[:6]
    spec = _with(spec, batch_size=4, max_new_tokens=12)
    assert spec.generation.engine == "auto"  # the config's default
    fast, slow = _auto_against_generate(lm, rows, spec, monkeypatch)
    assert (fast["engine"], slow["engine"]) == ("fast", "generate")
    blocked: dict = {}  # a logits processor (foreign-script blocking) goes to generate()
    generate_summaries(lm.model, lm.tokenizer, rows[:2], spec, progress=False, block_foreign=True, stats=blocked)
    assert blocked["engine"] == "generate"


def test_engine_auto_with_beams_is_fast_beams_and_gives_generates_summaries(causal, work, monkeypatch):
    spec, lm = causal
    rows = read_prompt_rows(work / "prompts" / "chat-plain" / "dev.jsonl", "causal")[:6]
    spec = _with(spec, batch_size=4, max_new_tokens=12, num_beams=3)
    fast, slow = _auto_against_generate(lm, rows, spec, monkeypatch)
    assert (fast["engine"], slow["engine"]) == ("beams", "generate")
    assert fast["prefill_seconds"] > 0 and fast["decode_seconds"] > 0


# --------------------------------------------------------------------------------------------- blocking
def test_has_foreign_text():
    assert has_foreign_text("Hello") and has_foreign_text("カタ") and has_foreign_text("漢字")
    assert has_foreign_text("😀") and has_foreign_text("://")
    assert not has_foreign_text("#Person1#는 #PhoneNumber#로 3시에 전화합니다.")


def test_foreign_token_mask_spares_specials_and_data_tokens(causal):
    _, lm = causal
    tok = lm.tokenizer
    mask = foreign_token_mask(tok, keep_tokens=["#Person1#"])
    assert mask.shape == (len(tok),) and mask is foreign_token_mask(tok, keep_tokens=["#Person1#"])  # cached
    for t in ("<|im_end|>", "<|im_start|>", "<pad>", "#Person1#", "#Person2#", "#PhoneNumber#"):
        assert not mask[tok.convert_tokens_to_ids(t)], t
    specials = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    assert not mask[sorted(specials)].any()
    latin = [
        i
        for i, t in enumerate(tok.batch_decode([[i] for i in range(len(tok))]))
        if any("a" <= c.lower() <= "z" for c in t) and i not in specials and not t.strip().startswith("#")
    ]
    assert latin and mask[latin].all()
    korean = tok.convert_tokens_to_ids("는")
    assert not mask[korean]


def test_blocking_removes_a_forced_latin_token(causal, work):
    spec, lm = causal
    tok = lm.tokenizer
    latin = next(i for i in range(len(tok)) if tok.decode([i]).strip() in ("s", "t", "a", "n"))
    rows = read_prompt_rows(work / "prompts" / "chat-plain" / "dev.jsonl", "causal")[:3]
    spec = _with(spec, engine="generate")  # the hook forces tokens through model.generate's forward calls
    with ForceTokens(lm.model, [latin]):
        free = generate_summaries(lm.model, tok, rows, spec, progress=False, block_foreign=False)
        blocked = generate_summaries(lm.model, tok, rows, spec, progress=False, block_foreign=True)
    assert all(has_foreign_text(s) for s in free)
    assert not any(has_foreign_text(s) for s in blocked)


# --------------------------------------------------------------------------------------------- loading + CLI
def test_lora_adapter_is_applied_and_merged(config, lora_dir, causal_base):
    from transformers import AutoModelForCausalLM

    spec = job_for(config, "tiny-llama", "default")
    lm = load_for_generation(spec, model_dir=lora_dir, device="cpu")
    assert lm.merged and lm.adapter == str(lora_dir) and lm.base == str(causal_base)
    assert not any("lora" in n for n, _ in lm.model.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(causal_base)
    w = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(lm.model.state_dict()[w], base.state_dict()[w])


def test_adapter_with_tokens_added_in_training_loads_identically(config, causal_base, tmp_path):
    """The training stage adds data tokens a base tokenizer lacks, grows the embeddings and trains just those rows
    (PEFT trainable tokens); the merged model loaded here must compute what the trained model computed."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from kdsum.models.data_tokens import add_data_tokens, resize_for_new_tokens
    from kdsum.models.loading import load_tokenizer
    from kdsum.training.trainer import lora_config

    spec = job_for(config, "tiny-llama", "default")
    tok = load_tokenizer(str(causal_base), "tiny-llama", "causal")
    model = AutoModelForCausalLM.from_pretrained(causal_base)
    new = add_data_tokens(tok, ["#Person9#"])
    resize_for_new_tokens(model, tok, new)
    trained = get_peft_model(model, lora_config(spec, {"embed_tokens": new}))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in (p for p in trained.parameters() if p.requires_grad):
            p.add_(torch.randn_like(p) * 0.5)
    trained.eval()
    ids = torch.tensor([tok("#Person9#는 집에 갑니다.", add_special_tokens=False)["input_ids"]])
    assert new[0] in ids[0].tolist()
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
    trained.save_pretrained(tmp_path / "model", save_embedding_layers=False)
    tok.save_pretrained(tmp_path / "model")
    lm = load_for_generation(spec, model_dir=tmp_path / "model", device="cpu")
    assert lm.merged and len(lm.tokenizer) == len(tok)
    with torch.no_grad():
        got = lm.model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def _check_csv(path: Path, prompts: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(df.columns) == ["fname", "summary"]
    assert df["fname"].tolist() == [r["fname"] for r in read_jsonl(prompts)]
    return df


def test_predict_cli_zeroshot_causal(work, causal_base, capsys):
    out = work / "pred" / "tiny-llama" / "zeroshot" / "dev.csv"
    code, stdout, stderr = call_kdsum(
        capsys,
        "predict",
        "--spec",
        spec_path(work, "tiny-llama", "zeroshot"),
        "--split",
        "dev",
        "--prompts-dir",
        work / "prompts" / "chat-plain",
        "--base-dir",
        causal_base,
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0, stderr
    assert "tiny-llama/zeroshot dev: 24 dialogues in" in stderr and "dialogues/s" in stderr
    assert "adapter: none" in stderr and f"wrote {out}" in stdout
    df = _check_csv(out, work / "prompts" / "chat-plain" / "dev.jsonl")
    assert len(df) == 24


def test_predict_cli_lora_adapter_end_to_end(work, lora_dir):
    """A real interpreter, as Snakemake / DVC run it: adapter found, base taken from its config, merged."""
    out = work / "pred" / "tiny-llama" / "default" / "test.csv"
    r = run_kdsum(
        "predict",
        "--spec",
        spec_path(work, "tiny-llama", "default"),
        "--split",
        "test",
        "--prompts-dir",
        work / "prompts" / "chat-plain",
        "--model-dir",
        lora_dir,
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr
    assert f"adapter: {lora_dir} (merged)" in r.stderr and "generate tiny-llama/default" in r.stderr  # progress bar
    df = _check_csv(out, work / "prompts" / "chat-plain" / "test.jsonl")
    assert len(df) == 24 and df["fname"].is_unique


def test_predict_cli_seq2seq_model_dir(work, seq2seq_base, capsys):
    out = work / "pred" / "tiny-bart" / "default" / "dev.csv"
    code, _, stderr = call_kdsum(
        capsys,
        "predict",
        "--spec",
        spec_path(work, "tiny-bart", "default"),
        "--split",
        "dev",
        "--prompts-dir",
        work / "prompts" / "seq2seq",
        "--model-dir",
        seq2seq_base,
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0, stderr
    _check_csv(out, work / "prompts" / "seq2seq" / "dev.jsonl")


# (spec, arguments, message); SPEC(M/V) is the job's spec file, BASE the tiny causal base
REFUSALS = [
    ("missing/default", [], "spec file not found"),
    ("BASESPEC", [], "expected Job, found kind 'BaseSpec'"),
    ("tiny-llama/default", [], "--model-dir is required"),
    ("tiny-llama/default", ["--model-dir", "/nonexistent/model"], "model directory not found: /nonexistent/model"),
    ("tiny-llama/zeroshot", ["--model-dir", "/nonexistent/model"], "generates with the base model alone"),
    ("tiny-llama/zeroshot", [], "needs --base-dir"),
    ("tiny-llama/zeroshot", ["--base-dir", "BASE", "--split", "empty"], "has no rows"),
    ("tiny-llama/zeroshot", ["--base-dir", "BASE", "--split", "nosplit"], "prompt file not found"),
    ("tiny-bart/zeroshot", ["--base-dir", "BASE"], "needs seq2seq prompts"),
    ("tiny-llama/zeroshot", ["--base-dir", "/etc"], "--base-dir: '/etc' is a local directory without config.json"),
    ("tiny-llama/zeroshot", ["--base-dir", "/nonexistent/base"], "--base-dir: '/nonexistent/base' does not exist"),
]


def _refusal_args(work, causal_base, spec, args):
    prompts = work / "prompts" / "chat-plain"
    (prompts / "empty.jsonl").write_text("", encoding="utf-8")
    spec = work / "specs" / "base" / "tiny-llama.json" if spec == "BASESPEC" else spec_path(work, *spec.split("/"))
    args = [str(causal_base) if a == "BASE" else a for a in args]
    split = [] if "--split" in args else ["--split", "dev"]
    return ["--spec", spec, *args, *split, "--prompts-dir", prompts]


@pytest.mark.parametrize("spec, args, message", REFUSALS, ids=[m for _, _, m in REFUSALS])
def test_predict_cli_refusals(work, causal_base, capsys, spec, args, message):
    out = work / "refused" / "x.csv"
    code, _, stderr = call_kdsum(capsys, "predict", *_refusal_args(work, causal_base, spec, args), "--out", out)
    assert code == 2, stderr
    assert stderr.startswith("error: ") and message in stderr
    assert not out.exists()


def test_predict_refuses_a_source_that_is_no_model(work, config, capsys, tmp_path):
    """`source: /etc`: one line naming models.<name>.source, not a traceback from the tokenizer loader."""
    spec = tmp_path / "spec.json"
    write_text(spec, to_json(dataclasses.replace(job_for(config, "llama-ko-3b", "zeroshot"), source="/etc")))
    out = tmp_path / "x.csv"
    args = ["--spec", spec, "--split", "dev", "--prompts-dir", work / "prompts" / "chat-plain", "--out", out]
    code, _, stderr = call_kdsum(capsys, "predict", *args)
    assert code == 2 and stderr.startswith("error: models.llama-ko-3b.source: '/etc' is a local directory without")
    assert stderr.count("\n") == 1 and not out.exists()


def test_predict_cli_refusal_in_a_real_interpreter(work, causal_base):
    out = work / "refused" / "y.csv"
    r = run_kdsum("predict", *_refusal_args(work, causal_base, *REFUSALS[1][:2]), "--out", out)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "expected Job, found kind 'BaseSpec'" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


# --------------------------------------------------------------------------------------------- baselines
TURNS = [
    {"speaker": "#Person1#", "text": "안녕하세요, 하늘정형외과입니다. 무엇을 도와드릴까요? 지금은 점심시간이에요."},
    {
        "speaker": "#Person2#",
        "text": "무릎이 아파서 예약하고 싶어요. 이번 주 금요일 오후 4시에 가능할까요? 오전은 회사 때문에 어려워요.",
    },
    {"speaker": "#Person1#", "text": "네."},
    {"speaker": "#Person2#", "text": "#PhoneNumber#로 연락 주세요. 이름은 김민지예요. 감사합니다!"},
]


def test_baselines_exact():
    # Kiwi: "안녕하세요," | "하늘정형외과입니다." | "무엇을 도와드릴까요?" | "지금은 점심시간이에요."
    assert lead(TURNS) == "#Person1#: 안녕하세요, 하늘정형외과입니다. 무엇을 도와드릴까요?"  # >= 20 characters
    assert lead(TURNS, min_chars=0) == "#Person1#: 안녕하세요,"
    assert lead(TURNS, min_chars=10) == "#Person1#: 안녕하세요, 하늘정형외과입니다."
    assert lead(TURNS, min_chars=1000) == f"#Person1#: {TURNS[0]['text']}"
    assert longest(TURNS) == f"#Person2#: {TURNS[1]['text']}"
    assert len(TURNS[1]["text"]) > max(len(TURNS[0]["text"]), len(TURNS[3]["text"]))
    assert lead([{"speaker": "#Person1#", "text": ""}, *TURNS[2:]]) == "#Person1#: 네."
    tie = [{"speaker": "#Person1#", "text": "가나다"}, {"speaker": "#Person2#", "text": "라마바"}]
    assert longest(tie) == "#Person1#: 가나다"
    with pytest.raises(BaselineError, match="fname x: dialogue has no utterance"):
        run_baseline("lead", [{"fname": "x", "turns": [{"speaker": "#Person1#", "text": " "}]}])
    with pytest.raises(BaselineError, match="unknown baseline 'first'"):
        run_baseline("first", [])


def test_baseline_cli(work, capsys):
    out = work / "pred" / "baseline" / "longest" / "dev.csv"
    code, _, err = call_kdsum(
        capsys, "baseline", "--name", "longest", "--data", work / "data" / "dev.jsonl", "--out", out
    )
    assert code == 0, err
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    recs = load_split(work / "data" / "dev.jsonl")
    assert df["fname"].tolist() == [x["fname"] for x in recs]
    assert df["summary"].tolist() == [longest(x["turns"]) for x in recs]
    code, _, err = call_kdsum(
        capsys, "baseline", "--name", "first", "--data", work / "data" / "dev.jsonl", "--out", out.with_name("x.csv")
    )
    assert code == 2 and err.startswith("error: unknown baseline 'first'")
    assert not out.with_name("x.csv").exists()


# --------------------------------------------------------------------------------------------- submission
def _predictions(path: Path, fnames: list[str], summaries: list[str]) -> Path:
    pd.DataFrame({"fname": fnames, "summary": summaries}).to_csv(path, index=False)
    return path


def test_make_submission_layout_and_refusals(work, tmp_path, capsys):
    data = work / "data" / "test.jsonl"
    fnames = [r["fname"] for r in load_split(data)]
    summaries = [f'요약, "{i}"' for i in range(len(fnames))]
    pred = _predictions(tmp_path / "p.csv", fnames[::-1], summaries[::-1])  # any order in, test order out
    out = tmp_path / "sub" / "submission.csv"
    code, _, err = call_kdsum(capsys, "submission", "--predictions", pred, "--data", data, "--out", out)
    assert code == 0, err
    raw = out.read_bytes()
    assert raw.startswith(b",fname,summary\n0,") and raw.endswith(b"\n") and b"\r" not in raw
    df = pd.read_csv(out, index_col=0, keep_default_na=False)
    assert list(df.columns) == ["fname", "summary"] and df.index.tolist() == list(range(len(fnames)))
    assert df["fname"].tolist() == fnames and df["summary"].tolist() == summaries

    for bad, message in [
        (_predictions(tmp_path / "missing.csv", fnames[1:], summaries[1:]), "no prediction for 1 test fname(s)"),
        (_predictions(tmp_path / "extra.csv", fnames + ["test_999"], summaries + ["x"]), "not in"),
        (_predictions(tmp_path / "dup.csv", fnames + fnames[:1], summaries + ["x"]), "duplicated fname"),
    ]:
        refused = tmp_path / "refused" / "submission.csv"
        code, _, err = call_kdsum(capsys, "submission", "--predictions", bad, "--data", data, "--out", refused)
        assert code == 2 and err.startswith("error: ") and message in err, err
        assert not refused.exists() and not (refused.parent.exists() and any(refused.parent.iterdir()))


@pytest.mark.integration
def test_make_submission_matches_sample_submission(tmp_path, capsys):
    ko = SHARED / "ko"
    if not ko.exists():
        pytest.skip(f"real data not found at {ko} (a user's clone has no ../shared)")
    sample = ko / "sample_submission.csv"
    write_jsonl(tmp_path / "test.jsonl", read_split(ko / "test.csv", "test"))
    expected = pd.read_csv(sample, index_col=0)
    pred = _predictions(tmp_path / "p.csv", expected["fname"].tolist(), expected["summary"].tolist())
    out = tmp_path / "submission.csv"
    code, _, err = call_kdsum(
        capsys, "submission", "--predictions", pred, "--data", tmp_path / "test.jsonl", "--out", out
    )
    assert code == 0, err
    got = pd.read_csv(out, index_col=0)
    assert len(got) == 499 and list(got.columns) == list(expected.columns) == ["fname", "summary"]
    pd.testing.assert_frame_equal(got, expected)
    assert out.read_bytes() == sample.read_bytes()  # same bytes: header, quoting, line ends, final newline
