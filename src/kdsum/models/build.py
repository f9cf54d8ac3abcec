"""Small base models built offline: the ``build`` section of a model entry (kdsum.config.spec.BuildArgs).

The pipeline trains a tokenizer on the training dialogues (data tokens such as ``#Person1#`` and ``#PhoneNumber#``
kept whole), or takes a real one (``build.tokenizer``, e.g. Llama-3's, for a causal model) and adds the data tokens,
builds a BART or Llama from the build settings, and pretrains it briefly on the dialogue text (denoising for BART,
next-token prediction for Llama; on the GPU where there is one, in bf16 autocast), so that "zero-shot" and
"fine-tuned" mean something. The result is an ordinary Hugging Face model directory, loaded by the same code (kdsum.models.loading) as
``gogamza/kobart-base-v2`` or ``Qwen/Qwen2.5-7B-Instruct``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from kdsum.config.spec import BuildArgs
from kdsum.models.data_tokens import add_data_tokens
from kdsum.models.finite import check_finite_weights
from kdsum.models.fitting import pad_batch
from kdsum.models.loading import CHAT_TEMPLATE, load_tokenizer, set_seed

PAD, BOS, EOS, UNK, MASK = "<pad>", "<s>", "</s>", "<unk>", "<mask>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
PRETRAIN_MAX_LEN = 256


# --------------------------------------------------------------------------------------------- tokenizer
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
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2, show_progress=False)
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


def base_tokenizer(build: BuildArgs, texts: list[str], data_tokens: list[str], family: str):
    """The build's tokenizer: the real one at ``build.tokenizer`` (pad token and chat template as a hub model's get
    them, kdsum.models.loading) with the data tokens added, else one trained on ``texts``."""
    if build.tokenizer is None:
        return train_tokenizer(texts, build.vocab_size, data_tokens, family)
    tok = load_tokenizer(build.tokenizer, "build", family, key="build.tokenizer")
    add_data_tokens(tok, data_tokens)
    return tok


# --------------------------------------------------------------------------------------------- architecture
def build_config(family: str, build: BuildArgs, tokenizer):
    from transformers import BartConfig, LlamaConfig

    common = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        max_position_embeddings=build.max_position_embeddings,
    )
    if family == "seq2seq":
        return BartConfig(
            d_model=build.d_model,
            encoder_layers=build.layers,
            decoder_layers=build.layers,
            encoder_attention_heads=build.heads,
            decoder_attention_heads=build.heads,
            encoder_ffn_dim=build.ffn_dim,
            decoder_ffn_dim=build.ffn_dim,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_eos_token_id=tokenizer.eos_token_id,
            dropout=0.1,
            scale_embedding=True,
            **common,
        )
    return LlamaConfig(
        hidden_size=build.hidden_size,
        num_hidden_layers=build.layers,
        num_attention_heads=build.heads,
        num_key_value_heads=build.heads,
        intermediate_size=build.intermediate_size,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        **common,
    )


# --------------------------------------------------------------------------------------------- pretraining
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


def _batch_loss(model, tokenizer, batch: list[list[int]], family: str, rng: random.Random):
    """The pretraining loss of one batch: denoising (seq2seq) or next-token prediction (causal)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    targets = [[bos] + b + [eos] for b in batch]
    if family == "seq2seq":
        sources = [[bos] + _denoise(b, tokenizer.mask_token_id, rng) + [eos] for b in batch]
        inp, attn = pad_batch(sources, tokenizer.pad_token_id)
        labels, _ = pad_batch(targets, -100)
    else:
        inp, attn = pad_batch(targets, tokenizer.pad_token_id)
        labels = inp.masked_fill(attn == 0, -100)
    inp, attn, labels = (t.to(model.device) for t in (inp, attn, labels))
    # bf16 autocast on the GPU (fp32 master weights): a GPU-sized build pretrains in minutes; the CPU stays fp32
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=model.device.type == "cuda"):
        return model(input_ids=inp, attention_mask=attn, labels=labels).loss


def _schedule(opt, steps: int):
    """Linear warmup over a tenth of the steps, then cosine decay."""
    warm = max(1, steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )


def pretrain(model, tokenizer, texts: list[str], family: str, build: BuildArgs, progress: bool = True) -> list[dict]:
    """A short pretraining on dialogue text (``build.pretrain_*``); returns the loss history."""
    from tqdm.auto import tqdm

    set_seed(build.seed)
    rng = random.Random(build.seed)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][: PRETRAIN_MAX_LEN - 2] for t in texts]
    encoded = [e for e in encoded if len(e) > 4]
    steps = build.pretrain_steps
    if not encoded or steps == 0:
        return []
    opt = torch.optim.AdamW(model.parameters(), lr=build.pretrain_learning_rate, weight_decay=0.01)
    sched = _schedule(opt, steps)
    history = []
    model.train()
    bar = tqdm(range(steps), desc="pretrain", disable=not progress, mininterval=5)
    for step in bar:
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(build.pretrain_batch_size)]
        loss = _batch_loss(model, tokenizer, batch, family, rng)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        history.append({"step": step + 1, "loss": loss.item()})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
    model.eval()
    return history


# --------------------------------------------------------------------------------------------- the build
def build_base_model(
    family: str, build: BuildArgs, texts: list[str], data_tokens: list[str], out_dir: Path, progress: bool = True
) -> dict:
    """Train a tokenizer, build the model from config, pretrain briefly, save to ``out_dir``; return metrics."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    set_seed(build.seed)
    start = time.time()
    tokenizer = base_tokenizer(build, texts, data_tokens, family)
    config = build_config(family, build, tokenizer)
    auto = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
    set_seed(build.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = auto.from_config(config).to(device)
    pretrain_start = time.time()
    history = pretrain(model, tokenizer, texts, family, build, progress=progress)
    pretrain_s = time.time() - pretrain_start
    model.to("cpu")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    check_finite_weights(model, f"base model {out_dir}", hint="lower build.pretrain_learning_rate")
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
        "tokenizer": build.tokenizer or "trained on the train split",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "pretrain_s": round(pretrain_s, 2),
        "wall_time_s": round(time.time() - start, 2),
    }
