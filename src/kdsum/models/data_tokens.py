"""Data tokens (``#Person4#``, ``#DateOfBirth#`` ...) in a model's vocabulary: adding them, growing the embeddings.

Offline tokenizers have every data token as a single token already. A hub tokenizer that splits them gets them
added (:func:`add_data_tokens`), the embeddings grown with a deterministic mean init (:func:`resize_for_new_tokens`),
and only those rows trained through ``LoraConfig(trainable_token_indices=...)`` (:func:`trainable_token_indices`:
the input embeddings, plus the output head when it is not tied). The adapter stores the trained rows as deltas,
never whole embedding matrices; loading grows the base the same way first (:func:`grow_to_tokenizer`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from kdsum.io import read_json


def read_data_tokens(prompts_dir: str | os.PathLike) -> list[str]:
    """The data tokens of a prompt dataset (``special_tokens.json``); none when the file is absent."""
    path = Path(prompts_dir) / "special_tokens.json"
    return read_json(path)["tokens"] if path.exists() else []


def add_data_tokens(tokenizer, data_tokens: list[str]) -> list[int]:
    """Make every data token a single, non-special token; return the ids added.

    Non-special, so decoding with ``skip_special_tokens`` keeps them in the output where they belong."""
    from tokenizers import AddedToken

    missing = [t for t in data_tokens if len(tokenizer.tokenize(t)) != 1 or t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=False, single_word=False) for t in missing])
    return [tokenizer.convert_tokens_to_ids(t) for t in missing]


def resize_for_new_tokens(model, tokenizer, new_ids: list[int]) -> None:
    """Grow the embeddings to the tokenizer and give every new row a deterministic start: the mean of the rows
    below the first new one (input and, if untied, output embeddings), so that training and reloading agree without
    saving full matrices. ``new_ids`` within the embedding matrix already (Qwen3's: the matrix has 151,936 rows, the
    tokenizer 151,669 tokens) get the same start instead of whatever the unused rows held."""
    old = model.get_input_embeddings().weight.shape[0]
    rows = sorted({*new_ids, *range(old, len(tokenizer))})
    if not rows:
        return
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    index = torch.tensor(rows)
    with torch.no_grad():
        for emb in {id(m): m for m in embeddings}.values():
            w = emb.weight
            if w.shape[0] > rows[-1]:
                w[index.to(w.device)] = w[: rows[0]].float().mean(0, keepdim=True).to(w.dtype)


def grow_to_tokenizer(model, tokenizer) -> None:
    """Before attaching an adapter (or generating zero-shot): grow a base whose tokenizer gained tokens (data tokens
    in training, a pad token: kdsum.models.loading.choose_pad_token), as training grew it."""
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        resize_for_new_tokens(model, tokenizer, list(range(vocab, len(tokenizer))))


def trainable_token_indices(model, new_ids: list[int]) -> dict[str, list[int]] | None:
    """PEFT ``trainable_token_indices`` for the rows of ``new_ids``: the input embeddings, and the output head by
    its module name when it is not tied to them. None when nothing was added."""
    if not new_ids:
        return None
    indices = {"embed_tokens": list(new_ids)}
    tied = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
    head = model.get_output_embeddings()
    if not tied and head is not None:
        name = next(n for n, m in model.named_modules() if m is head)
        indices[name.rsplit(".", 1)[-1]] = list(new_ids)
    return indices


def expose_output_head_bias(model) -> int:
    """TRL 1.16's SFTTrainer always computes the loss through a fused LM head that reads ``lm_head.weight`` and
    ``lm_head.bias`` itself. With PEFT trainable tokens on the output embedding (tied, or untied and listed) the
    head is a ``TrainableTokensWrapper``: ``.weight`` gives the merged, differentiable weight (base rows with the
    trained new-token rows), but ``.bias`` raises AttributeError and training crashes at the first step. Give each
    such wrapper the wrapped module's bias (stored in ``__dict__``, so it is not registered twice). Returns how many
    wrappers were patched."""
    patched = 0
    for module in model.modules():
        if type(module).__name__ == "TrainableTokensWrapper":
            original = module.original_module
            if isinstance(original, torch.nn.Linear) and "bias" not in module.__dict__:
                module.__dict__["bias"] = original.bias
                patched += 1
    return patched
