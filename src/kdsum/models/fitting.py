"""Fitting rows to a model's context: budgets, chat-template renders and the one truncation rule.

* chat rows: the prompt messages rendered with the tokenizer's chat template and its assistant generation prompt
  (``add_generation_prompt=True``), then tokenized without adding special tokens again (the template has them:
  Llama-3's template writes ``<|begin_of_text|>`` itself, so a tokenizer call with specials would double it).
  Every render, at training and at prediction, passes the prompt format's chat-template settings
  (:func:`template_kwargs`: ``enable_thinking``, false by default). Qwen3's template renders an empty
  ``<think>\n\n</think>\n\n`` before every answer in a conversation but after a bare generation prompt only with
  ``enable_thinking=False``; with the one setting passed everywhere the trained prompt is the prediction prompt,
  id for id, and with false the think block is part of that prompt, not of what the model learns to write.
* seq2seq rows: the dialogue (``source``), framed ``<s> ... </s>`` and right-truncated by :func:`encode_seq2seq`,
  the function the training stage encodes its sources with.
* Truncation. Causal input budget = ``train.max_length - generation.max_new_tokens`` (the two share the context),
  both capped by the model's position limit (:func:`sequence_limit`); seq2seq encoder budget = ``train.max_length``
  (the decoder's ``max_new_tokens`` does not share the encoder's context). When a chat prompt is too long, the
  *conversation* is cut, never the ``[Question]`` block, the system message or the chat markup
  (:func:`fit_chat_messages`): cutting the end of the whole prompt would drop the instruction and the assistant
  header, and the model would continue the dialogue instead of summarizing it. Within the conversation the
  beginning is kept (whole turns where possible), as the seq2seq path (right truncation, :func:`fit_seq2seq`)
  keeps it: the opening turns set up who is who and what the call is about.
* The same rule at training (kdsum.training.trainer): a chat row's prompt is fitted by the same function to the same input
  budget, further lowered when its summary is longer than ``max_new_tokens`` so that prompt + summary fit
  ``train.max_length`` (:func:`fit_chat_example`); the summary is never cut, and a row whose summary alone does not
  fit is dropped. So a row whose summary fits ``max_new_tokens`` trains on exactly the prompt prediction gives it.
  Seq2seq sources are cut by :func:`fit_seq2seq` to the same encoder budget, targets to ``train.max_target_length``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch

from kdsum.config.spec import Job
from kdsum.errors import KdsumError

# The user message of kdsum.data.prompts.format_user_message: "[Conversation]\n{turns}\n\n[Question]\n{question}".
CONVERSATION_HEADER = "[Conversation]\n"
QUESTION_HEADER = "\n\n[Question]\n"
MIN_INPUT_BUDGET = 16


class GenerationError(KdsumError):
    """A prediction job that cannot run (empty split, prompt too long, a tokenizer without eos ...)."""


# --------------------------------------------------------------------------------------------- inputs
def _max_positions(model) -> int | None:
    if model is None:
        return None
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(cfg, "max_position_embeddings", None)


def sequence_limit(job: Job, model=None) -> int:
    """How many tokens one sequence may have: ``train.max_length``, capped by the model's position limit (the
    whole prompt + completion of a causal row; the encoder input of a seq2seq row)."""
    max_length, max_pos = job.train.max_length, _max_positions(model)
    return min(max_length, max_pos) if max_pos else max_length


def target_limit(job: Job, model=None) -> int:
    """How many tokens a seq2seq target may have: ``train.max_target_length``, capped by the position limit."""
    max_pos = _max_positions(model)
    return min(job.train.max_target_length, max_pos) if max_pos else job.train.max_target_length


def input_budget(job: Job, model=None) -> int:
    """How many input tokens a row may have: see the module docstring (Truncation)."""
    max_length, new_tokens = job.train.max_length, job.generation.max_new_tokens
    max_pos = _max_positions(model)
    total = sequence_limit(job, model)
    budget = total - new_tokens if job.family == "causal" else total
    if budget < MIN_INPUT_BUDGET:
        raise GenerationError(
            f"model '{job.model}': input budget of {budget} tokens (train.max_length={max_length}, "
            f"generation.max_new_tokens={new_tokens}, model positions={max_pos}) is too small to hold a prompt"
        )
    return budget


def encode_seq2seq(tokenizer, text: str, max_length: int) -> list[int]:
    """``<s> text </s>`` truncated to ``max_length`` ids, as the offline pretraining framed every sequence.

    Tokenizers that add the frame themselves (a post-processor) are left to do so. Training encodes its sources
    and targets with this function, prediction its inputs."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    if eos is not None and ids[-1] == eos:
        ids = ids[:-1]
    ids = ids[: max(1, max_length - 1)]
    return ids + ([eos] if eos is not None else [])


