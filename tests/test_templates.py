"""Chat templates of the real seed-model tokenizers (Llama-3, Qwen3 in ../shared/tokenizers), checked on token ids:
one think setting at training and prediction, the trained prompt equal to the prediction prompt, no doubled bos,
a pad token that is no end of turn (the labels of a padded batch end with the end of turn unmasked), end ids for
generation, nothing template-made in a summary, data tokens added, trained and reloaded with the same ids, and the
memory planner on the real vocabulary sizes."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from kdsum.config.catalog import spec_for
from kdsum.config.resolve import load_config, resolve
from kdsum.config.spec import PromptFormat
from kdsum.data.ingest import ingest_splits
from kdsum.data.prompts import write_prompt_set
from kdsum.generation.predict import decode_new_tokens, generation_kwargs, postprocess
from kdsum.gpu.preflight import estimate_for_spec
from kdsum.io import read_jsonl
from kdsum.models.data_tokens import add_data_tokens, read_data_tokens
from kdsum.models.fitting import (
    encode_rows,
    end_of_turn_ids,
    fit_chat_example,
    input_budget,
    sequence_limit,
    template_kwargs,
)
from kdsum.models.loading import ADDED_PAD, choose_pad_token, load_tokenizer
from kdsum.models.replicas import replica_config, write_replica
from kdsum.training.data import encode_chat_rows

ROOT = Path(__file__).resolve().parents[1]
TOKENIZERS = ROOT.parent / "shared" / "tokenizers"
# what the published tokenizer files say, by id
REAL = {
    "llama3": dict(
        model="llama-ko-3b",
        replica="llama-3.2-3b",
        len=128256,
        bos=128000,
        eot=128009,  # <|eot_id|>, the tokenizer's eos too
        end_of_text=128001,
        pad=128002,  # <|reserved_special_token_0|>: no <|finetune_right_pad_id|> in this vocabulary
        pad_token="<|reserved_special_token_0|>",
        header=(128006, 128007),  # <|start_header_id|>, <|end_header_id|>
        completion_tail=[128009],
    ),
    "qwen3": dict(
        model="qwen3-4b",
        replica="qwen3-4b",
        len=151669,
        bos=None,
        eot=151645,  # <|im_end|>
        end_of_text=151643,
        pad=151643,  # <|endoftext|>, the tokenizer's own
        pad_token="<|endoftext|>",
        think=(151667, 151668),  # <think>, </think>: ordinary added tokens (not special)
        completion_tail=[151645, 198],  # <|im_end|> "\n"
    ),
}
THREADS = int(os.environ.get("KDSUM_TEST_THREADS", "2"))
torch.set_num_threads(THREADS)

pytestmark = [
    pytest.mark.integration,  # the real tokenizers in ../shared
    pytest.mark.skipif(
        not all((TOKENIZERS / n / "tokenizer.json").is_file() for n in REAL),
        reason=f"the real tokenizers are not at {TOKENIZERS} (../shared/tokenizers; README there)",
    ),
]


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "config.yaml")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory, config):
    """The sample data ingested and formatted as the chat-plain prompt set (rows and data tokens)."""
    root = tmp_path_factory.mktemp("templates")
    ingest_splits({s: ROOT / "data" / "sample" / f"{s}.csv" for s in ("train", "dev", "test")}, root / "data")
    out = root / "chat-plain"
    write_prompt_set(spec_for(config, "prompts/chat-plain"), root / "data", out)
    return out


def _tokenizer(name: str, data_tokens=()):
    tok = load_tokenizer(str(TOKENIZERS / name), name, "causal")
    return tok, add_data_tokens(tok, list(data_tokens))


def _job(config, name: str, thinking: bool = False, **train):
    """The config's hub job of the tokenizer's family, as LoRA, with the think switch and train settings given."""
    job = resolve(config, REAL[name]["model"], "default")
    return dataclasses.replace(
        job,
        method="lora",
        prompt=dataclasses.replace(job.prompt, enable_thinking=thinking),
        train=dataclasses.replace(job.train, **train) if train else job.train,
    )


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------------------- the setting
def test_enable_thinking_is_one_setting_false_by_default(config, prompts):
    assert dataclasses.fields(PromptFormat)[-1].name == "enable_thinking"
    assert dataclasses.fields(PromptFormat)[-1].default is dataclasses.MISSING  # the schema holds the default
    for fmt in config["prompt"]["formats"]:
        assert config["prompt"]["formats"][fmt]["enable_thinking"] is False
    job = resolve(config, "qwen3-4b", "default")
    assert job.prompt.enable_thinking is False and template_kwargs(job) == {"enable_thinking": False}
    on = load_config(ROOT / "config.yaml", {"prompt.formats.plain.enable_thinking": True})
    job_on = resolve(on, "qwen3-4b", "default")
    assert job_on.prompt.enable_thinking is True and template_kwargs(job_on) == {"enable_thinking": True}
    assert spec_for(on, "prompts/chat-plain").format.enable_thinking is True
    assert template_kwargs(None) == {"enable_thinking": False}  # seq2seq jobs have no prompt format


# --------------------------------------------------------------------------------------------- special ids
@pytest.mark.parametrize("name", list(REAL))
def test_bos_eot_pad_ids(name):
    real = REAL[name]
    tok, _ = _tokenizer(name)
    assert len(tok) == real["len"] and tok.bos_token_id == real["bos"]
    assert (tok.pad_token, tok.pad_token_id) == (real["pad_token"], real["pad"])
    ends = end_of_turn_ids(tok, {"enable_thinking": False})
    assert real["eot"] in ends and tok.eos_token_id in ends
    assert tok.pad_token_id not in ends and tok.pad_token_id != real["eot"]  # padding never is the end of turn
    assert end_of_turn_ids(tok, {"enable_thinking": True}) == ends


def test_a_pad_token_is_added_when_none_but_end_ids_exist():
    tok, _ = _tokenizer("qwen3")
    tok.pad_token = "<|im_end|>"  # as a config that pads with eos would have it
    assert choose_pad_token(tok) == ADDED_PAD
    assert tok.pad_token_id == REAL["qwen3"]["len"] and len(tok) == REAL["qwen3"]["len"] + 1
    assert choose_pad_token(tok) is None  # kept from then on (a saved tokenizer reloads with it)
    llama, _ = _tokenizer("llama3")
    llama.pad_token = "<|eot_id|>"
    assert choose_pad_token(llama) == REAL["llama3"]["pad_token"]  # a reserved token: no new row needed


# --------------------------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("name", list(REAL))
def test_trained_prompt_is_the_prediction_prompt(config, prompts, name, thinking):
    """Every training row: its first n_prompt ids (masked from the loss) are exactly the ids prediction feeds the
    model for that dialogue, under the same think setting; the rest is the summary and the end of turn."""
    real = REAL[name]
    tok, _ = _tokenizer(name, read_data_tokens(prompts))
    job = _job(config, name, thinking, max_length=1024)
    kw = template_kwargs(job)
    rows = read_jsonl(prompts / "train.jsonl")
    budget, total = input_budget(job), sequence_limit(job)
    data, report = encode_chat_rows(rows, tok, job)
    assert report.dropped == 0 and len(data) == len(rows)
    predicted, _ = encode_rows(rows, tok, "causal", budget, kw)
    for row, ex, pred in zip(rows, data, predicted, strict=True):
        ids, n_prompt = ex["input_ids"], ex["completion_mask"].index(1)
        assert ids[:n_prompt] == pred  # the trained prompt is a prefix and equals prediction's prompt
        assert (ids, n_prompt) == fit_chat_example(tok, row["prompt"], row["completion"], total, budget, kw)[:2]
        completion = ids[n_prompt:]
        assert completion[-len(real["completion_tail"]) :] == real["completion_tail"]
        summary = " ".join(row["completion"][0]["content"].split())
        assert postprocess(tok.decode(completion, skip_special_tokens=True)) == summary
        if name == "llama3":
            assert ids[0] == real["bos"] and ids.count(real["bos"]) == 1 and pred.count(real["bos"]) == 1
            assert pred[-4:] == [*real["header"][:1], *_ids(tok, "assistant"), real["header"][1], *_ids(tok, "\n\n")]
            assert not set(real["header"]) & set(completion)  # no header in what the model learns to write
        else:
            assert real["end_of_text"] not in ids  # no bos, no pad in a row
            think = list(real["think"])
            if thinking:  # bare generation prompt; the (empty) think block is the model's to write
                assert pred[-3:] == [151644, *_ids(tok, "assistant\n")]
                assert completion[: len(_ids(tok, "<think>\n\n</think>\n\n"))] == _ids(tok, "<think>\n\n</think>\n\n")
            else:  # the empty think block is part of the prompt, so summaries never start with one
                assert pred[-4:] == [think[0], *_ids(tok, "\n\n"), think[1], *_ids(tok, "\n\n")]
                assert not set(think) & set(completion)


@pytest.mark.parametrize("name", list(REAL))
def test_no_doubled_bos(name):
    tok, _ = _tokenizer(name)
    messages = [{"role": "user", "content": "[Conversation]\n#Person1#: 안녕\n\n[Question]\n요약"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = _ids(tok, text)
    if REAL[name]["bos"] is None:
        assert tok(text)["input_ids"] == ids  # Qwen3 adds no bos at all
    else:
        assert text.startswith(tok.bos_token)  # the template has it ...
        assert tok(text)["input_ids"][:2] == [128000, 128000]  # ... so tokenizing with specials would double it
        assert ids.count(128000) == 1 and ids[0] == 128000  # the pipeline tokenizes without


# --------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("name", list(REAL))
def test_decoding_keeps_nothing_template_made(config, name):
    real = REAL[name]
    tok, _ = _tokenizer(name, ["#Person1#"])
    summary = "#Person1#이 회의 시간을 정한다."
    prompt = [7, 8, 9]
    think = _ids(tok, "<think>\n\n</think>\n\n")
    ends = end_of_turn_ids(tok, template_kwargs(_job(config, name)))
    rows = [
        prompt + _ids(tok, summary) + [real["eot"], tok.pad_token_id, tok.pad_token_id],
        prompt + think + _ids(tok, summary) + [real["eot"]] + _ids(tok, "\n<|im_start|>assistant\n") + [7],
        prompt + _ids(tok, "<think>생각 중") + [real["eot"], tok.pad_token_id, tok.pad_token_id],  # no answer came
    ]
    width = max(map(len, rows))
    seqs = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    assert decode_new_tokens(tok, seqs, len(prompt), "causal", ends) == [summary, summary, ""]
    assert postprocess("<think>\n\n</think>\n\n요약: 회의.") == "회의."


@pytest.mark.parametrize("name", list(REAL))
def test_generation_stops_at_the_end_of_turn_and_pads_with_the_pad(config, name, tmp_path):
    from transformers import AutoModelForCausalLM

    real = REAL[name]
    tok, _ = _tokenizer(name)
    cfg = replica_config(real["replica"], "cpu")
    model = AutoModelForCausalLM.from_config(cfg)
    kw = generation_kwargs(_job(config, name), tok, model)
    assert real["eot"] in kw["eos_token_id"] and tok.eos_token_id in kw["eos_token_id"]
    assert kw["pad_token_id"] == real["pad"] and real["pad"] not in kw["eos_token_id"]


# --------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module", params=list(REAL))
def replica(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(f"replica-{name}") / "model"
    write_replica(REAL[name]["replica"], "cpu", out, TOKENIZERS, device="cpu")
    return name, out


def _lora_job(config, name, source, **train):
    settings = dict(
        max_steps=1,
        max_length=512,
        per_device_train_batch_size=4,
        gradient_checkpointing=False,
        packing=False,
        bf16=False,
        logging_steps=1,
        save_steps=1000,
        warmup_steps=0,
        learning_rate=1e-2,
    )
    job = _job(config, name, **{**settings, **train})
    return dataclasses.replace(job, source=str(source), lora=dataclasses.replace(job.lora, r=4, lora_alpha=8))


def test_padded_batch_keeps_the_end_of_turn_in_the_loss(config, prompts, replica, tmp_path, monkeypatch):
    """The SFTTrainer's first padded batch: pad positions hold the pad id (no end id) and are masked; every row's
    labels end with the completion's end of turn, unmasked. The data tokens were added, the model grown to the
    tokenizer where needed, their rows trainable; the memory plan saw the real vocabulary."""
    import kdsum.training.trainer as training

    name, source = replica
    real = REAL[name]
    plans = []
    real_check = training.check_spec_fits
    monkeypatch.setattr(
        training, "check_spec_fits", lambda *a, **k: plans.append(k) or real_check(*a, **k), raising=True
    )
    job = _lora_job(config, name, source)
    trainer, info = training.build_trainer(job, str(source), prompts, tmp_path / "ckpt", progress=False)
    tok = trainer.processing_class
    data_tokens = read_data_tokens(prompts)
    new_ids = tok.convert_tokens_to_ids(data_tokens)
    assert info["new_token_ids"] == new_ids == list(range(real["len"], real["len"] + len(data_tokens)))
    assert all(len(tok.tokenize(t)) == 1 for t in data_tokens)
    assert info["trainable_tokens"] == {"embed_tokens": new_ids}  # tied embeddings: the head shares the rows
    rows = trainer.model.get_input_embeddings().weight.shape[0]
    assert rows == max(replica_config(real["replica"], "cpu").vocab_size, len(tok))  # 128,256 + k / 151,936
    assert plans and plans[0]["vocab"] == len(tok) and plans[0]["trainable_tokens"] == len(data_tokens)

    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    lengths = mask.sum(1).tolist()
    assert len(set(lengths)) > 1  # a padded batch
    tail = real["completion_tail"]
    for row_ids, row_labels, n in zip(ids.tolist(), labels.tolist(), lengths, strict=True):
        assert all(t == tok.pad_token_id == real["pad"] for t in row_ids[n:])
        assert all(x == -100 for x in row_labels[n:])
        assert row_labels[n - len(tail) : n] == tail == row_ids[n - len(tail) : n]  # end of turn learned
        assert real["eot"] not in row_ids[n:] and row_ids.count(real["eot"]) >= 1
        if real["bos"] is not None:
            assert row_ids[0] == real["bos"] and row_ids.count(real["bos"]) == 1


def test_trained_data_tokens_reload_with_the_same_ids(config, prompts, replica, tmp_path):
    """One LoRA step (trainable data-token rows), then the prediction loader: the same tokenizer ids, the trained
    rows in the merged embeddings, and summaries without template text."""
    from safetensors.torch import load_file

    from kdsum.generation.predict import generate_summaries
    from kdsum.models.loading import load_for_generation
    from kdsum.training.trainer import train

    name, source = replica
    real = REAL[name]
    job = _lora_job(config, name, source, max_length=384)
    job = dataclasses.replace(job, generation=dataclasses.replace(job.generation, max_new_tokens=8, batch_size=4))
    trained_tok, _ = _tokenizer(name, read_data_tokens(prompts))
    train(job, str(source), prompts, tmp_path / "out", tmp_path / "ckpt", progress=False)
    model_dir = tmp_path / "out" / "model"
    lm = load_for_generation(job, model_dir=model_dir, device="cpu")
    tok = lm.tokenizer
    assert len(tok) == len(trained_tok) and tok.get_vocab() == trained_tok.get_vocab()
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (real["pad"], real["eot"], real["bos"])
    data_ids = tok.convert_tokens_to_ids(read_data_tokens(prompts))
    assert data_ids == trained_tok.convert_tokens_to_ids(read_data_tokens(prompts))
    saved = load_file(str(model_dir / "adapter_model.safetensors"))
    delta = next(v for k, v in saved.items() if "embed_tokens" in k and "trainable_tokens_delta" in k)
    with torch.no_grad():
        emb = lm.model.get_input_embeddings()(torch.tensor(data_ids))
    assert torch.allclose(emb, delta.float())
    rows = read_jsonl(prompts / "dev.jsonl")[:4]
    summaries = generate_summaries(lm.model, tok, rows, job, progress=False)
    template = ("<think>", "</think>", "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>")
    assert len(summaries) == 4 and not [s for s in summaries if any(t in s for t in template)]


# --------------------------------------------------------------------------------------------- memory
@pytest.mark.parametrize("name", list(REAL))
def test_memory_plan_uses_the_real_vocabulary(config, prompts, name):
    real = REAL[name]
    tok, new_ids = _tokenizer(name, read_data_tokens(prompts))
    job = _job(config, name)
    cfg = replica_config(real["replica"], "full")  # the seed model's public shape, no weights
    base = estimate_for_spec(job, cfg)
    est = estimate_for_spec(job, cfg, vocab=len(tok), trainable_tokens=len(new_ids))
    assert base["dims"]["vocab"] == cfg.vocab_size  # the config's, not a constant
    assert est["dims"]["vocab"] == max(cfg.vocab_size, len(tok))  # Llama-3 grows to 128,256 + k; Qwen3 stays 151,936
    assert est["dims"]["vocab"] == (real["len"] + len(new_ids) if name == "llama3" else 151936)
    assert est["parts"]["lora+optimizer"] > base["parts"]["lora+optimizer"]  # the trained rows and merged weight
    assert est["inputs"]["trainable_tokens"] == len(new_ids)
