"""The offline build with a real tokenizer (``build.tokenizer``, kdsum.models.build.base_tokenizer): the tokenizer
keeps its vocabulary and chat template, gains the data tokens whole, and sizes the model built on it."""

from pathlib import Path

import pytest

from kdsum.config.spec import BuildArgs
from kdsum.models.build import base_tokenizer, build_config

LLAMA3 = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "llama3"
DATA_TOKENS = ["#Person1#", "#Person2#", "#PhoneNumber#"]
TEXT = "#Person1#: 내일 회의는 세 시에 시작합니다. #PhoneNumber#로 연락 주세요."


@pytest.fixture(scope="module")
def llama3() -> BuildArgs:
    if not (LLAMA3 / "tokenizer.json").is_file():
        pytest.skip(f"the real Llama-3 tokenizer is not at {LLAMA3} (a user's clone has no ../shared)")
    return BuildArgs(
        layers=1, heads=2, pretrain_steps=0, pretrain_learning_rate=1e-3, pretrain_batch_size=2,
        max_position_embeddings=128, seed=0, hidden_size=16, intermediate_size=32, tokenizer=str(LLAMA3),
    )  # fmt: skip


@pytest.fixture(scope="module")
def tok(llama3):
    return base_tokenizer(llama3, [], DATA_TOKENS, "causal")


def test_the_real_vocabulary_is_kept_and_the_data_tokens_are_whole(tok):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(LLAMA3 / "tokenizer.json"))  # the file itself, read without transformers or kdsum
    plain = "내일 회의는 세 시에 시작합니다."
    assert tok(plain, add_special_tokens=False)["input_ids"] == raw.encode(plain, add_special_tokens=False).ids
    assert len(tok) == raw.get_vocab_size(with_added_tokens=True) + len(DATA_TOKENS)
    pieces = tok.convert_ids_to_tokens(tok(TEXT, add_special_tokens=False)["input_ids"])
    assert {"#Person1#", "#PhoneNumber#"} <= set(pieces)


def test_the_model_is_sized_to_the_tokenizer_with_a_pad_that_ends_nothing(llama3, tok):
    config = build_config("causal", llama3, tok)
    assert config.vocab_size == len(tok)
    assert config.pad_token_id == tok.pad_token_id
    assert tok.pad_token_id not in {tok.eos_token_id, tok.convert_tokens_to_ids("<|end_of_text|>")}
    chat = tok.apply_chat_template([{"role": "user", "content": TEXT}], tokenize=False, add_generation_prompt=True)
    assert "<|start_header_id|>assistant<|end_header_id|>" in chat  # Llama-3's own template, not the build's ChatML
