"""``train.gradient_checkpointing: auto`` (kdsum.gpu.preflight.checkpointing): the memory planner turns checkpointing
on only where the job would not fit the card without it. The card is given as ``available_gb``, so the decision is
tested without a GPU; the model is the 3B Llama shape as a local config.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from kdsum.config.resolve import load_config, resolve
from kdsum.gpu.preflight import FOLD_MARGIN, checkpointing, estimate_for_spec, with_checkpointing

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> tuple:
    """config.yaml's llama-ko-3b job (QLoRA, packed, ``gradient_checkpointing: auto``) on a local 3B config."""
    src = tmp_path_factory.mktemp("llama3b")
    (src / "config.json").write_text(json.dumps(LLAMA_3B), encoding="utf-8")
    job = resolve(load_config(ROOT / "config.yaml"), "llama-ko-3b", "default")
    assert job.train.gradient_checkpointing == "auto"
    return job, str(src)


def _need_gb(job, source: str, ckpt: bool) -> float:
    from transformers import AutoConfig

    est = estimate_for_spec(with_checkpointing(job, ckpt), AutoConfig.from_pretrained(source), attention="varlen")
    return est["total_gb"] / (1 - FOLD_MARGIN)


def test_auto_checkpoints_only_where_the_job_would_not_fit_without_it(shipped):
    job, source = shipped
    without, with_ = _need_gb(job, source, False), _need_gb(job, source, True)
    assert with_ < 24 < without < 80  # the shipped recipe: a 24 GB card needs it, an 80 GB card does not
    assert checkpointing(job, source, "qlora", available_gb=79.0, attention="varlen") is False
    assert checkpointing(job, source, "qlora", available_gb=without * 1.001, attention="varlen") is False
    assert checkpointing(job, source, "qlora", available_gb=without * 0.999, attention="varlen") is True
    assert checkpointing(job, source, "qlora", available_gb=22.0, attention="varlen") is True


def test_written_values_are_kept_and_no_card_means_off(shipped):
    job, source = shipped
    for written in (True, False):
        fixed = dataclasses.replace(job, train=dataclasses.replace(job.train, gradient_checkpointing=written))
        assert checkpointing(fixed, source, "qlora", available_gb=22.0) is written
        assert checkpointing(fixed, source, "qlora", available_gb=1000.0) is written
    if not torch.cuda.is_available():
        assert checkpointing(job, source, "qlora") is False
