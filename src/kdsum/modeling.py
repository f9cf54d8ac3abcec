"""Models: build small offline ones, and load any model the same way from a hub id or a local path.

Offline default: the pipeline trains a tokenizer on the training dialogues (data tokens such as ``#Person1#`` and
``#PhoneNumber#`` kept whole), builds a small BART or Llama from a config, and pretrains it briefly on the
dialogue text (denoising for BART, next-token prediction for Llama), so that "zero-shot" and "fine-tuned" mean
something. The result is an ordinary Hugging Face model directory, loaded by the same code as
``gogamza/kobart-base-v2`` or ``Qwen/Qwen2.5-7B-Instruct``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Iterable

import torch

log = logging.getLogger(__name__)

PAD, BOS, EOS, UNK, MASK = "<pad>", "<s>", "</s>", "<unk>", "<mask>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# ChatML, as Qwen uses; the {% generation %} markers let TRL's assistant_only_loss work as well.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelLoadError(RuntimeError):
    """A model source that cannot be loaded; the message names the model key and the source."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


# --------------------------------------------------------------------------------------------- tokenizers
def train_tokenizer(texts: Iterable[str], vocab_size: int, data_tokens: list[str], family: str):
    """A BPE tokenizer (SentencePiece-style word boundaries) trained on ``texts``.

    ``data_tokens`` (speakers and PII masks collected from the data) are added as whole, non-special tokens:
    whole, so a summary never splits ``#Person4#``; non-special, so decoding with ``skip_special_tokens``
    keeps them in the output where they belong.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, UNK, MASK] + ([IM_START, IM_END] if family == "causal" else [])
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    kwargs = dict(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, unk_token=UNK, mask_token=MASK)
    if family == "causal":
        kwargs.update(eos_token=IM_END, additional_special_tokens=[IM_START])
        kwargs["padding_side"] = "left"  # decoder-only generation needs left padding
    else:
        kwargs.update(eos_token=EOS)
    hf_tok = PreTrainedTokenizerFast(**kwargs)
    if family == "causal":
        hf_tok.chat_template = CHAT_TEMPLATE
    add_data_tokens(hf_tok, data_tokens)
    return hf_tok


def add_data_tokens(tokenizer, data_tokens: list[str]) -> list[int]:
    """Make every data token (``#Person3#``, ``#DateOfBirth#`` ...) a single token; return the ids added."""
    from tokenizers import AddedToken

    missing = [t for t in data_tokens if len(tokenizer.tokenize(t)) != 1 or t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=False, single_word=False) for t in missing])
    return [tokenizer.convert_tokens_to_ids(t) for t in missing]


# --------------------------------------------------------------------------------------------- building
def build_config(family: str, build: dict, tokenizer):
    from transformers import BartConfig, LlamaConfig

    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    max_pos = build.get("max_position_embeddings", 1024)
    if family == "seq2seq":
        return BartConfig(
            d_model=build["d_model"], encoder_layers=build["layers"], decoder_layers=build["layers"],
            encoder_attention_heads=build["heads"], decoder_attention_heads=build["heads"],
            encoder_ffn_dim=build["ffn_dim"], decoder_ffn_dim=build["ffn_dim"], max_position_embeddings=max_pos,
            decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=tokenizer.eos_token_id,
            dropout=0.1, scale_embedding=True, **common,
        )
    return LlamaConfig(
        hidden_size=build["hidden_size"], num_hidden_layers=build["layers"], num_attention_heads=build["heads"],
        num_key_value_heads=build["heads"], intermediate_size=build["intermediate_size"],
        max_position_embeddings=max_pos, tie_word_embeddings=True, rms_norm_eps=1e-5, **common,
    )


def _denoise(ids: list[int], mask_id: int, rng: random.Random, ratio: float = 0.3) -> list[int]:
    """BART text infilling: replace spans (Poisson-ish lengths around 3) by a single <mask>."""
    out, i, budget = [], 0, int(len(ids) * ratio)
    while i < len(ids):
        if budget > 0 and rng.random() < ratio / 3:
            span = min(budget, max(1, int(rng.expovariate(1 / 3))))
            out.append(mask_id)
            i += span
            budget -= span
        else:
            out.append(ids[i])
            i += 1
    return out