def fit_seq2seq(tokenizer, text: str, budget: int) -> tuple[list[int], bool]:
    """:func:`encode_seq2seq` of ``text`` cut to ``budget`` ids (its beginning kept); and whether it was cut. The
    one rule for seq2seq sources (training and prediction) and targets (training)."""
    ids = encode_seq2seq(tokenizer, text, sys.maxsize)
    if len(ids) <= budget:
        return ids, False
    return encode_seq2seq(tokenizer, text, budget), True


def template_kwargs(job_or_format) -> dict:
    """The chat-template settings of a prompt format (a kdsum.config.spec.PromptFormat, a Job, or None): the one set of
    keyword arguments every render passes, at training and at prediction alike. ``enable_thinking`` is Qwen3's think
    switch; templates that do not read it ignore it."""
    fmt = getattr(job_or_format, "prompt", job_or_format)
    return {"enable_thinking": bool(getattr(fmt, "enable_thinking", False))}


def chat_prompt_text(tokenizer, messages: list[dict], kwargs: dict | None = None) -> str:
    """The prompt messages in the tokenizer's chat template, ending with the assistant generation prompt."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **(kwargs or {}))


def chat_text(tokenizer, messages: list[dict], kwargs: dict | None = None) -> str:
    """A whole conversation (prompt + assistant completion) in the chat template, as training sees it."""
    return tokenizer.apply_chat_template(messages, tokenize=False, **(kwargs or {}))


def end_of_turn_ids(tokenizer, kwargs: dict | None = None) -> list[int]:
    """The ids that end an assistant turn: the tokenizer's eos and the chat template's own end of turn (Llama-3's
    ``<|eot_id|>``, ChatML's ``<|im_end|>``: the last special token the template puts after an answer)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if getattr(tokenizer, "chat_template", None):
        probe = [{"role": "user", "content": "x"}]
        try:
            prompt = chat_prompt_text(tokenizer, probe, kwargs)
            full = chat_text(tokenizer, [*probe, {"role": "assistant", "content": "y"}], kwargs)
        except Exception:  # a template that needs more than a user turn: eos alone
            full = prompt = ""
        if full.startswith(prompt):
            special = set(tokenizer.all_special_ids)
            tail = [i for i in _ids(tokenizer, full[len(prompt) :]) if i in special]
            if tail and tail[-1] not in ids:
                ids.append(tail[-1])
    return ids


def split_user_message(content: str) -> tuple[str, str, str] | None:
    """``(head, conversation, tail)`` of a user message in the kdsum prompt layout, or None for another layout."""
    if not content.startswith(CONVERSATION_HEADER):
        return None
    q = content.rfind(QUESTION_HEADER)
    if q < len(CONVERSATION_HEADER):
        return None
    return CONVERSATION_HEADER, content[len(CONVERSATION_HEADER) : q], content[q:]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _with_conversation(messages: list[dict], user_i: int, parts: tuple[str, str, str], conversation: str) -> list[dict]:
    head, _, tail = parts
    msgs = [dict(m) for m in messages]
    msgs[user_i]["content"] = head + conversation + tail
    return msgs


def _longest_fitting_prefix(fits: Callable[[int], bool], n: int) -> int:
    """The largest ``k`` in [0, n) with ``fits(k)``, given ``fits(0)`` and not ``fits(n)`` (monotone)."""
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def fit_chat_messages(
    tokenizer, messages: list[dict], budget: int, ids: list[int] | None = None, kwargs: dict | None = None
) -> tuple[list[dict], list[int], bool]:
    """The one rule that fits a chat prompt to ``budget`` tokens, at prediction and at training: the prompt messages
    with the conversation cut so that the rendered prompt fits, its token ids, and whether it was cut.

    The cut keeps the beginning of the conversation and ends at a turn boundary when the kept part has one; the
    system message, the ``[Question]`` block and the chat markup stay whole. ``ids``: the prompt's ids when the
    caller has them already; ``kwargs``: the chat-template settings (:func:`template_kwargs`). Raises
    GenerationError when even an empty conversation does not fit.
    """
    if ids is None:
        ids = _ids(tokenizer, chat_prompt_text(tokenizer, messages, kwargs))
    if len(ids) <= budget:
        return messages, ids, False
    user_i = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    parts = split_user_message(messages[user_i]["content"]) if user_i is not None else None
    if parts is None:
        raise GenerationError(
            f"prompt of {len(ids)} tokens exceeds the input budget of {budget} and its user message is not in "
            f"the '[Conversation] ... [Question]' layout, so the conversation cannot be cut safely"
        )
    conv = parts[1]

    def fits(n_chars: int) -> bool:
        text = chat_prompt_text(tokenizer, _with_conversation(messages, user_i, parts, conv[:n_chars]), kwargs)
        return len(_ids(tokenizer, text)) <= budget

    if budget < 1 or not fits(0):
        raise GenerationError(
            f"the prompt without any conversation needs more than the input budget of {budget} tokens; "
            f"raise train.max_length or lower generation.max_new_tokens"
        )
    cut = conv[: _longest_fitting_prefix(fits, len(conv))]
    nl = cut.rfind("\n")
    if nl > 0:  # end at a turn boundary
        cut = cut[:nl]
    msgs = _with_conversation(messages, user_i, parts, cut.rstrip())
    return msgs, _ids(tokenizer, chat_prompt_text(tokenizer, msgs, kwargs)), True


def fit_chat_prompt(tokenizer, messages: list[dict], budget: int, kwargs: dict | None = None) -> tuple[list[int], bool]:
    """Token ids of the chat prompt, the conversation cut so that it fits ``budget`` (:func:`fit_chat_messages`);
    and whether it was cut."""
    _, ids, cut = fit_chat_messages(tokenizer, messages, budget, kwargs=kwargs)
    return ids, cut


def completion_ids(
    tokenizer,
    prompt: list[dict],
    completion: list[dict],
    kwargs: dict | None = None,
    prompt_ids: list[int] | None = None,
) -> list[int]:
    """The ids the template puts after the rendered prompt when the completion is added: e.g. Llama-3's
    ``{summary}<|eot_id|>``, Qwen3's ``<think>\n\n</think>\n\n{summary}<|im_end|>\n`` (``{summary}<|im_end|>\n``
    when ``enable_thinking`` is false: the empty think block is then in the prompt), with what the template renders
    after the end of turn (ChatML's newline), as TRL renders a conversational completion.

    The whole conversation is tokenized, and the prompt's ids (``prompt_ids`` when the caller has them) must be its
    exact beginning; where tokens merge across the boundary, the completion's text is tokenized on its own
    instead, so the trained prompt stays exactly the one prediction gives. Ended with eos when the template puts
    no end of turn (:func:`end_of_turn_ids`) after the answer, so that the model learns to stop. Raises
    GenerationError when the template renders the prompt alone otherwise than as the conversation's beginning."""
    prompt_text = chat_prompt_text(tokenizer, prompt, kwargs)
    full = chat_text(tokenizer, prompt + completion, kwargs)
    if not full.startswith(prompt_text):
        raise GenerationError(
            "the chat template renders the prompt with its generation prompt otherwise than as the beginning of "
            f"the whole conversation (prompt ends {prompt_text[-40:]!r}, conversation continues "
            f"{full[max(0, len(prompt_text) - 40) : len(prompt_text) + 20]!r}): check "
            "prompt.formats.<f>.enable_thinking"
        )
    prompt_ids = _ids(tokenizer, prompt_text) if prompt_ids is None else prompt_ids
    full_ids = _ids(tokenizer, full)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        ids = full_ids[len(prompt_ids) :]
    else:  # a merge across the boundary: the completion on its own, the prompt kept as prediction renders it
        ids = _ids(tokenizer, full[len(prompt_text) :])
    if any(t in ids for t in end_of_turn_ids(tokenizer, kwargs)) or tokenizer.eos_token_id is None:
        return ids
    return ids + [tokenizer.eos_token_id]


def fit_chat_example(
    tokenizer, prompt: list[dict], completion: list[dict], total: int, budget: int, kwargs: dict | None = None
) -> tuple[list[int], int, bool]:
    """A training row: ``(ids, n_prompt, cut)``, the ids of prompt + completion in the chat template, of which the
    first ``n_prompt`` are the prompt (masked from the loss) and the rest the whole completion (summary and
    end-of-turn markup, never cut); ``cut``: whether the conversation was cut. ``kwargs``: the chat-template
    settings (:func:`template_kwargs`), the same prediction renders with.

    The prompt part is exactly the ids prediction gives the model for this row (:func:`fit_chat_messages`, to
    ``budget``, prediction's input budget), lowered to ``total - completion tokens`` when the completion is longer
    than prediction leaves room for, so that ``len(ids) <= total``; the completion part is
    :func:`completion_ids`. Raises GenerationError when the completion alone (with an empty conversation) does not
    fit ``total``.
    """
    completion = list(completion)
    prompt_ids = _ids(tokenizer, chat_prompt_text(tokenizer, prompt, kwargs))
    tail = completion_ids(tokenizer, prompt, completion, kwargs, prompt_ids)
    limit, cut, messages = min(budget, total - len(tail)), False, prompt
    for _ in range(3):  # the completion's tokens hardly depend on the prompt's cut; if they do, fit again
        if limit < 1:
            break
        messages, ids, cut = fit_chat_messages(tokenizer, prompt, limit, ids=prompt_ids, kwargs=kwargs)
        if cut:
            tail = completion_ids(tokenizer, messages, completion, kwargs, ids)
        if len(ids) + len(tail) <= total:
            return ids + tail, len(ids), cut
        limit -= len(ids) + len(tail) - total
    raise GenerationError(
        f"the completion of {len(tail)} tokens does not fit a sequence of {total} tokens with any conversation"
    )


def encode_rows(
    rows: Sequence[dict], tokenizer, family: str, budget: int, kwargs: dict | None = None
) -> tuple[list[list[int]], int]:
    """Input ids of every prompt row (chat rows for causal, rendered with the chat-template settings ``kwargs``;
    seq2seq rows for seq2seq); and how many were cut."""
    encoded, n_cut = [], 0
    for row in rows:
        if family == "causal":
            ids, cut = fit_chat_prompt(tokenizer, row["prompt"], budget, kwargs)
        else:
            # framed <s> ... </s> and right-truncated exactly as the training stage encodes its sources
            ids, cut = fit_seq2seq(tokenizer, row["source"], budget)
        encoded.append(ids)
        n_cut += bool(cut)
    return encoded, n_cut


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` of ``seqs`` padded with ``pad_id`` on ``side`` ('left' for decoder-only
    generation). The one padding helper: generation batches, and the offline pretraining (labels with -100)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        span = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, span] = torch.tensor(list(s))
        mask[i, span] = 1
    return ids, mask