def pretrain(model, tokenizer, texts: list[str], family: str, steps: int, lr: float, batch_size: int,
             seed: int, max_len: int = 256, progress: bool = True) -> list[dict]:
    """A short pretraining on dialogue text; returns the loss history."""
    from tqdm.auto import tqdm

    set_seed(seed)
    rng = random.Random(seed)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][: max_len - 2] for t in texts]
    encoded = [e for e in encoded if len(e) > 4]
    if not encoded or steps == 0:
        return []
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    pad = tokenizer.pad_token_id
    history = []
    model.train()
    bar = tqdm(range(steps), desc="pretrain", disable=not progress, mininterval=5)
    for step in bar:
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
        if family == "seq2seq":
            targets = [[tokenizer.bos_token_id] + b + [tokenizer.eos_token_id] for b in batch]
            sources = [[tokenizer.bos_token_id] + _denoise(b, tokenizer.mask_token_id, rng) + [tokenizer.eos_token_id]
                       for b in batch]
            inp, attn = _pad(sources, pad)
            labels, _ = _pad(targets, -100)
            loss = model(input_ids=inp, attention_mask=attn, labels=labels).loss
        else:
            seqs = [[tokenizer.bos_token_id] + b + [tokenizer.eos_token_id] for b in batch]
            inp, attn = _pad(seqs, pad)
            labels = inp.masked_fill(attn == 0, -100)
            loss = model(input_ids=inp, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        history.append({"step": step + 1, "loss": loss.item()})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
    model.eval()
    return history


def _pad(seqs: list[list[int]], value: int):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
    return ids, attn


def build_base_model(family: str, build: dict, texts: list[str], data_tokens: list[str], out_dir: Path,
                     progress: bool = True) -> dict:
    """Train a tokenizer, build the model from config, pretrain briefly, save to ``out_dir``; return metrics."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    seed = build.get("seed", 0)
    set_seed(seed)
    start = time.time()
    tokenizer = train_tokenizer(texts, build["vocab_size"], data_tokens, family)
    config = build_config(family, build, tokenizer)
    auto = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
    set_seed(seed)
    model = auto.from_config(config)
    history = pretrain(model, tokenizer, texts, family, build.get("pretrain_steps", 0),
                       build.get("pretrain_learning_rate", 1e-3), build.get("pretrain_batch_size", 16), seed,
                       progress=progress)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "family": family,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "data_tokens": data_tokens,
        "pretrain_steps": len(history),
        "pretrain_first_loss": history[0]["loss"] if history else None,
        "pretrain_final_loss": history[-1]["loss"] if history else None,
        "pretrain_loss_history": history,
        "wall_time_s": round(time.time() - start, 2),
    }


# --------------------------------------------------------------------------------------------- loading
def model_source(spec: dict, base_dir: str | Path | None = None) -> str:
    """Where a model's base weights come from: the built directory, or the configured hub id / local path."""
    if spec.get("build"):
        if base_dir is None:
            raise ModelLoadError(f"model '{spec['name']}' is built offline but no base directory was given")
        return str(base_dir)
    return spec["source"]


def _from_pretrained(loader, source: str, name: str, **kwargs):
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as exc:  # a missing local dir, or a hub id that cannot be fetched offline
        raise ModelLoadError(
            f"model '{name}': cannot load '{source}' ({exc.__class__.__name__}: {str(exc).splitlines()[0]}). "
            f"Give a local directory, or a hub id on a machine with hub access (or a filled HF cache)."
        ) from exc


def load_tokenizer(source: str, name: str, family: str):
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, source, name)
    if tok.pad_token is None:  # Llama-style tokenizers ship without one
        tok.pad_token = tok.eos_token
    if family == "causal":
        tok.padding_side = "left"
        if not getattr(tok, "chat_template", None):
            tok.chat_template = CHAT_TEMPLATE
    return tok


def quantization_config(spec: dict):
    from transformers import BitsAndBytesConfig

    q = spec["quantization"]
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=q["quant_type"], bnb_4bit_use_double_quant=q["double_quant"],
        bnb_4bit_compute_dtype=getattr(torch, q["compute_dtype"]),
    )


def effective_method(spec: dict) -> tuple[str, list[str]]:
    """QLoRA needs CUDA (bitsandbytes 4-bit). Without it a ``qlora`` entry runs as LoRA, with a warning that
    train_metrics.json and the summary record, so a CPU smoke run of a GPU config still works end to end."""
    if spec["method"] == "qlora" and not torch.cuda.is_available():
        return "lora", [f"model '{spec['name']}': method qlora needs CUDA for 4-bit loading; "
                        f"no CUDA device here, so it ran as LoRA in full precision"]
    return spec["method"], []


def torch_dtype_for(spec: dict):
    bf16 = spec["train"].get("bf16", "auto")
    if torch.cuda.is_available() and (bf16 is True or (bf16 == "auto" and torch.cuda.is_bf16_supported())):
        return torch.bfloat16
    return torch.float32


def load_model(spec: dict, source: str, method: str | None = None, for_training: bool = True):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    method = method or effective_method(spec)[0]
    auto = AutoModelForSeq2SeqLM if spec["family"] == "seq2seq" else AutoModelForCausalLM
    # a full fine-tune keeps fp32 master weights (bf16 enters as autocast through the Trainer); adapters and
    # inference load the base in the compute dtype
    kwargs = {"dtype": torch.float32 if (method == "full" and for_training) else torch_dtype_for(spec)}
    if method == "qlora":
        kwargs["quantization_config"] = quantization_config(spec)
        kwargs["device_map"] = {"": 0}
    return _from_pretrained(auto, source, spec["name"], **kwargs)
